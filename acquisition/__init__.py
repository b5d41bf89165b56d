"""Acquisition: per-stimulus response estimation and the append-only HDF5 session file.

Names load on first use (lazy_loader), so the command line starts without scipy and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "ephys": ["RepeatAverage", "average_repeats", "window_rates"],
        "estimators": ["ESTIMATORS", "Estimator", "GLMEstimator", "WindowEstimator"],
        "glm": [
            "Estimates",
            "TrialEstimator",
            "condition_betas",
            "drift_regressors",
            "event_regressors",
            "hrf",
            "hrf_integral",
            "lss_betas",
        ],
        "reader": ["SessionData", "follow_session", "integrity_problems", "read_session", "read_when_ready"],
        "recovery": ["clear_status_flags"],
        "session": ["SessionError", "SessionFile", "recover", "writer_pid"],
    },
)

if TYPE_CHECKING:
    from .ephys import RepeatAverage, average_repeats, window_rates
    from .estimators import ESTIMATORS, Estimator, GLMEstimator, WindowEstimator
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
    from .reader import SessionData, follow_session, integrity_problems, read_session, read_when_ready
    from .recovery import clear_status_flags
    from .session import SessionError, SessionFile, recover, writer_pid
