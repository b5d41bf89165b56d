"""Running a run: schedule it on the presenter, start the rig, record every volume, trigger and presentation as
it comes, and hand back what the run measured. Peers that restart mid-run are told to take the run up again."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acquisition.session import SessionError
from hardware.protocol import PeerRestarted, Presented, Ready, Refused, Sample, Trigger, Truth, typed

from .planner import RunPlan
from .protocol import Protocol


@dataclass
class RunState:
    """What a run in progress has received: volumes (times on the rig's clock from its volume 0), onsets."""

    run: int
    n_volumes: int
    trials: list[dict]  # the schedule sent to the presenter
    received: set[int] = field(default_factory=set)  # volume numbers recorded
    triggers: set[int] = field(default_factory=set)  # ... and their triggers
    rel_times: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    rig_t0: float | None = None  # volume 0's time, rig clock
    t0: float = 0.0  # ... and on the controller's clock
    presented: dict[int, float] = field(default_factory=dict)  # trial -> measured onset (controller clock)
    refused: dict[int, str] = field(default_factory=dict)
    late: dict[int, float] = field(default_factory=dict)  # trial -> lateness the presenter measured
    truth: dict[int, list[float]] = field(default_factory=dict)  # a simulated rig's: trial -> true response
    ready: bool = False  # the presenter has checked and prepared the schedule

    @property
    def last_volume(self) -> int:
        """The highest volume number recorded (-1 before the first)."""
        return max(self.received, default=-1)

    @property
    def volumes_done(self) -> bool:
        """Every volume came, or the last one did (volumes come in order: any missing ones will not)."""
        return len(self.received) >= self.n_volumes or self.n_volumes - 1 in self.received

    def usable(self) -> tuple[np.ndarray, np.ndarray]:
        """The times (rig clock, from volume 0) and values of the volumes with every channel a number."""
        if not self.values:
            return np.zeros(0), np.zeros((0, 0))
        values = np.array(self.values)
        ok = ~np.isnan(values).any(axis=1)
        return np.array(self.rel_times)[ok], values[ok]


def start_disagreement(measured: dict[int, float], scheduled: dict[int, float], tr: float) -> float | None:
    """How far the presenter's measured onsets lie from where the rig's first volume puts them (median over
    trials, s; positive: later), when that is more than a quarter of a TR (and 0.1 s); else None. The
    estimates assume the two coincide: they do when the presenter's trigger and the rig's first volume are
    the same volume of the same scan."""
    lags = [measured[t] - scheduled[t] for t in scheduled if t in measured]
    lag = float(np.median(lags)) if lags else 0.0
    return lag if abs(lag) > max(0.1, tr / 4) else None


def ranges(numbers: list[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    out: list[str] = []
    for k in numbers:
        if out and int(out[-1].split("-")[-1]) == k - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ", ".join(out)


class RunExecutor:
    """Runs a planned run against the rig and the presenter, recording what they send in the session file."""

    def __init__(self, protocol: Protocol, rig: Any, presenter: Any, session: Any, modality: Any, rois: list[str],
                 target: int, *, check: Callable[[], None], log: Callable[[str, str], None]) -> None:  # fmt: skip
        """``check``: raises to end the run (Ctrl-C, a peer that cannot go on); ``log``: a link event for the
        terminal and the session file's log."""
        self.protocol = protocol
        self.rig, self.presenter = rig, presenter
        self.session = session
        self.modality = modality
        self.rois, self.target = rois, target
        self.check, self.log = check, log

    def execute(self, plan: RunPlan, run: int) -> RunState:
        """Run ``plan`` under wire run number ``run``; returns what it received once every volume and every
        trial's presentation (or refusal) came."""
        d = self.protocol.design
        n_volumes = math.ceil(self.protocol.run_seconds(len(plan.trials)) / d.tr) + 1
        trials = [{"trial": t.trial, "stimulus_id": t.stimulus_id, "onset": t.onset, "duration": d.trial_duration,
                   "condition": t.condition, **self.modality.wire(t.stimulus_id, t.stimulus)}
                  for t in plan.trials]  # fmt: skip
        r = RunState(run, n_volumes, trials)
        self.presenter.send_reliable("schedule", run=run, trials=trials)
        self._wait_ready(r)
        self.start_rig(r)
        start = {"index": plan.index, "run": run, "kind": plan.kind, "phase": plan.phase, "trials": len(trials)}
        self.session.log("run-start", json.dumps({**start, "volumes": n_volumes}))
        deadline = time.monotonic() + 120 + n_volumes * d.tr
        counted = 0
        heard = self.rig.clock()  # when the last volume came (or the run began), on the recording's clock
        with self._live_view(run, n_volumes) as live:  # closed on any exit, Ctrl-C included
            while not r.volumes_done or len(r.presented) + len(r.refused) < len(trials):
                self.check()
                heard = self._silence(r, counted, heard)
                if time.monotonic() > deadline:
                    state = {c: "connected" if c.up else "not answering" for c in (self.rig, self.presenter)}
                    raise SessionError(
                        f"run {run} did not finish: {len(r.received)} of {n_volumes} volumes came from the rig "
                        f"({state[self.rig]}) and {len(r.presented) + len(r.refused)} of {len(trials)} trials "
                        f"from the presenter ({state[self.presenter]})"
                    )
                if len(r.received) > counted:
                    live.update(len(r.received) - counted)
                    counted = len(r.received)
                    live.set_postfix_str(f"{len(r.presented)}/{len(trials)} shown, {len(r.refused)} refused, "
                                         f"{self.protocol.target.rois[0]} {r.values[-1][self.target]:+.2f}, "
                                         f"{(n_volumes - 1 - r.last_volume) * d.tr:.0f} s left",
                                         refresh=False)  # fmt: skip
                for msg in self.rig.poll(0.01):  # (a sample with values that are not numbers: its channels in
                    self._from_rig(r, typed(msg), msg.get("missing", []))  # "missing", added by the client)
                for msg in self.presenter.poll(0.0):
                    self._from_presenter(r, typed(msg))
        if missed := sorted(set(range(n_volumes)) - r.received):
            self.log("missing", f"run {run}: {len(missed)} volume(s) never came from the rig: {ranges(missed)}")
        return r

    def _silence(self, r: RunState, counted: int, heard: float) -> float:
        """When the rig last sent a volume of run ``r`` (``heard``, updated); raises SessionError (the session
        pauses) once none has come for the protocol's ``recording.pause_after`` seconds."""
        pause = self.protocol.recording.pause_after
        now = self.rig.clock()
        if len(r.received) > counted or pause is None or r.volumes_done:
            return now
        if now - heard > pause:
            after = f"after volume {r.last_volume}" if r.received else "before its first volume"
            self.log("silence", f"run {r.run}: no volume from the rig for {now - heard:.1f} s {after} "
                                f"(recording.pause_after is {pause:g} s)")  # fmt: skip
            raise SessionError(f"run {r.run}: no volume came from the rig for {pause:g} s (recording.pause_after) "
                               f"{after}: the session pauses; the run is repeated on resume")  # fmt: skip
        return heard

    def _wait_ready(self, r: RunState, timeout: float = 300.0) -> None:
        """Until the presenter has checked and prepared the run's stimuli (a presenter whose hello says it will
        tell), so that its trigger does not find it busy: trials shown late."""
        deadline = time.monotonic() + timeout
        while self.presenter.peer_ready and not r.ready:
            self.check()
            if time.monotonic() > deadline:
                raise SessionError(
                    f"run {r.run}: the presenter did not say its {len(r.trials)} trials were ready "
                    f"within {timeout:g} s ({'connected' if self.presenter.up else 'not answering'})"
                )
            for msg in self.presenter.poll(0.01):
                self._from_presenter(r, typed(msg))
            self.rig.poll(0.0)  # (the rig's link kept: nothing of this run comes before its start)

    def start_rig(self, r: RunState, first_volume: int = 0) -> None:
        """Tell the rig the run's events, then start it: from its beginning, or taken up again from
        ``first_volume`` (keeping its volume 0's time) by a rig that restarted."""
        for e in r.trials:  # the stimulus itself only to a rig that asks for it (a simulated subject)
            content = {"text": e.get("text", ""), "image": e.get("image", b"")} if self.rig.peer_content else {}
            self.rig.send_reliable("event", run=r.run, trial=e["trial"], stimulus_id=e["stimulus_id"],
                                   onset=e["onset"], duration=e["duration"], **content)  # fmt: skip
        again = {"first_volume": first_volume, "origin": r.rig_t0} if first_volume else {}
        self.rig.send_reliable("start", run=r.run, tr=self.protocol.design.tr, n_volumes=r.n_volumes,
                               **again)  # after the events: see the rig  # fmt: skip

    def _from_rig(self, r: RunState, msg: Any, missing: list[str]) -> None:
        """One message from the rig during run ``r``: its volumes are recorded; a simulated subject's true
        responses kept; a rig that restarted without its journal is told to take the run up again."""
        match msg:
            case PeerRestarted():
                self._rig_restarted(r)
            case Truth(run=r.run):
                r.truth[msg.trial] = list(msg.values)
            case Trigger(run=r.run) | Sample(run=r.run):
                self._volume(r, msg, missing)

    def _volume(self, r: RunState, msg: Trigger | Sample, missing: list[str]) -> None:
        if r.rig_t0 is None:  # the run's first volume (in-order delivery: it comes first)
            r.rig_t0 = msg.time - msg.volume * self.protocol.design.tr  # (volume 0: its own time)
            # The run's clock origin: where its first volume lies on the controller's clock. One mapping per run
            # keeps the run's samples evenly spaced when the offset estimate moves.
            r.t0 = self.rig.to_local(r.rig_t0)
            if r.t0 <= self.session.last_sample_time:  # only when the clock estimate jumped between runs
                last = self.session.last_sample_time
                self.log("timing", f"run {r.run}: its first volume maps to {r.t0:.3f}, not after the previous "
                                   f"run's last sample ({last:.3f}): moved just after it")  # fmt: skip
                r.t0 = self.session.last_sample_time + 1e-3
            self._relay_trigger(r)
        local = r.t0 + (msg.time - r.rig_t0)
        if isinstance(msg, Trigger):
            if msg.volume not in r.triggers:  # (a rig taking a run up again may repeat one)
                r.triggers.add(msg.volume)
                self.session.add_trigger(local, msg.volume, r.run)
            return
        if len(msg.values) != len(self.rois):
            raise SessionError(f"run {r.run}: the rig sends {len(msg.values)} values per sample, but this session "
                               f"records {len(self.rois)} ({self.rois}): name the rig's channels, in order "
                               "(session run --rois)")  # fmt: skip
        if msg.volume in r.received:
            self.log("duplicate", f"run {r.run}: volume {msg.volume} came again: not recorded twice")
            return
        if local <= self.session.last_sample_time:
            self.log("timing", f"run {r.run}: volume {msg.volume} is timed {local - r.t0:.3f} s into the run, not "
                               "after the volume before it: not recorded")  # fmt: skip
            return
        values = np.asarray(msg.values, np.float64)
        if missing:  # values that are not numbers (the client logged them): the volume is missing
            values = np.where(np.isfinite(values), values, np.nan)
            self.session.log("missing-volume", json.dumps({"run": r.run, "volume": msg.volume,
                                                           "channels": missing}))  # fmt: skip
        r.received.add(msg.volume)
        r.rel_times.append(msg.time - r.rig_t0)  # on the rig's own clock: no sync error
        r.values.append(values)
        self.session.add_samples(local, values, r.run, confounds=[msg.confounds] if msg.confounds else None)

    def _rig_restarted(self, r: RunState) -> None:
        """The rig came back as a new process that knows nothing of the run: start it again from the next
        volume (with its volume 0's time), or from its beginning if none had come."""
        nxt = r.last_volume + 1
        if r.volumes_done:
            return
        if r.rig_t0 is None:
            self.log("rig-restart", f"run {r.run}: the rig restarted without its journal before the run's first "
                                    "volume: the run is started again")  # fmt: skip
            self.start_rig(r)
            return
        self.log("rig-restart", f"run {r.run}: the rig restarted without its journal after volume {r.last_volume} "
                                f"({len(r.received)} of {r.n_volumes} recorded): it takes the run up again from "
                                f"volume {nxt}; volumes it cannot send are missing")  # fmt: skip
        self.start_rig(r, first_volume=nxt)

    def _from_presenter(self, r: RunState, msg: Any) -> None:
        match msg:
            case PeerRestarted():  # a new presenter process: the run's schedule (what is left of it) again
                left = [t for t in r.trials if t["trial"] not in r.presented and t["trial"] not in r.refused]
                self.log("presenter-restart", f"run {r.run}: the presenter restarted without its journal: "
                                              f"{len(left)} trial(s) of the run scheduled again")  # fmt: skip
                self.presenter.send_reliable("schedule", run=r.run, trials=left)
                if r.rig_t0 is not None:
                    self._relay_trigger(r)
            case Presented(run=r.run):
                r.presented[msg.trial] = self.presenter.to_local(msg.onset)
                r.late[msg.trial] = msg.onset - msg.scheduled if msg.scheduled else 0.0
            case Ready(run=r.run):
                r.ready = True
            case Refused(run=r.run):
                r.refused[msg.trial] = msg.reason
                self.session.log("refused", f"trial {msg.trial}: {msg.reason}")

    def _relay_trigger(self, r: RunState) -> None:
        """The rig's first volume starts the presenter's schedule, at that instant on the presenter's clock."""
        self.presenter.send_reliable("trigger", run=r.run, volume=0, time=r.rig_t0,
                                     receiver_time=self.presenter.to_remote(r.t0))  # fmt: skip

    def _live_view(self, run: int, n_volumes: int) -> Any:
        """A live bar over the run's volumes (on a terminal only): trials shown, the target's signal, time left."""
        from tqdm.auto import tqdm

        return tqdm(total=n_volumes, desc=f"  run {run} volumes", unit="vol", leave=False, disable=None)
