"""Acquisition: per-stimulus response estimation and the append-only HDF5 session file."""

from .ephys import RepeatAverage, average_repeats, window_rates
from .glm import (
    Estimates,
    TrialEstimator,
    condition_betas,
    drift_regressors,
    event_regressors,
    hrf,
    hrf_integral,
    lss_betas,
)
from .reader import SessionData, read_session
from .recovery import clear_status_flags
from .session import SessionError, SessionFile, recover

__all__ = [
    "Estimates",
    "RepeatAverage",
    "SessionData",
    "SessionError",
    "SessionFile",
    "TrialEstimator",
    "average_repeats",
    "clear_status_flags",
    "condition_betas",
    "drift_regressors",
    "event_regressors",
    "hrf",
    "hrf_integral",
    "lss_betas",
    "read_session",
    "recover",
    "window_rates",
]
