"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target."""

from .constraints import ConstraintError, Constraints, flesch_reading_ease
from .corpus import lee_sentences, wordnet_sentences
from .selection import Goal, Selection, objective, select

__all__ = [
    "ConstraintError",
    "Constraints",
    "Goal",
    "Selection",
    "flesch_reading_ease",
    "lee_sentences",
    "objective",
    "select",
    "wordnet_sentences",
]
