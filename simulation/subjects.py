"""Simulated subjects: the documented interface and the registry.

A simulated rig turns a subject's true, noise-free responses into signals (HRF, drift and noise for fMRI;
Poisson counts for spikes). Any object with the :class:`Subject` interface is one. Subjects are found by
name in :data:`SUBJECTS`: the ones shipped here, and those that other installed packages register in the
``neurotwin.subjects`` entry-point group::

    # a lab's pyproject.toml
    [project.entry-points."neurotwin.subjects"]
    my-subject = "my_lab.subjects:MySubject"

``module:attr`` (an installed module, or a ``.py`` file in the working folder) loads one that is not registered.
What a name or ``module:attr`` gives may be a subject, or a class or factory (no required arguments) that makes
one; a callable that lacks a figure of the interface gets its default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kit.registry import Registry, RegistryError

from .language import NOISE_SD  # per-trial noise SD of one participant's language network (Tuckute et al. 2024)


@runtime_checkable
class Subject(Protocol):
    """A simulated participant (or recording array): its true response to each stimulus.

    * ``rois``: the names of what it responds with, one per column (ROIs, or recording sites); a rig announces
      them as its channels.
    * ``__call__(stimuli)``: the noise-free responses, an ``(n, len(rois))`` array, for sentences (``str``) or
      images (RGB ``uint8`` arrays). fMRI: the response amplitude of a trial (the rig convolves it with the
      HRF); electrophysiology: the evoked rate in spikes/s while the stimulus is on.
    * ``noise_sd``: the per-trial noise SD a scanner adds to a trial's estimate (the fMRI rig derives its
      time-series noise from it; the ephys rig's noise is Poisson and ignores it).
    * ``warm_up()``: load whatever it needs (a model) before the rig serves, not at the first stimulus.
    """

    rois: Sequence[str]
    noise_sd: float

    def __call__(self, stimuli: Sequence[Any]) -> np.ndarray: ...

    def warm_up(self) -> None: ...


class _Adapted:
    """A callable with part of the interface, completed with its defaults."""

    def __init__(self, fn: Callable[[Sequence[Any]], np.ndarray]) -> None:
        self.fn = fn
        self.rois = tuple(str(r) for r in getattr(fn, "rois", ("roi0",)))
        self.noise_sd = float(getattr(fn, "noise_sd", NOISE_SD))
        self.warm_up = getattr(fn, "warm_up", lambda: None)

    def __call__(self, stimuli: Sequence[Any]) -> np.ndarray:
        return self.fn(stimuli)


# the module:attr paths sessions recorded before the subjects moved here
OLD_PATHS = {"hardware.rigs:v4_tuning": "v4", "hardware.rigs:gabor_tuning": "gabor",
             "hardware.subject:LanguageSubject": "language"}  # fmt: skip
SUBJECTS = Registry("subject", group="neurotwin.subjects", aliases=OLD_PATHS)


@SUBJECTS.register("language")
def _language() -> Subject:
    """The language network ('lang') and a multiple-demand control region ('md'), for sentences."""
    from .language import LanguageSubject

    return LanguageSubject()


def _member(name: str) -> Callable[[], Subject]:
    def make() -> Subject:
        from .population import PopulationMember

        return PopulationMember(name)

    from .population import MEMBERS

    make.__doc__ = f"A member of the population of language participants: {MEMBERS[name].describe()}."
    return make


def _register_population() -> None:
    from .population import MEMBERS

    for name in MEMBERS:
        SUBJECTS.register(f"population:{name}")(_member(name))


_register_population()


@SUBJECTS.register("gabor")
def _gabor() -> Subject:
    """16 V1-like sites, each one random Gabor filter's rectified response, for images."""
    from .tuning import gabor_tuning

    return gabor_tuning()


@SUBJECTS.register("v4")
def _v4() -> Subject:
    """8 V4-like sites: sparse readouts of an EfficientNet-Lite0 layer with a softplus, for images."""
    from .tuning import v4_tuning

    return v4_tuning()


def as_subject(obj: Any, spec: str = "subject") -> Subject:
    """A subject from what a registry entry or ``module:attr`` gave: the object, or what a class or factory
    without required arguments makes; defaults for any figure it lacks. Raises ValueError naming ``spec``."""
    try:
        factory = isinstance(obj, type) or (
            callable(obj) and not hasattr(obj, "rois")
            and all(p.default is not p.empty for p in inspect.signature(obj).parameters.values())
        )  # fmt: skip
    except (TypeError, ValueError):  # a builtin without a signature: a subject itself
        factory = False
    subject = obj() if factory else obj
    if not callable(subject):
        raise ValueError(f"subject {spec!r} is not callable")
    return subject if isinstance(subject, Subject) else _Adapted(subject)


def load_subject(spec: str | None) -> Subject:
    """The subject named ``spec`` (a registered name, or ``module:attr``); default: ``language``.
    Raises ValueError naming the spec for anything that does not load."""
    spec = spec or "language"
    try:
        return as_subject(SUBJECTS.get(spec), spec)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None


def subject_rois(spec: str | None) -> list[str]:
    """The ROIs (sites) a subject reports; the shipped ones without loading any model."""
    from .language import LanguageSubject
    from .tuning import GABOR_SITES, V4_SITES, site_names

    shipped = {"language": LanguageSubject.rois, "v4": site_names(V4_SITES), "gabor": site_names(GABOR_SITES)}
    name = SUBJECTS.aliases.get(spec or "language", spec or "language")
    if name.startswith("population:") and name in SUBJECTS.names():
        return list(LanguageSubject.rois)
    return list(shipped[name]) if name in shipped else list(load_subject(spec).rois)
