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
    missing: str = "raise",
) -> np.ndarray:
    """Rate (spikes/s) per trial and site in ``window`` after each onset, minus the ``baseline`` rate.

    ``bin_times`` (N,) are the start times of count bins of ``bin_width`` s; ``counts``
    is (N, sites), bins in time order. Each bin counts in proportion to the part of it
    inside the window (spikes taken as spread evenly over a bin), so windows need not
    line up with bins (a real recording's bins are not on the stimulus grid) and a
    window partly over a gap in the recording is the rate over the part recorded.
    A window that overlaps no bin raises ValueError, or with ``missing="nan"`` gives NaN.
    """
    t = np.asarray(bin_times, np.float64)
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(t):
        raise ValueError(f"counts must be (bins, sites) with {len(t)} bins, got {counts.shape}")

    def rate(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        first = np.searchsorted(t + bin_width, lo + 1e-9, "right")  # the first bin that ends after lo
        stop = np.searchsorted(t, hi - 1e-9, "left")  # past the last bin that starts before hi
        out = np.empty((len(lo), counts.shape[1]))
        for j, (a, b) in enumerate(zip(first, stop, strict=True)):
            overlap = np.clip(np.minimum(hi[j], t[a:b] + bin_width) - np.maximum(lo[j], t[a:b]), 0.0, None)
            if overlap.sum() > 1e-9:
                out[j] = (overlap / bin_width) @ counts[a:b] / overlap.sum()
            elif missing == "nan":
                out[j] = np.nan
            else:
                raise ValueError(f"a response or baseline window ({lo[j]:.3f}-{hi[j]:.3f} s) overlaps no bin; "
                                 "check onsets and windows")  # fmt: skip
        return out

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
