"""Simulation: simulated subjects (a documented interface, found by name in a registry other packages add to),
tuning functions, and simulated rigs that serve them over the bridge, so a whole session runs offline.

What a real lab runs lives in ``hardware``; this package imports it, never the other way.
Names load on first use (lazy_loader).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "language": ["LanguageSubject"],
        "rigs": ["SimulatedEphysRig", "SimulatedFMRIRig"],
        "subjects": ["SUBJECTS", "Subject", "load_subject", "subject_rois"],
        "tuning": ["gabor_tuning", "v4_tuning"],
    },
)

if TYPE_CHECKING:
    from .language import LanguageSubject
    from .rigs import SimulatedEphysRig, SimulatedFMRIRig
    from .subjects import SUBJECTS, Subject, load_subject, subject_rois
    from .tuning import gabor_tuning, v4_tuning
