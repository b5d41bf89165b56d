"""fMRI response estimation: canonical HRF, drift regressors, LSS trial betas, condition betas, AR(1).

Regressors are exact: a boxcar of duration d convolved with the double-gamma HRF
is a difference of the HRF's cumulative integral (gamma CDFs), evaluated at the
measured frame times. Drift is removed by projection (Frisch-Waugh-Lovell), so
least-squares-separate (LSS) betas for every trial come from 2x2 normal equations
solved for all trials at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# SPM's canonical HRF: gamma(6) response minus gamma(16)/6 undershoot, unit time 1 s.
PEAK_SHAPE, UNDERSHOOT_SHAPE, UNDERSHOOT_RATIO = 6.0, 16.0, 1.0 / 6.0
HRF_LENGTH = 32.0  # seconds after which the HRF is taken to be over


def hrf(t: np.ndarray) -> np.ndarray:
    """Canonical double-gamma HRF at times t (s), scaled so its integral is 1."""
    t = np.asarray(t, np.float64)
    h = stats.gamma.pdf(t, PEAK_SHAPE) - UNDERSHOOT_RATIO * stats.gamma.pdf(t, UNDERSHOOT_SHAPE)
    return h / (1.0 - UNDERSHOOT_RATIO)


def hrf_integral(t: np.ndarray) -> np.ndarray:
    """Integral of :func:`hrf` from 0 to t (0 for t <= 0, 1 as t grows)."""
    t = np.clip(np.asarray(t, np.float64), 0.0, None)
    H = stats.gamma.cdf(t, PEAK_SHAPE) - UNDERSHOOT_RATIO * stats.gamma.cdf(t, UNDERSHOOT_SHAPE)
    return H / (1.0 - UNDERSHOOT_RATIO)


def event_regressors(frame_times: np.ndarray, onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """(T, n) predicted BOLD of unit-amplitude boxcars; a long block plateaus at 1."""
    lag = np.asarray(frame_times, np.float64)[:, None] - np.asarray(onsets, np.float64)[None, :]
    return hrf_integral(lag) - hrf_integral(lag - np.asarray(durations, np.float64)[None, :])


def drift_regressors(
    frame_times: np.ndarray, kind: str = "cosine", cutoff: float = 128.0, order: int = 3
) -> np.ndarray:
    """(T, K) drift basis including the constant: a DCT high-pass set (SPM) or Legendre polynomials."""
    t = np.asarray(frame_times, np.float64)
    T = len(t)
    if kind == "cosine":
        span = (t[-1] - t[0]) * T / max(T - 1, 1) if T > 1 else 1.0
        k_max = int(np.floor(2 * span / cutoff))
        n = np.arange(T)
        cols = [np.ones(T)] + [np.cos(np.pi * (2 * n + 1) * k / (2 * T)) for k in range(1, min(k_max, T - 1) + 1)]
        return np.column_stack(cols)
    if kind == "polynomial":
        x = (t - t.min()) / max(np.ptp(t), 1e-12) * 2 - 1 if T > 1 else np.zeros(T)
        return np.polynomial.legendre.legvander(x, order)
    if kind == "none":
        return np.ones((T, 1))
    raise ValueError(f"drift must be 'cosine', 'polynomial' or 'none', not {kind!r}")


def _project_out(D: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    Q, _ = np.linalg.qr(D)
    return [a - Q @ (Q.T @ a) for a in arrays]


def ar1_coefficient(residuals: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation per column."""
    r = residuals - residuals.mean(0)
    den = (r * r).sum(0)
    return np.where(den > 0, (r[1:] * r[:-1]).sum(0) / np.where(den > 0, den, 1), 0.0)


def prewhiten(a: np.ndarray, rho: float) -> np.ndarray:
    """Prais-Winsten AR(1) whitening along the first axis."""
    out = np.empty_like(a, dtype=np.float64)
    out[0] = a[0] * np.sqrt(1 - rho**2)
    out[1:] = a[1:] - rho * a[:-1]
    return out


