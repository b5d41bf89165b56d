"""The session runner: propose -> present -> measure -> refine the twin -> propose again.

The controller talks to a rig and a presenter over ZeroMQ (real ones, or the
simulated rig and null presenter as separate processes). Each run: choose the
trials for its phase, schedule them on the presenter, start the rig and tell it
the events (a simulated subject needs them), relay the rig's first trigger to the
presenter, record every sample, trigger and presentation in the session file,
estimate each trial's response at the end of the run (LSS GLM with HRF for fMRI,
count windows for spikes) and refine the twin.

Resuming a killed session: a run's trials (events and estimates) are written
together at the end of the run, so a run is either complete in the file or
repeated (under a new run number; the interrupted run's samples stay recorded).
The twin is rebuilt from the file's estimates in run order and every choice is
seeded by (protocol seed, run index), so a resumed session continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acquisition import SessionFile, TrialEstimator, integrity_problems, read_session, window_rates
from acquisition.session import SessionError
from hardware import PeerClient
from hardware.peer import PEER_RESTARTED

from .protocol import Protocol, ProtocolError, load_prior, load_reference, reference_for_rois

REFERENCE_FILE = "reference_twin.h5"  # the attachment holding the protocol's reference twin
PRIOR_FILE = "prior.json"  # the attachment holding the protocol's prior (its hyperparameters)

log = logging.getLogger(__name__)
LOCALIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fedorenko2010_localizer"


@dataclass
class Trial:
    trial: int  # global trial number in the session
    stimulus_id: int
    condition: str  # B baseline, D drive, S suppress, SENT / NONW (localizer)
    stimulus: Any  # sentence or uint8 image
    onset: float = 0.0  # from the run's first volume, s


@dataclass
class _RunState:
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
    truth: dict[int, tuple[int, list[float]]] = field(default_factory=dict)  # a simulated rig's: trial -> (id, values)

    @property
    def last_volume(self) -> int:
        """The highest volume number recorded (-1 before the first)."""
        return max(self.received, default=-1)

    @property
    def volumes_done(self) -> bool:
        """Every volume came, or the last one did (volumes come in order: any missing ones will not)."""
        return len(self.received) >= self.n_volumes or self.n_volumes - 1 in self.received


def _ranges(numbers: list[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    out: list[str] = []
    for k in numbers:
        if out and int(out[-1].split("-")[-1]) == k - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ", ".join(out)


@dataclass
class RunPlan:
    index: int  # run index within the protocol (0-based)
    phase: str
    kind: str
    round: int
    trials: list[Trial] = field(default_factory=list)
    predicted: dict[int, float] = field(default_factory=dict)  # trial -> the twin's prediction before measuring


def start_disagreement(measured: dict[int, float], scheduled: dict[int, float], tr: float) -> float | None:
    """How far the presenter's measured onsets lie from where the rig's first volume puts them (median over
    trials, s; positive: later), when that is more than a quarter of a TR (and 0.1 s); else None. The
    estimates assume the two coincide: they do when the presenter's trigger and the rig's first volume are
    the same volume of the same scan."""
    lags = [measured[t] - scheduled[t] for t in scheduled if t in measured]
    lag = float(np.median(lags)) if lags else 0.0
    return lag if abs(lag) > max(0.1, tr / 4) else None


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def candidate_sentences(protocol: Protocol) -> list[str]:
    """A text session's candidates: ``stimuli.candidates`` sentences of its source that pass its constraints, in
    the session's order. Raises ProtocolError for a source that cannot be read or is too small for the protocol
    (each candidate is shown once)."""
    from stimulus_synthesis import lee_sentences, load_pool, wordnet_sentences
    from stimulus_synthesis.pool import PoolError

    s = protocol.stimuli
    try:
        pool = (list(dict.fromkeys([*wordnet_sentences("examples"), *lee_sentences()])) if s.source == "default"
                else load_pool(s.source).sentences)  # fmt: skip
    except (PoolError, OSError) as exc:
        raise ProtocolError(f"stimuli.source: {getattr(exc, 'strerror', None) or exc}") from None
    constraints = s.constraints()
    passing = sorted(p for p in pool if constraints.ok(p))
    np.random.default_rng([protocol.seed, 17]).shuffle(passing)
    items = passing[: s.candidates]
    _enough_candidates(protocol, len(items), f"{len(passing)} of the {len(pool)} sentences of stimuli.source "
                                             f"('{s.source}') pass its constraints")  # fmt: skip
    return items


def _enough_candidates(protocol: Protocol, available: int, why: str) -> None:
    """Raise ProtocolError unless the session has a distinct candidate for every trial that draws one."""
    needed = protocol.candidates_needed
    if available < needed:
        raise ProtocolError(f"stimuli: the protocol shows {needed} candidates, each once, but it has {available} "
                            f"({why}; stimuli.candidates is {protocol.stimuli.candidates}): give a larger source, "
                            "raise stimuli.candidates, or ease the constraints")  # fmt: skip


class Candidates:
    """The stimulus source of a session: candidate sentences (or images) and their twin features."""

    def __init__(self, protocol: Protocol, features: Any) -> None:
        self.protocol = protocol
        s = protocol.stimuli
        if protocol.modality == "text":
            from stimulus_synthesis import EmbeddedPool

            self.items: list[Any] = candidate_sentences(protocol)
            self.embedded = EmbeddedPool.build(self.items, features)
        else:
            _enough_candidates(protocol, s.candidates, "natural images")
            from stimulus_synthesis.images import natural_images

            self.items = natural_images(s.candidates, s.image_size, seed=protocol.seed)
            self.embedded = None
        self.features = features


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
        self.peers = peers or {"mode": "live", "rig": rig, "presenter": presenter}
        self.path = Path(path)
        self.images_dir = self.path.with_name(self.path.stem + "-images")
        self.clock = clock
        self.session: SessionFile | None = None
        self.progress = progress or (lambda msg: log.info(msg))
        links = {"heartbeat": heartbeat, "timeout": peer_timeout, "clock": clock, "on_log": self._peer_log}
        self.rig = PeerClient(rig, **links)
        self.presenter = PeerClient(presenter, **links)
        self.features = features
        self._rois_given = rois is not None  # else the rig's own names for its channels, if it says them
        self._set_rois(rois or list(protocol.target.rois))
        self.twin: Any = None
        self._interrupts = _Interrupts()
        self.reference: Any = None  # the protocol's twin.reference, kept in the session file
        self.prior: Any = None  # the protocol's twin.prior (a target per ROI), kept in the session file
        self.candidates: Candidates | None = None
        self.shown: set[int] = set()  # stimulus ids already shown (candidates index, or synthesized ids)
        self.next_trial = 0
        self.next_run = 1
        self._fit_data: tuple[list[Any], list[np.ndarray]] = ([], [])  # stimuli, responses of each run
        self._baseline_y: list[float] = []  # measured target responses to baseline trials
        self._effect: float | None = None  # last closed-loop run's drive - suppress, in baseline SDs
        self._stopped: set[str] = set()
        self._watch = watch
        self._watched = 0.0  # when the watch last ran
        self.runs_started = 0  # by this process

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

    # ----- opening, resuming, the twin -----
    def _open(self) -> list[dict]:
        """Create or resume the session file; returns the completed runs' records."""
        p = self.protocol
        if not self.path.exists():
            modality = "fmri" if p.modality == "text" else "spikes"
            reference = load_reference(p, self.features, self.rois)
            self.prior = load_prior(p, self.features, self.rois)
            attachments = {}
            if reference is not None:  # the file's bytes as read, so the copy is the twin in use
                self.reference, attachments[REFERENCE_FILE] = reference
            if self.prior is not None:  # as read (a twin file's hyperparameters), for the session's ROIs
                attachments[PRIOR_FILE] = self.prior.to_json().encode()
            self.session = SessionFile.create(self.path, self.rois, protocol=p.model_dump_json(), modality=modality,
                                              seeds={"protocol": p.seed}, peers=self.peers,
                                              attachments=attachments or None,
                                              simulated=self.rig.peer_simulated)  # fmt: skip
            if self.reference is not None:
                self.session.log(
                    "reference",
                    f"the twin starts from {p.twin.reference} "
                    f"(targets {self.reference.targets}, {self.reference.n_train} training stimuli)",
                )
            if self.prior is not None:
                self.session.log("prior", f"twins reuse the hyperparameters of {p.twin.prior} "
                                          f"({self.prior.n_train} training stimuli)")  # fmt: skip
            return []
        data = read_session(self.path)
        if data.attrs.get("protocol") != p.model_dump_json():
            raise SessionError(f"session file '{self.path}' was started with another protocol")
        if problems := integrity_problems(data):
            raise SessionError(f"session file '{self.path}' is damaged, so it cannot be resumed: {'; '.join(problems)}")
        # the copies kept in the file, whatever became of the originals
        if p.twin.reference:
            self.reference = _kept_reference(data, self.path)
        if p.twin.prior:
            self.prior = _kept_prior(data, self.path)
        self.session = SessionFile.resume(self.path)
        done = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
        self.next_run = int(max([0, *data.samples.run.tolist(), *data.events.run.tolist()])) + 1
        self.next_trial = int(data.events.trial.max()) + 1 if len(data.events) else 0
        est = data.latest_estimates().set_index("trial")
        stimuli = data.stimuli.set_index("stimulus_id")
        for record in done:
            trials = record["trials"]
            ids = [int(data.events.loc[data.events.trial == t, "stimulus_id"].iloc[0]) for t in trials]
            self.shown |= set(ids)
            stims = [self._stimulus_from_row(i, stimuli.loc[i]) for i in ids]
            Y = est.loc[trials, self.rois].to_numpy()
            self._learn(record["kind"], stims, Y)
            conditions = [data.events.loc[data.events.trial == t, "condition"].iloc[0] for t in trials]
            self._track(record["kind"], conditions, Y)
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

    def _stimulus_from_row(self, stimulus_id: int, row: Any) -> Any:
        if self.protocol.modality == "text":
            return row.text
        from twin.vision import load_image

        return load_image(self.path.parent / row.image)

    def _learn(self, kind: str, stimuli: list[Any], Y: np.ndarray) -> None:
        """Baseline data waits for the first fit; each later run refines the twin.

        Sentences: the twin is fit again on every trial so far (alphas and stacking weights
        chosen again; features come from the cache), so a resumed session has the same twin;
        within runs, because each fMRI run's estimates share an offset of their own (its
        baseline), which would otherwise read as an effect of that run's stimuli.
        Images (features not cached): an exact online update, alphas re-chosen by GCV.
        """
        if kind == "localizer" or not stimuli:
            return
        reference_only = not self._fit_data[0]  # a twin before any data is the reference alone
        self._fit_data[0].extend(stimuli)
        self._fit_data[1].append(np.asarray(Y, np.float64))
        if self.twin is None:
            return
        if self.protocol.modality == "text" or reference_only:
            self.twin = None
            self._ensure_twin()
        else:
            self.twin.update(stimuli, Y)
            self.twin.reselect_alphas()  # the ridge penalty follows the growing training set

    def _ensure_twin(self) -> None:
        from twin import Twin

        if self.twin is None and self._fit_data[0]:
            Y = self._fit_data[1]
            runs = np.repeat(np.arange(len(Y)), [len(y) for y in Y]) if self.protocol.modality == "text" else None
            self.twin = Twin.fit(self._fit_data[0], np.vstack(Y), self.rois, features=self.features, runs=runs,
                                 reference=self.reference, prior=self.prior)  # fmt: skip
        elif self.twin is None and self.reference is not None:
            self.twin = reference_for_rois(self.reference, self.rois, self.protocol)

    # ----- choosing trials -----
    def _plan(self, index: int, phase_name: str, round_: int, n: int) -> RunPlan:
        phase = next(p for p in self.protocol.phases if p.name == phase_name)
        rng = np.random.default_rng([self.protocol.seed, index])
        plan = RunPlan(index, phase_name, phase.kind, round_)
        if phase.kind == "localizer":
            chosen = self._localizer(n, rng)
        elif phase.kind == "baseline":
            chosen = [("B", i) for i in self._random_unshown(n, rng)]
        else:
            self._ensure_twin()
            if self.twin is None:
                raise SessionError(f"phase '{phase_name}' needs a twin, but no baseline was measured before it")
            chosen = []
            for cond, k in self.protocol.condition_counts(index).items():
                if cond == "baseline":
                    taken = {i for _, i in chosen if isinstance(i, int | np.integer)}  # (images may be arrays)
                    chosen += [("B", i) for i in self._random_unshown(k, rng, exclude=taken)]
                else:
                    acq = self.protocol.acquisition(phase) if phase.kind == "closed_loop" else "mean"
                    chosen += [(cond[0].upper(), i) for i in self._best(cond, k, acq, phase.beta, chosen, rng)]
        order = rng.permutation(len(chosen)) if self.protocol.design.kind == "event" else np.arange(len(chosen))
        if self.protocol.design.kind == "blocked" and phase.kind != "localizer":
            b = self.protocol.design.block_size
            blocks = [list(range(i, min(i + b, len(chosen)))) for i in range(0, len(chosen), b)]
            order = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
        d = self.protocol.design
        for pos, j in enumerate(order):
            cond, ref = chosen[j]
            stimulus = self.candidates.items[ref] if isinstance(ref, int | np.integer) else ref
            sid = int(ref) if isinstance(ref, int | np.integer) else 10**6 + self.next_trial + pos
            plan.trials.append(Trial(self.next_trial + pos, sid, cond, stimulus, d.rest + pos * d.iti))
        if self.twin is not None:
            pred = self.twin.predict([t.stimulus for t in plan.trials])[0][:, self.target]
            plan.predicted = {t.trial: float(v) for t, v in zip(plan.trials, pred, strict=True)}
        return plan

    def _random_unshown(self, n: int, rng: np.random.Generator, exclude: set | None = None) -> list[int]:
        free = np.array([i for i in range(len(self.candidates.items)) if i not in self.shown | (exclude or set())])
        if len(free) < n:
            raise SessionError(f"only {len(free)} unshown candidates left for {n} trials: raise stimuli.candidates")
        return [int(i) for i in rng.choice(free, n, replace=False)]

    def _best(self, cond: str, k: int, acquisition: str, beta: float, chosen: list, rng: np.random.Generator
              ) -> list[Any]:  # fmt: skip
        from stimulus_synthesis import Goal, select

        goal = Goal(cond, self.target, acquisition=acquisition, beta=beta, hold=self.protocol.target.hold)
        taken = self.shown | {i for _, i in chosen if isinstance(i, int | np.integer)}
        if self.protocol.modality == "image":
            return self._synthesize(goal, k, rng)
        free = np.array([i for i in range(len(self.candidates.items)) if i not in taken])
        twin = self.twin.sample(rng) if acquisition == "thompson" else self.twin  # Thompson: one posterior draw
        mean, sd = self.candidates.embedded.predict(twin, with_sd=acquisition == "ucb", noise=False)
        shown = [self.candidates.items[i] for i in taken if isinstance(i, int | np.integer)]
        sel = select([self.candidates.items[i] for i in free], mean[free], k, goal, sd=None if sd is None else sd[free],
                     constraints=self.protocol.stimuli.constraints(), shown=shown)  # fmt: skip
        return [int(free[i]) for i in sel.index]

    def _synthesize(self, goal: Any, k: int, rng: np.random.Generator) -> list[np.ndarray]:
        from stimulus_synthesis.images import synthesize_images, twin_predictor

        reference = next(iter(self.twin.readouts.values())).mean_y
        twin = self.twin.sample(rng) if goal.acquisition == "thompson" else self.twin  # Thompson: one posterior draw
        out = synthesize_images(twin_predictor(twin), goal, n=k, steps=self.protocol.stimuli.synthesis_steps,
                                size=self.protocol.stimuli.image_size, reference=reference,
                                seed=int(rng.integers(2**31)))  # fmt: skip
        return [o.image for o in out]

    def _localizer(self, n: int, rng: np.random.Generator) -> list[tuple[str, Any]]:
        import pandas as pd

        files = sorted(LOCALIZER.glob("*.csv"))
        if not files:
            raise SessionError(f"localizer stimuli not found at {LOCALIZER} (see ../shared/data/README)")
        rows = pd.concat([pd.read_csv(f) for f in files])
        words = rows.filter(like="stim").iloc[:, 1:13].astype(str).agg(" ".join, axis=1).str.capitalize()
        kinds = rows.iloc[:, 13].astype(str).str.strip()
        sent = [w for w, c in zip(words, kinds, strict=True) if c == "S"]
        nonw = [w for w, c in zip(words, kinds, strict=True) if c == "N"]
        out: list[tuple[str, Any]] = []
        for cond in self.protocol.localizer_order(n):
            code, source = {"sentences": ("SENT", sent), "nonwords": ("NONW", nonw)}[cond]
            out.append((code, source[int(rng.integers(len(source)))]))
        return out

    # ----- one run -----
    def _record_stimuli(self, plan: RunPlan) -> None:
        for t in plan.trials:
            if self.session.has_stimulus(t.stimulus_id):
                continue
            if isinstance(t.stimulus, str):
                self.session.add_stimulus(t.stimulus_id, text=t.stimulus, condition=t.condition, source="corpus")
            else:
                self.images_dir.mkdir(exist_ok=True)
                name = f"{self.images_dir.name}/{t.stimulus_id}.png"
                (self.path.parent / name).write_bytes(_png(t.stimulus))
                self.session.add_stimulus(t.stimulus_id, image=name, condition=t.condition,
                                          source="natural" if t.stimulus_id < 10**6 else "synthesized")  # fmt: skip

    def _run(self, plan: RunPlan) -> None:
        d = self.protocol.design
        run = self.next_run
        self.next_run += 1
        n_volumes = math.ceil(self.protocol.run_seconds(len(plan.trials)) / d.tr) + 1
        trials = []
        for t in plan.trials:
            entry = {"trial": t.trial, "stimulus_id": t.stimulus_id, "onset": t.onset, "duration": d.trial_duration}
            if isinstance(t.stimulus, str):
                entry |= {"kind": "text", "text": t.stimulus, "word_by_word": 0.0}
            else:
                entry |= {"kind": "image", "image": _png(t.stimulus)}
            trials.append(entry)
        r = _RunState(run, n_volumes, trials)
        self.presenter.send_reliable("schedule", run=run, trials=trials)
        self._start_rig(r)
        start = {"index": plan.index, "run": run, "kind": plan.kind, "phase": plan.phase, "trials": len(trials)}
        self.session.log("run-start", json.dumps({**start, "volumes": n_volumes}))
        self.runs_started += 1
        deadline = time.monotonic() + 120 + n_volumes * d.tr
        counted = 0
        with self._live_view(run, n_volumes) as live:  # closed on any exit, Ctrl-C included
            while not r.volumes_done or len(r.presented) + len(r.refused) < len(trials):
                self._interrupts.check()
                self._check_peers()
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
                for msg in self.rig.poll(0.01):
                    self._from_rig(r, msg)
                for msg in self.presenter.poll(0.0):
                    self._from_presenter(r, msg)
        if missed := sorted(set(range(n_volumes)) - r.received):
            self._peer_log("missing", f"run {run}: {len(missed)} volume(s) never came from the rig: "
                                      f"{_ranges(missed)}")  # fmt: skip
        usable = ~np.isnan(r.values).any(axis=1) if r.values else np.zeros(0, bool)
        self._estimate(plan, run, np.array(r.rel_times)[usable], np.array(r.values)[usable], r.t0, r.presented,
                       r.late, r.truth)  # fmt: skip

    def _start_rig(self, r: _RunState, first_volume: int = 0) -> None:
        """Tell the rig the run's events (a simulated subject needs them), then start it: from its beginning, or
        taken up again from ``first_volume`` (keeping its volume 0's time) by a rig that restarted."""
        for e in r.trials:  # the stimulus itself only to a rig that asks for it (a simulated subject)
            content = {"text": e.get("text", ""), "image": e.get("image", b"")} if self.rig.peer_content else {}
            self.rig.send_reliable("event", run=r.run, trial=e["trial"], stimulus_id=e["stimulus_id"],
                                   onset=e["onset"], duration=e["duration"], **content)  # fmt: skip
        again = {"first_volume": first_volume, "origin": r.rig_t0} if first_volume else {}
        self.rig.send_reliable("start", run=r.run, tr=self.protocol.design.tr, n_volumes=r.n_volumes,
                               **again)  # after the events: see the rig  # fmt: skip

    def _from_rig(self, r: _RunState, msg: dict) -> None:
        """One message from the rig during run ``r``: its volumes are recorded; a rig that restarted without its
        journal is told to take the run up again."""
        if msg["type"] == PEER_RESTARTED:
            self._rig_restarted(r)
            return
        if msg["type"] == "truth" and msg["run"] == r.run:  # a simulated subject's noise-free response
            r.truth[msg["trial"]] = (msg["stimulus_id"], msg["values"])
            return
        if msg.get("run") != r.run or msg["type"] not in ("trigger", "sample"):
            return
        if r.rig_t0 is None:  # the run's first volume (in-order delivery: it comes first)
            r.rig_t0 = msg["time"] - msg.get("volume", 0) * self.protocol.design.tr  # (volume 0: its own time)
            # The run's clock origin: where its first volume lies on the controller's clock. One mapping per run
            # keeps the run's samples evenly spaced when the offset estimate moves.
            r.t0 = self.rig.to_local(r.rig_t0)
            if r.t0 <= self.session.last_sample_time:  # only when the clock estimate jumped between runs
                self._peer_log("timing", f"run {r.run}: its first volume maps to {r.t0:.3f}, not after the "
                                         f"previous run's last sample ({self.session.last_sample_time:.3f}): "
                                         "moved just after it")  # fmt: skip
                r.t0 = self.session.last_sample_time + 1e-3
            self._relay_trigger(r.run, r.rig_t0, r.t0)
        local = r.t0 + (msg["time"] - r.rig_t0)
        if msg["type"] == "trigger":
            if msg["volume"] not in r.triggers:  # (a rig taking a run up again may repeat one)
                r.triggers.add(msg["volume"])
                self.session.add_trigger(local, msg["volume"], r.run)
            return
        if len(msg["values"]) != len(self.rois):
            raise SessionError(f"run {r.run}: the rig sends {len(msg['values'])} values per sample, but this session "
                               f"records {len(self.rois)} ({self.rois}): name the rig's channels, in order "
                               "(session run --rois)")  # fmt: skip
        if msg["volume"] in r.received:
            self._peer_log("duplicate", f"run {r.run}: volume {msg['volume']} came again: not recorded twice")
            return
        if local <= self.session.last_sample_time:
            self._peer_log("timing", f"run {r.run}: volume {msg['volume']} is timed {local - r.t0:.3f} s into the "
                                     "run, not after the volume before it: not recorded")  # fmt: skip
            return
        values = np.asarray(msg["values"], np.float64)
        if msg.get("missing"):  # values that are not numbers (the client logged them): the volume is missing
            values = np.where(np.isfinite(values), values, np.nan)
            self.session.log("missing-volume", json.dumps({"run": r.run, "volume": msg["volume"],
                                                           "channels": msg["missing"]}))  # fmt: skip
        r.received.add(msg["volume"])
        r.rel_times.append(msg["time"] - r.rig_t0)  # on the rig's own clock: no sync error
        r.values.append(values)
        self.session.add_samples(local, values, r.run)

    def _rig_restarted(self, r: _RunState) -> None:
        """The rig came back as a new process that knows nothing of the run: start it again from the next
        volume (with its volume 0's time), or from its beginning if none had come."""
        nxt = r.last_volume + 1
        if r.volumes_done:
            return
        if r.rig_t0 is None:
            self._peer_log("rig-restart", f"run {r.run}: the rig restarted without its journal before the run's "
                                          "first volume: the run is started again")  # fmt: skip
            self._start_rig(r)
            return
        self._peer_log("rig-restart", f"run {r.run}: the rig restarted without its journal after volume "
                       f"{r.last_volume} ({len(r.received)} of {r.n_volumes} recorded): it takes the run up again "
                       f"from volume {nxt}; volumes it cannot send are missing")  # fmt: skip
        self._start_rig(r, first_volume=nxt)

    def _from_presenter(self, r: _RunState, msg: dict) -> None:
        if msg["type"] == PEER_RESTARTED:  # a new presenter process: the run's schedule (what is left of it) again
            left = [t for t in r.trials if t["trial"] not in r.presented and t["trial"] not in r.refused]
            self._peer_log("presenter-restart", f"run {r.run}: the presenter restarted without its journal: "
                                                f"{len(left)} trial(s) of the run scheduled again")  # fmt: skip
            self.presenter.send_reliable("schedule", run=r.run, trials=left)
            if r.rig_t0 is not None:
                self._relay_trigger(r.run, r.rig_t0, r.t0)
        elif msg["type"] == "presented" and msg["run"] == r.run:
            r.presented[msg["trial"]] = self.presenter.to_local(msg["onset"])
            r.late[msg["trial"]] = msg["onset"] - msg["scheduled"] if msg.get("scheduled") else 0.0
        elif msg["type"] == "refused" and msg["run"] == r.run:
            r.refused[msg["trial"]] = msg["reason"]
            self.session.log("refused", f"trial {msg['trial']}: {msg['reason']}")

    def _live_view(self, run: int, n_volumes: int) -> Any:
        """A live bar over the run's volumes (on a terminal only): trials shown, the target's signal, time left."""
        from tqdm.auto import tqdm

        return tqdm(total=n_volumes, desc=f"  run {run} volumes", unit="vol", leave=False, disable=None)

    def _relay_trigger(self, run: int, rig_time: float, local: float) -> None:
        """The rig's first volume starts the presenter's schedule, at that instant on the presenter's clock."""
        self.presenter.send_reliable("trigger", run=run, volume=0, time=rig_time,
                                     receiver_time=self.presenter.to_remote(local))  # fmt: skip

    def _estimate(self, plan: RunPlan, run: int, times: np.ndarray, values: np.ndarray, t0: float,
                  presented: dict[int, float], late: dict[int, float], truth: dict) -> None:  # fmt: skip
        """Per-trial responses from the run's samples (times from its first volume, rig clock) and onsets
        (scheduled onset plus the lateness the presenter measured on its own clock)."""
        d = self.protocol.design
        shown = [t for t in plan.trials if t.trial in presented]
        onsets = {t.trial: t.onset + late[t.trial] for t in shown}
        if self.protocol.modality == "text":
            est = TrialEstimator.offline(times, values.reshape(len(times), len(self.rois)),
                                         {t.trial: (onsets[t.trial], d.trial_duration) for t in shown})  # fmt: skip
            # a trial the run's (usable) volumes do not reach has no estimate: NaN, logged as no-estimate below
            beta = np.full((len(shown), len(self.rois)), np.nan)
            se = beta.copy()
            order = {int(k): i for i, k in enumerate(est.labels)} if est is not None else {}
            for j, t in enumerate(shown):
                if t.trial in order:
                    beta[j], se[j] = est.beta[order[t.trial]], est.se[order[t.trial]]
        else:
            beta = window_rates(times, values, d.tr, [onsets[t.trial] for t in shown],
                                window=(0.0, d.tr), baseline=None, missing="nan")  # fmt: skip
            se = np.sqrt(np.maximum(beta, 0) / d.tr)
        # Live only: a simulation's presenter always starts at the relayed trigger, and on an accelerated clock
        # the clocks' few ms of sync error become seconds of simulated time.
        live = self.peers.get("mode") != "simulation"
        lag = start_disagreement(presented, {t.trial: t0 + onsets[t.trial] for t in shown}, d.tr) if live else None
        if lag is not None:
            self._peer_log(
                "timing",
                f"run {run}: the presenter's onsets are {lag:+.2f} s from where the rig's "
                "first volume puts them (median); the estimates assume they coincide: check the relay's "
                "--latency, and that the presenter's trigger and the rig's first volume are one scan's",
            )
        # The run is complete in the file, or (if this one write fails) not at all: repeated on resume.
        with self.session.together():
            self._record_stimuli(plan)
            if self.session.simulated:
                for t in shown:
                    if t.trial in truth:
                        self.session.add_truth(t.trial, t.stimulus_id, truth[t.trial][1], run=run)
            for t, b, s in zip(shown, beta, se, strict=True):
                self.session.add_event(t.stimulus_id, run=run, trial=t.trial, scheduled_onset=t0 + t.onset,
                                       measured_onset=presented[t.trial], duration=d.trial_duration,
                                       condition=t.condition)  # fmt: skip
                if np.isnan(b).any():  # shown, but the recording has a gap where its response was
                    self.session.log("no-estimate", f"run {run} trial {t.trial}: no samples in its response window")
                    continue
                self.session.add_estimate(t.trial, t.stimulus_id, b, s, run=run, provisional=False)
            record = {
                "index": plan.index,
                "run": run,
                "kind": plan.kind,
                "phase": plan.phase,
                "trials": [t.trial for t in shown],
                "predicted": plan.predicted,
            }
            has = ~np.isnan(beta).any(axis=1)
            shown, beta = [t for t, h in zip(shown, has, strict=True) if h], beta[has]  # from here: the measured
            self._learn(plan.kind, [t.stimulus for t in shown], beta)
            if self.twin is not None and plan.kind != "localizer":
                self.session.add_twin_snapshot(plan.index, self.twin.n_train, self._twin_score(shown, beta))
            self.session.log("run-complete", json.dumps(record))
        effect = self._track(plan.kind, [t.condition for t in shown], beta)
        self._status(plan, shown, beta, effect)
        self.shown |= {t.stimulus_id for t in plan.trials}
        self.next_trial = max(t.trial for t in plan.trials) + 1

    def _status(self, plan: RunPlan, shown: list[Trial], beta: np.ndarray, effect: float | None) -> None:
        """One line per run: the run's condition means, the twin's accuracy on it, a closed-loop round's
        effect, scanner time left."""
        y = beta[:, self.target]
        means = ", ".join(f"{c} {y[[t.condition == c for t in shown]].mean():+.2f}"
                          for c in dict.fromkeys(t.condition for t in shown))  # fmt: skip
        line = f"  measured {self.protocol.target.rois[0]}: {means}"
        if plan.predicted and len(shown) > 2:
            p = np.array([plan.predicted[t.trial] for t in shown])
            line += f"; twin r on this run {np.corrcoef(p, y)[0, 1]:+.2f}"
        if effect is not None:  # what the round compared: a one-sided round stands against baseline
            conds = {t.condition for t in shown}
            compared = f"{'drive' if 'D' in conds else 'baseline'} - {'suppress' if 'S' in conds else 'baseline'}"
            line += f"; {compared} {effect:+.2f} baseline SDs"
        left = sum(self.protocol.run_seconds(n) for _, _, n in self.protocol.runs()[plan.index + 1 :]) / 60
        self.progress(line + f"; {left:.1f} scanner min left")

    def _track(self, kind: str, conditions: list[str], beta: np.ndarray) -> float | None:
        """Keep what the stopping rules need: baseline responses, the last closed-loop effect (returned
        for a closed-loop run)."""
        y, cond = np.asarray(beta)[:, self.target], np.array(conditions)
        if kind == "baseline":
            self._baseline_y.extend(y.tolist())
        elif kind == "closed_loop" and len(self._baseline_y) > 2 and ((cond == "D").any() or (cond == "S").any()):
            # drive - suppress; a one-sided round is measured against its own baseline trials (the same
            # run's offset), or without any, against the baseline runs' mean
            base = float(y[cond == "B"].mean() if (cond == "B").sum() >= 2 else np.mean(self._baseline_y))
            high = y[cond == "D"].mean() if (cond == "D").any() else base
            low = y[cond == "S"].mean() if (cond == "S").any() else base
            self._effect = float((high - low) / np.std(self._baseline_y, ddof=1))
            return self._effect
        return None

    def _stop_reason(self, phase: str) -> str | None:
        """Why the run should not happen (a stopping rule met), logged once; None to run it."""
        st = self.protocol.stopping
        kind = next(p.kind for p in self.protocol.phases if p.name == phase)
        reason = None
        if st.max_trials is not None and self.next_trial >= st.max_trials:
            reason = f"max_trials {st.max_trials} reached"
        elif st.target_effect is not None and kind == "closed_loop" and self._effect is not None:
            if self._effect >= st.target_effect:
                reason = f"target_effect {st.target_effect:g} reached ({self._effect:.2f} baseline SDs)"
        if reason and reason not in self._stopped:
            self._stopped.add(reason)
            self.session.log("stop", reason)
            self.progress(f"stopping rule: {reason}")
        return reason

    def _twin_score(self, shown: list[Trial], beta: np.ndarray) -> dict:
        out = {"n_train": int(self.twin.n_train), "run_trials": len(shown)}
        text_fit = self.protocol.modality == "text"  # image twins are updated online, penalties re-chosen by GCV
        if self.prior is not None and text_fit and "prior_multiplier" in self.twin.scores:  # this fit's multiplier
            out["penalties_x_prior"] = self.twin.scores["prior_multiplier"][self.rois[self.target]]
        return out

    # ----- the session -----
    def run(self, stop_after: int | None = None) -> Path:
        """Run (or resume) the whole protocol; returns the session file's path."""
        with self._interrupts:  # Ctrl-C pauses, and is never lost (see _Interrupts)
            return self._run_protocol(stop_after)

    def _run_protocol(self, stop_after: int | None) -> Path:
        created = not self.path.exists()
        try:
            self._connect()  # first: a rig that measures other channels is refused before anything is written
            self._match_channels()
            if any(p.kind != "localizer" for p in self.protocol.phases):  # a localizer shows fixed materials
                self.candidates = Candidates(self.protocol, self.features)  # (a pool too small: before the file)
                if self.features is None:
                    self.features = self.candidates.features
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
                plan = self._plan(index, phase, round_, n)
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
