"""Lab Streaming Layer: the presenter's marker stream, received by an independent pylsl inlet on this machine."""

import json
import os
import subprocess
import sys
import time

import pytest

from hardware.lsl import MARKER_TYPE

from ..support.netutil import ROOT, free_port, wait_up
from .test_presenter import _run_schedule, _trials, null_presenter


def _clock_offset(lsl) -> float:
    """Wall clock minus LSL's clock, from the tightest of many paired reads."""
    from kit.clock import paired_reading

    lsl_time, wall = paired_reading(lsl.local_clock, time.time)
    return wall - lsl_time


def _markers_of(lsl, name: str, proc: subprocess.Popen, port: int, trials: list[dict]):
    """Run ``trials`` on the presenter ``proc`` (serving on ``port``) with an independent inlet on its marker stream
    ``name``: (its presented messages, [(marker, LSL stamp)], the controller's stream id)."""
    try:
        found = lsl.resolve_byprop("name", name, minimum=1, timeout=60.0)
        assert found, f"no LSL stream named {name!r} resolved"
        info = found[0]
        assert info.type() == MARKER_TYPE and info.channel_format() == lsl.cf_string
        inlet = lsl.StreamInlet(info)
        inlet.open_stream(timeout=10.0)
        got, _sent, client = _run_schedule(port, trials, timeout=120)
        markers = []
        end = time.monotonic() + 10.0
        while len(markers) < len(trials) and time.monotonic() < end:
            sample, stamp = inlet.pull_sample(timeout=0.5)
            if sample is not None:
                markers.append((json.loads(sample[0]), stamp))
        client.close()
        return got, markers, client.stream
    finally:
        proc.kill()
        proc.wait()


def test_every_onset_is_an_lsl_marker_at_the_flip(lsl):
    """The null presenter publishes each shown trial on an LSL marker stream: an independent inlet gets them all,
    in order, with their fields, each stamped within 2 ms of the onset the presenter measured and reported."""
    port = free_port()
    name = f"neurotwin-test-markers-{port}"
    trials = [{**t, "condition": c} for t, c in zip(_trials(), ["drive", "baseline", "suppress"], strict=True)]
    got, markers, stream = _markers_of(lsl, name, null_presenter(port, "--lsl-markers", name), port, trials)
    offset = _clock_offset(lsl)
    assert [m["trial"] for m in got] == [0, 1, 2]
    assert [m["trial"] for m, _ in markers] == [0, 1, 2]
    errors = [abs(stamp - (p["onset"] - offset)) * 1000 for (_, stamp), p in zip(markers, got, strict=True)]
    print(f"marker stamp - measured onset: max {max(errors):.3f} ms")
    for (marker, stamp), presented, trial in zip(markers, got, trials, strict=True):
        assert marker["run"] == 1 and marker["session"] == stream
        assert marker["stimulus_id"] == trial["stimulus_id"] and marker["condition"] == trial["condition"]
        assert marker["kind"] == trial["kind"] and marker["onset"] == presented["onset"]
        assert "image" not in marker  # (only with --lsl-marker-images)
        # The presenter's clock is the wall clock here; the marker's stamp is LSL's clock at the flip.
        assert abs(stamp - (presented["onset"] - offset)) < 0.002, (marker, stamp, presented["onset"] - offset)


