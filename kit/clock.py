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


def paired_reading(outer: Callable[[], float], inner: Callable[[], float], samples: int = 50) -> tuple[float, float]:
    """Two clocks read at one instant, ``(outer, inner)``: from the ``samples`` tries, the one whose two ``outer``
    readings bracket its ``inner`` reading most tightly (a single try is off by however long the process was
    preempted between its calls)."""
    best, pair = float("inf"), (0.0, 0.0)
    for _ in range(samples):
        before = outer()
        mid = inner()
        after = outer()
        if after - before < best:
            best, pair = after - before, ((before + after) / 2, mid)
    return pair
