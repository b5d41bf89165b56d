"""A rig for real recordings: relays ROI values that another program writes, one line per volume.

A scanner's real-time pipeline (the vendor's export with a script of the lab's own,
AFNI's or OpenNFT's ROI time series...) writes one line per volume to a pipe or a
file: the values of the channels in order, optionally preceded by the volume's
acquisition time (Unix seconds). :class:`RelayRig` serves the controller like the
simulated rigs: each run begins with the first volume acquired after the
controller's ``start`` (as the presenter's run begins with the first trigger after
its schedule), whose time is sent as the run's trigger; every line is a ``sample``.
Lines without a time are stamped with their arrival minus ``latency`` (the
pipeline's delay from acquisition to line). Volumes acquired outside a run (a scan
started early, dummy volumes) are counted and not sent; a malformed line (a wrong
count, not numbers, NaN, a time not after the previous volume's) is logged with its
number and skipped.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .peer import IDLE_POLL, NEW_STREAM, PeerServer
from .stream import sent_messages

log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[,;\s]+")


def follow(path: Path, poll: float = 0.01, from_start: bool = False) -> Iterator[str]:
    """Lines appended to ``path`` (as ``tail -f``: from its end unless ``from_start``); waits for it to exist."""
    while not path.exists():
        time.sleep(poll)
    with open(path, encoding="utf-8", errors="replace") as fh:
        if not from_start:
            fh.seek(0, 2)
        partial = ""
        while True:
            chunk = fh.readline()
            if not chunk:
                time.sleep(poll)
                continue
            partial += chunk
            if partial.endswith("\n"):  # a line the writer has finished
                yield partial
                partial = ""


@dataclass
class InputRun:
    """A run of an input rig: the controller's start, and how far its samples have been sent."""

    run: int
    tr: float
    n_volumes: int
    started: float  # when the controller's start arrived (this clock): the run's volumes are acquired after it
    next_volume: int = 0
    last_time: float = -math.inf