def test_psychopy_publishes_each_onset_within_a_frame(lsl, xvfb):
    """PsychoPy in a real window under Xvfb: every trial's marker, stamped on LSL's clock, lies within one frame of
    the flip the presenter measured; with --lsl-marker-images, the image trial's marker carries the PNG shown."""
    import base64

    port = free_port()
    name = f"neurotwin-test-psychopy-markers-{port}"
    proc = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "present", "--bind", f"tcp://127.0.0.1:{port}",
                             "--trigger-key", "", "--size", "800x600", "--lsl-markers", name, "--lsl-marker-images"],
                            cwd=ROOT, env={**os.environ, "DISPLAY": xvfb}, stderr=subprocess.DEVNULL)  # fmt: skip
    got, markers, _ = _markers_of(lsl, name, proc, port, _trials())
    offset = _clock_offset(lsl)
    frame = max(max(m["frame_interval"] for m in got), 1 / 60)  # Xvfb flips without vsync: at least 60 Hz
    assert [m["trial"] for m, _ in markers] == [m["trial"] for m in got] == [0, 1, 2]
    errors = [abs(stamp - (p["onset"] - offset)) for (_, stamp), p in zip(markers, got, strict=True)]
    print(f"PsychoPy: marker stamp - measured onset: max {max(errors) * 1000:.3f} ms (a frame: {frame * 1000:.1f} ms)")
    assert max(errors) < frame
    assert [m["kind"] for m, _ in markers] == ["text", "image", "text"]
    assert base64.b64decode(markers[1][0]["image"]) == _trials()[1]["image"]


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


def _outlet(lsl, name: str, channels: int = 2, rate: float = 10.0, source_id: str = ""):
    info = lsl.StreamInfo(name, "fMRI", channels, rate, lsl.cf_float32, source_id or name)
    return lsl.StreamOutlet(info)


def _lsl_rig(port: int, name: str, *options: str, **run) -> subprocess.Popen:
    named = ["--name", name] if name else []
    return subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "lsl", *named, "--bind",
                             f"tcp://127.0.0.1:{port}", "--heartbeat", "0.3", *options], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, **run)  # fmt: skip


def test_the_lsl_rig_serves_a_streams_volumes_at_their_acquisition_times(lsl):
    """A device's LSL stream (an ROI pair at 10 Hz, from this test) -> `neurotwin rig lsl` -> a controller: each
    volume after the run's start is a sample with the values sent and its acquisition time; volumes that never
    came (the device silent for 0.5 s) are numbered past, not given to the next volumes."""
    from hardware import PeerClient

    port = free_port()
    name = f"neurotwin-test-roi-{port}"
    outlet = _outlet(lsl, name)
    proc = _lsl_rig(port, name, "--channels", "lang,md", "--rate", "10")
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    try:
        wait_up(client, 30, "the LSL rig")
        assert client.peer_channels == ["lang", "md"]
        offset = _clock_offset(lsl)
        outlet.push_sample([9.0, 9.0])  # before the run: not a sample
        time.sleep(0.3)
        client.send_reliable("start", run=1, tr=0.1, n_volumes=12)
        got: list[dict] = []
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            got += client.poll(0.02)
        sent = []
        for k in range(12):
            if 4 <= k < 9:
                time.sleep(0.1)  # volumes 4-8 never come
                continue
            stamp = lsl.local_clock()
            outlet.push_sample([float(k), -float(k)], stamp)
            sent.append((k, stamp))
            time.sleep(0.1)
        end = time.monotonic() + 5
        while sum(m["type"] == "sample" for m in got) < len(sent) and time.monotonic() < end:
            got += client.poll(0.05)
        samples = [m for m in got if m["type"] == "sample"]
        assert [m["volume"] for m in samples] == [k for k, _ in sent] == [0, 1, 2, 3, 9, 10, 11]
        assert [m["values"] for m in samples] == [[float(k), -float(k)] for k, _ in sent]
        errors = [abs(m["time"] - (stamp + offset)) for m, (_, stamp) in zip(samples, sent, strict=True)]
        print(f"sample time - acquisition time: max {max(errors) * 1000:.3f} ms")
        assert max(errors) < 0.005
        assert [m["volume"] for m in got if m["type"] == "trigger"] == [0]
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
    assert "volume(s) 4-8 never came" in proc.stderr.read()


