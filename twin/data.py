"""Read training data (sentences with responses) and sentence lists, with clear errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

RESERVED_COLUMNS = ("sentence", "group")


@dataclass
class Dataset:
    """Unique sentences with their mean responses per target.

    Duplicate sentences are averaged (their individual measurements are kept in
    ``repeats`` and give a noise ceiling when every sentence was measured twice or more).
    """

    sentences: list[str]
    responses: np.ndarray  # (n, t)
    targets: list[str]
    groups: np.ndarray | None = None
    repeats: list[np.ndarray] = field(default_factory=list)  # per sentence, (k_i, t)

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def has_repeats(self) -> bool:
        return bool(self.repeats) and all(len(r) >= 2 for r in self.repeats)

    def digest(self) -> str:
        """A hash of the sentences and responses, stored in twins as the training-set hash."""
        h = hashlib.sha256()
        for s in self.sentences:
            h.update(s.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(self.responses, np.float64).tobytes())
        return h.hexdigest()[:16]


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise DataError(f"{what} '{path}' is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} '{path}' is not UTF-8 text (byte {exc.start})") from None


def normalize_sentence(text: str) -> str:
    """Collapse runs of whitespace and strip the ends."""
    return " ".join(text.split())


def load_dataset(path: str | Path, targets: list[str] | None = None, column: str = "sentence") -> Dataset:
    """Read a CSV with a ``sentence`` column (or ``column="image"``: image paths, relative to the CSV) and one
    or more numeric response columns. An optional ``group`` column defines grouped cross-validation folds.
    """
    import io

    import pandas as pd

    path = Path(path)
    text = _read_text(path, "data file")
    if not text.strip():
        raise DataError(f"data file '{path}' is empty")
    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"data file '{path}' is not a readable CSV: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if column not in df.columns:
        other = {"sentence": "image", "image": "sentence"}.get(column)
        hint = f"; its '{other}' column is for a twin of {other}s" if other in df.columns else ""
        raise DataError(f"data file '{path}' has no '{column}' column (columns: {', '.join(df.columns)}){hint}")
    if len(df) == 0:
        raise DataError(f"data file '{path}' has a header but no rows")
    available = [c for c in df.columns if c not in (*RESERVED_COLUMNS, column)]
    if targets:
        unknown = [t for t in targets if t not in df.columns]
        if unknown:
            raise DataError(f"data file '{path}' has no column(s) {unknown} (columns: {', '.join(df.columns)})")
        available = list(targets)
    if not available:
        raise DataError(f"data file '{path}' has no response column besides '{column}'")
    for col in available:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"data file '{path}', column '{col}': row {row + 2} has a missing or non-numeric "
                f"value {df[col].iloc[row]!r} ({len(bad)} such row(s))"
            )
        if not np.isfinite(values.to_numpy(np.float64)).all():
            raise DataError(f"data file '{path}', column '{col}' has infinite values")
        df[col] = values
    if column == "image":  # paths relative to the CSV
        sentences = [str(path.parent / s.strip()) if isinstance(s, str) and s.strip() else "" for s in df[column]]
    else:
        sentences = [normalize_sentence(str(s)) if isinstance(s, str) else "" for s in df[column]]
    empty = [i for i, s in enumerate(sentences) if not s]
    if empty:
        raise DataError(f"data file '{path}': row {empty[0] + 2} has an empty {column}")
    Y = df[available].to_numpy(np.float64)
    groups_col = df["group"].to_numpy() if "group" in df.columns else None
    order: dict[str, list[int]] = {}
    for i, s in enumerate(sentences):
        order.setdefault(s, []).append(i)
    uniq = list(order)
    responses = np.stack([Y[order[s]].mean(0) for s in uniq])
    repeats = [Y[order[s]] for s in uniq]
    groups = None
    if groups_col is not None:
        groups = np.array([groups_col[order[s][0]] for s in uniq])
    return Dataset(uniq, responses, available, groups, repeats)


def load_sentences(path: str | Path) -> list[str]:
    """One sentence per line; blank lines are skipped. Raises on a missing, empty or non-UTF-8 file."""
    path = Path(path)
    text = _read_text(path, "sentence file")
    sentences = [normalize_sentence(line) for line in text.splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError(f"sentence file '{path}' has no sentences")
    return sentences
