"""On-disk HDF5 cache of sentence features keyed by (model, feature table, text hash).

Layout: ``/<model id>/<table>/digest`` (n, 16) uint8 BLAKE2b digests of the UTF-8
text, and ``/<model id>/<table>/values`` (n, d) float32, both appendable and
chunked; a table is e.g. ``mean/L12`` or ``surprisal``. A sentence is embedded once.
The file's ``format`` attribute is ``neurotwin.features``; another kind of file is never written to.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
from filelock import FileLock

from kit.formats import FEATURES_FORMAT

from .errors import CacheError

log = logging.getLogger(__name__)
FORMAT = FEATURES_FORMAT  # the file's `format` attribute (caches written before it have none)


def text_digests(sentences: Sequence[str]) -> np.ndarray:
    """16-byte BLAKE2b digest of each text, shape (n, 16) uint8."""
    out = np.empty((len(sentences), 16), np.uint8)
    for i, s in enumerate(sentences):
        out[i] = np.frombuffer(hashlib.blake2b(s.encode("utf-8"), digest_size=16).digest(), np.uint8)
    return out


def digest_keys(digests: np.ndarray) -> list[bytes]:
    """Hashable keys (16-byte values) for rows of digests."""
    return np.ascontiguousarray(digests).view("V16").ravel().tolist()


class FeatureCache:
    """A process-safe, append-only feature cache in one HDF5 file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")
        self._index: dict[str, tuple[int, dict[bytes, int]]] = {}
        self._checked = False

    @staticmethod
    def _group(model_id: str, table: str) -> str:
        return f"{quote(model_id, safe='')}/{table}"

    def _open(self, mode: str) -> h5py.File:
        try:
            f = h5py.File(self.path, mode)
        except OSError as exc:
            if mode == "r" and not self.path.exists():
                raise FileNotFoundError(self.path) from exc
            if self.path.is_dir():  # not a damaged cache: never moved aside
                raise CacheError(f"feature cache '{self.path}' is a folder; name a file (e.g. features.h5)") from None
            aside = self.path.with_suffix(f".corrupt-{int(time.time())}.h5")
            log.warning("feature cache %s is unreadable (%s); moved aside to %s", self.path, exc, aside)
            self.path.rename(aside)
            self._index.clear()
            f = h5py.File(self.path, mode)
        if not self._checked:
            try:
                self._check(f)
            except CacheError:
                f.close()
                raise
        return f

    def _check(self, f: h5py.File) -> None:
        """Refuse another kind of HDF5 file (a session, a twin, anyone's data): a cache never writes into it."""
        found = f.attrs.get("format")
        if found is None and any(not isinstance(item, h5py.Group) for item in f.values()):
            found = "not a feature cache"  # a legacy cache holds only groups (model / table / datasets)
        if found is not None and found != FORMAT:
            kind = f"its format is '{found}'" if found != "not a feature cache" else "it holds other data"
            raise CacheError(f"'{self.path}' is an HDF5 file but not a feature cache ({kind}), so it is left as it "
                             "is: give --cache (or $NEUROTWIN_CACHE) a cache file or a new path")  # fmt: skip
        if found is None and f.mode != "r":
            f.attrs["format"] = FORMAT
        self._checked = True

    def _rows(self, f: h5py.File, name: str) -> dict[bytes, int]:
        """Digest -> row index for one table, reread only when the table grew."""
        if name not in f:
            return {}
        n = f[name]["digest"].shape[0]
        cached = self._index.get(name)
        if cached is not None and cached[0] == n:
            return cached[1]
        rows = {k: i for i, k in enumerate(digest_keys(f[name]["digest"][:]))}
        self._index[name] = (n, rows)
        return rows

    def rows(self, model_id: str, table: str, digests: np.ndarray) -> np.ndarray:
        """Row of each digest in a table, -1 where absent."""
        name = self._group(model_id, table)
        if not self.path.exists():
            return np.full(len(digests), -1, np.int64)
        with self._lock, self._open("a") as f:
            rows = self._rows(f, name)
            return np.fromiter((rows.get(k, -1) for k in digest_keys(digests)), np.int64, len(digests))

    def scan(self, model_id: str, table: str, chunk_rows: int = 32768) -> Iterator[tuple[int, np.ndarray]]:
        """Every row of a table in order, as (first row, values) chunks; one buffer is reused,
        so consume each chunk before asking for the next. The cache stays locked while scanning."""
        name = self._group(model_id, table)
        with self._lock, self._open("r") as f:
            if name not in f:
                return
            values = f[name]["values"]
            n, d = values.shape
            buf = np.empty((min(chunk_rows, max(n, 1)), d), np.float32)
            for a in range(0, n, chunk_rows):
                b = min(n, a + chunk_rows)
                view = buf[: b - a]
                values.read_direct(view, np.s_[a:b])
                yield a, view

    def lookup(self, model_id: str, table: str, sentences: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """Cached values (rows of misses are zero) and a boolean hit mask."""
        name = self._group(model_id, table)
        hit = np.zeros(len(sentences), dtype=bool)
        if not self.path.exists():
            return None, hit
        with self._lock, self._open("a") as f:
            rows = self._rows(f, name)
            if not rows:
                return None, hit
            keys = digest_keys(text_digests(sentences))
            where = np.array([rows.get(k, -1) for k in keys], dtype=np.int64)
            hit = where >= 0
            values = f[name]["values"]
            out = np.zeros((len(sentences), values.shape[1]), np.float32)
            if hit.any():
                want = where[hit]
                if len(want) > values.shape[0] // 8:
                    out[hit] = values[:][want]
                else:
                    uniq, inverse = np.unique(want, return_inverse=True)
                    out[hit] = values[uniq.tolist()][inverse]
            return out, hit

    def store(self, model_id: str, table: str, sentences: Sequence[str], values: np.ndarray) -> None:
        """Append rows for sentences not yet cached."""
        name = self._group(model_id, table)
        values = np.asarray(values, np.float32)
        digests = text_digests(sentences)
        with self._lock, self._open("a") as f:
            if name not in f:
                g = f.require_group(name)
                g.create_dataset("digest", (0, 16), np.uint8, maxshape=(None, 16), chunks=(4096, 16))
                d = values.shape[1]
                g.create_dataset("values", (0, d), np.float32, maxshape=(None, d), chunks=(max(1, 65536 // d), d))
            rows = self._rows(f, name)
            keys = digest_keys(digests)
            fresh, seen = [], set()
            for i, k in enumerate(keys):
                if k not in rows and k not in seen:
                    fresh.append(i)
                    seen.add(k)
            if not fresh:
                return
            g = f[name]
            n0 = g["digest"].shape[0]
            n1 = n0 + len(fresh)
            g["values"].resize(n1, axis=0)
            g["values"][n0:n1] = values[fresh]
            g["digest"].resize(n1, axis=0)
            g["digest"][n0:n1] = digests[fresh]
            for j, i in enumerate(fresh):
                rows[keys[i]] = n0 + j
            self._index[name] = (n1, rows)
