"""Tuning functions: simulated recording sites' evoked rates (spikes/s) for images, the subjects of the simulated
electrophysiology rig."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

GABOR_SITES = 16  # the default tuning's sites
V4_SITES = 8


def site_names(n_sites: int) -> tuple[str, ...]:
    """What a tuning function calls its sites: site0, site1, ..."""
    return tuple(f"site{i}" for i in range(n_sites))


def gabor_tuning(n_sites: int = GABOR_SITES, size: int = 64, seed: int = 7) -> Callable:
    """A default ephys subject: V1-like sites, each the rectified response of one random Gabor filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    filters = []
    for _ in range(n_sites):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        cx, cy, sigma = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.5)
        xr = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        filters.append(env * np.cos(2 * np.pi * freq * xr / 2))
    bank = np.stack(filters).reshape(n_sites, -1)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)

    def tuning(stimuli: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        rows = []
        for s in stimuli:
            if isinstance(s, str):
                rows.append(np.full(n_sites, 10.0))
                continue
            gray = np.asarray(Image.fromarray(np.asarray(s, np.uint8)).convert("L").resize((size, size)), float)
            gray = (gray - gray.mean()) / 255.0
            rows.append(60.0 * np.maximum(bank @ gray.ravel(), 0) / np.sqrt(size))
        return np.array(rows)

    tuning.rois = site_names(n_sites)
    return tuning


def v4_tuning(n_sites: int = V4_SITES, seed: int = 11, layer: str = "_blocks.5") -> Callable:
    """V4-like sites: a sparse random readout of one EfficientNet-Lite0 layer at one place, softplus output.

    Each site pools 4 random channels of ``layer`` (14 x 14 map) under a Gaussian
    window at a random place near the centre; the drive is standardized on a fixed
    set of natural crops and turned into a rate of 20 softplus(1.5 z - 1) spikes/s.
    Not the twin: other layer, no spatial grid, a nonlinearity, Poisson noise in the rig.
    """
    from twin.vision import ImageFeatures, ImagePlan

    features = ImageFeatures(ImagePlan(model="efficientnet-lite0", layers=(layer,), grid=14))  # the whole 14x14 map
    rng = np.random.default_rng(seed)
    grid = np.arange(14)
    weights = np.zeros((n_sites, 80, 14, 14))
    for i in range(n_sites):
        cy, cx = rng.uniform(4, 10, 2)
        window = np.exp(-((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2) / (2 * 1.5**2))
        for c in rng.choice(80, 4, replace=False):
            weights[i, c] = rng.choice([1.0, 1.0, -0.5]) * window / window.sum()
    w = weights.reshape(n_sites, -1)

    def drive(images: Sequence[np.ndarray]) -> np.ndarray:
        return features(images)[layer] @ w.T

    # Standardize on a fixed natural set (crops of a few sample photos), so rates are comparable across sites.
    import skimage.data

    ref_imgs = []
    for name in ("astronaut", "chelsea", "coffee", "camera", "coins", "grass"):
        a = np.asarray(getattr(skimage.data, name)())
        a = np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]
        h, wd = a.shape[:2]
        for _ in range(8):
            s = int(rng.uniform(0.3, 1.0) * min(h, wd))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, wd - s + 1)
            ref_imgs.append(np.ascontiguousarray(a[y : y + s, x : x + s]))
    ref = drive(ref_imgs)
    mu, sd = ref.mean(0), ref.std(0) + 1e-9

    def tuning(stimuli: Sequence[Any]) -> np.ndarray:
        images = [s for s in stimuli if not isinstance(s, str)]
        rates = np.full((len(stimuli), n_sites), 5.0)
        if images:
            z = (drive(images) - mu) / sd
            idx = [i for i, s in enumerate(stimuli) if not isinstance(s, str)]
            rates[idx] = 20.0 * np.logaddexp(0, 1.5 * z - 1.0)
        return rates

    tuning.rois = site_names(n_sites)
    return tuning
