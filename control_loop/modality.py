"""What differs between sentences and images in a session, in one object per modality: the twin's features, the
candidates, how a stimulus goes on the wire and into the session file, how a run's responses are estimated, how
the twin learns from a run, and how stimuli for a goal are found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acquisition.estimators import ESTIMATORS, Estimator
from kit.images import encode_png

from .protocol import Protocol, ProtocolError


def candidate_sentences(protocol: Protocol) -> list[str]:
    """A text session's candidates: ``stimuli.candidates`` sentences of its source that pass its constraints, in
    the session's order. Raises ProtocolError for a source that cannot be read or is too small for the protocol
    (each candidate is shown once)."""
    from stimulus_synthesis import lee_sentences, load_pool, wordnet_sentences
    from stimulus_synthesis.pool import PoolError

    s = protocol.stimuli
    try:
        pool = (list(dict.fromkeys([*wordnet_sentences("examples"), *lee_sentences()])) if s.source == "default"
                else load_pool(s.source).sentences)  # fmt: skip
    except (PoolError, OSError) as exc:
        raise ProtocolError(f"stimuli.source: {getattr(exc, 'strerror', None) or exc}") from None
    constraints = s.constraints()
    passing = sorted(p for p in pool if constraints.ok(p))
    np.random.default_rng([protocol.seed, 17]).shuffle(passing)
    items = passing[: s.candidates]
    enough_candidates(protocol, len(items), f"{len(passing)} of the {len(pool)} sentences of stimuli.source "
                                            f"('{s.source}') pass its constraints")  # fmt: skip
    return items


def enough_candidates(protocol: Protocol, available: int, why: str) -> None:
    """Raise ProtocolError unless the session has a distinct candidate for every trial that draws one."""
    needed = protocol.candidates_needed
    if available < needed:
        raise ProtocolError(f"stimuli: the protocol shows {needed} candidates, each once, but it has {available} "
                            f"({why}; stimuli.candidates is {protocol.stimuli.candidates}): give a larger source, "
                            "raise stimuli.candidates, or ease the constraints")  # fmt: skip


class Candidates:
    """The stimulus source of a session: candidate stimuli and (sentences) their twin features, embedded once."""

    def __init__(self, items: list[Any], embedded: Any = None) -> None:
        self.items = items
        self.embedded = embedded


class Modality:
    """The base: one kind of stimulus and the recording that measures it."""

    name = ""  # the protocol's modality
    recording = ""  # the session file's modality, and the estimator's kind ("fmri", "spikes")
    source = ""  # the source of a stimulus drawn from the candidates, as the session file records it

    @property
    def estimator(self) -> Estimator:
        """How a run's per-trial responses are estimated from its samples."""
        return ESTIMATORS[self.recording]

    def features(self) -> Any:
        """The twin's feature computer for a session (the default plan of the modality)."""
        raise NotImplementedError

    def candidates(self, protocol: Protocol, features: Any) -> Candidates:
        """The session's candidates (ProtocolError if the protocol cannot have enough)."""
        raise NotImplementedError

    def wire(self, stimulus_id: int, stimulus: Any) -> dict:
        """A schedule entry's stimulus fields (what the presenter shows, and a simulated rig's subject reads)."""
        raise NotImplementedError

    def record(self, session: Any, path: Path, stimulus_id: int, stimulus: Any, condition: str) -> None:
        """Record a stimulus in the session file (images: a PNG beside it)."""
        raise NotImplementedError

    def stimulus_from_row(self, path: Path, row: Any) -> Any:
        """A recorded stimulus, read back from the session file's row (resuming a session)."""
        raise NotImplementedError

    def refits(self) -> bool:
        """Whether the twin is fit again on every trial after each run (True), or updated online (False)."""
        raise NotImplementedError

    def find(self, twin: Any, goal: Any, k: int, rng: np.random.Generator, planner: Any) -> list[Any]:
        """``k`` stimuli for ``goal`` by the twin: candidate indices (from the unshown ones), or new stimuli."""
        raise NotImplementedError


