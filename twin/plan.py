"""What a twin reads: its feature plan (model, layers, pooling, projection) and the feature computers that turn
stimuli into its feature blocks (text: cached in the feature cache; images: computed each time)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .cache import FeatureCache, text_digests
from .features import SURPRISAL_KEY, SURPRISAL_STATS, TextFeatureExtractor, layer_key, length_features
from .models import model_info
from .projection import Projection, reference_projection
from .vision import ImageFeatures, ImagePlan, image_digests

STATS_BLOCK = "stats"
DEFAULT_COMPONENTS = 32


def plan_from_json(text: str) -> FeaturePlan | ImagePlan:
    """A text or image feature plan from its JSON."""
    return ImagePlan.from_json(text) if json.loads(text).get("modality") == "image" else FeaturePlan.from_json(text)


def features_for(plan: FeaturePlan | ImagePlan, projection: Projection | None = None, *,
                 cache: FeatureCache | str | Path | None = None, device: str = "cpu", progress: bool = False
                 ) -> TextFeatures | ImageFeatures:  # fmt: skip
    """The feature computer for a plan: the one place text and image features are made. ``cache`` (a feature
    cache or its file) and ``progress`` count for text only; image features are cheap and never cached."""
    if isinstance(plan, ImagePlan):
        return ImageFeatures(plan, device=device)
    return TextFeatures(plan, cache=cache, device=device, progress=progress, projection=projection)


def stimulus_digests(stimuli: Sequence, images: bool = False) -> np.ndarray:
    """Digests of sentences, or (``images``, or any stimulus not a string) of images by their pixels, whether
    given as arrays, PNG bytes or paths: as kept in a twin for its training stimuli."""
    if images or (stimuli and not isinstance(stimuli[0], str)):
        return image_digests(stimuli)
    return text_digests(stimuli)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neurotwin")
    except PackageNotFoundError:
        return "0+unknown"


def default_layers(n_layers: int) -> tuple[int, ...]:
    """Every other middle layer: for a 30-layer model 4, 6, ..., 24."""
    lo = max(1, round(0.13 * n_layers))
    hi = max(lo, round(0.8 * n_layers))
    return tuple(range(lo, hi + 1, max(1, n_layers // 15)))


@dataclass(frozen=True)
class FeaturePlan:
    """Which features a twin uses. ``None`` fields are filled from the model by :meth:`resolve`.

    ``components``: read each pooled layer through its top principal components of
    the shipped reference sentences (:mod:`twin.projection`); ``None`` reads whole layers.
    """

    model: str = "smollm2-135m"
    layers: tuple[int, ...] | None = None
    poolings: tuple[str, ...] = ("last",)
    surprisal: bool | None = None
    length: bool = True
    components: int | None = DEFAULT_COMPONENTS

    def resolve(self) -> FeaturePlan:
        """Fill layers and surprisal from the model's config (no weights are loaded)."""
        if self.layers is not None and self.surprisal is not None:
            return self
        info = model_info(self.model)
        return replace(
            self,
            layers=self.layers if self.layers is not None else default_layers(info.n_layers),
            surprisal=self.surprisal if self.surprisal is not None else info.is_causal,
        )

    @property
    def layer_blocks(self) -> list[str]:
        return [layer_key(p, layer) for p in self.poolings for layer in self.layers or ()]

    @property
    def blocks(self) -> list[str]:
        names = [layer_key(p, layer) for p in self.poolings for layer in self.layers or ()]
        if self.surprisal or self.length:
            names.append(STATS_BLOCK)
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        d = json.loads(text)
        d["layers"] = tuple(d["layers"]) if d["layers"] is not None else None
        d["poolings"] = tuple(d["poolings"])
        d.setdefault("components", None)
        return cls(**d)