@dataclass
class Estimates:
    """Per-trial (or per-condition) response estimates per ROI."""

    labels: np.ndarray  # trial ids or condition names, (n,)
    beta: np.ndarray  # (n, R)
    se: np.ndarray  # (n, R)
    provisional: np.ndarray  # (n,) bool
    rho: np.ndarray  # (R,) AR(1) coefficient used (0 without prewhitening)


def _lss(Yt: np.ndarray, Rt: np.ndarray, dof: int) -> tuple[np.ndarray, np.ndarray]:
    """LSS on drift-free data: for each trial, [its regressor, the sum of the others]."""
    s = Rt.sum(1)
    a = (Rt * Rt).sum(0)  # r_i'r_i
    rs = Rt.T @ s  # r_i's
    b = rs - a  # r_i'(s - r_i)
    c = s @ s - 2 * rs + a  # |s - r_i|^2
    rhs1 = Rt.T @ Yt  # (n, R)
    rhs2 = (s @ Yt)[None, :] - rhs1
    det = a * c - b * b
    single = det <= 1e-10 * np.maximum(a * c, 1e-300)  # no other trial in the data: one regressor
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(single[:, None], rhs1 / a[:, None], (c[:, None] * rhs1 - b[:, None] * rhs2) / det[:, None])
        gamma = np.where(single[:, None], 0.0, (a[:, None] * rhs2 - b[:, None] * rhs1) / det[:, None])
        var_factor = np.where(single, 1.0 / a, c / det)
    rss = (Yt * Yt).sum(0)[None, :] - beta * rhs1 - gamma * rhs2
    sigma2 = np.clip(rss, 0, None) / max(dof, 1)
    return beta, np.sqrt(sigma2 * var_factor[:, None])


