"""Synthetic fMRI runs with known per-trial amplitudes (HRF, slow drift, AR(1) noise) for tests."""

from __future__ import annotations

import numpy as np

from acquisition import event_regressors


def simulate_run(rng, snr: float, n_trials: int = 60, tr: float = 2.0, rho: float = 0.4, duration: float = 2.0):
    """Frame times, (T, 1) data, onsets, durations and the true amplitudes; trials every 6-8 s."""
    onsets = np.cumsum(rng.uniform(6, 8, n_trials)) + 10
    T = int((onsets[-1] + 30) / tr)
    t = np.arange(T) * tr
    amp = rng.normal(1.0, 0.5, n_trials)
    durations = np.full(n_trials, duration)
    signal = event_regressors(t, onsets, durations) @ amp
    drift = 0.5 * np.sin(2 * np.pi * t / 400) + 0.002 * t
    e = np.zeros(T)
    w = rng.normal(size=T)
    for i in range(T):
        e[i] = (rho * e[i - 1] if i else 0.0) + w[i]
    noise = e * np.std(signal) / snr / np.std(e)
    return t, (signal + drift + noise)[:, None], onsets, durations, amp
