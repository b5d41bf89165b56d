"""Lab Streaming Layer (LSL): the presenter's marker stream, and LSL streams as the input of a rig.

Every trial a presenter shows is published on an LSL string-marker stream (type ``Markers``), one JSON
marker per trial, stamped with LSL's clock at the trial's first flip, so LabRecorder or any other inlet
records the onsets beside the lab's data streams on one clock.

A rig reads a lab's LSL stream of ROI values, one sample per volume (a real-time fMRI pipeline such as
OpenNFT or Turbo-BrainVoyager): :func:`find_stream` resolves it, :func:`check_stream` refuses one with
other channels or rate, and :func:`volume_lines` turns its samples into the relay rig's lines, each with
its acquisition time mapped onto the rig's clock (LSL's clock sync with the sender, then this machine's
LSL clock to the rig's). ``pylsl`` is imported only when LSL is used; its wheel bundles liblsl.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from kit.clock import paired_reading
from kit.recording import LSLSource

log = logging.getLogger(__name__)

MARKER_TYPE = "Markers"
MARKER_FIELDS = ("session", "run", "trial", "stimulus_id", "condition", "kind", "text", "duration", "scheduled",
                 "onset")  # fmt: skip


class LSLError(RuntimeError):
    """LSL cannot be used here: pylsl is missing or liblsl does not load."""


class LSLStreamError(LSLError):
    """No LSL stream as asked for, or one that is not what the rig expects (named, with the expected value)."""


def protocol_source(path: Path) -> LSLSource:
    """The ``[recording.lsl]`` table of a protocol file, its channels and signal filled from the protocol's target
    and modality when it does not give them; LSLStreamError naming the file and the field for anything amiss."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LSLStreamError(f"protocol '{path}' cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    table = data.get("recording", {}).get("lsl") if isinstance(data.get("recording"), dict) else None
    if not isinstance(table, dict):
        raise LSLStreamError(f"protocol '{path}' has no [recording.lsl] table naming its LSL stream (docs/LSL.md)")
    try:
        source = LSLSource.model_validate(table)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["recording", "lsl", *map(str, err["loc"])])
        raise LSLStreamError(f"protocol '{path}': {where}: {err['msg'].removeprefix('Value error, ')}") from None
    rois = data.get("target", {}).get("rois") if isinstance(data.get("target"), dict) else None
    signal = source.signal or ("spike-counts" if data.get("modality") == "image" else "volumes")
    channels = source.channels or (rois if isinstance(rois, list) and rois else None)
    return source.model_copy(update={"signal": signal, "channels": channels})


def pylsl() -> Any:
    """The pylsl module, or LSLError saying why it cannot be used."""
    try:
        import pylsl as module

        module.local_clock()
    except (ImportError, OSError, RuntimeError) as exc:
        raise LSLError(f"Lab Streaming Layer is not available (pip install pylsl): {exc}") from None
    return module


class MarkerOutlet:
    """An LSL marker stream of shown trials: :meth:`push` one JSON marker per trial at its onset."""

    def __init__(self, name: str = "NeuroTwin markers", source_id: str = "", images: bool = False) -> None:
        """``images``: an image trial's marker carries the image (PNG bytes in base64, field ``image``), for a
        simulated participant on LSL."""
        lsl = pylsl()
        self.images = images
        self._clock = lsl.local_clock
        info = lsl.StreamInfo(name, MARKER_TYPE, 1, lsl.IRREGULAR_RATE, lsl.cf_string,
                              source_id or f"neurotwin-markers:{name}")  # fmt: skip
        fields = info.desc().append_child("fields")
        for field in (*MARKER_FIELDS, "image") if images else MARKER_FIELDS:
            fields.append_child_value("field", field)
        info.desc().append_child_value("encoding", "JSON object per marker")
        self.name = name
        self.outlet = lsl.StreamOutlet(info)

    def now(self) -> float:
        """LSL's clock (seconds)."""
        return self._clock()

    def push(self, marker: dict, timestamp: float) -> None:
        """Publish one marker (a JSON object) stamped ``timestamp`` on LSL's clock."""
        self.outlet.push_sample([json.dumps(marker, separators=(",", ":"))], timestamp)


def describe(info: Any) -> str:
    """An LSL stream as an operator recognizes it: name, type and source id."""
    return f"LSL stream '{info.name()}' (type {info.type() or '-'}, source id {info.source_id() or '-'})"


