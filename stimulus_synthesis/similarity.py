"""Sentence similarity for the near-duplicate limit: cosine of word and word-pair counts.

A language model's last-token state is a poor measure of whether two sentences are
near-duplicates: it is dominated by the last few words, so long sentences that end
alike ("... after the accident") look identical to it. Shared words and word pairs
are what a reader (and a repetition effect in the brain) notices, so the limit
``Constraints.max_similarity`` compares these: 1.0 for the same words in the same
order, about 0.85 for one word changed in a ten-word sentence, near 0 for sentences
with no word in common.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

DIM = 4096  # hashed feature space; collisions between two sentences' ~30 terms are rare
_WORD = re.compile(r"[a-z0-9']+")


def _terms(sentence: str) -> list[str]:
    words = _WORD.findall(sentence.lower())
    return words + [f"{a} {b}" for a, b in pairwise(words)]


def sentence_vectors(sentences: Sequence[str], dim: int = DIM) -> np.ndarray:
    """Unit-length (n, dim) float32 vectors of hashed word and word-pair counts (deterministic)."""
    out = np.zeros((len(sentences), dim), np.float32)
    for i, sentence in enumerate(sentences):
        for term in _terms(sentence):
            out[i, zlib.crc32(term.encode()) % dim] += 1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two sentences' word and word-pair counts."""
    u, v = sentence_vectors([a, b])
    return float(u @ v)
