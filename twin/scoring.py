"""Scores of an encoding model: cross-validation folds, Pearson r with bootstrap CI, noise ceilings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import DataError


def kfold(n: int, k: int = 10, seed: int = 0, groups: Sequence | None = None) -> list[np.ndarray]:
    """Test-index arrays of K folds; with ``groups``, no group is split across folds."""
    if n < 2:
        raise DataError("cross-validation needs at least 2 rows")
    rng = np.random.default_rng(seed)
    if groups is None:
        k = min(k, n)
        return [np.sort(f) for f in np.array_split(rng.permutation(n), k)]
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    k = min(k, len(labels))
    if k < 2:
        raise DataError(f"grouped cross-validation needs at least 2 groups, got {len(labels)}")
    # Largest groups first, each to the currently smallest fold (balanced, seeded tie-break).
    sizes = np.bincount(inverse)
    order = sorted(rng.permutation(len(labels)), key=lambda g: -sizes[g])
    fold_of = np.empty(len(labels), int)
    load = np.zeros(k, int)
    for g in order:
        f = int(load.argmin())
        fold_of[g] = f
        load[f] += sizes[g]
    return [np.flatnonzero(fold_of[inverse] == f) for f in range(k)]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else 0.0


@dataclass
class Score:
    """Pearson r of held-out predictions with a bootstrap confidence interval."""

    r: float
    ci_low: float
    ci_high: float
    n: int
    noise_ceiling: float | None = None

    @property
    def normalized(self) -> float | None:
        """r divided by the noise ceiling, when one is known."""
        return self.r / self.noise_ceiling if self.noise_ceiling else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["normalized"] = self.normalized
        return d

    def __str__(self) -> str:
        text = f"r = {self.r:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        if self.noise_ceiling:
            text += f", ceiling {self.noise_ceiling:.3f}, normalized {self.normalized:.3f}"
        return text


def score(
    predicted: np.ndarray,
    measured: np.ndarray,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    noise_ceiling: float | None = None,
) -> Score:
    """Pearson r with a percentile bootstrap CI over stimuli."""
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    n = len(p)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    P, M = p[idx], m[idx]
    P = P - P.mean(1, keepdims=True)
    M = M - M.mean(1, keepdims=True)
    den = np.sqrt((P * P).sum(1) * (M * M).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.where(den > 0, (P * M).sum(1) / den, 0.0)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return Score(pearson(p, m), float(lo), float(hi), n, noise_ceiling)


def split_half_ceiling(repeats: list[np.ndarray], n_splits: int = 100, seed: int = 0) -> float:
    """Split-half noise ceiling with Spearman-Brown correction.

    ``repeats[i]`` holds the repeated measurements of stimulus i (at least 2 each).
    Returns the expected correlation of the full-repeat mean with the true response's
    best possible prediction (sqrt of the Spearman-Brown reliability).
    """
    if any(len(r) < 2 for r in repeats):
        raise ValueError("a split-half noise ceiling needs at least 2 repeats of every stimulus")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        a, b = [], []
        for r in repeats:
            perm = rng.permutation(len(r))
            half = len(r) // 2
            a.append(np.mean(r[perm[:half]]))
            b.append(np.mean(r[perm[half:]]))
        rs.append(pearson(np.array(a), np.array(b)))
    r_half = float(np.mean(rs))
    reliability = 2 * r_half / (1 + r_half) if r_half > 0 else 0.0
    return float(np.sqrt(max(reliability, 0.0)))


def ncsnr(repeats: list[np.ndarray]) -> float:
    """Noise-ceiling SNR (Allen et al. 2022): sd of the signal over sd of the noise."""
    noise_var = float(np.mean([np.var(r, ddof=1) for r in repeats if len(r) > 1]))
    means = np.array([np.mean(r) for r in repeats])
    n_rep = float(np.mean([len(r) for r in repeats]))
    signal_var = max(float(np.var(means, ddof=1)) - noise_var / n_rep, 0.0)
    return float(np.sqrt(signal_var / noise_var)) if noise_var > 0 else float("inf")


def nsd_ceiling(snr: float, n_trials: float) -> float:
    """NSD noise ceiling for the mean of ``n_trials`` repeats, as a correlation: sqrt(snr^2/(snr^2+1/n))."""
    return float(np.sqrt(snr**2 / (snr**2 + 1.0 / n_trials)))
