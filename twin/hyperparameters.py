"""A twin's hyperparameters: the ridge penalty of each block and target and the stacking weights, chosen by exact
leave-one-out (within runs, when responses come in runs), or borrowed from a prior twin's and rescaled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .errors import DataError, FeatureModelError
from .plan import FeaturePlan
from .ridge import DEFAULT_ALPHAS, loo_ridge
from .vision import ImagePlan

REFERENCE_BLOCK = "reference"  # the block of a reference twin's predictions (weighted first in the stacking)


@dataclass
class Hyperparameters:
    """What inner CV chose: an alpha per block and target, and the stacking weights."""

    alphas: dict[str, np.ndarray]
    stack_weights: np.ndarray  # (n_blocks, t)


def _as_2d(Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y, np.float64)
    return Y[:, None] if Y.ndim == 1 else Y


def within_runs(
    blocks: dict[str, np.ndarray], Y: np.ndarray, runs: Sequence
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Blocks and responses with each run's mean replaced by the overall mean (a fixed effect per run)."""
    Y = _as_2d(Y)
    runs = np.asarray(runs)
    if runs.shape != (len(Y),):
        raise ValueError(f"runs needs one label per response row ({len(Y)}), got shape {runs.shape}")
    _, label = np.unique(runs, return_inverse=True)
    counts = np.bincount(label)[:, None]

    def adjust(A: np.ndarray) -> np.ndarray:
        A = np.asarray(A, np.float64)
        sums = np.zeros((len(counts), A.shape[1]))
        np.add.at(sums, label, A)
        return A - (sums / counts)[label] + A.mean(0)

    return {name: adjust(X) for name, X in blocks.items()}, adjust(Y)


def select_hyperparameters(
    blocks: dict[str, np.ndarray], Y: np.ndarray, alphas: np.ndarray = DEFAULT_ALPHAS
) -> tuple[Hyperparameters, np.ndarray]:
    """Alphas by exact LOO per block and target, then NNLS stacking weights on the LOO predictions.

    A reference twin's block is weighted first (least squares, at least 0), and the other blocks
    are stacked on what it leaves: noisy data then refine the reference rather than trade it for
    blocks that fit their noise.

    Returns the hyperparameters and the stacked LOO predictions (n, t).
    """
    Y = _as_2d(Y)
    names = list(blocks)
    loos = {name: loo_ridge(blocks[name], Y, alphas) for name in names}
    P = np.stack([loos[name].best_predictions for name in names])  # (b, n, t)
    weights = np.zeros((len(names), Y.shape[1]))
    stacked = np.empty_like(Y)
    ref = names.index(REFERENCE_BLOCK) if REFERENCE_BLOCK in names else None
    others = [i for i in range(len(names)) if i != ref]
    for t in range(Y.shape[1]):
        Pt = P[:, :, t].T
        center = Pt.mean(0)
        Pc, yc = Pt - center, Y[:, t] - Y[:, t].mean()
        w = np.zeros(len(names))
        if ref is not None:  # the reference first; the other blocks explain what it leaves
            norm = Pc[:, ref] @ Pc[:, ref]
            w[ref] = max(0.0, Pc[:, ref] @ yc / norm) if norm > 0 else 0.0
            yc = yc - w[ref] * Pc[:, ref]
        w[others], _ = nnls(Pc[:, others], yc)
        if not w.any():
            w = np.full(len(names), 1.0 / len(names))
        weights[:, t] = w
        stacked[:, t] = Y[:, t].mean() + (Pt - center) @ w
    hp = Hyperparameters({name: loos[name].best_alpha for name in names}, weights)
    return hp, stacked


#: Multipliers of a prior twin's ridge penalties tried by :func:`transfer_hyperparameters`.
PRIOR_MULTIPLIERS = np.logspace(-2, 3, 21)


def transfer_hyperparameters(
    blocks: dict[str, np.ndarray], Y: np.ndarray, prior: Hyperparameters, multipliers: np.ndarray = PRIOR_MULTIPLIERS
) -> tuple[Hyperparameters, np.ndarray, np.ndarray]:
    """A prior twin's ridge penalties (their ratios across blocks) and stacking weights, scaled per
    target by the one multiplier with the least exact-LOO error on these data.

    One number per target is chosen instead of a penalty per block and the weights: from few,
    noisy responses (single fMRI trials) that choice is far less noisy. The multiplier tracks
    the data's noise relative to the prior's. A prior with one target serves every target.

    Returns the hyperparameters, the stacked LOO predictions (n, t) and the multiplier chosen per target (t,).
    """
    Y = _as_2d(Y)
    names = list(blocks)
    if set(names) != set(prior.alphas):
        raise FeatureModelError(f"the prior has feature blocks {sorted(prior.alphas)}, not {sorted(names)}")
    n_prior = prior.stack_weights.shape[1]
    if n_prior not in (1, Y.shape[1]):
        raise DataError(f"the prior has {n_prior} targets: give one, or one per response column ({Y.shape[1]})")
    row = {name: i for i, name in enumerate(prior.alphas)}  # prior.stack_weights rows follow its alphas
    multipliers = np.asarray(multipliers, np.float64)
    alphas = {name: np.empty(Y.shape[1]) for name in names}
    weights = np.empty((len(names), Y.shape[1]))
    stacked = np.empty_like(Y)
    chosen = np.empty(Y.shape[1])
    for t in range(Y.shape[1]):
        col = t if n_prior > 1 else 0
        base = {name: float(np.atleast_1d(prior.alphas[name])[col]) for name in names}
        w = np.array([prior.stack_weights[row[name], col] for name in names])
        P = np.full((len(multipliers), len(Y)), Y[:, t].mean())
        for b, name in enumerate(names):
            if w[b] > 0:
                loo = loo_ridge(blocks[name], Y[:, t], base[name] * multipliers).predictions[:, :, 0]
                P += w[b] * (loo - loo.mean(1, keepdims=True))
        best = int(((P - Y[:, t]) ** 2).mean(1).argmin())
        for name in names:
            alphas[name][t] = base[name] * multipliers[best]
        weights[:, t] = w
        stacked[:, t] = P[best]
        chosen[t] = multipliers[best]
    return Hyperparameters(alphas, weights), stacked, chosen


def check_features(
    plan: FeaturePlan | ImagePlan, model_id: str, wanted_plan: FeaturePlan | ImagePlan, wanted_model: str, what: str
) -> None:
    """Raise FeatureModelError naming ``what`` unless ``plan`` of ``model_id`` is the wanted plan and model."""
    if wanted_model != model_id:
        raise FeatureModelError(f"the {what} uses feature model '{model_id}', not '{wanted_model}'")
    if wanted_plan != plan:
        raise FeatureModelError(f"the {what} reads other features of '{wanted_model}' ({plan}, not {wanted_plan})")
