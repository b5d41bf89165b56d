"""Candidate pools: sentences from a text file, a CSV/TSV column, or a folder of text; cleaned and deduplicated."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twin.paths import replaced_whole

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


class PoolError(ValueError):
    """A pool source that is missing, unreadable, empty or malformed."""


@dataclass
class Pool:
    """Distinct candidate sentences, in first-seen order, and what cleaning removed."""

    sentences: list[str]
    read: int
    duplicates: int
    filtered: int

    def __len__(self) -> int:
        return len(self.sentences)

    def summary(self) -> str:
        return (f"{len(self)} distinct sentences ({self.read} read, {self.duplicates} duplicates, "
                f"{self.filtered} outside the length limits)")  # fmt: skip


def normalize(text: str) -> str:
    """One line of clean text: unified quotes and dashes, single spaces, no control characters."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", " - ").replace("\u2013", "-")
    text = "".join(c for c in text if c.isprintable() or c.isspace())
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    """Split running text at sentence ends."""
    return [s for s in _SPLIT.split(" ".join(text.split())) if s]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PoolError(
            f"'{path}' is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
        ) from None


def load_pool(path: str | Path, column: str = "sentence", min_words: int = 3, max_words: int = 60) -> Pool:
    """Read candidates from ``.txt`` (one per line), ``.csv``/``.tsv`` (``column``), or a folder of ``.txt``
    files (running text split into sentences)."""
    path = Path(path)
    if not path.exists():
        raise PoolError(f"pool '{path}' does not exist")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise PoolError(f"pool folder '{path}' holds no .txt files")
        raw = [s for f in files for s in split_sentences(_read(f))]
    elif path.suffix.lower() in (".csv", ".tsv"):
        text = _read(path)
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise PoolError(f"pool '{path}' has no column {column!r} (columns: {reader.fieldnames})")
        raw = [row[column] or "" for row in reader]
    else:
        raw = _read(path).splitlines()
    pool = clean(raw, min_words, max_words)
    if not pool.sentences:
        raise PoolError(f"pool '{path}' has no usable sentences ({pool.summary()})")
    return pool


def clean(raw: Iterable[str], min_words: int = 3, max_words: int = 60) -> Pool:
    """Normalize, drop blanks, deduplicate (first seen wins) and keep sentences within the length limits."""
    cleaned = [s for s in map(normalize, raw) if s]
    distinct = list(dict.fromkeys(cleaned))
    kept = [s for s in distinct if min_words <= len(s.split()) <= max_words]
    return Pool(kept, len(cleaned), len(cleaned) - len(distinct), len(distinct) - len(kept))


def write_pool(sentences: list[str], out: str | Path) -> None:
    """Write one sentence per line, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(out) as tmp:
        tmp.write_text("\n".join(sentences) + "\n", encoding="utf-8")
