"""Simulated LSL devices: a scanner, or a recording array, with a simulated participant, streaming over Lab
Streaming Layer.

They are what a lab's devices are to ``neurotwin rig lsl``: an LSL outlet that records from the moment it starts,
whatever the controller does. :class:`SimulatedLSLScanner` streams ROI values (type ``fMRI``, one channel per ROI,
one sample per volume at its acquisition time), as a real-time fMRI pipeline does; :class:`SimulatedLSLArray`
streams spike counts (type ``Spikes``, one channel per site, one sample per millisecond or per ``1/rate`` s), as an
electrophysiology array does. The participant sees what the presenter shows: a device reads the presenter's LSL
marker stream (``neurotwin present --lsl-markers``; for images, with ``--lsl-marker-images``), and each stimulus
shown adds the subject's response to what follows. A sample goes out once it is acquired and every marker before it
is in (a short latency); its LSL timestamp is its acquisition time.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import numpy as np

from hardware.lsl import pylsl
from kit.images import decode_png

from .rigs import BETA_NOISE_PER_TS_NOISE, evoked
from .subjects import Subject

log = logging.getLogger(__name__)


class _SimulatedLSLDevice:
    """An outlet of ``1 / period`` samples per simulated second, and the presenter's markers as the subject's
    events."""

    type = ""

    def __init__(self, subject: Subject, name: str, markers: str, *, period: float, speed: float, seed: int,
                 latency: float, source_id: str) -> None:  # fmt: skip
        self.lsl = pylsl()
        self.subject, self.rois = subject, [str(r) for r in subject.rois]
        subject.warm_up()  # (load its model before the recording starts)
        self.period, self.speed, self.latency = period, speed, latency
        self.rng = np.random.default_rng(seed)
        info = self.lsl.StreamInfo(name, self.type, len(self.rois), speed / period, self.lsl.cf_double64,
                                   source_id or f"neurotwin-simulated:{name}")  # fmt: skip
        channels = info.desc().append_child("channels")
        for roi in self.rois:
            channels.append_child("channel").append_child_value("label", roi)
        self.outlet = self.lsl.StreamOutlet(info)
        self.markers_name = markers
        self.inlet: Any = None
        self.events: list[tuple[float, float, np.ndarray]] = []  # onset, duration (simulated s from t0), response
        self._responses: dict[str, np.ndarray] = {}
        self.t0 = self.lsl.local_clock()  # sample 0's acquisition (LSL clock)
        self.next_sample = 0
        self.shown = 0

    def _connect(self) -> None:
        found = self.lsl.resolve_byprop("name", self.markers_name, 1, 0.2)
        if found:
            self.inlet = self.lsl.StreamInlet(found[0], recover=True, processing_flags=self.lsl.proc_clocksync)
            self.inlet.open_stream(5.0)
            log.info("reading the presenter's markers from LSL stream '%s'", self.markers_name)

    def _stimulus(self, marker: dict) -> tuple[str, Any] | None:
        """(key, stimulus) a marker shows the subject: its sentence, or its image (PNG in base64); None for a
        fixation, or an image marker without its pixels."""
        if marker.get("kind") == "text":
            return "text:" + marker.get("text", ""), marker.get("text", "")
        if marker.get("kind") == "image" and marker.get("image"):
            data = base64.b64decode(marker["image"])
            return "image:" + marker["image"][-64:] + str(len(data)), decode_png(data)
        if marker.get("kind") == "image" and not self.shown:
            log.warning("image markers without their pixels: start the presenter with --lsl-marker-images")
        return None

    def _markers(self) -> None:
        if self.inlet is None:
            self._connect()
            return
        chunk, stamps = self.inlet.pull_chunk(timeout=0.0)
        for (text,), stamp in zip(chunk, stamps, strict=True):
            marker = json.loads(text)
            seen = self._stimulus(marker)
            if seen is None:
                continue
            key, stimulus = seen
            if key not in self._responses:
                self._responses[key] = np.asarray(self.subject([stimulus]), np.float64).reshape(-1)
            onset = (stamp - self.t0) * self.speed
            self.events.append((onset, float(marker.get("duration", self.period)), self._responses[key]))
            self.shown += 1

    def values(self, first: int, n: int) -> np.ndarray:
        """Samples ``first .. first + n - 1``: (n, channels)."""
        raise NotImplementedError

    def step(self) -> None:
        """Read the markers that came, then stream every sample acquired at least ``latency`` ago."""
        self._markers()
        due = int((self.lsl.local_clock() - self.latency - self.t0) * self.speed / self.period) + 1
        if due > self.next_sample:
            k = np.arange(self.next_sample, due)
            stamps = self.t0 + k * self.period / self.speed
            self.outlet.push_chunk(self.values(self.next_sample, len(k)), stamps.tolist())
            self.next_sample = due

    def serve(self, duration: float | None = None) -> None:
        """Record until interrupted (or for ``duration`` real seconds)."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            self.step()
            time.sleep(min(0.002, max(0.001, self.period / self.speed / 4)))


