"""Electrophysiology response estimation: windowed spike rates per site, minus baseline, repeats averaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def window_rates(
    bin_times: np.ndarray,
    counts: np.ndarray,
    bin_width: float,
    onsets: Sequence[float],
    window: tuple[float, float] = (0.05, 0.25),
    baseline: tuple[float, float] | None = (-0.1, 0.0),
) -> np.ndarray:
    """Rate (spikes/s) per trial and site in ``window`` after each onset, minus the ``baseline`` rate.

    ``bin_times`` (N,) are the start times of count bins of ``bin_width`` s; ``counts``
    is (N, sites). A bin belongs to a window when it lies wholly inside it.
    """
    t = np.asarray(bin_times, np.float64)
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(t):
        raise ValueError(f"counts must be (bins, sites) with {len(t)} bins, got {counts.shape}")
    csum = np.vstack([np.zeros(counts.shape[1]), np.cumsum(counts, 0)])

    def rate(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        i0 = np.searchsorted(t, lo - 1e-9, "left")
        i1 = np.searchsorted(t + bin_width, hi + 1e-9, "right")
        n_bins = np.clip(i1 - i0, 0, None)
        if (n_bins == 0).any():
            raise ValueError("a response or baseline window holds no complete bin; check onsets and windows")
        return (csum[i1] - csum[i0]) / (n_bins * bin_width)[:, None]

    on = np.asarray(onsets, np.float64)
    out = rate(on + window[0], on + window[1])
    if baseline is not None:
        out = out - rate(on + baseline[0], on + baseline[1])
    return out


@dataclass
class RepeatAverage:
    """Mean response per stimulus and site, its standard error and the number of repeats."""

    stimulus_ids: np.ndarray
    mean: np.ndarray  # (stimuli, sites)
    se: np.ndarray  # (stimuli, sites); NaN with one repeat
    n: np.ndarray  # (stimuli,)


def average_repeats(stimulus_ids: Sequence[int], rates: np.ndarray) -> RepeatAverage:
    """Average trial rates over repeats of each stimulus."""
    ids = np.asarray(stimulus_ids)
    rates = np.asarray(rates, np.float64)
    uniq, inverse, n = np.unique(ids, return_inverse=True, return_counts=True)
    mean = np.zeros((len(uniq), rates.shape[1]))
    np.add.at(mean, inverse, rates)
    mean /= n[:, None]
    sq = np.zeros_like(mean)
    np.add.at(sq, inverse, (rates - mean[inverse]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(sq / (n[:, None] - 1))
        se = np.where(n[:, None] > 1, sd / np.sqrt(n[:, None]), np.nan)
    return RepeatAverage(uniq, mean, se, n)