def lss_betas(
    frame_times: np.ndarray,
    Y: np.ndarray,
    onsets: np.ndarray,
    durations: np.ndarray,
    *,
    drift: str = "cosine",
    cutoff: float = 128.0,
    ar1: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-trial betas and standard errors (n, R) by least squares-separate, and the AR(1) rho (R,)."""
    frame_times = np.asarray(frame_times, np.float64)
    Y = np.asarray(Y, np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    R = event_regressors(frame_times, onsets, durations)
    D = drift_regressors(frame_times, drift, cutoff)
    dof = len(Y) - D.shape[1] - 2
    rho = np.zeros(Y.shape[1])
    beta = np.empty((R.shape[1], Y.shape[1]))
    se = np.empty_like(beta)
    if not ar1:
        Yt, Rt = _project_out(D, Y, R)
        beta, se = _lss(Yt, Rt, dof)
        return beta, se, rho
    # AR(1): rho from the residuals of one regressor per trial (LSA) + drift, then whiten per ROI.
    Yt, Rt = _project_out(D, Y, R)
    fit = Rt @ np.linalg.lstsq(Rt, Yt, rcond=None)[0]
    rho = np.clip(ar1_coefficient(Yt - fit), -0.99, 0.99)
    for j in range(Y.shape[1]):
        Yw, Rw, Dw = (prewhiten(a, rho[j]) for a in (Y[:, [j]], R, D))
        Yt_j, Rt_j = _project_out(Dw, Yw, Rw)
        b_j, se_j = _lss(Yt_j, Rt_j, dof)
        beta[:, j], se[:, j] = b_j[:, 0], se_j[:, 0]
    return beta, se, rho


def condition_betas(
    frame_times: np.ndarray,
    Y: np.ndarray,
    onsets: np.ndarray,
    durations: np.ndarray,
    conditions: Sequence[str],
    *,
    drift: str = "cosine",
    cutoff: float = 128.0,
    ar1: bool = False,
) -> Estimates:
    """One beta per condition (blocked designs): OLS of condition regressors plus drift."""
    Y = np.asarray(Y, np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    names = np.array(sorted(set(conditions)))
    Rall = event_regressors(frame_times, onsets, durations)
    X = np.column_stack([Rall[:, np.asarray(conditions) == c].sum(1) for c in names])
    D = drift_regressors(frame_times, drift, cutoff)
    dof = len(Y) - D.shape[1] - X.shape[1]
    rho = np.zeros(Y.shape[1])
    beta = np.empty((len(names), Y.shape[1]))
    se = np.empty_like(beta)
    if ar1:
        Yt, Xt = _project_out(D, Y, X)
        rho = np.clip(ar1_coefficient(Yt - Xt @ np.linalg.lstsq(Xt, Yt, rcond=None)[0]), -0.99, 0.99)
    for j in range(Y.shape[1]):
        Yw, Xw, Dw = (prewhiten(a, rho[j]) for a in (Y[:, [j]], X, D))
        Yt, Xt = _project_out(Dw, Yw, Xw)
        coef, *_ = np.linalg.lstsq(Xt, Yt, rcond=None)
        resid = Yt - Xt @ coef
        sigma2 = float((resid * resid).sum()) / max(dof, 1)
        beta[:, j] = coef[:, 0]
        se[:, j] = np.sqrt(sigma2 * np.diag(np.linalg.pinv(Xt.T @ Xt)))
    return Estimates(names, beta, se, np.zeros(len(names), bool), rho)


class TrialEstimator:
    """Per-trial LSS estimates that grow volume by volume (online) or over a whole run (offline).

    A trial is provisional until ``hrf_window`` seconds after its offset have been
    measured. The final online estimates equal :meth:`offline` on the same data.
    """

    def __init__(self, *, drift: str = "cosine", cutoff: float = 128.0, ar1: bool = False, hrf_window: float = 16.0):
        self.drift, self.cutoff, self.ar1, self.hrf_window = drift, cutoff, ar1, hrf_window
        self.frame_times: list[float] = []
        self.volumes: list[np.ndarray] = []
        self.trials: dict[int, tuple[float, float]] = {}

    def add_trial(self, trial: int, onset: float, duration: float) -> None:
        """Register a trial by its measured onset and duration (s, controller clock)."""
        self.trials[int(trial)] = (float(onset), float(duration))

    def add_volume(self, t: float, values: np.ndarray) -> None:
        """Add one volume's ROI values at acquisition time t."""
        if self.frame_times and t <= self.frame_times[-1]:
            raise ValueError(f"volume time {t} is not after the previous volume ({self.frame_times[-1]})")
        self.frame_times.append(float(t))
        self.volumes.append(np.asarray(values, np.float64).reshape(-1))

    def estimate(self) -> Estimates | None:
        """Estimates of every trial that has started by the last volume (None before there are enough)."""
        if not self.trials or len(self.frame_times) < 4:
            return None
        t = np.array(self.frame_times)
        ids = np.array(sorted(self.trials))
        onsets = np.array([self.trials[i][0] for i in ids])
        durations = np.array([self.trials[i][1] for i in ids])
        started = onsets < t[-1]
        if not started.any():
            return None
        D_cols = drift_regressors(t, self.drift, self.cutoff).shape[1]
        if len(t) <= D_cols + 2:
            return None
        beta, se, rho = lss_betas(t, np.array(self.volumes), onsets[started], durations[started],
                                  drift=self.drift, cutoff=self.cutoff, ar1=self.ar1)  # fmt: skip
        provisional = t[-1] < onsets[started] + durations[started] + self.hrf_window
        return Estimates(ids[started], beta, se, provisional, rho)

    @staticmethod
    def offline(
        frame_times: np.ndarray,
        Y: np.ndarray,
        trials: dict[int, tuple[float, float]],
        **options: object,
    ) -> Estimates | None:
        """Estimates over a whole run at once."""
        est = TrialEstimator(**options)  # type: ignore[arg-type]
        for trial, (onset, duration) in trials.items():
            est.add_trial(trial, onset, duration)
        est.frame_times = [float(x) for x in frame_times]
        est.volumes = [np.asarray(v, np.float64).reshape(-1) for v in np.asarray(Y)]
        return est.estimate()
