"""Simulated rigs: a scanner with a simulated subject, and an electrophysiology array.

A rig serves one controller through a :class:`~hardware.peer.PeerServer`. The
controller sends ``start`` (run, TR, volumes) and ``event`` (what was shown when,
in seconds after the run's first trigger); the fMRI rig emits a ``trigger`` and a
``sample`` (one value per ROI) every TR: the subject's expected response to each
event convolved with the canonical HRF, plus slow drift and AR(1) noise. Values
are a deterministic function of (seed, run, volume, events), so a rig restarted
from its journal after a crash re-creates and sends exactly the volumes it had not
sent, with nothing lost or repeated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import numpy as np

from acquisition.glm import event_regressors

from .peer import PeerServer

log = logging.getLogger(__name__)

SIM_EPOCH = 1.7e9  # simulated clocks of all processes agree: epoch + (wall - epoch) * speed
# Beta noise SD per unit time-series noise SD for LSS on 2-s events every 6-8 s, TR 2 s, AR(1) 0.4.
BETA_NOISE_PER_TS_NOISE = 2.43


def sim_clock(speed: float = 1.0) -> Callable[[], float]:
    """A clock running ``speed`` times faster than real time, identical across processes."""
    if speed == 1.0:
        return time.time
    return lambda: SIM_EPOCH + (time.time() - SIM_EPOCH) * speed


@dataclass
class _Run:
    run: int
    tr: float
    n_volumes: int
    t0: float
    noise: np.ndarray  # (n_volumes, rois)
    drift: np.ndarray  # (n_volumes, rois)
    next_volume: int = 0
    events: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # onset, duration, amplitudes


class SimulatedFMRIRig:
    """A scanner (trigger every TR) and a simulated subject, served over the bridge."""

    def __init__(
        self,
        server: PeerServer,
        subject: Callable,
        *,
        noise_sd: float | None = None,
        ar1: float = 0.4,
        drift_sd: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.server = server
        self.subject = subject
        self.rois = list(getattr(subject, "rois", ["roi0"]))
        beta_noise = noise_sd if noise_sd is not None else getattr(subject, "noise_sd", 0.623)
        self.ts_noise = beta_noise / BETA_NOISE_PER_TS_NOISE
        self.ar1, self.drift_sd, self.seed = ar1, drift_sd, seed
        self.runs: dict[int, _Run] = {}
        self._responses: dict[str, np.ndarray] = {}
        self._restore()

    # ----- state -----
    def _restore(self) -> None:
        """Rebuild runs, events and sent volumes from the journal after a restart."""
        if self.server.journal is None:
            return
        started = {}
        for kind, _seq, payload in self.server.journal.records():
            if kind == "run-start":
                started[payload["run"]] = payload["t0"]
        for msg in self.server.restored:
            self._command(msg, t0=started.get(msg.get("run")))
        for kind, _seq, payload in self.server.journal.records():
            if kind != "out":
                continue
            msg = msgpack.unpackb(payload, raw=False)
            run = self.runs.get(msg.get("run"))
            if run is not None and msg["type"] == "sample":
                run.next_volume = max(run.next_volume, msg["volume"] + 1)

    def _command(self, msg: dict, t0: float | None = None) -> None:
        kind = msg["type"]
        if kind == "start":
            rng = np.random.default_rng([self.seed, msg["run"]])
            n, R = msg["n_volumes"], len(self.rois)
            noise = np.zeros((n, R))
            innovations = rng.normal(0, self.ts_noise * np.sqrt(1 - self.ar1**2), (n, R))
            noise[0] = rng.normal(0, self.ts_noise, R)
            for k in range(1, n):
                noise[k] = self.ar1 * noise[k - 1] + innovations[k]
            t = np.arange(n) * msg["tr"]
            phase = rng.uniform(0, 2 * np.pi, R)
            drift = self.drift_sd * (np.sin(2 * np.pi * t[:, None] / 300.0 + phase) + t[:, None] / max(t[-1], 1))
            if t0 is None:  # live: the scanner starts now (rig clock); journaled so a restart keeps the timing
                t0 = self.server.clock()
                if self.server.journal is not None:
                    self.server.journal.append("run-start", msg["run"], {"run": msg["run"], "t0": t0})
                log.info("run %d started: %d volumes, TR %.2f s", msg["run"], n, msg["tr"])
            self.runs[msg["run"]] = _Run(msg["run"], msg["tr"], n, t0, noise, drift)
        elif kind == "event":
            run = self.runs.get(msg["run"])
            if run is None:
                log.error("event for run %d, which has not started", msg["run"])
                return
            run.events.append((msg["onset"], msg["duration"], self._response(msg["text"])))
        elif kind == "stop":
            run = self.runs.get(msg["run"])
            if run is not None:
                run.n_volumes = min(run.n_volumes, run.next_volume)

    def _response(self, text: str) -> np.ndarray:
        if text not in self._responses:
            self._responses[text] = np.asarray(self.subject([text]), np.float64).reshape(-1)
        return self._responses[text]

    def volume_values(self, run: _Run, k: int) -> np.ndarray:
        """The subject's BOLD signal at volume k of a run (noise and drift included)."""
        t = k * run.tr
        value = run.noise[k] + run.drift[k]
        if run.events:
            onsets = np.array([e[0] for e in run.events])
            durations = np.array([e[1] for e in run.events])
            amps = np.stack([e[2] for e in run.events])
            value = value + event_regressors(np.array([t]), onsets, durations)[0] @ amps
        return value

    # ----- serving -----
    def step(self, timeout: float = 0.005) -> None:
        """Handle commands, then emit every volume that is due."""
        for msg in self.server.poll(timeout):
            self._command(msg)
        now = self.server.clock()
        for run in self.runs.values():
            due = min(run.n_volumes, int((now - run.t0) / run.tr) + 1)
            while run.next_volume < due:
                k = run.next_volume
                t_k = run.t0 + k * run.tr
                self.server.send_reliable("trigger", run=run.run, volume=k, time=t_k)
                values = self.volume_values(run, k)
                self.server.send_reliable("sample", run=run.run, kind="fmri", volume=k, time=t_k,
                                          values=[float(v) for v in values])  # fmt: skip
                run.next_volume += 1

    def serve(self, duration: float | None = None) -> None:
        """Serve until interrupted (or for ``duration`` seconds)."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            self.step()
