"""A rig for continuous recordings (electrophysiology: many samples a second): spike counts per window of a run.

The input is a stream of per-sample spike counts per channel (an array's or a spike sorter's binned output, e.g.
0 or 1 per channel per millisecond), each sample stamped with its acquisition time. A run's window ``k`` covers
``[t0 + k TR, t0 + (k+1) TR)``, ``t0`` being the first sample acquired after the controller's ``start``; it is
sent as the run's sample ``k`` (kind ``spikes``, width TR) holding each channel's spike count in it, once a
sample past its end has come, or ``grace`` seconds after its end (the stream is silent). A window the stream
covered in part holds the count scaled to the whole window (the rate over the part recorded) and is logged; a
window without a sample is not sent (the controller records it as missing). Samples acquired outside a run, or
after their window was sent, are counted and logged, never sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .peer import PeerServer
from .relay import InputRig, InputRun

log = logging.getLogger(__name__)


@dataclass
class _Run(InputRun):
    t0: float | None = None  # its first sample's time
    times: list[np.ndarray] = field(default_factory=list)  # samples not yet in a sent window, in chunks
    values: list[np.ndarray] = field(default_factory=list)
    latest: float = -np.inf  # the last sample's time
    missing_from: int | None = None  # the first of the windows now being skipped


class WindowRig(InputRig):
    """Serves chunks of ``(times, values)`` (an iterator, read on a thread of its own) as spike-count windows."""

    kind = "spikes"
    unit = "window"
    poll = 0.002

    def __init__(self, server: PeerServer, channels: list[str], chunks: Iterator[tuple[np.ndarray, np.ndarray]],
                 rate: float, grace: float = 1.0, name: str = "window-input") -> None:  # fmt: skip
        """``rate``: the stream's sampling rate (Hz); ``grace``: seconds (rig clock) after a window's end when it
        is sent without a later sample."""
        if rate <= 0:
            raise ValueError(f"a continuous stream needs its sampling rate, not {rate!r}")
        self.rate, self.grace = float(rate), grace
        self.late = 0  # samples that came after their window was sent
        self.missed = 0  # windows without a sample
        self.partial = 0  # windows the stream covered in part
        self.received = 0  # samples counted in sent windows
        super().__init__(server, channels, chunks, name)

    def _new_run(self, msg: dict) -> Any:
        return _Run(msg["run"], msg["tr"], msg["n_volumes"], self.server.clock())

    def _sent(self, run: Any, msg: dict) -> None:
        super()._sent(run, msg)
        run.t0 = msg["time"] - msg["volume"] * run.tr

    def _take(self, chunk: tuple[np.ndarray, np.ndarray]) -> None:
        """Keep a chunk's samples of the open run (in time order)."""
        times, values = chunk
        run = self.run
        if values.ndim != 2 or values.shape[1] != len(self.channels):
            log.error("a chunk of %s values per sample, expected %d (%s): skipped", values.shape[1:] or "no",
                      len(self.channels), ", ".join(self.channels))  # fmt: skip
            return
        if run is None:
            self._outside(len(times))
            return
        if run.t0 is None:
            keep = times >= run.started
            self._outside(int((~keep).sum()))
            times, values = times[keep], values[keep]
            if not len(times):
                return
            run.t0 = float(times[0])
            log.info("run %d: first sample", run.run)
        sent_until = run.t0 + run.next_volume * run.tr - 0.5 / self.rate
        keep = times >= max(sent_until, run.latest + 1e-9)  # (in time order: a repeated sample is late too)
        if not keep.all():
            self.late += int((~keep).sum())
            log.warning("run %d: %d sample(s) came after their window was sent (or out of order): not sent",
                        run.run, int((~keep).sum()))  # fmt: skip
            times, values = times[keep], values[keep]
        if len(times):
            run.times.append(times)
            run.values.append(values)
            run.latest = float(times[-1])

    def _outside(self, n: int) -> None:
        if n:
            before, self.outside = self.outside, self.outside + n
            if before == 0 or before // 10000 != self.outside // 10000:
                log.info("%d sample(s) so far acquired outside a run: not sent", self.outside)

    def _due(self) -> None:
        """Send every window of the open run that is complete (a later sample came) or overdue (``grace``)."""
        now = self.server.clock()
        run = self.run
        while run is not None and run.t0 is not None and run.next_volume < run.n_volumes:
            k = run.next_volume
            start = run.t0 + k * run.tr
            end = start + run.tr - 0.5 / self.rate  # (window edges half a sample before the nominal times)
            if run.latest < end and now < end + 0.5 / self.rate + self.grace:
                return
            times = np.concatenate(run.times) if run.times else np.empty(0)
            values = np.concatenate(run.values) if run.values else np.empty((0, len(self.channels)))
            inside = int(np.searchsorted(times, end, "left"))
            run.times, run.values = ([times[inside:]], [values[inside:]]) if inside < len(times) else ([], [])
            run.next_volume += 1
            if inside == 0:
                run.missing_from = k if run.missing_from is None else run.missing_from
                self.missed += 1
            else:
                self._gap_over(run, k)
                self._send(run, k, start, values[:inside])
            if run.next_volume >= run.n_volumes:
                self._gap_over(run, run.n_volumes)
                log.info("run %d complete: %d windows", run.run, run.n_volumes)
                self.run = run = None

    def _gap_over(self, run: _Run, k: int) -> None:
        if run.missing_from is not None:
            which = f"window {k - 1}" if k - 1 == run.missing_from else f"windows {run.missing_from}-{k - 1}"
            log.warning("run %d: %s got no sample (%.2f s): missing", run.run, which, (k - run.missing_from) * run.tr)
            run.missing_from = None

    def _send(self, run: _Run, k: int, start: float, values: np.ndarray) -> None:
        expected = run.tr * self.rate
        counts = values.sum(axis=0)
        if len(values) < expected - 0.5:  # covered in part: the rate over the part recorded
            self.partial += 1
            log.warning("run %d: window %d got %d of its %.0f samples: counts scaled to the window", run.run, k,
                        len(values), expected)  # fmt: skip
            counts = counts * (expected / len(values))
        self.received += len(values)
        self.server.send_reliable("sample", run=run.run, kind=self.kind, volume=k, time=start, width=run.tr,
                                  values=[float(c) for c in counts])  # fmt: skip
