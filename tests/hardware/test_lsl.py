"""Lab Streaming Layer: the presenter's marker stream, received by an independent pylsl inlet on this machine."""

import json
import time

import pytest

from hardware.lsl import MARKER_TYPE, LSLError, pylsl

from ..support.netutil import free_port
from .test_presenter import _run_schedule, _trials, null_presenter


@pytest.fixture(scope="module")
def lsl():
    try:
        return pylsl()
    except LSLError as exc:
        pytest.skip(str(exc))


def _clock_offset(lsl) -> float:
    """Wall clock minus LSL's clock, from the tightest of many paired reads."""
    best = None
    for _ in range(50):
        a = lsl.local_clock()
        wall = time.time()
        b = lsl.local_clock()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) / 2)
    return best[1]


def test_every_onset_is_an_lsl_marker_at_the_flip(lsl):
    """The null presenter publishes each shown trial on an LSL marker stream: an independent inlet gets them all,
    in order, with their fields, each stamped within 2 ms of the onset the presenter measured and reported."""
    port = free_port()
    name = f"neurotwin-test-markers-{port}"
    proc = null_presenter(port, "--lsl-markers", name)
    try:
        found = lsl.resolve_byprop("name", name, minimum=1, timeout=20.0)
        assert found, f"no LSL stream named {name!r} resolved"
        info = found[0]
        assert info.type() == MARKER_TYPE and info.channel_format() == lsl.cf_string
        inlet = lsl.StreamInlet(info)
        inlet.open_stream(timeout=10.0)
        trials = [{**t, "condition": c} for t, c in zip(_trials(), ["drive", "baseline", "suppress"], strict=True)]
        got, _sent, client = _run_schedule(port, trials)
        assert [m["trial"] for m in got] == [0, 1, 2]
        markers = []
        end = time.monotonic() + 10.0
        while len(markers) < len(trials) and time.monotonic() < end:
            sample, stamp = inlet.pull_sample(timeout=0.5)
            if sample is not None:
                markers.append((json.loads(sample[0]), stamp))
        offset = _clock_offset(lsl)
        assert [m["trial"] for m, _ in markers] == [0, 1, 2]
        errors = [abs(stamp - (p["onset"] - offset)) * 1000 for (_, stamp), p in zip(markers, got, strict=True)]
        print(f"marker stamp - measured onset: max {max(errors):.3f} ms")
        for (marker, stamp), presented, trial in zip(markers, got, trials, strict=True):
            assert marker["run"] == 1 and marker["session"] == client.stream
            assert marker["stimulus_id"] == trial["stimulus_id"] and marker["condition"] == trial["condition"]
            assert marker["kind"] == trial["kind"] and marker["onset"] == presented["onset"]
            # The presenter's clock is the wall clock here; the marker's stamp is LSL's clock at the flip.
            assert abs(stamp - (presented["onset"] - offset)) < 0.002, (marker, stamp, presented["onset"] - offset)
        client.close()
    finally:
        proc.kill()
        proc.wait()


def test_no_marker_stream_unless_asked(lsl):
    """A presenter started without --lsl-markers publishes nothing on LSL."""
    port = free_port()
    proc = null_presenter(port)
    try:
        got, _sent, client = _run_schedule(port, _trials())
        assert len(got) == 3
        mine = [s for s in lsl.resolve_byprop("type", MARKER_TYPE, minimum=0, timeout=1.0)
                if s.name().endswith(str(port))]  # fmt: skip
        assert mine == []
        client.close()
    finally:
        proc.kill()
        proc.wait()
