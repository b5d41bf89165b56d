"""What a session says on the terminal as it goes: one line per run."""

from __future__ import annotations

from typing import Any

import numpy as np

from .protocol import Protocol


def run_line(protocol: Protocol, plan: Any, shown: list[Any], y: np.ndarray, effect: float | None) -> str:
    """A run's line: its condition means of the target (``y``, one per trial of ``shown``), the twin's accuracy
    on it, a closed-loop round's effect, scanner time left."""
    means = ", ".join(f"{c} {y[[t.condition == c for t in shown]].mean():+.2f}"
                      for c in dict.fromkeys(t.condition for t in shown))  # fmt: skip
    line = f"  measured {protocol.target.rois[0]}: {means}"
    if plan.predicted and len(shown) > 2:
        p = np.array([plan.predicted[t.trial] for t in shown])
        line += f"; twin r on this run {np.corrcoef(p, y)[0, 1]:+.2f}"
    if effect is not None:  # what the round compared: a one-sided round stands against baseline
        conds = {t.condition for t in shown}
        high, low = ("drive" if "drive" in conds else "baseline"), ("suppress" if "suppress" in conds else "baseline")
        compared = f"{high} - {low}"
        line += f"; {compared} {effect:+.2f} baseline SDs"
    left = sum(protocol.run_seconds(n) for _, _, n in protocol.runs()[plan.index + 1 :]) / 60
    return line + f"; {left:.1f} scanner min left"
