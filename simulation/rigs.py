"""Simulated rigs: a scanner with a simulated subject, and an electrophysiology array.

A rig serves one controller through a :class:`~hardware.peer.PeerServer`. The
controller sends ``start`` (run, TR, volumes) and ``event`` (what was shown when,
in seconds after the run's first trigger, and the stimulus itself: the rig's hello
asks for it); the rig answers each event with a ``truth`` message (the subject's
noise-free response, which a simulated session keeps); the fMRI rig emits a ``trigger`` and a
``sample`` (one value per ROI) every TR: the subject's expected response to each
event convolved with the canonical HRF, plus slow drift and AR(1) noise. Values
are a deterministic function of (seed, run, volume, events), so a rig restarted
from its journal after a crash re-creates and sends exactly the volumes it had not
sent, with nothing lost or repeated.

The subject's responses are computed on a worker thread, so however long a subject takes
(a language model on a loaded machine), the rig keeps answering the controller's pings;
commands still take effect in the order they came (a run starts once its events'
responses are known).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from acquisition.glm import event_regressors
from hardware.peer import IDLE_POLL, NEW_STREAM, PeerServer
from hardware.stream import sent_messages
from kit.images import decode_png

from .subjects import Subject

log = logging.getLogger(__name__)

# Beta noise SD per unit time-series noise SD for LSS on 2-s events every 6-8 s, TR 2 s, AR(1) 0.4.
BETA_NOISE_PER_TS_NOISE = 2.43


def evoked(t: float, events: list[tuple[float, float, np.ndarray]], n_rois: int) -> np.ndarray:
    """The BOLD response at time ``t`` to events (onset, duration, response per ROI): each response convolved
    with the canonical HRF, summed."""
    if not events:
        return np.zeros(n_rois)
    onsets = np.array([e[0] for e in events])
    durations = np.array([e[1] for e in events])
    amps = np.stack([e[2] for e in events])
    return event_regressors(np.array([t]), onsets, durations)[0] @ amps


@dataclass
class _Run:
    run: int
    tr: float  # volume or window length (s)
    n_volumes: int
    t0: float
    state: dict = field(default_factory=dict)  # per-rig precomputed noise, drift...
    next_volume: int = 0
    events: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # onset, duration, response


class _SimulatedRig:
    """Commands, journal restore and emission of due volumes/windows, shared by the simulated rigs."""

    kind = "fmri"

    def __init__(self, server: PeerServer, subject: Subject, seed: int) -> None:
        self.server = server
        self.subject = subject
        self.rois = list(subject.rois)
        server.channels = [str(r) for r in self.rois]  # announced in hello: what each sample's values are
        server.content = True  # the subject needs each event's stimulus
        server.simulated = True  # ... and the controller gets its true response to it (a `truth` message)
        self.seed = seed
        self.runs: dict[int, _Run] = {}
        self._responses: dict[bytes, np.ndarray] = {}
        self._early: dict[int, list] = {}  # run -> events received before its 'start'
        # commands in arrival order, each event with its response being computed off the socket's thread
        self._queue: deque[tuple[dict, Future | None]] = deque()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="subject")

    def _restore(self) -> None:
        """Rebuild runs, events and sent volumes from the journal after a restart."""
        if self.server.journal is None:
            return
        records = self.server.stream_records()  # the current controller stream's
        started = {}
        for kind, _seq, payload in records:
            if kind == "run-start":
                started[payload["run"]] = payload["t0"]
        for msg in self.server.restored:
            self._command(msg, t0=started.get(msg.get("run")), restoring=True)
        for msg in sent_messages(records):
            run = self.runs.get(msg.get("run"))
            if run is not None and msg["type"] == "sample":
                run.next_volume = max(run.next_volume, msg["volume"] + 1)

    def _prepare(self, run: _Run, rng: np.random.Generator) -> None:
        """Precompute a run's deterministic randomness."""

    def _command(self, msg: dict, t0: float | None = None, response: np.ndarray | None = None,
                 restoring: bool = False) -> None:  # fmt: skip
        kind = msg["type"]
        if kind == NEW_STREAM:  # a new controller: the earlier one's runs end here
            self.runs.clear()
            self._early.clear()
        elif kind == "start":
            if t0 is None:  # live: the run starts now (rig clock); journaled so a restart keeps the timing
                # (a run taken up again after this rig restarted without its journal keeps its volume 0's time)
                t0 = msg["origin"] if msg.get("origin") is not None else self.server.clock()
                if self.server.journal is not None:
                    self.server.journal.append("run-start", msg["run"], {"run": msg["run"], "t0": t0})
                again = f", taken up again from volume {msg['first_volume']}" if msg.get("first_volume") else ""
                log.info("run %d started: %d volumes of %.3f s%s", msg["run"], msg["n_volumes"], msg["tr"], again)
            run = _Run(msg["run"], msg["tr"], msg["n_volumes"], t0, next_volume=msg.get("first_volume", 0))
            run.events.extend(self._early.pop(msg["run"], []))
            self._prepare(run, np.random.default_rng([self.seed, msg["run"]]))
            self.runs[msg["run"]] = run
        elif kind == "event":
            run = self.runs.get(msg["run"])
            response = self._response(msg) if response is None else response
            if not restoring:  # (a restored event's truth was journaled and is replayed with the stream)
                self.server.send_reliable("truth", run=msg["run"], trial=msg["trial"], stimulus_id=msg["stimulus_id"],
                                          values=[float(v) for v in response])  # fmt: skip
            if run is None:  # sent before 'start' (so the subject's responses are ready when the clock starts)
                self._early.setdefault(msg["run"], []).append((msg["onset"], msg["duration"], response))
                return
            run.events.append((msg["onset"], msg["duration"], response))
        elif kind == "stop":
            run = self.runs.get(msg["run"])
            if run is not None:
                run.n_volumes = min(run.n_volumes, run.next_volume)

    def _response(self, msg: dict) -> np.ndarray:
        """The subject's expected response to an event's stimulus (text, or PNG bytes as an RGB array)."""
        key = msg["image"] or msg["text"].encode("utf-8")
        if key not in self._responses:
            stimulus = decode_png(msg["image"]) if msg["image"] else msg["text"]
            self._responses[key] = np.asarray(self.subject([stimulus]), np.float64).reshape(-1)
        return self._responses[key]

    def values(self, run: _Run, k: int) -> tuple[list[float], float]:
        """(values, width) of volume or window k."""
        raise NotImplementedError

    def step(self, timeout: float = 0.005) -> None:
        """Handle commands (in order, each event once its response is known), then emit every volume or window
        that is due."""
        for msg in self.server.poll(timeout):
            future = self._worker.submit(self._response, msg) if msg["type"] == "event" else None
            self._queue.append((msg, future))
        while self._queue and (self._queue[0][1] is None or self._queue[0][1].done()):
            msg, future = self._queue.popleft()
            self._command(msg, response=None if future is None else future.result())  # (a subject's error: here)
        now = self.server.clock()
        for run in self.runs.values():
            due = min(run.n_volumes, int((now - run.t0) / run.tr) + 1)
            while run.next_volume < due:
                k = run.next_volume
                t_k = run.t0 + k * run.tr
                if self.kind == "fmri":
                    self.server.send_reliable("trigger", run=run.run, volume=k, time=t_k)
                values, width = self.values(run, k)
                self.server.send_reliable("sample", run=run.run, kind=self.kind, volume=k, time=t_k, width=width,
                                          values=values)  # fmt: skip
                run.next_volume += 1

    def serve(self, duration: float | None = None) -> None:
        """Serve until interrupted (or for ``duration`` seconds)."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            active = self._queue or any(run.next_volume < run.n_volumes for run in self.runs.values())
            self.step(0.005 if active else IDLE_POLL)  # a message wakes it at once either way


class SimulatedFMRIRig(_SimulatedRig):
    """A scanner (trigger every TR) and a simulated subject: HRF-convolved responses, drift, AR(1) noise."""

    def __init__(
        self,
        server: PeerServer,
        subject: Subject,
        *,
        noise_sd: float | None = None,
        ar1: float = 0.4,
        drift_sd: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(server, subject, seed)
        beta_noise = noise_sd if noise_sd is not None else subject.noise_sd
        self.ts_noise = beta_noise / BETA_NOISE_PER_TS_NOISE
        self.ar1, self.drift_sd = ar1, drift_sd
        self._restore()

    def _prepare(self, run: _Run, rng: np.random.Generator) -> None:
        n, R = run.n_volumes, len(self.rois)
        noise = np.zeros((n, R))
        innovations = rng.normal(0, self.ts_noise * np.sqrt(1 - self.ar1**2), (n, R))
        noise[0] = rng.normal(0, self.ts_noise, R)
        for k in range(1, n):
            noise[k] = self.ar1 * noise[k - 1] + innovations[k]
        t = np.arange(n) * run.tr
        phase = rng.uniform(0, 2 * np.pi, R)
        run.state["noise"] = noise
        run.state["drift"] = self.drift_sd * (
            np.sin(2 * np.pi * t[:, None] / 300.0 + phase) + t[:, None] / max(t[-1], 1)
        )

    def values(self, run: _Run, k: int) -> tuple[list[float], float]:
        value = run.state["noise"][k] + run.state["drift"][k] + evoked(k * run.tr, run.events, len(self.rois))
        return [float(v) for v in value], 0.0


class SimulatedEphysRig(_SimulatedRig):
    """An array of recording sites: Poisson spike counts per window from a tuning function.

    ``subject(stimuli) -> (n, sites)`` gives each site's evoked rate (spikes/s) while a
    stimulus is on (after ``latency``); sites fire at ``baseline`` spikes/s otherwise.
    """

    kind = "spikes"

    def __init__(self, server: PeerServer, subject: Subject, *, baseline: float = 5.0, latency: float = 0.05,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__(server, subject, seed)
        self.baseline, self.latency = baseline, latency
        self._restore()

    def _prepare(self, run: _Run, rng: np.random.Generator) -> None:
        run.state["uniform"] = rng.random((run.n_volumes, len(self.rois)))  # one Poisson draw per window and site

    def values(self, run: _Run, k: int) -> tuple[list[float], float]:
        lo, hi = k * run.tr, (k + 1) * run.tr
        rate = np.full(len(self.rois), self.baseline)
        for onset, duration, evoked in run.events:
            a, b = onset + self.latency, onset + self.latency + duration
            overlap = max(0.0, min(hi, b) - max(lo, a))
            rate = rate + np.clip(evoked, 0, None) * overlap / run.tr
        counts = stats.poisson.ppf(run.state["uniform"][k], rate * run.tr)
        return [float(c) for c in counts], run.tr
