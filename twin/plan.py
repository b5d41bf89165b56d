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
from .errors import FeatureModelError
from .features import SURPRISAL_KEY, SURPRISAL_STATS, TextFeatureExtractor, layer_key, length_features
from .models import OFFLINE_MODELS, model_info, split_models, standardized_by_default
from .projection import Projection, reference_projection
from .vision import ImageFeatures, ImagePlan, image_digests

STATS_BLOCK = "stats"
DEFAULT_COMPONENTS = 32


def plan_from_json(text: str) -> FeaturePlan | StackedPlan | ImagePlan:
    """A text (one model's or several's) or image feature plan from its JSON."""
    d = json.loads(text)
    if d.get("modality") == "image":
        return ImagePlan.from_json(text)
    return StackedPlan.from_json(text) if "parts" in d else FeaturePlan.from_json(text)


def plan_for(models: str, layers: tuple[int, ...] | None = None, **settings) -> FeaturePlan | StackedPlan:
    """The feature plan of one model, or (``models`` a comma-separated list) of several stacked: each model's
    default layers, the same settings for each, the length columns once (with the first model's)."""
    names = split_models(models)
    if len(names) == 1:
        return FeaturePlan(model=names[0], layers=layers, **settings)
    if layers is not None:
        raise FeatureModelError("layers are one model's: give them for a single model, not for "
                                f"{len(names)} stacked ({', '.join(names)})")  # fmt: skip
    length = settings.pop("length", True)
    return StackedPlan(tuple(FeaturePlan(model=m, length=length and i == 0, **settings)
                             for i, m in enumerate(names)))  # fmt: skip


def features_for(plan: FeaturePlan | StackedPlan | ImagePlan, projection: Projection | None = None, *,
                 cache: FeatureCache | str | Path | None = None, device: str = "cpu", progress: bool = False,
                 dtype: str | None = None) -> TextFeatures | ImageFeatures:  # fmt: skip
    """The feature computer for a plan: the one place text and image features are made. ``cache`` (a feature
    cache or its file), ``progress`` and ``dtype`` count for text only; image features are cheap and never
    cached."""
    if isinstance(plan, ImagePlan):
        return ImageFeatures(plan, device=device)
    return TextFeatures(plan, cache=cache, device=device, progress=progress, projection=projection, dtype=dtype)


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
    ``standardize``: those components are of the layer's standardized units (default: the model's,
    :func:`twin.models.standardized_by_default`).
    """

    model: str = "smollm2-135m"
    layers: tuple[int, ...] | None = None
    poolings: tuple[str, ...] = ("last",)
    surprisal: bool | None = None
    length: bool = True
    components: int | None = DEFAULT_COMPONENTS
    standardize: bool | None = None

    def resolve(self) -> FeaturePlan:
        """Fill layers, surprisal and standardization from the model's config (no weights are loaded)."""
        if self.standardize is None:
            return replace(self, standardize=standardized_by_default(self.model)).resolve()
        if self.layers is not None and self.surprisal is not None:
            return self
        info = model_info(self.model)
        return replace(
            self,
            layers=self.layers if self.layers is not None else default_layers(info.n_layers),
            surprisal=self.surprisal if self.surprisal is not None else info.is_causal,
        )

    @property
    def parts(self) -> tuple[FeaturePlan, ...]:
        return (self,)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """What each part's block names start with: nothing, for one model."""
        return ("",)

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
        return json.dumps(self._dict())

    def _dict(self) -> dict:
        d = asdict(self)
        if d["standardize"] is False:  # as plans were written before the option: their tables' names are kept
            del d["standardize"]
        return d

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        return cls._from_dict(json.loads(text))

    @classmethod
    def _from_dict(cls, d: dict) -> FeaturePlan:
        d = dict(d)
        d["layers"] = tuple(d["layers"]) if d["layers"] is not None else None
        d["poolings"] = tuple(d["poolings"])
        d.setdefault("components", None)
        d.setdefault("standardize", False)  # written before the option: plain components
        return cls(**d)


def _label(model: str) -> str:
    """A model's name in its blocks' names (``gemma3-270m:last/L8``)."""
    key = model.strip()
    return key.lower() if key.lower() in OFFLINE_MODELS else key.replace("/", "_")