class InputRig:
    """The base of the rigs that serve another program's recording: its input (an iterator of lines or chunks) read
    on a thread of its own, the controller's runs (``start``, ``stop``, a new controller), a journal's restore, and
    serving until the input ends. A subclass takes each input item (:meth:`_take`) and sends what is due."""

    unit = "volume"  # what a run's samples are, in logs
    poll = 0.005  # s between looks at the input while serving

    def __init__(self, server: PeerServer, channels: list[str], source: Iterator, name: str) -> None:
        if not channels:
            raise ValueError("a rig needs the names of its channels, in the order of each sample's values")
        self.server, self.channels = server, list(channels)
        server.channels = self.channels  # announced in hello
        self.run: Any = None
        self.outside = 0  # what arrived while no run was open (or before its first volume)
        self._items: queue.Queue = queue.Queue()
        self.input_error: OSError | RuntimeError | None = None  # why the input could not be read, if it could not
        self._restore()
        threading.Thread(target=self._read, args=(source,), daemon=True, name=name).start()

    def _item(self, number: int, item: Any) -> tuple:
        """What the reading thread queues for an input item (the item's number counts from 1)."""
        return (item,)

    def _read(self, source: Iterator) -> None:
        try:
            for number, item in enumerate(source, 1):
                self._items.put(self._item(number, item))
        except (OSError, RuntimeError) as exc:  # e.g. a folder, a file that went away, a stream that cannot open:
            # serve() raises it when the queue ends
            log.error("cannot read the input: %s", exc)
            self.input_error = exc
        self._items.put(None)

    def _new_run(self, msg: dict) -> Any:
        """The state of a run the controller starts now."""
        return InputRun(msg["run"], msg["tr"], msg["n_volumes"], self.server.clock())

    def _sent(self, run: Any, msg: dict) -> None:
        """A sample of the open run that the journal says was sent (restoring after a restart)."""
        run.next_volume = max(run.next_volume, msg["volume"] + 1)

    def _restore(self) -> None:
        """After a restart on the journal: the open run, and how many of its volumes were sent."""
        for msg in self.server.restored:
            self._command(msg)
        run = self.run
        for msg in sent_messages(self.server.stream_records()) if run is not None else []:
            if msg["type"] == "sample" and msg["run"] == run.run:
                self._sent(run, msg)
        if run is not None and run.next_volume >= run.n_volumes:
            self.run = None

    def _command(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == NEW_STREAM:
            self.run = None
        elif kind == "start":
            self.run = self._new_run(msg)
            log.info("run %d: waiting for its first %s (%d %ss of %.3f s)", msg["run"], self.unit, msg["n_volumes"],
                     self.unit, msg["tr"])  # fmt: skip
        elif kind == "stop" and self.run is not None and self.run.run == msg["run"]:
            log.info("run %d stopped after %d %ss", self.run.run, self.run.next_volume, self.unit)
            self.run = None

    def _take(self, *item: Any) -> None:
        """Handle one input item."""
        raise NotImplementedError

    def _due(self) -> None:
        """Send what is due without a new input item (nothing, unless a subclass says)."""

    def step(self, timeout: float = IDLE_POLL) -> bool:
        """Serve the link, then handle the input that came; False once the input has ended."""
        for msg in self.server.poll(timeout):
            self._command(msg)
        going = True
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._items.put(None)
                going = False
                break
            self._take(*item)
        self._due()
        return going

    def serve(self, duration: float | None = None) -> None:
        """Serve until interrupted (or ``duration`` seconds); after the input ends, until what was sent is
        acknowledged. Raises the input's error, after sending what was read, if it could not be read to its end."""
        end = None if duration is None else time.monotonic() + duration
        ended_at = None
        while end is None or time.monotonic() < end:
            if not self.step(self.poll) and ended_at is None:
                ended_at = time.monotonic()
                log.warning("the input ended: nothing more to relay")
            if ended_at is not None and not self.server.outbox.pending and time.monotonic() - ended_at > 1.0:
                if self.input_error is not None:
                    raise self.input_error
                return


class RelayRig(InputRig):
    """Serves the lines of ``lines`` (an iterator, read on a thread of its own) as the samples of runs."""

    def __init__(self, server: PeerServer, channels: list[str], lines: Iterator[str] | IO[str],
                 latency: float = 0.0, kind: str = "fmri", gaps: bool = False, name: str = "relay-input",
                 confounds: list[str] | None = None) -> None:  # fmt: skip
        """``gaps``: a volume that comes more than 1.5 TR after the previous one is numbered by its time, the
        volumes between left missing (for inputs that stamp each volume at its acquisition, as LSL streams do);
        ``confounds``: the names of the quality measures each line carries after the channels' values."""
        self.latency, self.kind, self.gaps = latency, kind, gaps
        self.confounds = list(confounds or [])
        server.confounds = self.confounds  # announced in hello
        self.missed = 0  # volumes numbered past (gaps)
        self.malformed = 0
        super().__init__(server, channels, iter(lines), name)

    def _item(self, number: int, item: Any) -> tuple:
        return number, self.server.clock(), item  # stamped on arrival

    def _sent(self, run: Any, msg: dict) -> None:
        super()._sent(run, msg)
        run.last_time = max(run.last_time, msg["time"])

    def parse(self, number: int, arrived: float, line: str) -> tuple[float, list[float]] | None:
        """(acquisition time, values) of one line; None for a blank or comment line. Raises ValueError."""
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        fields = [f for f in _SPLIT.split(text) if f]
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"line {number} is not numbers: {text[:80]!r}") from None
        if not all(map(math.isfinite, numbers)):  # a NaN sample would spoil every estimate of its run
            raise ValueError(f"line {number} has a value that is not a finite number: {text[:80]!r}")
        n = len(self.channels) + len(self.confounds)
        if len(numbers) == n:
            return arrived - self.latency, numbers
        if len(numbers) == n + 1:
            return numbers[0], numbers[1:]
        names = ", ".join(self.channels + self.confounds)
        raise ValueError(f"line {number} has {len(numbers)} values; expected {n} ({names}), or a time and {n}: "
                         f"{text[:80]!r}")  # fmt: skip

    def _take(self, number: int, arrived: float, line: str) -> None:
        try:
            parsed = self.parse(number, arrived, line)
        except ValueError as exc:
            self.malformed += 1
            log.error("%s: skipped", exc)
            return
        if parsed is None:
            return
        t, values = parsed
        # A run's first volume is the first acquired after its start, as the presenter's trigger is the first
        # press after its schedule: a volume acquired before, whose line came after (the pipeline's delay), is not.
        if self.run is None or (self.run.next_volume == 0 and t < self.run.started):
            self.outside += 1
            if self.outside in (1, 10) or self.outside % 100 == 0:
                log.info("%d volume(s) so far acquired outside a run: not sent", self.outside)
            return
        run, k = self.run, self.run.next_volume
        if t <= run.last_time:  # the session file keeps samples in time order
            self.malformed += 1
            log.error("line %d: its time %.6f is not after the previous volume's (%.6f): skipped", number, t,
                      run.last_time)  # fmt: skip
            return
        if self.gaps and k > 0 and t - run.last_time > 1.5 * run.tr:
            skipped = round((t - run.last_time) / run.tr) - 1
            log.warning("run %d: volume(s) %d-%d never came (%.1f s without one); this one is volume %d", run.run,
                        k, k + skipped - 1, t - run.last_time, k + skipped)  # fmt: skip
            self.missed += skipped
            k = run.next_volume = k + skipped
            if k >= run.n_volumes:
                log.info("run %d over: its last volumes never came", run.run)
                self.run = None
                return
        run.last_time = t
        if k == 0:
            self.server.send_reliable("trigger", run=run.run, volume=0, time=t)
            log.info("run %d: first volume", run.run)
        n = len(self.channels)
        self.server.send_reliable("sample", run=run.run, kind=self.kind, volume=k, time=t, width=run.tr,
                                  values=values[:n], confounds=values[n:])  # fmt: skip
        run.next_volume += 1
        if run.next_volume >= run.n_volumes:
            log.info("run %d complete: %d volumes", run.run, run.n_volumes)
            self.run = None


def _fifo(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:  # opening waits for the writer: on the reader thread
        yield from fh


def open_input(spec: str, from_start: bool = False) -> Iterator[str] | IO[str]:
    """'-' for standard input, a FIFO (read until its writer closes it), else a file to follow as it grows."""
    if spec == "-":
        return sys.stdin
    path = Path(spec)
    return _fifo(path) if path.is_fifo() else follow(path, from_start=from_start)
