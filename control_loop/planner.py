"""Planning a run: which stimuli its trials show, in what order and when.

Baseline trials draw unshown candidates at random; a closed-loop or evaluation run asks its modality for
stimuli that drive or suppress the target by the twin (ranked by the phase's acquisition rule); a localizer
draws the fixed localizer materials. Every choice is seeded by (protocol seed, run index), so a resumed session
plans exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.session import SessionError
from kit.paths import shared_data

from .modality import Candidates, Modality
from .protocol import Protocol

SYNTHESIZED_IDS = 10**6  # stimulus ids from here on: stimuli made for a run (ids below: candidates' indices)


def localizer_folder() -> Path:
    """Where the localizer's stimulus lists are (Fedorenko et al. 2010, in the shared data)."""
    return shared_data() / "fedorenko2010_localizer"


@dataclass
class Trial:
    trial: int  # global trial number in the session
    stimulus_id: int
    condition: str  # baseline, drive, suppress (or control), sentences / nonwords (localizer)
    stimulus: Any  # sentence or uint8 image
    onset: float = 0.0  # from the run's first volume, s


@dataclass
class RunPlan:
    index: int  # run index within the protocol (0-based)
    phase: str
    kind: str
    round: int
    trials: list[Trial] = field(default_factory=list)
    predicted: dict[int, float] = field(default_factory=dict)  # trial -> the twin's prediction before measuring


class Planner:
    """Plans each run of a session; remembers what was shown (each candidate is shown once)."""

    def __init__(self, protocol: Protocol, modality: Modality, target: int) -> None:
        self.protocol = protocol
        self.modality = modality
        self.target = target  # the column of the target ROI
        self.candidates: Candidates | None = None
        self.shown: set[int] = set()  # stimulus ids already shown (candidates' indices, or synthesized ids)
        self.next_trial = 0
        self._chosen: list[tuple[str, Any]] = []  # the run being planned: (condition, candidate index or stimulus)

    def taken(self) -> set[Any]:
        """Candidates shown before, or chosen for the run being planned."""
        return self.shown | {i for _, i in self._chosen if isinstance(i, int | np.integer)}

    def unshown(self) -> np.ndarray:
        """The indices of the candidates not taken."""
        taken = self.taken()
        return np.array([i for i in range(len(self.candidates.items)) if i not in taken])

    def plan(self, index: int, phase_name: str, round_: int, n: int, learner: Any) -> RunPlan:
        """The run's trials. ``learner`` (a :class:`~control_loop.learning.TwinUpdater`) has the twin: made, if
        need be, to choose a closed-loop or evaluation run's stimuli; any twin there is predicts every trial."""
        from stimulus_synthesis import Goal

        phase = next(p for p in self.protocol.phases if p.name == phase_name)
        rng = np.random.default_rng([self.protocol.seed, index])
        plan = RunPlan(index, phase_name, phase.kind, round_)
        model = None
        self._chosen = chosen = []
        if phase.kind == "localizer":
            chosen += self._localizer(n, rng)
        elif phase.kind == "baseline":
            chosen += [("baseline", i) for i in self._random_unshown(n, rng)]
        else:
            model = learner.ensure()
            if model is None:
                raise SessionError(f"phase '{phase_name}' needs a twin, but no baseline was measured before it")
            for cond, k in self.protocol.condition_counts(index).items():
                if cond == "baseline":
                    chosen += [("baseline", i) for i in self._random_unshown(k, rng)]
                else:
                    acquisition = self.protocol.acquisition(phase) if phase.kind == "closed_loop" else "mean"
                    goal = Goal(cond, self.target, acquisition=acquisition, beta=phase.beta,
                                hold=self.protocol.target.hold)  # fmt: skip
                    chosen += [(cond, i) for i in self.modality.find(model, goal, k, rng, self)]
        order = rng.permutation(len(chosen)) if self.protocol.design.kind == "event" else np.arange(len(chosen))
        if self.protocol.design.kind == "blocked" and phase.kind != "localizer":
            b = self.protocol.design.block_size
            blocks = [list(range(i, min(i + b, len(chosen)))) for i in range(0, len(chosen), b)]
            order = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
        d = self.protocol.design
        for pos, j in enumerate(order):
            cond, ref = chosen[j]
            candidate = isinstance(ref, int | np.integer)
            stimulus = self.candidates.items[ref] if candidate else ref
            sid = int(ref) if candidate else SYNTHESIZED_IDS + self.next_trial + pos
            plan.trials.append(Trial(self.next_trial + pos, sid, cond, stimulus, d.rest + pos * d.iti))
        self._chosen = []
        model = learner.twin
        if model is not None:
            pred = model.predict([t.stimulus for t in plan.trials])[0][:, self.target]
            plan.predicted = {t.trial: float(v) for t, v in zip(plan.trials, pred, strict=True)}
        return plan

    def done(self, plan: RunPlan) -> None:
        """A run's trials were shown: their stimuli are not drawn again."""
        self.shown |= {t.stimulus_id for t in plan.trials}
        self.next_trial = max(t.trial for t in plan.trials) + 1

    def _random_unshown(self, n: int, rng: np.random.Generator) -> list[int]:
        free = self.unshown()
        if len(free) < n:
            raise SessionError(f"only {len(free)} unshown candidates left for {n} trials: raise stimuli.candidates")
        return [int(i) for i in rng.choice(free, n, replace=False)]

    def _localizer(self, n: int, rng: np.random.Generator) -> list[tuple[str, Any]]:
        import pandas as pd

        folder = localizer_folder()
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise SessionError(f"localizer stimuli not found at {folder} (see ../shared/data/README)")
        rows = pd.concat([pd.read_csv(f) for f in files])
        words = rows.filter(like="stim").iloc[:, 1:13].astype(str).agg(" ".join, axis=1).str.capitalize()
        kinds = rows.iloc[:, 13].astype(str).str.strip()
        sent = [w for w, c in zip(words, kinds, strict=True) if c == "S"]
        nonw = [w for w, c in zip(words, kinds, strict=True) if c == "N"]
        out: list[tuple[str, Any]] = []
        for cond in self.protocol.localizer_order(n):
            source = {"sentences": sent, "nonwords": nonw}[cond]
            out.append((cond, source[int(rng.integers(len(source)))]))
        return out
