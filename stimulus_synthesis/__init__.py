"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target.

Names are imported on first use, so light modules (``stimulus_synthesis.safety``,
which the presenter computer uses) do not pull in torch and the language models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ControlledImages": "images",
    "SynthesizedImage": "images",
    "best_starts": "images",
    "control_images": "images",
    "evolve_images": "images",
    "natural_images": "images",
    "synthesize_images": "images",
    "twin_predictor": "images",
    "SafetyLimits": "safety",
    "SafetyReport": "safety",
    "check_image": "safety",
    "check_sequence": "safety",
    "make_safe": "safety",
    "Candidate": "generate",
    "ConstraintError": "constraints",
    "Constraints": "constraints",
    "EmbeddedPool": "embedded",
    "Generation": "generate",
    "Goal": "selection",
    "Naturalness": "generate",
    "Pool": "pool",
    "PoolError": "pool",
    "Selection": "selection",
    "SynthesisResult": "synthesize",
    "apply_edit": "generate",
    "clean": "pool",
    "flesch_reading_ease": "constraints",
    "generate": "generate",
    "lee_sentences": "corpus",
    "load_pool": "pool",
    "normalize": "pool",
    "objective": "selection",
    "select": "selection",
    "split_sentences": "pool",
    "synthesize_sentences": "synthesize",
    "wordnet_sentences": "corpus",
    "write_pool": "pool",
}
__all__ = [
    "Candidate",
    "ConstraintError",
    "Constraints",
    "ControlledImages",
    "EmbeddedPool",
    "Generation",
    "Goal",
    "Naturalness",
    "Pool",
    "PoolError",
    "SafetyLimits",
    "SafetyReport",
    "Selection",
    "SynthesisResult",
    "SynthesizedImage",
    "apply_edit",
    "best_starts",
    "check_image",
    "check_sequence",
    "clean",
    "control_images",
    "evolve_images",
    "flesch_reading_ease",
    "generate",
    "lee_sentences",
    "load_pool",
    "make_safe",
    "natural_images",
    "normalize",
    "objective",
    "select",
    "split_sentences",
    "synthesize_images",
    "synthesize_sentences",
    "twin_predictor",
    "wordnet_sentences",
    "write_pool",
]

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'stimulus_synthesis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
