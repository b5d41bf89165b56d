"""A run's per-trial responses from its samples: one estimator per kind of recording, behind one interface.

Both take the run's usable samples (times in s from its first volume, on the recording's own clock; values
per channel) and each shown trial's onset (s, same origin), and give a beta and a standard error per trial and
channel; a trial the samples do not cover gets NaN (no estimate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ephys import window_rates
from .glm import TrialEstimator


class Estimator:
    """Per-trial responses of one run."""

    kind = ""  # the samples' kind: "fmri" (one value per channel per volume) or "spikes" (counts per window)

    def estimate(self, times: np.ndarray, values: np.ndarray, onsets: Sequence[float], duration: float,
                 tr: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(beta, se), each (trials, channels), for trials at ``onsets`` lasting ``duration`` s; samples every
        ``tr`` s."""
        raise NotImplementedError


class GLMEstimator(Estimator):
    """fMRI: least-squares-separate betas of HRF-convolved trial regressors (:class:`~acquisition.TrialEstimator`,
    drift removed); a trial beyond the run's volumes gets NaN."""

    kind = "fmri"

    def estimate(self, times: np.ndarray, values: np.ndarray, onsets: Sequence[float], duration: float,
                 tr: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        channels = values.shape[1] if values.ndim == 2 else 1
        beta = np.full((len(onsets), channels), np.nan)
        se = beta.copy()
        est = TrialEstimator.offline(times, values.reshape(len(times), channels),
                                     {k: (onset, duration) for k, onset in enumerate(onsets)})  # fmt: skip
        if est is not None:
            for i, label in enumerate(est.labels):
                beta[int(label)], se[int(label)] = est.beta[i], est.se[i]
        return beta, se


class WindowEstimator(Estimator):
    """Spikes: the rate in the window of one ``tr`` after each onset (no baseline subtracted), its standard error
    from Poisson counting (sqrt(rate / window)); a trial whose window the recording misses gets NaN."""

    kind = "spikes"

    def estimate(self, times: np.ndarray, values: np.ndarray, onsets: Sequence[float], duration: float,
                 tr: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        beta = window_rates(times, values, tr, list(onsets), window=(0.0, tr), baseline=None, missing="nan")
        return beta, np.sqrt(np.maximum(beta, 0) / tr)


ESTIMATORS: dict[str, Estimator] = {e.kind: e for e in (GLMEstimator(), WindowEstimator())}