@dataclass(frozen=True)
class StackedPlan:
    """The feature plans of several models read side by side: a twin stacks all their blocks, each block
    named after its model (``smollm2-135m:last/L8``, ``gemma3-270m:stats``)."""

    parts: tuple[FeaturePlan, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise FeatureModelError("a stacked plan needs two or more models")
        labels = [_label(p.model) for p in self.parts]
        if len(set(labels)) < len(labels):
            raise FeatureModelError(f"a feature model is named twice in {', '.join(labels)}")

    @property
    def model(self) -> str:
        return ",".join(p.model for p in self.parts)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(f"{_label(p.model)}:" for p in self.parts)

    def resolve(self) -> StackedPlan:
        return StackedPlan(tuple(p.resolve() for p in self.parts))

    @property
    def layer_blocks(self) -> list[str]:
        return [pre + b for pre, p in zip(self.prefixes, self.parts, strict=True) for b in p.layer_blocks]

    @property
    def blocks(self) -> list[str]:
        return [pre + b for pre, p in zip(self.prefixes, self.parts, strict=True) for b in p.blocks]

    def to_json(self) -> str:
        return json.dumps({"parts": [p._dict() for p in self.parts]})

    @classmethod
    def from_json(cls, text: str) -> StackedPlan:
        return cls(tuple(FeaturePlan._from_dict(d) for d in json.loads(text)["parts"]))


class TextFeatures:
    """Computes a plan's feature blocks for sentences (one model's, or several models' side by side), cached
    as one table per plan.

    Sentences missing from the cache are computed in chunks, each stored as soon as
    it is done, so an interrupted run over a large pool resumes where it stopped.
    """

    def __init__(
        self,
        plan: FeaturePlan | StackedPlan,
        cache: FeatureCache | str | Path | None = None,
        device: str = "cpu",
        progress: bool = False,
        projection: Projection | None = None,
        chunk: int = 1024,
        dtype: str | None = None,
    ) -> None:
        self.plan = plan.resolve()
        self.extractors = [TextFeatureExtractor(p.model, device=device, dtype=dtype) for p in self.plan.parts]
        self.cache = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
        self.progress = progress
        self.chunk = chunk
        self._projection = projection

    @property
    def extractor(self) -> TextFeatureExtractor:
        """The (first) model's extractor."""
        return self.extractors[0]

    @property
    def model_id(self) -> str:
        """The model's id; several models' ids comma-separated."""
        return ",".join(ex.model_id for ex in self.extractors)

    def _parts(self) -> list[tuple[str, FeaturePlan, TextFeatureExtractor]]:
        return list(zip(self.plan.prefixes, self.plan.parts, self.extractors, strict=True))

    @property
    def projection(self) -> Projection | None:
        """The plan's per-layer projections (loaded or fit on first use), or None for whole layers."""
        projected = [(pre, p, ex) for pre, p, ex in self._parts() if p.components is not None and p.layer_blocks]
        if not projected:
            return None
        if self._projection is None:
            means, bases = {}, {}
            for pre, p, ex in projected:
                proj = reference_projection(ex, p.layer_blocks, p.components, bool(p.standardize))
                means.update({pre + b: v for b, v in proj.means.items()})
                bases.update({pre + b: v for b, v in proj.bases.items()})
            self._projection = Projection(means, bases)
        return self._projection

    @property
    def dtype(self) -> str:
        """What the models compute in (float32 or bfloat16)."""
        return self.extractor.dtype

    @property
    def table(self) -> str:
        """Feature-cache table of this plan (its hash covers the plan, the projection and a dtype not float32)."""
        h = hashlib.blake2b(self.plan.to_json().encode(), digest_size=6)
        if self.projection is not None:
            h.update(self.projection.digest.encode())
        if self.dtype != "float32":
            h.update(self.dtype.encode())
        return f"twin/{h.hexdigest()}"

    def block_dims(self) -> dict[str, int]:
        """Width of each block, in plan order."""
        proj = self.projection
        dims = {}
        for pre, p, _ in self._parts():
            for name in p.layer_blocks:
                width = proj.dims(pre + name) if proj is not None else None
                dims[pre + name] = width or model_info(p.model).hidden_size
            if p.surprisal or p.length:
                dims[pre + STATS_BLOCK] = len(SURPRISAL_STATS) * bool(p.surprisal) + 2 * bool(p.length)
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

    def surprisal_columns(self, model: str | None = None) -> slice | None:
        """Columns of (mean, total, max) surprisal in the concatenated rows: of ``model`` (by default the first
        model that has them), or None if it has none."""
        slices = self.block_slices()
        for pre, p, ex in self._parts():
            if p.surprisal and (model is None or model.strip().lower() in (p.model.strip().lower(), ex.model_id)):
                start = slices[pre + STATS_BLOCK].start  # surprisal comes first in the stats block
                return slice(start, start + len(SURPRISAL_STATS))
        return None

    def check_layers(self) -> None:
        """Raise FeatureModelError if a plan's layer is outside its model (loads the models)."""
        for _, p, ex in self._parts():
            if p.layers:
                ex.check_layers(p.layers)

    def _compute(self, sentences: list[str]) -> np.ndarray:
        proj = self.projection
        parts = []
        for pre, p, ex in self._parts():
            raw: dict[str, np.ndarray] = {}
            if p.layers or p.surprisal:
                raw = ex.extract(sentences, layers=p.layers or (), pooling=p.poolings, surprisal=bool(p.surprisal))
            parts += [proj.apply(pre + name, raw[name]) if proj is not None else raw[name] for name in p.layer_blocks]
            if p.surprisal:
                parts.append(raw[SURPRISAL_KEY])
            if p.length:
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
        for _, p, ex in self._parts():
            if len(todo) and (p.layers or p.surprisal):
                ex.check_lengths([sentences[i] for i in todo])  # fail before any work
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
