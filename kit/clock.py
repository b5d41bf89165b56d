"""Clocks: wall time, or simulated time that runs faster and that every process of a simulation shares."""

from __future__ import annotations

import time
from collections.abc import Callable

SIM_EPOCH = 1.7e9  # simulated clocks of all processes agree: epoch + (wall - epoch) * speed


def sim_clock(speed: float = 1.0) -> Callable[[], float]:
    """A clock running ``speed`` times faster than real time, identical across processes (wall time at 1)."""
    if speed == 1.0:
        return time.time
    return lambda: SIM_EPOCH + (time.time() - SIM_EPOCH) * speed