@pytest.mark.parametrize("options, expected", [
    (["--channels", "lang,md,extra"], "has 2 channel(s); expected 3 (lang, md, extra)"),
    (["--channels", "lang,md", "--rate", "0.5"], "has a nominal rate of 10 Hz; expected 0.5 Hz"),
])  # fmt: skip
def test_a_stream_that_is_not_what_the_rig_expects_is_named(lsl, options, expected):
    port = free_port()
    name = f"neurotwin-test-wrong-{port}"
    _outlet_kept = _outlet(lsl, name)
    done = _lsl_rig(port, name, *options, "--resolve-timeout", "20")
    _, err = done.communicate(timeout=60)
    assert done.returncode != 0
    assert f"LSL stream '{name}' (type fMRI, source id {name}) {expected}" in err
    del _outlet_kept


def test_no_stream_is_a_one_line_error(lsl):
    done = _lsl_rig(free_port(), "no-such-stream-anywhere", "--channels", "lang", "--resolve-timeout", "1")
    _, err = done.communicate(timeout=60)
    assert done.returncode != 0 and "no LSL stream with name 'no-such-stream-anywhere' answered within 1 s" in err


def test_the_lsl_rig_counts_a_1khz_spike_stream_per_window(lsl):
    """An array's spike counts at 1 kHz on 3 channels -> `neurotwin rig lsl --signal spike-counts` -> a controller:
    each window of the run holds every channel's count of the samples acquired in it, exactly; a window the stream
    covered in half holds twice its count (the rate over the part recorded); a window without a sample is not
    sent."""
    import numpy as np

    from hardware import PeerClient

    port = free_port()
    name = f"neurotwin-test-spikes-{port}"
    outlet = lsl.StreamOutlet(lsl.StreamInfo(name, "Spikes", 3, 1000.0, lsl.cf_float32, name))
    proc = _lsl_rig(port, name, "--channels", "a,b,c", "--rate", "1000", "--signal", "spike-counts")
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    counts = np.random.default_rng(0).poisson(0.05, (1000, 3)).astype(np.float64)
    gone = np.zeros(1000, bool)
    gone[350:550] = True  # window 3 gets half its samples, window 4 none, window 5 half
    try:
        wait_up(client, 30, "the LSL rig")
        assert client.peer_channels == ["a", "b", "c"]
        client.send_reliable("start", run=1, tr=0.1, n_volumes=10)
        got: list[dict] = []
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            got += client.poll(0.02)
        base = lsl.local_clock()
        for i in range(0, 1000, 10):
            keep = ~gone[i : i + 10]
            if keep.any():
                stamps = base + (i + np.flatnonzero(keep)) / 1000.0
                outlet.push_chunk(counts[i : i + 10][keep], stamps.tolist())
            while lsl.local_clock() < base + (i + 10) / 1000.0:
                time.sleep(0.001)
        outlet.push_chunk(np.zeros((5, 3)), (base + np.arange(1000, 1005) / 1000.0).tolist())  # (ends window 9)
        end = time.monotonic() + 10
        while sum(m["type"] == "sample" for m in got) < 9 and time.monotonic() < end:
            got += client.poll(0.05)
        samples = [m for m in got if m["type"] == "sample"]
        assert [m["volume"] for m in samples] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert {m["kind"] for m in samples} == {"spikes"} and {m["width"] for m in samples} == {0.1}
        for m in samples:
            k = m["volume"]
            window = counts[k * 100 : (k + 1) * 100][~gone[k * 100 : (k + 1) * 100]]
            expected = window.sum(axis=0) * (100 / len(window))
            assert np.allclose(m["values"], expected), (k, m["values"], expected)
        times = np.array([m["time"] for m in samples])
        assert np.allclose(np.diff(times), np.diff([m["volume"] for m in samples]) * 0.1)
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
    err = proc.stderr.read()
    assert "window 3 got 50 of its 100 samples" in err, err[-2000:]
    assert "run 1: window 4 got no sample (0.10 s): missing" in err, err[-2000:]


