"""Fixed per-layer principal-component projections of hidden states.

A twin may read each pooled layer through its top ``k`` principal components,
fit without labels on a shipped reference set of 3,000 WordNet example sentences
(``reference_sentences.txt``). Because the projection depends only on the model
and the layer, every twin with the same plan reads the same low-dimensional
features: a candidate pool embedded once serves every such twin, and re-scoring it
after a readout update is one matrix-vector product. On the Pereira 2018 data 32
components per layer predict as well as the full 576-dimensional layers.

A layer may be standardized first (each hidden unit divided by its SD on the
reference sentences, folded into the basis): models with a few massive hidden
units (Gemma-3, GPT-2) otherwise give components that are those units alone.
Projections of the offline causal models ship in ``projections/``; others are
computed from the reference sentences at first use and kept in the cache folder.
Regenerate the shipped ones with ``python -m twin.reproject``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from .paths import cache_root, replaced_whole

if TYPE_CHECKING:
    from .features import TextFeatureExtractor

log = logging.getLogger(__name__)

REFERENCE = Path(__file__).with_name("reference_sentences.txt")
SHIPPED = Path(__file__).with_name("projections")
STORED_COMPONENTS = 32  # columns kept in a projection file


def reference_sentences() -> list[str]:
    """The unlabeled sentences projections are fit on."""
    return [s for s in REFERENCE.read_text(encoding="utf-8").splitlines() if s]


@dataclass
class Projection:
    """Per-block centring vector and basis (orthonormal, or so in standardized units): ``(X - mean) @ basis``."""

    means: dict[str, np.ndarray]  # block -> (p,)
    bases: dict[str, np.ndarray]  # block -> (p, k)

    def apply(self, block: str, X: np.ndarray) -> np.ndarray:
        if block not in self.bases:
            return X
        return ((np.asarray(X, np.float32) - self.means[block]) @ self.bases[block]).astype(np.float32)

    def dims(self, block: str) -> int | None:
        return self.bases[block].shape[1] if block in self.bases else None

    @property
    def digest(self) -> str:
        """A short hash of every number in the projection."""
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(self.bases):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.means[name], np.float32).tobytes())
            h.update(np.ascontiguousarray(self.bases[name], np.float32).tobytes())
        return h.hexdigest()

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.bases:
            out[f"{name}/mean"] = self.means[name]
            out[f"{name}/basis"] = self.bases[name]
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        names = sorted({k.rsplit("/", 1)[0] for k in arrays})
        return cls(
            {n: np.asarray(arrays[f"{n}/mean"], np.float32) for n in names},
            {n: np.asarray(arrays[f"{n}/basis"], np.float32) for n in names},
        )


def principal_basis(X: np.ndarray, k: int, standardize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean (p,) and top-k principal axes (p, k) of X, each axis signed so its largest entry is positive.

    ``standardize``: the axes of X with each column divided by its SD, mapped back so that
    ``(X - mean) @ basis`` gives the standardized data's components."""
    X = np.asarray(X, np.float64)
    scale = X.std(0) if standardize else np.ones(X.shape[1])
    scale[scale == 0] = 1.0
    Z = X / scale
    mean = Z.mean(0)
    _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
    basis = vt[:k].T
    flip = np.sign(basis[np.abs(basis).argmax(0), np.arange(basis.shape[1])])
    return (mean * scale).astype(np.float32), (basis * flip / scale[:, None]).astype(np.float32)


def _stored_file(model_id: str, standardize: bool = False) -> list[Path]:
    name = quote(model_id, safe="") + (".standardized" if standardize else "") + ".npz"
    return [SHIPPED / name, cache_root() / "projections" / name]


def _load_stored(model_id: str, standardize: bool) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for path in reversed(_stored_file(model_id, standardize)):  # shipped entries win
        if path.exists():
            with np.load(path) as z:
                arrays.update({k: z[k] for k in z.files})
    return arrays


def reference_projection(
    extractor: TextFeatureExtractor, blocks: Sequence[str], k: int, standardize: bool = False
) -> Projection:
    """The projection of these pooled-layer blocks (``last/L12``...) onto k reference components
    (of the standardized layers, with ``standardize``).

    ``extractor`` is a :class:`twin.features.TextFeatureExtractor`; it runs only for
    blocks with no stored projection, and what it computes is stored in the cache folder.
    """
    model_id = extractor.model_id
    stored = _load_stored(model_id, standardize)
    missing = [b for b in blocks if f"{b}/basis" not in stored or stored[f"{b}/basis"].shape[1] < k]
    if missing:
        if extractor.dtype != "float32":  # projections are fit in float32 whatever the features are computed in
            extractor = type(extractor)(extractor.model_name, device=extractor.device, dtype="float32")
        log.info("fitting %d-component projections of %s on the reference sentences (once)", k, model_id)
        layers = sorted({int(b.split("/L")[1]) for b in missing})
        poolings = sorted({b.split("/")[0] for b in missing})
        feats = extractor.extract(reference_sentences(), layers=layers, pooling=poolings)
        fresh = {}
        for b in missing:
            mean, basis = principal_basis(feats[b], max(k, STORED_COMPONENTS), standardize)
            fresh[f"{b}/mean"], fresh[f"{b}/basis"] = mean, basis
        path = _stored_file(model_id, standardize)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = {}
        if path.exists():
            with np.load(path) as z:
                previous = {key: z[key] for key in z.files}
        with replaced_whole(path, ".tmp.npz") as tmp:
            np.savez(tmp, **{**previous, **fresh})
        stored.update(fresh)
    return Projection(
        {b: stored[f"{b}/mean"] for b in blocks},
        {b: np.ascontiguousarray(stored[f"{b}/basis"][:, :k]) for b in blocks},
    )
