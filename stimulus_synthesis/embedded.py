"""Pools embedded once in the twin's feature cache and re-scored by one matrix-vector product."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twin import FeatureModelError, TextFeatures, Twin
from twin.cache import text_digests

from .pool import PoolError


@dataclass
class EmbeddedPool:
    """Candidate sentences whose twin features are in the feature cache (``rows`` of its table).

    :meth:`predict` streams the cached table in chunks, so memory stays flat whatever
    the pool's size and no sentence goes through the language model again.
    """

    sentences: list[str]
    features: TextFeatures
    rows: np.ndarray

    @classmethod
    def build(cls, sentences: Sequence[str], features: TextFeatures) -> EmbeddedPool:
        """Embed every sentence not yet cached (chunked, resumable, with a progress bar) and index the pool."""
        sentences = list(sentences)
        if not sentences:
            raise PoolError("the candidate pool is empty")
        if features.cache is None:
            raise PoolError("embedding a pool needs a feature cache (not --cache none)")
        features.ensure(sentences)
        rows = features.cache.rows(features.model_id, features.table, text_digests(sentences))
        if (rows < 0).any():
            raise PoolError(f"{int((rows < 0).sum())} pool sentences are missing from the feature cache")
        return cls(sentences, features, rows)

    def __len__(self) -> int:
        return len(self.sentences)

    def check_twin(self, twin: Twin) -> None:
        """Raise unless the twin reads exactly the features this pool was embedded with."""
        f = self.features
        if twin.model_id != f.model_id:
            raise FeatureModelError(
                f"the twin uses feature model '{twin.model_id}'; the pool is embedded with '{f.model_id}'"
            )
        if TextFeatures(twin.plan, projection=twin.projection).table != f.table:
            raise FeatureModelError("the twin's feature plan differs from the pool's: embed the pool with the twin")

    def predict(
        self, twin: Twin, with_sd: bool = False, chunk_rows: int = 32768, noise: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted responses (n, t) of every pool sentence, and the predictive SD when asked
        (``noise=False``: of the predicted mean alone, as UCB wants it)."""
        self.check_twin(twin)
        f = self.features
        W, b = twin.linear()
        W32 = W.astype(np.float32)
        lo, hi = int(self.rows.min()), int(self.rows.max()) + 1
        table_mean = np.zeros((hi - lo, W.shape[1]), np.float32)
        table_sd = np.zeros_like(table_mean) if with_sd else None
        for start, Z in f.cache.scan(f.model_id, f.table, chunk_rows):
            a, z = max(start, lo), min(start + len(Z), hi)
            if a >= z:
                continue
            part = Z[a - start : z - start]
            np.matmul(part, W32, out=table_mean[a - lo : z - lo])
            if with_sd:
                table_sd[a - lo : z - lo] = twin.predict_blocks(f.split(part), with_sd=True, noise=noise)[1]
        mean = table_mean[self.rows - lo].astype(np.float64) + b
        sd = table_sd[self.rows - lo].astype(np.float64) if with_sd else None
        return mean, sd
