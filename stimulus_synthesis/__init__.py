"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target.

Names load on first use (lazy_loader), so light modules (``stimulus_synthesis.safety``,
which the presenter computer uses) do not pull in torch and the language models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "acquisition": ["RULES", "AcquisitionRule", "acquisition_rule"],
        "constraints": ["ConstraintError", "Constraints", "flesch_reading_ease"],
        "corpus": ["lee_sentences", "wordnet_sentences"],
        "embedded": ["EmbeddedPool"],
        "generate": ["Candidate", "Generation", "Naturalness", "apply_edit", "generate"],
        "images": [
            "ControlledImages",
            "SynthesizedImage",
            "best_starts",
            "control_images",
            "evolve_images",
            "natural_images",
            "synthesize_images",
            "twin_predictor",
        ],
        "pool": ["Pool", "PoolError", "clean", "load_pool", "normalize", "split_sentences", "write_pool"],
        "safety": ["SafetyLimits", "SafetyReport", "check_image", "check_sequence", "make_safe"],
        "selection": ["Goal", "Selection", "objective", "select"],
        "synthesize": ["SynthesisResult", "synthesize_sentences"],
    },
)

if TYPE_CHECKING:
    from .acquisition import RULES, AcquisitionRule, acquisition_rule
    from .constraints import ConstraintError, Constraints, flesch_reading_ease
    from .corpus import lee_sentences, wordnet_sentences
    from .embedded import EmbeddedPool
    from .generate import Candidate, Generation, Naturalness, apply_edit, generate
    from .images import (
        ControlledImages,
        SynthesizedImage,
        best_starts,
        control_images,
        evolve_images,
        natural_images,
        synthesize_images,
        twin_predictor,
    )
    from .pool import Pool, PoolError, clean, load_pool, normalize, split_sentences, write_pool
    from .safety import SafetyLimits, SafetyReport, check_image, check_sequence, make_safe
    from .selection import Goal, Selection, objective, select
    from .synthesize import SynthesisResult, synthesize_sentences