class TextFeatures:
    """Computes a plan's feature blocks for sentences, cached as one table per plan.

    Sentences missing from the cache are computed in chunks, each stored as soon as
    it is done, so an interrupted run over a large pool resumes where it stopped.
    """

    def __init__(
        self,
        plan: FeaturePlan,
        cache: FeatureCache | str | Path | None = None,
        device: str = "cpu",
        progress: bool = False,
        projection: Projection | None = None,
        chunk: int = 1024,
    ) -> None:
        self.plan = plan.resolve()
        self.extractor = TextFeatureExtractor(plan.model, device=device)
        self.cache = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
        self.progress = progress
        self.chunk = chunk
        self._projection = projection

    @property
    def model_id(self) -> str:
        return self.extractor.model_id

    @property
    def projection(self) -> Projection | None:
        """The plan's per-layer projection (loaded or fit on first use), or None for whole layers."""
        if self.plan.components is None or not self.plan.layer_blocks:
            return None
        if self._projection is None:
            self._projection = reference_projection(self.extractor, self.plan.layer_blocks, self.plan.components)
        return self._projection

    @property
    def table(self) -> str:
        """Feature-cache table of this plan (its hash covers the plan and the projection)."""
        h = hashlib.blake2b(self.plan.to_json().encode(), digest_size=6)
        if self.projection is not None:
            h.update(self.projection.digest.encode())
        return f"twin/{h.hexdigest()}"

    def block_dims(self) -> dict[str, int]:
        """Width of each block, in plan order."""
        plan, proj = self.plan, self.projection
        dims = {}
        for name in plan.layer_blocks:
            dims[name] = proj.dims(name) if proj is not None else model_info(plan.model).hidden_size
        if plan.surprisal or plan.length:
            dims[STATS_BLOCK] = len(SURPRISAL_STATS) * bool(plan.surprisal) + 2 * bool(plan.length)
        return dims

    def block_slices(self) -> dict[str, slice]:
        """Columns of each block in the concatenated rows."""
        out, at = {}, 0
        for name, d in self.block_dims().items():
            out[name] = slice(at, at + d)
            at += d
        return out

    def split(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        """Blocks from concatenated rows (views, no copy)."""
        return {name: Z[:, cols] for name, cols in self.block_slices().items()}

    def layer_matrix(self, Z: np.ndarray) -> np.ndarray:
        """The layer blocks of concatenated rows (all of Z when the plan has no layers)."""
        names = self.plan.layer_blocks
        return Z[:, : self.block_slices()[names[-1]].stop] if names else Z

    def surprisal_columns(self) -> slice | None:
        """Columns of (mean, total, max) surprisal in the concatenated rows, if the plan has them."""
        if not self.plan.surprisal:
            return None
        start = self.block_slices()[STATS_BLOCK].start  # surprisal comes first in the stats block
        return slice(start, start + len(SURPRISAL_STATS))

    def _compute(self, sentences: list[str]) -> np.ndarray:
        plan = self.plan
        raw: dict[str, np.ndarray] = {}
        if plan.layers or plan.surprisal:
            raw = self.extractor.extract(
                sentences, layers=plan.layers or (), pooling=plan.poolings, surprisal=bool(plan.surprisal)
            )
        proj = self.projection
        parts = [proj.apply(name, raw[name]) if proj is not None else raw[name] for name in plan.layer_blocks]
        if plan.surprisal:
            parts.append(raw[SURPRISAL_KEY])
        if plan.length:
            parts.append(length_features(sentences))
        return np.hstack(parts).astype(np.float32)

    def matrix(self, sentences: Sequence[str]) -> np.ndarray:
        """Concatenated features (n, d), through the cache."""
        sentences = list(sentences)
        out, hit = None, np.zeros(len(sentences), bool)
        if self.cache is not None:
            out, hit = self.cache.lookup(self.model_id, self.table, sentences)
        if out is None:
            out = np.empty((len(sentences), sum(self.block_dims().values())), np.float32)
        self._fill(sentences, np.flatnonzero(~hit), out)
        return out

    def ensure(self, sentences: Sequence[str]) -> int:
        """Compute and cache the features of every sentence not yet cached; returns how many were new."""
        if self.cache is None:
            raise ValueError("ensure() needs a feature cache")
        sentences = list(sentences)
        rows = self.cache.rows(self.model_id, self.table, text_digests(sentences))
        todo = np.flatnonzero(rows < 0)
        if len(todo) and (self.plan.layers or self.plan.surprisal):
            self.extractor.check_lengths([sentences[i] for i in todo])  # fail before any work
        self._fill(sentences, todo, None)
        return len(todo)

    def _fill(self, sentences: list[str], todo: np.ndarray, out: np.ndarray | None) -> None:
        if not len(todo):
            return
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"features {self.model_id}", unit="sent", mininterval=1.0)
        try:
            for a in range(0, len(todo), self.chunk):
                rows = todo[a : a + self.chunk]
                batch = [sentences[i] for i in rows]
                values = self._compute(batch)
                if out is not None:
                    out[rows] = values
                if self.cache is not None:
                    self.cache.store(self.model_id, self.table, batch, values)
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()

    def __call__(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        return self.split(self.matrix(sentences))
