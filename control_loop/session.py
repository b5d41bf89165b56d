"""The session runner: propose -> present -> measure -> refine the twin -> propose again.

The controller talks to a rig and a presenter over ZeroMQ (real ones, or the
simulated rig and null presenter as separate processes). The runner orchestrates;
each step is another module's: the planner chooses a run's trials
(``planner``, ranking by an acquisition rule), the executor runs it against the
peers and records what they send (``executor``), the modality's estimator turns
the run's samples into per-trial responses (``acquisition.estimators``), the
runner records them with the run, the twin updater refines the twin
(``learning``), and the stopping rules decide whether the next run happens
(``stopping``).

Resuming a killed session: a run's trials (events and estimates) are written
together at the end of the run, so a run is either complete in the file or
repeated (under a new run number; the interrupted run's samples stay recorded).
The twin is rebuilt from the file's estimates in run order and every choice is
seeded by (protocol seed, run index), so a resumed session continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from acquisition import SessionFile, integrity_problems, read_session
from acquisition.session import SessionError
from hardware import PeerClient

from .executor import RunExecutor, RunState, start_disagreement
from .learning import TwinUpdater
from .modality import modality_for
from .planner import RunPlan, Trial
from .progress import run_line
from .protocol import Protocol, load_prior, load_reference
from .stopping import StoppingRules

REFERENCE_FILE = "reference_twin.h5"  # the attachment holding the protocol's reference twin
PRIOR_FILE = "prior.json"  # the attachment holding the protocol's prior (its hyperparameters)

log = logging.getLogger(__name__)


def _kept(data: Any, path: Path, name: str, field: str) -> bytes:
    if name not in data.attachments:
        raise SessionError(f"session file '{path}' names a {field} but holds no copy of it")
    return data.attachments[name]


def _kept_reference(data: Any, path: Path) -> Any:
    """The reference twin kept in a session file."""
    from twin import Twin, TwinError

    try:
        return Twin.from_bytes(_kept(data, path, REFERENCE_FILE, "twin.reference"), f"{path}:{REFERENCE_FILE}")
    except TwinError as exc:
        raise SessionError(f"session file '{path}': its copy of the reference twin is damaged: {exc}") from None


def _kept_prior(data: Any, path: Path) -> Any:
    """The prior kept in a session file (its hyperparameters for the session's ROIs)."""
    from twin import Prior, TwinError

    try:
        return Prior.from_json(_kept(data, path, PRIOR_FILE, "twin.prior").decode("utf-8"), f"{path}:{PRIOR_FILE}")
    except (TwinError, UnicodeDecodeError) as exc:
        raise SessionError(f"session file '{path}': its copy of the prior is damaged: {exc}") from None


class _Interrupts:
    """While entered (in the main thread, where Ctrl-C has Python's default handler), Ctrl-C raises
    KeyboardInterrupt as usual and is also remembered: one raised while Python runs a finalizer, which
    ignores exceptions, is raised again at the runner's next :meth:`check` instead of being lost. SIGTERM (what
    `systemctl stop` and container runtimes send) does the same: it pauses the session, as Ctrl-C does."""

    def __init__(self) -> None:
        self.pending = False
        self._installed = False
        self._term: Any = None  # SIGTERM's handler before, when this replaced it

    def __enter__(self) -> _Interrupts:
        self.pending = False
        if threading.current_thread() is threading.main_thread():
            self._installed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            if self._installed:
                signal.signal(signal.SIGINT, self._handle)
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._term = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._term is not None:
            signal.signal(signal.SIGTERM, self._term)
            self._term = None


class SessionRunner:
    """Runs a protocol against a rig and a presenter, writing one session file."""

    def __init__(self, protocol: Protocol, path: str | Path, rig: str, presenter: str, *,
                 clock: Callable[[], float] = time.time, features: Any = None, rois: list[str] | None = None,
                 progress: Callable[[str], None] | None = None, heartbeat: float = 0.3,
                 peer_timeout: float | None = None, peers: dict | None = None,
                 watch: Callable[[], str | None] | None = None) -> None:  # fmt: skip
        """``heartbeat``: seconds between pings to each peer; ``peer_timeout``: seconds of silence before a peer
        is taken for lost (default: hardware.peer.DEFAULT_PEER_TIMEOUT); ``watch``: for peers this process
        started, a check that says (in a message) that one has exited."""
        self.protocol = protocol
        self.modality = modality_for(protocol)
        self.peers = peers or {"mode": "live", "rig": rig, "presenter": presenter}
        self.path = Path(path)
        self.clock = clock
        self.session: SessionFile | None = None
        self.progress = progress or (lambda msg: log.info(msg))
        links = {"heartbeat": heartbeat, "timeout": peer_timeout, "clock": clock, "on_log": self._peer_log}
        self.rig = PeerClient(rig, **links)
        self.presenter = PeerClient(presenter, **links)
        self.features = features
        self._rois_given = rois is not None  # else the rig's own names for its channels, if it says them
        self._set_rois(rois or list(protocol.target.rois))
        self._interrupts = _Interrupts()
        self.learner: TwinUpdater | None = None
        self.planner: Any = None
        self.rules: StoppingRules | None = None  # made once the rig's channels fix the target's column
        self.next_run = 1
        self._stopped: set[str] = set()
        self._watch = watch
        self._watched = 0.0  # when the watch last ran
        self.runs_started = 0  # by this process

    @property
    def twin(self) -> Any:
        """The session's twin (None before one is fit)."""
        return self.learner.twin if self.learner is not None else None

    def _check_peers(self) -> None:
        """Fail, saying why, when a peer cannot work with this controller (another protocol version), or one
        this process started has exited (looked at every 0.2 s at most)."""
        for client in (self.rig, self.presenter):
            if client.fatal is not None:
                raise SessionError(client.fatal)
        if self._watch is None or time.monotonic() - self._watched < 0.2:
            return
        self._watched = time.monotonic()
        if (message := self._watch()) is not None:
            raise SessionError(message)

    def _set_rois(self, rois: list[str]) -> None:
        missing = [r for r in self.protocol.target.rois if r not in rois]
        if missing:
            raise SessionError(f"target.rois: {missing} not measured by the rig (it measures {rois})")
        self.rois = list(rois)
        self.target = self.rois.index(self.protocol.target.rois[0])

    def _match_channels(self) -> None:
        """Take the ROIs from the channels the rig announced, or fail naming both before anything is written."""
        channels = self.rig.peer_channels
        if not channels or channels == self.rois:
            return  # a rig that does not say: the ROIs given (or the protocol's) stand
        if self._rois_given:
            raise SessionError(
                f"the rig measures {channels}, but this session records {self.rois}: "
                "name the rig's channels, in order (session run --rois), or connect the right rig"
            )
        self._set_rois(channels)

    def _peer_log(self, kind: str, text: str) -> None:
        """A link event (outage, reconnection): on the terminal and in the session file's log."""
        self.progress(f"  {text}")
        if self.session is not None:
            self.session.log(kind, text)

    # ----- opening, resuming -----
    def _open(self) -> list[dict]:
        """Create or resume the session file; returns the completed runs' records."""
        p = self.protocol
        reference = prior = None
        if not self.path.exists():
            loaded = load_reference(p, self.features, self.rois)
            prior = load_prior(p, self.features, self.rois)
            attachments = {}
            if loaded is not None:  # the file's bytes as read, so the copy is the twin in use
                reference, attachments[REFERENCE_FILE] = loaded
            if prior is not None:  # as read (a twin file's hyperparameters), for the session's ROIs
                attachments[PRIOR_FILE] = prior.to_json().encode()
            self.session = SessionFile.create(self.path, self.rois, protocol=p.model_dump_json(),
                                              modality=self.modality.recording, seeds={"protocol": p.seed},
                                              peers=self.peers, attachments=attachments or None,
                                              simulated=self.rig.peer_simulated,
                                              confounds=self.rig.peer_confounds)  # fmt: skip
            self.learner = TwinUpdater(p, self.modality, self.rois, self.features, reference, prior)
            if reference is not None:
                self.session.log("reference", f"the twin starts from {p.twin.reference} (targets {reference.targets}, "
                                              f"{reference.n_train} training stimuli)")  # fmt: skip
            if prior is not None:
                self.session.log("prior", f"twins reuse the hyperparameters of {p.twin.prior} "
                                          f"({prior.n_train} training stimuli)")  # fmt: skip
            return []
        data = read_session(self.path)
        if data.attrs.get("protocol") != p.model_dump_json():
            raise SessionError(f"session file '{self.path}' was started with another protocol")
        if problems := integrity_problems(data):
            raise SessionError(f"session file '{self.path}' is damaged, so it cannot be resumed: {'; '.join(problems)}")
        # the copies kept in the file, whatever became of the originals
        reference = _kept_reference(data, self.path) if p.twin.reference else None
        prior = _kept_prior(data, self.path) if p.twin.prior else None
        self.learner = TwinUpdater(p, self.modality, self.rois, self.features, reference, prior)
        self.session = SessionFile.resume(self.path)
        done = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
        self.next_run = int(max([0, *data.samples.run.tolist(), *data.events.run.tolist()])) + 1
        self.planner.next_trial = int(data.events.trial.max()) + 1 if len(data.events) else 0
        est = data.latest_estimates().set_index("trial")
        stimuli = data.stimuli.set_index("stimulus_id")
        for record in done:
            trials = record["trials"]
            ids = [int(data.events.loc[data.events.trial == t, "stimulus_id"].iloc[0]) for t in trials]
            self.planner.shown |= set(ids)
            stims = [self.modality.stimulus_from_row(self.path, stimuli.loc[i]) for i in ids]
            Y = est.loc[trials, self.rois].to_numpy()
            self.learner.learn(record["kind"], stims, Y)
            conditions = [data.events.loc[data.events.trial == t, "condition"].iloc[0] for t in trials]  # (by name)
            self.rules.track(record["kind"], conditions, Y)
        self.session.log("resume", f"resumed after {len(done)} complete run(s)")
        self.progress(f"resuming {self.path}: {len(done)} run(s) complete, {len(data.events)} trials recorded")
        return done

    def _connect(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not (self.rig.up and self.presenter.up):
            if time.monotonic() > end:
                missing = [n for n, c in (("rig", self.rig), ("presenter", self.presenter)) if not c.up]
                raise SessionError(f"no answer from the {' and '.join(missing)} within {timeout:.0f} s")
            self._check_peers()
            self.rig.poll(0.02)
            self.presenter.poll(0.02)

    # ----- one run -----
    def _check(self) -> None:
        self._interrupts.check()
        self._check_peers()

    def _run(self, plan: RunPlan) -> None:
        """Run the plan, estimate each trial's response, record the run whole, and refine the twin."""
        run = self.next_run
        self.next_run += 1
        executor = RunExecutor(self.protocol, self.rig, self.presenter, self.session, self.modality, self.rois,
                               self.target, check=self._check, log=self._peer_log)  # fmt: skip
        self.runs_started += 1
        r = executor.execute(plan, run)
        d = self.protocol.design
        # Per-trial responses from the run's usable samples (times from its first volume, rig clock) and onsets
        # (scheduled onset plus the lateness the presenter measured on its own clock).
        shown = [t for t in plan.trials if t.trial in r.presented]
        onsets = {t.trial: t.onset + r.late[t.trial] for t in shown}
        times, values = r.usable()
        values = values.reshape(len(times), len(self.rois))
        beta, se = self.modality.estimator.estimate(times, values, [onsets[t.trial] for t in shown],
                                                    d.trial_duration, d.tr)  # fmt: skip
        self._check_timing(r, shown, onsets)
        # The run is complete in the file, or (if this one write fails) not at all: repeated on resume.
        record = {"index": plan.index, "run": run, "kind": plan.kind, "phase": plan.phase,
                  "trials": [t.trial for t in shown], "predicted": plan.predicted}  # fmt: skip
        with self.session.together():
            self._record(plan, run, r, shown, beta, se)
            has = ~np.isnan(beta).any(axis=1)
            shown, beta = [t for t, h in zip(shown, has, strict=True) if h], beta[has]  # from here: the measured
            self.learner.learn(plan.kind, [t.stimulus for t in shown], beta)
            if self.twin is not None and plan.kind != "localizer":
                self.session.add_twin_snapshot(plan.index, self.twin.n_train,
                                               self.learner.scores(len(shown), self.target))  # fmt: skip
            self.session.log("run-complete", json.dumps(record))
        effect = self.rules.track(plan.kind, [t.condition for t in shown], beta)
        self.progress(run_line(self.protocol, plan, shown, beta[:, self.target], effect))
        self.planner.done(plan)

    def _check_timing(self, r: RunState, shown: list[Trial], onsets: dict[int, float]) -> None:
        """Live only: a presenter and rig that did not start together (a simulation's presenter always starts at
        the relayed trigger, and on an accelerated clock the clocks' few ms of sync error become seconds)."""
        if self.peers.get("mode") == "simulation":
            return
        lag = start_disagreement(r.presented, {t.trial: r.t0 + onsets[t.trial] for t in shown},
                                 self.protocol.design.tr)  # fmt: skip
        if lag is not None:
            self._peer_log("timing", f"run {r.run}: the presenter's onsets are {lag:+.2f} s from where the rig's "
                                     "first volume puts them (median); the estimates assume they coincide: check "
                                     "the relay's --latency, and that the presenter's trigger and the rig's first "
                                     "volume are one scan's")  # fmt: skip

    def _record(self, plan: RunPlan, run: int, r: RunState, shown: list[Trial], beta: np.ndarray,
                se: np.ndarray) -> None:  # fmt: skip
        """The run's stimuli, events, estimates (a trial without one: `no-estimate`) and true responses."""
        d = self.protocol.design
        for t in plan.trials:
            if not self.session.has_stimulus(t.stimulus_id):
                self.modality.record(self.session, self.path, t.stimulus_id, t.stimulus, t.condition)
        for t, b, s in zip(shown, beta, se, strict=True):
            self.session.add_event(t.stimulus_id, run=run, trial=t.trial, scheduled_onset=r.t0 + t.onset,
                                   measured_onset=r.presented[t.trial], duration=d.trial_duration,
                                   condition=t.condition)  # fmt: skip
            if self.session.simulated and t.trial in r.truth:
                self.session.add_truth(t.trial, t.stimulus_id, r.truth[t.trial], run=run)
            if np.isnan(b).any():  # shown, but the recording has a gap where its response was
                self.session.log("no-estimate", f"run {run} trial {t.trial}: no samples in its response window")
                continue
            self.session.add_estimate(t.trial, t.stimulus_id, b, s, run=run, provisional=False)

    def _stop_reason(self, phase: str) -> str | None:
        """Why the run should not happen (a stopping rule met), logged once; None to run it."""
        reason = self.rules.reason(phase, self.planner.next_trial)
        if reason and reason not in self._stopped:
            self._stopped.add(reason)
            self.session.log("stop", reason)
            self.progress(f"stopping rule: {reason}")
        return reason

    # ----- the session -----
    def run(self, stop_after: int | None = None) -> Path:
        """Run (or resume) the whole protocol; returns the session file's path."""
        with self._interrupts:  # Ctrl-C pauses, and is never lost (see _Interrupts)
            return self._run_protocol(stop_after)

    def _run_protocol(self, stop_after: int | None) -> Path:
        from .planner import Planner

        created = not self.path.exists()
        try:
            self._connect()  # first: a rig that measures other channels is refused before anything is written
            self._match_channels()
            self.planner = Planner(self.protocol, self.modality, self.target)
            self.rules = StoppingRules(self.protocol, self.target)
            if any(p.kind != "localizer" for p in self.protocol.phases):  # a localizer shows fixed materials
                if self.features is None:
                    self.features = self.modality.features()
                # (a pool too small: refused before the file is made)
                self.planner.candidates = self.modality.candidates(self.protocol, self.features)
            done = self._open()
            self._connect()
            complete = {r["index"] for r in done}
            runs = self.protocol.runs()
            started = time.monotonic()
            for index, (phase, round_, n) in enumerate(runs):
                self._interrupts.check()
                if index in complete:
                    continue
                if stop_after is not None and index >= stop_after:
                    break
                if self._stop_reason(runs[index][0]):
                    continue
                plan = self.planner.plan(index, phase, round_, n, self.learner)
                self.progress(f"run {index + 1}/{len(runs)}: {phase} ({plan.kind}), {len(plan.trials)} trials")
                self._run(plan)
                limit = self.protocol.stopping.max_minutes
                if limit and (time.monotonic() - started) / 60 > limit:
                    self.session.log("stop", f"max_minutes {limit} reached")
                    break
        except Exception as exc:  # Ctrl-C (a pause) is not one
            if self.session is not None:
                with contextlib.suppress(Exception):  # the file itself may be what failed
                    self.session.log("error", f"the session stopped: {exc}")
            if created and self.session is not None and not self.runs_started:  # nothing recorded: no file
                with contextlib.suppress(Exception):
                    self.session.close()
                self.session.discard()
            raise
        finally:
            if self.session is not None:
                self.session.close()
            self.rig.close()
            self.presenter.close()
        return self.path