class TextModality(Modality):
    """Sentences, measured by fMRI: candidates from a corpus, the twin refit within runs after each run."""

    name, recording, source = "text", "fmri", "corpus"

    def features(self) -> Any:
        from twin import FeaturePlan, features_for
        from twin.paths import default_feature_cache

        return features_for(FeaturePlan(), cache=default_feature_cache(), progress=True)

    def candidates(self, protocol: Protocol, features: Any) -> Candidates:
        from stimulus_synthesis import EmbeddedPool

        items = candidate_sentences(protocol)
        return Candidates(items, EmbeddedPool.build(items, features))

    def wire(self, stimulus_id: int, stimulus: Any) -> dict:
        return {"kind": "text", "text": stimulus, "word_by_word": 0.0}

    def record(self, session: Any, path: Path, stimulus_id: int, stimulus: Any, condition: str) -> None:
        session.add_stimulus(stimulus_id, text=stimulus, condition=condition, source=self.source)

    def stimulus_from_row(self, path: Path, row: Any) -> Any:
        return row.text

    def refits(self) -> bool:
        return True

    def find(self, twin: Any, goal: Any, k: int, rng: np.random.Generator, planner: Any) -> list[Any]:
        from stimulus_synthesis import select

        rule = goal.rule
        candidates = planner.candidates
        free = planner.unshown()
        ranking = rule.ranking_twin(twin, rng)
        mean, sd = candidates.embedded.predict(ranking, with_sd=rule.needs_sd, noise=False)
        shown = [candidates.items[i] for i in planner.taken() if isinstance(i, int | np.integer)]
        sel = select([candidates.items[i] for i in free], mean[free], k, goal, sd=None if sd is None else sd[free],
                     constraints=planner.protocol.stimuli.constraints(), shown=shown)  # fmt: skip
        return [int(free[i]) for i in sel.index]


class ImageModality(Modality):
    """Images, measured by spike counts: natural crops as candidates, images synthesized for a goal, the twin
    updated online (exactly) with its penalties chosen again."""

    name, recording, source = "image", "spikes", "natural"

    def __init__(self) -> None:
        self._png: dict[int, bytes] = {}  # each image encoded once: for the presenter, the rig and the file

    def png(self, stimulus_id: int, image: np.ndarray) -> bytes:
        """The PNG bytes of a stimulus image (encoded once per stimulus id)."""
        if stimulus_id not in self._png:
            self._png[stimulus_id] = encode_png(image)
        return self._png[stimulus_id]

    def features(self) -> Any:
        from twin import features_for
        from twin.vision import ImagePlan

        return features_for(ImagePlan())

    def candidates(self, protocol: Protocol, features: Any) -> Candidates:
        s = protocol.stimuli
        enough_candidates(protocol, s.candidates, "natural images")
        from stimulus_synthesis.images import natural_images

        return Candidates(natural_images(s.candidates, s.image_size, seed=protocol.seed))

    def wire(self, stimulus_id: int, stimulus: Any) -> dict:
        return {"kind": "image", "image": self.png(stimulus_id, stimulus)}

    def record(self, session: Any, path: Path, stimulus_id: int, stimulus: Any, condition: str) -> None:
        folder = path.with_name(path.stem + "-images")
        folder.mkdir(exist_ok=True)
        name = f"{folder.name}/{stimulus_id}.png"
        (path.parent / name).write_bytes(self.png(stimulus_id, stimulus))
        session.add_stimulus(stimulus_id, image=name, condition=condition,
                             source="natural" if stimulus_id < 10**6 else "synthesized")  # fmt: skip

    def stimulus_from_row(self, path: Path, row: Any) -> Any:
        from twin.vision import load_image

        return load_image(path.parent / row.image)

    def refits(self) -> bool:
        return False

    def find(self, twin: Any, goal: Any, k: int, rng: np.random.Generator, planner: Any) -> list[Any]:
        from stimulus_synthesis.images import synthesize_images, twin_predictor

        s = planner.protocol.stimuli
        reference = next(iter(twin.readouts.values())).mean_y
        ranking = goal.rule.ranking_twin(twin, rng)
        out = synthesize_images(twin_predictor(ranking), goal, n=k, steps=s.synthesis_steps, size=s.image_size,
                                reference=reference, seed=int(rng.integers(2**31)))  # fmt: skip
        return [o.image for o in out]


def modality_for(protocol: Protocol) -> Modality:
    """The modality object of a protocol (a new one per session: it keeps the session's encoded images)."""
    return {"text": TextModality, "image": ImageModality}[protocol.modality]()