def test_the_lsl_rig_takes_its_stream_from_the_protocol(lsl, tmp_path):
    """`rig lsl --protocol FILE`: the stream named in the protocol's [recording.lsl] table, its channels the
    protocol's target ROIs; a protocol without the table is refused, naming it."""
    from hardware import PeerClient

    port = free_port()
    name = f"neurotwin-test-protocol-roi-{port}"
    _outlet_kept = _outlet(lsl, name, channels=1, rate=0.5)
    protocol = tmp_path / "live.toml"
    live = (ROOT / "tests" / "protocols" / "live_localizer.toml").read_text()
    protocol.write_text(live + f'\n[recording.lsl]\nname = "{name}"\nrate = 0.5\n')
    proc = _lsl_rig(port, "", "--protocol", str(protocol))
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    try:
        wait_up(client, 30, "the LSL rig")
        assert client.peer_channels == ["lang"]  # the protocol's target.rois
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
    assert f"LSL stream '{name}'" in proc.stderr.read()
    plain = tmp_path / "plain.toml"
    plain.write_text(live)
    done = _lsl_rig(free_port(), "", "--protocol", str(plain))
    _, err = done.communicate(timeout=60)
    assert done.returncode != 0 and "has no [recording.lsl] table naming its LSL stream" in err
    del _outlet_kept


def test_a_spike_count_rig_killed_mid_run_goes_on_from_its_journal(lsl, tmp_path):
    """`rig lsl --signal spike-counts --journal J` killed mid-run and started again on its journal: the run goes on
    with the same window origin; no window is sent twice, the windows while it was down are missing, and every
    window sent holds exactly its samples (channel 0 counts one per sample)."""
    import threading

    import numpy as np

    from hardware import PeerClient

    port = free_port()
    name = f"neurotwin-test-spikes-journal-{port}"
    outlet = lsl.StreamOutlet(lsl.StreamInfo(name, "Spikes", 2, 1000.0, lsl.cf_float32, name))
    stop = threading.Event()

    def stream() -> None:  # 1 kHz in real time, 2-ms chunks, each sample stamped at its acquisition
        t0, pushed = lsl.local_clock(), 0
        while not stop.is_set():
            due = int((lsl.local_clock() - t0) * 1000) + 1
            if due > pushed:
                k = np.arange(pushed, due)
                outlet.push_chunk(np.column_stack([np.ones(len(k)), k % 2]), (t0 + k / 1000).tolist())
                pushed = due
            time.sleep(0.002)

    threading.Thread(target=stream, daemon=True).start()
    journal = tmp_path / "rig.journal"
    options = ("--channels", "a,b", "--rate", "1000", "--signal", "spike-counts", "--journal", str(journal))
    proc = _lsl_rig(port, name, *options)
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    got: list[dict] = []
    try:
        wait_up(client, 30, "the LSL rig")
        client.send_reliable("start", run=1, tr=0.1, n_volumes=60)
        end = time.monotonic() + 20
        while sum(m["type"] == "sample" for m in got) < 10 and time.monotonic() < end:
            got += client.poll(0.02)
        proc.kill()
        proc.wait()
        proc = _lsl_rig(port, name, *options)
        end = time.monotonic() + 30
        while not any(m["type"] == "sample" and m["volume"] == 59 for m in got) and time.monotonic() < end:
            got += client.poll(0.05)
    finally:
        stop.set()
        client.close()
        proc.terminate()
        proc.wait(10)
    samples = [m for m in got if m["type"] == "sample"]
    volumes = [m["volume"] for m in samples]
    assert volumes == sorted(set(volumes)) and volumes[-1] == 59, volumes  # once each, in order, to the run's end
    assert volumes[:10] == list(range(10)) and len(volumes) < 60  # the windows while it was down never came
    origin = samples[0]["time"]
    assert np.allclose([m["time"] - origin for m in samples], [0.1 * v for v in volumes], atol=1e-6)
    full = [m for m in samples if m["values"][0] == 100.0]  # (the restart's first window may be partial: scaled)
    assert len(full) >= len(samples) - 2, [m["values"] for m in samples]