class SimulatedLSLScanner(_SimulatedLSLDevice):
    """Streams the subject's ROI signal at one volume per ``tr`` simulated seconds (``speed`` times real time):
    every shown sentence's response convolved with the canonical HRF, over AR(1) noise and slow drift as in the
    simulated scanner rig."""

    type = "fMRI"

    def __init__(self, subject: Subject, name: str, markers: str, *, tr: float = 2.0, speed: float = 1.0,
                 seed: int = 0, noise_sd: float | None = None, ar1: float = 0.4, drift_sd: float = 0.3,
                 latency: float = 0.02, source_id: str = "") -> None:  # fmt: skip
        """``markers``: the name of the presenter's LSL marker stream; ``latency``: real seconds from a volume's
        acquisition to its sample (markers of onsets before it arrive in that time)."""
        super().__init__(subject, name, markers, period=tr, speed=speed, seed=seed, latency=latency,
                         source_id=source_id)  # fmt: skip
        self.tr = tr
        self.ts_noise = (noise_sd if noise_sd is not None else subject.noise_sd) / BETA_NOISE_PER_TS_NOISE
        self.ar1, self.drift_sd = ar1, drift_sd
        self.phase = self.rng.uniform(0, 2 * np.pi, len(self.rois))
        self.noise = self.rng.normal(0, self.ts_noise, len(self.rois))

    def values(self, first: int, n: int) -> np.ndarray:
        """Volumes: drift, AR(1) noise and every shown sentence's HRF-convolved response."""
        out = np.empty((n, len(self.rois)))
        for i in range(n):
            t = (first + i) * self.tr
            self.noise = self.ar1 * self.noise + self.rng.normal(0, self.ts_noise * np.sqrt(1 - self.ar1**2),
                                                                 len(self.rois))  # fmt: skip
            drift = self.drift_sd * np.sin(2 * np.pi * t / 300.0 + self.phase)
            out[i] = self.noise + drift + evoked(t, self.events, len(self.rois))
        return out


class SimulatedLSLArray(_SimulatedLSLDevice):
    """Streams each site's spike count per ``1 / rate`` simulated seconds (Poisson): ``baseline`` spikes/s, plus
    the subject's evoked rate while a stimulus is on (after ``response_latency``), as the simulated
    electrophysiology rig."""

    type = "Spikes"

    def __init__(self, subject: Subject, name: str, markers: str, *, rate: float = 1000.0, speed: float = 1.0,
                 seed: int = 0, baseline: float = 5.0, response_latency: float = 0.05, latency: float = 0.01,
                 source_id: str = "") -> None:  # fmt: skip
        super().__init__(subject, name, markers, period=1.0 / rate, speed=speed, seed=seed, latency=latency,
                         source_id=source_id)  # fmt: skip
        self.baseline, self.response_latency = baseline, response_latency

    def values(self, first: int, n: int) -> np.ndarray:
        """Spike counts of samples ``first ..``: Poisson with each site's rate over the sample's interval."""
        t = (first + np.arange(n)) * self.period  # each sample's interval [t, t + period)
        rate = np.full((n, len(self.rois)), self.baseline)
        self.events = [e for e in self.events if e[0] + self.response_latency + e[1] > t[0]]  # (those over: gone)
        for onset, duration, response in self.events:
            a = onset + self.response_latency
            overlap = np.clip(np.minimum(t + self.period, a + duration) - np.maximum(t, a), 0.0, None)
            if overlap.any():
                rate += np.outer(overlap / self.period, np.clip(response, 0, None))
        return self.rng.poisson(rate * self.period).astype(np.float64)
