"""Stopping rules: max_trials, and target_effect (the last closed-loop run's measured drive - suppress in
baseline SDs); max_minutes is checked by the runner between runs."""

from __future__ import annotations

import numpy as np

from .protocol import Protocol, condition_name


class StoppingRules:
    """What the rules need (baseline responses, the last closed-loop effect) and whether one is met."""

    def __init__(self, protocol: Protocol, target: int) -> None:
        self.protocol = protocol
        self.target = target
        self.baseline_y: list[float] = []  # measured target responses to baseline trials
        self.effect: float | None = None  # last closed-loop run's drive - suppress, in baseline SDs

    def track(self, kind: str, conditions: list[str], beta: np.ndarray) -> float | None:
        """Keep a run's measured responses; returns the effect of a closed-loop run that has one."""
        y, cond = np.asarray(beta)[:, self.target], np.array([condition_name(c) for c in conditions])
        if kind == "baseline":
            self.baseline_y.extend(y.tolist())
        elif kind == "closed_loop" and len(self.baseline_y) > 2 and np.isin(["drive", "suppress"], cond).any():
            # drive - suppress; a one-sided round is measured against its own baseline trials (the same
            # run's offset), or without any, against the baseline runs' mean
            base = float(y[cond == "baseline"].mean() if (cond == "baseline").sum() >= 2 else np.mean(self.baseline_y))
            high = y[cond == "drive"].mean() if (cond == "drive").any() else base
            low = y[cond == "suppress"].mean() if (cond == "suppress").any() else base
            self.effect = float((high - low) / np.std(self.baseline_y, ddof=1))
            return self.effect
        return None

    def reason(self, phase: str, trials_so_far: int) -> str | None:
        """Why a run of ``phase`` should not happen (a rule met), or None to run it."""
        st = self.protocol.stopping
        kind = next(p.kind for p in self.protocol.phases if p.name == phase)
        if st.max_trials is not None and trials_so_far >= st.max_trials:
            return f"max_trials {st.max_trials} reached"
        if st.target_effect is not None and kind == "closed_loop" and self.effect is not None:
            if self.effect >= st.target_effect:
                return f"target_effect {st.target_effect:g} reached ({self.effect:.2f} baseline SDs)"
        return None
