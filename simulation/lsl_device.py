"""A simulated LSL device: a scanner with a simulated participant that streams ROI values over Lab Streaming Layer.

It is what a lab's real-time fMRI pipeline is to ``neurotwin rig lsl``: an LSL outlet (type ``fMRI``, one channel
per ROI, one sample per volume at its acquisition time) that scans from the moment it starts, whatever the
controller does. The participant sees what the presenter shows: the device reads the presenter's LSL marker
stream (``neurotwin present --lsl-markers``), and each sentence shown adds the subject's expected response,
convolved with the canonical HRF, to the volumes that follow, over AR(1) noise and slow drift as in the simulated
scanner rig. A volume goes out once it is acquired and every marker before it is in (a short latency); its LSL
timestamp is its acquisition time.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from hardware.lsl import pylsl

from .rigs import BETA_NOISE_PER_TS_NOISE, evoked
from .subjects import Subject

log = logging.getLogger(__name__)


class SimulatedLSLScanner:
    """Streams the subject's ROI signal at one volume per ``tr`` simulated seconds (``speed`` times real time)."""

    def __init__(self, subject: Subject, name: str, markers: str, *, tr: float = 2.0, speed: float = 1.0,
                 seed: int = 0, noise_sd: float | None = None, ar1: float = 0.4, drift_sd: float = 0.3,
                 latency: float = 0.02, source_id: str = "") -> None:  # fmt: skip
        """``markers``: the name of the presenter's LSL marker stream; ``latency``: real seconds from a volume's
        acquisition to its sample (markers of onsets before it arrive in that time)."""
        self.lsl = pylsl()
        self.subject, self.rois = subject, [str(r) for r in subject.rois]
        subject.warm_up()  # (load its model before the scan starts)
        self.tr, self.speed, self.latency = tr, speed, latency
        self.ts_noise = (noise_sd if noise_sd is not None else subject.noise_sd) / BETA_NOISE_PER_TS_NOISE
        self.ar1, self.drift_sd = ar1, drift_sd
        self.rng = np.random.default_rng(seed)
        self.phase = self.rng.uniform(0, 2 * np.pi, len(self.rois))
        self.noise = self.rng.normal(0, self.ts_noise, len(self.rois))
        info = self.lsl.StreamInfo(name, "fMRI", len(self.rois), speed / tr, self.lsl.cf_double64,
                                   source_id or f"neurotwin-simulated:{name}")  # fmt: skip
        channels = info.desc().append_child("channels")
        for roi in self.rois:
            channels.append_child("channel").append_child_value("label", roi)
        self.outlet = self.lsl.StreamOutlet(info)
        self.markers_name = markers
        self.inlet: Any = None
        self.events: list[tuple[float, float, np.ndarray]] = []  # onset, duration (simulated s from t0), response
        self._responses: dict[str, np.ndarray] = {}
        self.t0 = self.lsl.local_clock()  # volume 0's acquisition (LSL clock)
        self.next_volume = 0
        self.shown = 0

    def _connect(self) -> None:
        found = self.lsl.resolve_byprop("name", self.markers_name, 1, 0.2)
        if found:
            self.inlet = self.lsl.StreamInlet(found[0], recover=True, processing_flags=self.lsl.proc_clocksync)
            self.inlet.open_stream(5.0)
            log.info("reading the presenter's markers from LSL stream '%s'", self.markers_name)

    def _markers(self) -> None:
        if self.inlet is None:
            self._connect()
            return
        chunk, stamps = self.inlet.pull_chunk(timeout=0.0)
        for (text,), stamp in zip(chunk, stamps, strict=True):
            marker = json.loads(text)
            if marker.get("kind") != "text":
                continue
            sentence = marker.get("text", "")
            if sentence not in self._responses:
                self._responses[sentence] = np.asarray(self.subject([sentence]), np.float64).reshape(-1)
            onset = (stamp - self.t0) * self.speed
            self.events.append((onset, float(marker.get("duration", self.tr)), self._responses[sentence]))
            self.shown += 1

    def value(self, k: int) -> np.ndarray:
        """Volume k: drift, AR(1) noise and every shown sentence's HRF-convolved response."""
        t = k * self.tr
        self.noise = self.ar1 * self.noise + self.rng.normal(0, self.ts_noise * np.sqrt(1 - self.ar1**2),
                                                             len(self.rois))  # fmt: skip
        drift = self.drift_sd * np.sin(2 * np.pi * t / 300.0 + self.phase)
        return self.noise + drift + evoked(t, self.events, len(self.rois))

    def step(self) -> None:
        """Read the markers that came, then stream every volume acquired at least ``latency`` ago."""
        self._markers()
        now = self.lsl.local_clock()
        while self.t0 + self.next_volume * self.tr / self.speed + self.latency <= now:
            k = self.next_volume
            self.outlet.push_sample(self.value(k).tolist(), self.t0 + k * self.tr / self.speed)
            self.next_volume += 1

    def serve(self, duration: float | None = None) -> None:
        """Scan until interrupted (or for ``duration`` real seconds)."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            self.step()
            time.sleep(min(0.002, self.tr / self.speed / 4))
