"""Constraints a clinician or operator sets on sentences: length, characters, blocked words, readability."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VOWELS = re.compile(r"[aeiouy]+")
_WORD = re.compile(r"[A-Za-z']+")


class ConstraintError(ValueError):
    """A constraint set that is malformed or cannot be met."""


def syllables(word: str) -> int:
    """Approximate English syllable count (vowel groups, silent final e)."""
    w = word.lower().strip("'")
    if not w:
        return 0
    count = len(_VOWELS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(count, 1)


def flesch_reading_ease(text: str) -> float:
    """Flesch reading ease (higher is easier; 60-70 is plain English)."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    syl = sum(syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syl / len(words)


@dataclass
class Constraints:
    """What every selected or generated sentence must satisfy.

    ``blocklist`` entries are whole words (case-insensitive) or, written as
    ``/pattern/``, regular expressions searched anywhere in the sentence.
    ``charset`` is a regular-expression character class every character must match.
    """

    min_words: int = 3
    max_words: int | None = 40
    charset: str | None = r"[A-Za-z0-9 ,.;:'\"?!()\-]"
    blocklist: list[str] = field(default_factory=list)
    min_readability: float | None = None
    max_readability: float | None = None
    max_similarity: float = 0.9  # word/word-pair cosine (see .similarity), any two chosen or shown

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ConstraintError(f"min_words must be at least 1, got {self.min_words}")
        if self.max_words is not None and self.max_words < self.min_words:
            raise ConstraintError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        if (
            self.min_readability is not None
            and self.max_readability is not None
            and self.min_readability > self.max_readability
        ):
            raise ConstraintError(
                f"min_readability ({self.min_readability}) is above max_readability ({self.max_readability})"
            )
        if not 0 < self.max_similarity <= 1:
            raise ConstraintError(f"max_similarity must be in (0, 1], got {self.max_similarity}")
        try:
            self._charset = re.compile(f"^(?:{self.charset})*$") if self.charset else None
        except re.error as exc:
            raise ConstraintError(f"charset {self.charset!r} is not a valid character class: {exc}") from None
        self._blocked: list[tuple[str, re.Pattern]] = []
        for entry in self.blocklist:
            if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
                pattern = entry[1:-1]
            else:
                pattern = rf"(?<![A-Za-z']){re.escape(entry)}(?![A-Za-z'])"
            try:
                self._blocked.append((entry, re.compile(pattern, re.IGNORECASE)))
            except re.error as exc:
                raise ConstraintError(f"blocklist pattern {entry!r} is not a valid regular expression: {exc}") from None

    def violations(self, sentence: str) -> list[str]:
        """Every constraint the sentence breaks, named (empty if it passes)."""
        out = []
        n = len(sentence.split())
        if n < self.min_words:
            out.append(f"fewer than {self.min_words} words")
        if self.max_words is not None and n > self.max_words:
            out.append(f"more than {self.max_words} words")
        if self._charset is not None and not self._charset.match(sentence):
            bad = sorted({c for c in sentence if not re.match(f"(?:{self.charset})", c)})
            out.append(f"characters outside the allowed set: {''.join(bad)!r}")
        for entry, pattern in self._blocked:
            if pattern.search(sentence):
                out.append(f"blocked: {entry}")
        if self.min_readability is not None or self.max_readability is not None:
            ease = flesch_reading_ease(sentence)
            if self.min_readability is not None and ease < self.min_readability:
                out.append(f"readability {ease:.0f} below {self.min_readability:g}")
            if self.max_readability is not None and ease > self.max_readability:
                out.append(f"readability {ease:.0f} above {self.max_readability:g}")
        return out

    def ok(self, sentence: str) -> bool:
        return not self.violations(sentence)