def find_stream(name: str | None = None, type: str | None = None, source_id: str | None = None,
                timeout: float = 10.0) -> Any:  # fmt: skip
    """The StreamInfo of the one stream with this name, type and source id (those given); LSLStreamError if none
    answers within ``timeout`` seconds."""
    lsl = pylsl()
    props = {"name": name, "type": type, "source_id": source_id}
    wanted = {k: v for k, v in props.items() if v}
    if not wanted:
        raise LSLStreamError("name an LSL stream: by its name, type or source id")
    for key, value in wanted.items():
        if "'" in value:
            raise LSLStreamError(f"an LSL stream's {key} cannot contain a quote: {value!r}")
    predicate = " and ".join(f"{k}='{v}'" for k, v in wanted.items())
    found = lsl.resolve_bypred(predicate, 1, timeout)
    if not found:
        what = ", ".join(f"{k} {v!r}" for k, v in wanted.items())
        raise LSLStreamError(f"no LSL stream with {what} answered within {timeout:g} s")
    return found[0]


def check_stream(info: Any, channels: list[str], rate: float | None = None) -> None:
    """Raise LSLStreamError unless the stream carries numbers on ``len(channels)`` channels (at nominal ``rate``
    Hz, if given)."""
    lsl = pylsl()
    if info.channel_format() == lsl.cf_string:
        raise LSLStreamError(f"{describe(info)} carries strings (markers?), not the numbers of {', '.join(channels)}")
    if info.channel_count() != len(channels):
        raise LSLStreamError(f"{describe(info)} has {info.channel_count()} channel(s); expected {len(channels)} "
                             f"({', '.join(channels)})")  # fmt: skip
    if rate is not None and abs(info.nominal_srate() - rate) > 1e-6 * max(1.0, rate):
        found = info.nominal_srate()
        said = "an irregular rate" if found == lsl.IRREGULAR_RATE else f"a nominal rate of {found:g} Hz"
        raise LSLStreamError(f"{describe(info)} has {said}; expected {rate:g} Hz")


def clock_origin(clock: Callable[[], float], lsl_clock: Callable[[], float], speed: float = 1.0,
                 reads: int = 30) -> float:  # fmt: skip
    """``clock`` minus ``speed`` times LSL's clock, from the most tightly bracketed of ``reads`` paired reads: a
    time ``t`` on LSL's clock is ``origin + speed * t`` on ``clock`` (``clock`` runs ``speed`` times faster)."""
    lsl_time, now = paired_reading(lsl_clock, clock, reads)
    return now - speed * lsl_time


def sample_chunks(info: Any, clock: Callable[[], float], speed: float = 1.0, silence: float = 5.0,
                  open_timeout: float = 10.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The stream's samples as they come, in chunks of (times, values): each time the sample's acquisition on
    ``clock`` (LSL's clock sync with the sender, then this machine's LSL clock to ``clock``), values (n, channels).

    The inlet recovers a lost stream by itself (the same source id, restarted); a silence of more than
    ``silence`` seconds (and two sample intervals) is logged when it begins and, with its length, when samples
    come again."""
    lsl = pylsl()
    inlet = lsl.StreamInlet(info, max_buflen=360, recover=True, processing_flags=lsl.proc_clocksync)
    inlet.open_stream(open_timeout)
    name = describe(info)
    if info.nominal_srate() > 0:  # (a regular stream's own gaps are no silence)
        silence = max(silence, 2.0 / info.nominal_srate())
    last = lsl.local_clock()
    silent = False
    origin, measured = clock_origin(clock, lsl.local_clock, speed), last
    while True:
        # (min_samples=1: whatever has come, at once; liblsl would otherwise wait to fill max_samples)
        chunk, stamps = inlet.pull_chunk(timeout=0.05, max_samples=4096, min_samples=1, as_numpy=True)
        here = lsl.local_clock()
        if here - measured > 10.0:  # (the two clocks may be slewed apart: measured again now and then)
            origin, measured = clock_origin(clock, lsl.local_clock, speed), here
        if len(stamps):
            if silent:
                log.warning("%s is back after %.1f s without samples", name, here - last)
                silent = False
            # each sample's time on this machine's LSL clock (clock-synced), then on the rig's
            yield origin + np.asarray(stamps, np.float64) * speed, np.asarray(chunk, np.float64)
            last = here
        elif not silent and here - last > silence:
            log.warning("%s: no samples for %.1f s (the inlet keeps trying to recover it)", name, here - last)
            silent = True


def volume_lines(info: Any, clock: Callable[[], float], speed: float = 1.0, silence: float = 5.0,
                 open_timeout: float = 10.0) -> Iterator[str]:  # fmt: skip
    """The stream's samples as relay lines (``time value value ...``): one volume per sample (see
    :func:`sample_chunks`)."""
    for times, values in sample_chunks(info, clock, speed, silence, open_timeout):
        for t, row in zip(times.tolist(), values.tolist(), strict=True):
            yield " ".join([repr(t), *map(repr, row)]) + "\n"
