"""Stimulus synthesis: find or make stimuli the twin predicts will drive or suppress a target."""

from .corpus import lee_sentences, wordnet_sentences

__all__ = ["lee_sentences", "wordnet_sentences"]
