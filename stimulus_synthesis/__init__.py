"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target."""

from .constraints import ConstraintError, Constraints, flesch_reading_ease
from .corpus import lee_sentences, wordnet_sentences
from .pool import Pool, PoolError, clean, load_pool, normalize, split_sentences, write_pool
from .selection import Goal, Selection, objective, select

__all__ = [
    "ConstraintError",
    "Constraints",
    "Goal",
    "Pool",
    "PoolError",
    "Selection",
    "clean",
    "flesch_reading_ease",
    "lee_sentences",
    "load_pool",
    "normalize",
    "objective",
    "select",
    "split_sentences",
    "wordnet_sentences",
    "write_pool",
]
