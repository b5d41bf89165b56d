"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target."""

from .constraints import ConstraintError, Constraints, flesch_reading_ease
from .corpus import lee_sentences, wordnet_sentences
from .embedded import EmbeddedPool
from .generate import Candidate, Generation, Naturalness, apply_edit, generate
from .pool import Pool, PoolError, clean, load_pool, normalize, split_sentences, write_pool
from .selection import Goal, Selection, objective, select
from .synthesize import SynthesisResult, synthesize_sentences

__all__ = [
    "Candidate",
    "ConstraintError",
    "Constraints",
    "EmbeddedPool",
    "Generation",
    "Goal",
    "Naturalness",
    "Pool",
    "PoolError",
    "Selection",
    "SynthesisResult",
    "apply_edit",
    "clean",
    "flesch_reading_ease",
    "generate",
    "lee_sentences",
    "load_pool",
    "normalize",
    "objective",
    "select",
    "split_sentences",
    "synthesize_sentences",
    "wordnet_sentences",
    "write_pool",
]
