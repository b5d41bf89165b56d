"""Simulated rigs: a scanner with a simulated subject, and an electrophysiology array.

A rig serves one controller through a :class:`~hardware.peer.PeerServer`. The
controller sends ``start`` (run, TR, volumes) and ``event`` (what was shown when,
in seconds after the run's first trigger); the fMRI rig emits a ``trigger`` and a
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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from acquisition.glm import event_regressors

from .peer import IDLE_POLL, NEW_STREAM, PeerServer
from .stream import sent_messages

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
    tr: float  # volume or window length (s)
    n_volumes: int
    t0: float
    state: dict = field(default_factory=dict)  # per-rig precomputed noise, drift...
    next_volume: int = 0
    events: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # onset, duration, response


class _SimulatedRig:
    """Commands, journal restore and emission of due volumes/windows, shared by the simulated rigs."""

    kind = "fmri"

    def __init__(self, server: PeerServer, subject: Callable, seed: int) -> None:
        self.server = server
        self.subject = subject
        self.rois = list(getattr(subject, "rois", ["roi0"]))
        server.channels = [str(r) for r in self.rois]  # announced in hello: what each sample's values are
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
            self._command(msg, t0=started.get(msg.get("run")))
        for msg in sent_messages(records):
            run = self.runs.get(msg.get("run"))
            if run is not None and msg["type"] == "sample":
                run.next_volume = max(run.next_volume, msg["volume"] + 1)

    def _prepare(self, run: _Run, rng: np.random.Generator) -> None:
        """Precompute a run's deterministic randomness."""

    def _command(self, msg: dict, t0: float | None = None, response: np.ndarray | None = None) -> None:
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
        subject: Callable,
        *,
        noise_sd: float | None = None,
        ar1: float = 0.4,
        drift_sd: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(server, subject, seed)
        beta_noise = noise_sd if noise_sd is not None else getattr(subject, "noise_sd", 0.623)
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
        value = run.state["noise"][k] + run.state["drift"][k]
        if run.events:
            onsets = np.array([e[0] for e in run.events])
            durations = np.array([e[1] for e in run.events])
            amps = np.stack([e[2] for e in run.events])
            value = value + event_regressors(np.array([k * run.tr]), onsets, durations)[0] @ amps
        return [float(v) for v in value], 0.0


class SimulatedEphysRig(_SimulatedRig):
    """An array of recording sites: Poisson spike counts per window from a tuning function.

    ``subject(stimuli) -> (n, sites)`` gives each site's evoked rate (spikes/s) while a
    stimulus is on (after ``latency``); sites fire at ``baseline`` spikes/s otherwise.
    """

    kind = "spikes"

    def __init__(self, server: PeerServer, subject: Callable, *, baseline: float = 5.0, latency: float = 0.05,
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


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 array (H, W, 3) from PNG bytes."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def gabor_tuning(n_sites: int = 16, size: int = 64, seed: int = 7) -> Callable:
    """A default ephys subject: V1-like sites, each the rectified response of one random Gabor filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    filters = []
    for _ in range(n_sites):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        cx, cy, sigma = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.5)
        xr = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        filters.append(env * np.cos(2 * np.pi * freq * xr / 2))
    bank = np.stack(filters).reshape(n_sites, -1)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)

    def tuning(stimuli: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        rows = []
        for s in stimuli:
            if isinstance(s, str):
                rows.append(np.full(n_sites, 10.0))
                continue
            gray = np.asarray(Image.fromarray(np.asarray(s, np.uint8)).convert("L").resize((size, size)), float)
            gray = (gray - gray.mean()) / 255.0
            rows.append(60.0 * np.maximum(bank @ gray.ravel(), 0) / np.sqrt(size))
        return np.array(rows)

    tuning.rois = tuple(f"site{i}" for i in range(n_sites))
    return tuning


def v4_tuning(n_sites: int = 8, seed: int = 11, layer: str = "_blocks.5") -> Callable:
    """V4-like sites: a sparse random readout of one EfficientNet-Lite0 layer at one place, softplus output.

    Each site pools 4 random channels of ``layer`` (14 x 14 map) under a Gaussian
    window at a random place near the centre; the drive is standardized on a fixed
    set of natural crops and turned into a rate of 20 softplus(1.5 z - 1) spikes/s.
    Not the twin: other layer, no spatial grid, a nonlinearity, Poisson noise in the rig.
    """
    from twin.vision import ImageFeatures, ImagePlan

    features = ImageFeatures(ImagePlan(model="efficientnet-lite0", layers=(layer,), grid=14))  # the whole 14x14 map
    rng = np.random.default_rng(seed)
    grid = np.arange(14)
    weights = np.zeros((n_sites, 80, 14, 14))
    for i in range(n_sites):
        cy, cx = rng.uniform(4, 10, 2)
        window = np.exp(-((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2) / (2 * 1.5**2))
        for c in rng.choice(80, 4, replace=False):
            weights[i, c] = rng.choice([1.0, 1.0, -0.5]) * window / window.sum()
    w = weights.reshape(n_sites, -1)

    def drive(images: Sequence[np.ndarray]) -> np.ndarray:
        return features(images)[layer] @ w.T

    # Standardize on a fixed natural set (crops of a few sample photos), so rates are comparable across sites.
    import skimage.data

    ref_imgs = []
    for name in ("astronaut", "chelsea", "coffee", "camera", "coins", "grass"):
        a = np.asarray(getattr(skimage.data, name)())
        a = np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]
        h, wd = a.shape[:2]
        for _ in range(8):
            s = int(rng.uniform(0.3, 1.0) * min(h, wd))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, wd - s + 1)
            ref_imgs.append(np.ascontiguousarray(a[y : y + s, x : x + s]))
    ref = drive(ref_imgs)
    mu, sd = ref.mean(0), ref.std(0) + 1e-9

    def tuning(stimuli: Sequence[Any]) -> np.ndarray:
        images = [s for s in stimuli if not isinstance(s, str)]
        rates = np.full((len(stimuli), n_sites), 5.0)
        if images:
            z = (drive(images) - mu) / sd
            idx = [i for i, s in enumerate(stimuli) if not isinstance(s, str)]
            rates[idx] = 20.0 * np.logaddexp(0, 1.5 * z - 1.0)
        return rates

    tuning.rois = tuple(f"site{i}" for i in range(n_sites))
    return tuning
