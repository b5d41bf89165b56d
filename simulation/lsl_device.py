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


class LSLSink:
    """Where a simulated device's samples go on LSL: an outlet (a channel per ROI or site) at ``rate`` Hz."""

    def __init__(self, name: str, type: str, channels: list[str], rate: float, source_id: str = "") -> None:
        lsl = pylsl()
        info = lsl.StreamInfo(name, type, len(channels), rate, lsl.cf_double64,
                              source_id or f"neurotwin-simulated:{name}")  # fmt: skip
        described = info.desc().append_child("channels")
        for channel in channels:
            described.append_child("channel").append_child_value("label", channel)
        self.outlet = lsl.StreamOutlet(info)

    def push(self, first: int, values: np.ndarray, stamps: np.ndarray) -> None:
        """Samples ``first ..`` with their acquisition times on LSL's clock."""
        self.outlet.push_chunk(values, stamps.tolist())


class SimulatedDevice:
    """A recording of ``1 / period`` samples per simulated second, each given to a sink once acquired, and the
    presenter's markers (on LSL) as the subject's events."""

    def __init__(self, subject: Subject, markers: str, *, period: float, speed: float, seed: int,
                 latency: float) -> None:  # fmt: skip
        self.lsl = pylsl()
        self.subject, self.rois = subject, [str(r) for r in subject.rois]
        subject.warm_up()  # (load its model before the recording starts)
        self.period, self.speed, self.latency = period, speed, latency
        self.rng = np.random.default_rng(seed)
        self.sink: Any = None  # what takes the samples: .push(first, values, LSL stamps)
        self.markers_name = markers
        self._resolver: Any = None
        self.inlet: Any = None
        self.events: list[tuple[float, float, np.ndarray]] = []  # onset, duration (simulated s from t0), response
        self._responses: dict[str, np.ndarray] = {}
        self.t0 = self.lsl.local_clock()  # sample 0's acquisition (LSL clock)
        self.next_sample = 0
        self.shown = 0

    def _connect(self) -> None:
        if self._resolver is None:  # (in the background: a resolve's first answer can take a second or two)
            self._resolver = self.lsl.ContinuousResolver(prop="name", value=self.markers_name)
        found = self._resolver.results()
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
        shown = []
        for (text,), stamp in zip(chunk, stamps, strict=True):
            marker = json.loads(text)
            seen = self._stimulus(marker)
            if seen is not None:
                shown.append((seen, stamp, float(marker.get("duration", self.period))))
        new = {key: stimulus for (key, stimulus), _, _ in shown if key not in self._responses}
        if new:  # the subject's responses to the stimuli that came, in one call (a model's batch)
            responses = np.asarray(self.subject(list(new.values())), np.float64).reshape(len(new), -1)
            self._responses.update(zip(new, responses, strict=True))
        for (key, _), stamp, duration in shown:
            self.events.append(((stamp - self.t0) * self.speed, duration, self._responses[key]))
            self.shown += 1

    def values(self, first: int, n: int) -> np.ndarray:
        """Samples ``first .. first + n - 1``: (n, channels)."""
        raise NotImplementedError

    def step(self) -> None:
        """Read the markers that came, then stream every sample acquired at least ``latency`` before the read
        began (markers shown while the subject's responses were computed are read at the next step, before the
        samples they change)."""
        horizon = self.lsl.local_clock() - self.latency
        self._markers()
        due = int((horizon - self.t0) * self.speed / self.period) + 1
        if due > self.next_sample:
            k = np.arange(self.next_sample, due)
            stamps = self.t0 + k * self.period / self.speed
            self.sink.push(self.next_sample, self.values(self.next_sample, len(k)), stamps)
            self.next_sample = due

    def serve(self, duration: float | None = None) -> None:
        """Record until interrupted (or for ``duration`` real seconds)."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            self.step()
            time.sleep(min(0.002, max(0.001, self.period / self.speed / 4)))


class ScannerSignal(SimulatedDevice):
    """A scanner's ROI signal at one volume per ``tr`` simulated seconds (``speed`` times real time): every shown
    sentence's response convolved with the canonical HRF, over AR(1) noise and slow drift as in the simulated
    scanner rig."""

    def __init__(self, subject: Subject, markers: str, *, tr: float = 2.0, speed: float = 1.0, seed: int = 0,
                 noise_sd: float | None = None, ar1: float = 0.4, drift_sd: float = 0.3,
                 latency: float = 0.02) -> None:  # fmt: skip
        """``markers``: the name of the presenter's LSL marker stream; ``latency``: real seconds from a volume's
        acquisition to its sample (the markers of onsets before it come in that time). The presenter starts a run
        when its first volume reaches the controller: a latency of more than the protocol's rest (in simulated
        time) shows the run's first trials late."""
        super().__init__(subject, markers, period=tr, speed=speed, seed=seed, latency=latency)
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


class SimulatedLSLScanner(ScannerSignal):
    """A scanner streaming its ROI signal over LSL (type ``fMRI``, a channel per ROI, one sample per volume)."""

    def __init__(self, subject: Subject, name: str, markers: str, *, tr: float = 2.0, speed: float = 1.0,
                 source_id: str = "", **options: Any) -> None:  # fmt: skip
        """``options``: :class:`ScannerSignal`'s (seed, noise_sd, ar1, drift_sd, latency)."""
        super().__init__(subject, markers, tr=tr, speed=speed, **options)
        self.sink = LSLSink(name, "fMRI", self.rois, speed / tr, source_id)


class SimulatedLSLArray(SimulatedDevice):
    """Streams each site's spike count per ``1 / rate`` simulated seconds (Poisson) over LSL (type ``Spikes``):
    ``baseline`` spikes/s, plus the subject's evoked rate while a stimulus is on (after ``response_latency``), as
    the simulated electrophysiology rig."""

    def __init__(self, subject: Subject, name: str, markers: str, *, rate: float = 1000.0, speed: float = 1.0,
                 seed: int = 0, baseline: float = 5.0, response_latency: float = 0.05, latency: float = 0.02,
                 source_id: str = "") -> None:  # fmt: skip
        super().__init__(subject, markers, period=1.0 / rate, speed=speed, seed=seed, latency=latency)
        self.sink = LSLSink(name, "Spikes", self.rois, speed * rate, source_id)
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
