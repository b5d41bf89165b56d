"""The ZeroMQ bridge with real sockets and processes: faults, bad input, CURVE, clock sync."""

import os
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware import PeerClient, PeerServer, ProtocolError, decode, encode
from hardware.errors import BridgeFileError, EndpointError
from hardware.peer import CurveKeys
from hardware.protocol import PROTOCOL_VERSION
from hardware.security import generate_keys, load_pair, load_public
from hardware.stream import Inbox, Journal, Outbox

from ..conftest import side_by_side
from ..support.netutil import ROOT, CuttableProxy, free_port, start_rig, wait_up

N_VOLUMES = 60


def _collect(client, samples, until, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until():
        for msg in client.poll(0.02):
            samples.setdefault(msg["type"], []).append(msg)


def _start_run(client, timeout=20.0):
    wait_up(client, timeout)
    client.send_reliable("start", run=1, tr=2.0, n_volumes=N_VOLUMES)
    for trial in range(8):
        client.send_reliable("event", run=1, trial=trial, stimulus_id=trial, onset=4.0 + 12 * trial, duration=2.0,
                             text=" ".join(["word"] * (trial + 3)))  # fmt: skip


def _assert_exactly_once(got):
    for kind in ("sample", "trigger"):
        volumes = [m["volume"] for m in got[kind]]
        assert volumes == list(range(N_VOLUMES)), f"{kind}: {volumes}"
    assert sorted(m["trial"] for m in got["truth"]) == list(range(8))  # each event's true response, once
    seqs = sorted(m["seq"] for kind in ("sample", "trigger", "truth") for m in got[kind])
    assert seqs == list(range(1, 2 * N_VOLUMES + 8 + 1))


def test_rig_killed_and_restarted_loses_and_repeats_nothing(tmp_path):
    port, journal = free_port(), tmp_path / "rig.journal"
    rig = start_rig(port, journal)
    logs = []
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.2, on_log=lambda k, t: logs.append((k, t)))
    try:
        _start_run(client)
        got = {}
        _collect(client, got, lambda: len(got.get("sample", [])) >= 15, 30)
        os.kill(rig.pid, signal.SIGKILL)
        rig.wait()
        _collect(client, got, lambda: not client.up, 5)
        assert not client.up
        time.sleep(1.0)
        rig = start_rig(port, journal)
        _collect(client, got, lambda: len(got.get("sample", [])) >= N_VOLUMES, 60)
        _collect(client, got, lambda: False, 0.5)  # anything extra would be a duplicate
        _assert_exactly_once(got)
        assert len(client.outages) == 1 and client.outages[0].duration > 1.0
        assert [k for k, _ in logs] == ["outage", "outage-end"]
        assert f"back after {client.outages[0].duration:.2f} s" in logs[1][1]
        # The signal carries the subject's response: volumes after a long event are higher on 'lang'.
        values = np.array([m["values"] for m in got["sample"]])
        assert values.shape == (N_VOLUMES, 2) and np.isfinite(values).all()
    finally:
        client.close()
        rig.kill()
        rig.wait()


def test_network_cut_for_5_seconds_loses_and_repeats_nothing(tmp_path):
    port = free_port()
    rig = start_rig(port, tmp_path / "rig.journal", speed=8.0)
    proxy = CuttableProxy(port)
    logs = []
    client = PeerClient(f"tcp://127.0.0.1:{proxy.port}", heartbeat=0.2, on_log=lambda k, t: logs.append((k, t)))
    try:
        _start_run(client)
        got = {}
        _collect(client, got, lambda: len(got.get("sample", [])) >= 10, 30)
        proxy.cut()
        _collect(client, got, lambda: False, 5.0)
        proxy.restore()
        _collect(client, got, lambda: len(got.get("sample", [])) >= N_VOLUMES, 60)
        _collect(client, got, lambda: False, 0.5)
        _assert_exactly_once(got)
        assert len(client.outages) == 1
        assert 4.0 < client.outages[0].duration < 8.0
        assert any(k == "outage-end" and "back after" in t for k, t in logs)
    finally:
        client.close()
        proxy.close()
        rig.kill()
        rig.wait()


def test_bad_messages_are_logged_and_the_rig_keeps_running(tmp_path):
    port = free_port()
    rig = start_rig(port, tmp_path / "rig.journal")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://127.0.0.1:{port}")
    bad = [
        b"\xc1\xff garbage",
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "sample", "t": 1.0})[:-3],  # truncated
        msgpack.packb({"v": 99, "type": "heartbeat", "t": 1.0}),
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "sample", "t": 1.0, "seq": "x"}),
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "heartbeat", "t": 1.0, "pad": b"x" * (5 * 1024 * 1024)}),
    ]
    try:
        time.sleep(3.0)  # the rig process starts
        for frame in bad:
            raw.send(frame)
        replies = []
        while raw.poll(3000) and len(replies) < len(bad):
            replies.append(decode(raw.recv()))
        assert [r["type"] for r in replies] == ["error"] * len(bad)
        client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.2)
        _start_run(client)
        got = {}
        _collect(client, got, lambda: len(got.get("sample", [])) >= 3, 20)
        assert len(got["sample"]) >= 3  # still serving
        client.close()
    finally:
        raw.close(0)
        rig.send_signal(signal.SIGTERM)
        _, err = rig.communicate(timeout=10)
    for needle in ("not a msgpack message", "protocol version 99", "'sample' message: seq", "exceeds the limit"):
        assert needle in err, err
    assert err.count("rejected message from peer") == len(bad)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_only_ever_raises_protocol_error(data):
    try:
        msg = decode(data)
    except ProtocolError:
        return
    assert isinstance(msg, dict) and msg["v"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "t", "seq", "values", "run", "kind"]),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8), st.binary(max_size=8)),
    )
)
def test_decoder_on_random_maps(obj):
    try:
        decode(msgpack.packb(obj))
    except ProtocolError:
        pass


def test_round_trip_encoding():
    msg = {"type": "sample", "t": 1.5, "seq": 3, "run": 1, "kind": "fmri", "volume": 2, "time": 1.4,
           "values": [0.5, 1.0]}  # fmt: skip
    out = decode(encode(dict(msg)))
    assert out == {**msg, "v": PROTOCOL_VERSION, "width": 0.0, "confounds": []}


def test_curve_only_admits_configured_keys(tmp_path):
    _, rig_secret = generate_keys(tmp_path, "rig")
    ctl_public, ctl_secret = generate_keys(tmp_path, "controller")
    _, intruder_secret = generate_keys(tmp_path, "intruder")
    port = free_port()
    rig = start_rig(port, tmp_path / "rig.journal", "--curve-secret", str(rig_secret), "--curve-allow", str(ctl_public))
    rig_public = load_public(rig_secret)
    endpoint = f"tcp://127.0.0.1:{port}"

    def keys(secret_file):
        public, secret = load_pair(secret_file)
        return CurveKeys(public, secret, server_public=rig_public)

    try:
        good = PeerClient(endpoint, heartbeat=0.2, curve=keys(ctl_secret))
        _start_run(good)
        got = {}
        _collect(good, got, lambda: len(got.get("sample", [])) >= 2, 20)
        assert len(got["sample"]) >= 2
        for intruder in (PeerClient(endpoint, heartbeat=0.2, curve=keys(intruder_secret)),
                         PeerClient(endpoint, heartbeat=0.2)):  # fmt: skip
            seen = {}
            _collect(intruder, seen, lambda: False, 2.0)
            assert not intruder.up and not seen
            intruder.close()
        good.close()
    finally:
        rig.kill()
        rig.wait()


def test_clock_offset_is_estimated():
    server = PeerServer("tcp://127.0.0.1:*", clock=lambda: time.time() + 100.0)
    client = PeerClient(server.endpoint, heartbeat=0.05)
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end and len(client.sync.samples) < 20:
            server.poll(0.002)
            client.poll(0.002)
        assert client.offset == pytest.approx(100.0, abs=0.005)
        assert client.to_local(client.offset + 5.0) == pytest.approx(5.0)
    finally:
        client.close()
        server.close()


def _pump(server, client, until, timeout=5.0):
    """Poll both ends until ``until(delivered to the server, delivered to the client)``; return both lists."""
    to_server, to_client = [], []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(to_server, to_client):
        to_server += server.poll(0.002)
        to_client += client.poll(0.002)
    return to_server, to_client


def test_a_new_controller_starts_fresh_streams_and_a_restart_keeps_only_its_own(tmp_path):
    from hardware.peer import NEW_STREAM

    journal = tmp_path / "rig.journal"
    server = PeerServer("tcp://127.0.0.1:*", journal=journal, heartbeat=0.05)
    server.channels = ["lang", "md"]
    first = PeerClient(server.endpoint, heartbeat=0.05)
    for run in (1, 2):
        first.send_reliable("stop", run=run)  # sent once the link is up
    got, _ = _pump(server, first, lambda s, c: len(s) >= 3)
    assert [m["type"] for m in got] == [NEW_STREAM, "stop", "stop"] and first.peer_channels == ["lang", "md"]
    server.send_reliable("trigger", run=1, volume=0, time=0.0)  # never acknowledged: the controller goes
    first.close()  # the first controller is gone (its session crashed, or ended)

    second = PeerClient(server.endpoint, heartbeat=0.05)
    assert second.stream != first.stream
    second.send_reliable("stop", run=7)  # seq 1 of a new stream: not a duplicate of the first one's seq 1
    got, back = _pump(server, second, lambda s, c: any(m["type"] == "stop" for m in s))
    assert [m["type"] for m in got] == [NEW_STREAM, "stop"] and got[1]["run"] == 7 and got[1]["seq"] == 1
    assert back == []  # the first stream's unacknowledged trigger is not sent to the second controller
    server.send_reliable("trigger", run=7, volume=0, time=1.0)
    _, back = _pump(server, second, lambda s, c: c)
    assert [(m["run"], m["seq"]) for m in back] == [(7, 1)]
    server.close()

    restarted = PeerServer("tcp://127.0.0.1:*", journal=journal)  # a rig restarted from its journal
    assert restarted.stream == second.stream
    assert [m["run"] for m in restarted.restored] == [7]  # only the current stream's commands
    assert restarted.inbox.expected == 2 and restarted.outbox.next_seq == 2
    restarted.close()
    second.close()


def test_a_busy_peer_that_calls_keepalive_is_not_taken_for_lost():
    server = PeerServer("tcp://127.0.0.1:*", heartbeat=0.1)
    client = PeerClient(server.endpoint, heartbeat=0.1, timeout=0.3)  # (a timeout this short is for the test)
    try:
        _pump(server, client, lambda s, c: client.up and server.peer is not None)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # long work that never polls, but keeps the link alive
            time.sleep(0.02)
            server.keepalive()
        client.poll(0.05)
        assert client.up and not client.outages
        time.sleep(1.0)  # the same work without keepalive: the controller declares an outage
        client.poll(0.05)
        assert len(client.outages) == 1
    finally:
        client.close()
        server.close()


def test_streams_deduplicate_and_fill_gaps(tmp_path):
    journal = Journal(tmp_path / "j")
    out = Outbox(journal)
    frames = [out.add(lambda seq: encode({"type": "heartbeat", "t": float(seq)}))[1] for _ in range(5)]
    out.ack(2)
    assert out.since(1) == frames[2:]
    inbox = Inbox()
    msgs = [{"seq": s} for s in (1, 3, 2, 2, 5, 4, 1)]
    delivered = [m["seq"] for msg in msgs for m in inbox.accept(msg)]
    assert delivered == [1, 2, 3, 4, 5] and inbox.duplicates == 2 and not inbox.gap
    journal.close()
    with open(tmp_path / "j", "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")  # a record cut short by a crash
    again = Outbox(Journal(tmp_path / "j"))
    for kind, seq, payload in Journal(tmp_path / "j").records():
        again.restore(kind, seq, payload)
    assert again.next_seq == 6 and again.since(1) == frames[2:]


def _png(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_ephys_rig_streams_spike_counts_that_follow_the_stimulus(tmp_path):
    from acquisition import average_repeats, window_rates

    port = free_port()
    rig = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "simulate-ephys", "--bind",
                            f"tcp://127.0.0.1:{port}", "--speed", "5", "--heartbeat", "0.2", "--sites", "8"],
                           cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    y, x = np.mgrid[0:64, 0:64]
    images = [np.full((64, 64, 3), 128)] + [
        np.repeat((128 + 120 * np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / 12))[..., None], 3, 2)
        for a in (0.0, np.pi / 4, np.pi / 2)
    ]
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.2)
    try:
        wait_up(client, 20)
        width, n_windows = 0.05, 400  # 20 s of simulated time
        client.send_reliable("start", run=1, tr=width, n_volumes=n_windows)
        onsets = np.arange(1.0, 19.0, 0.75)
        stim = np.arange(len(onsets)) % 4
        for trial, (onset, s) in enumerate(zip(onsets, stim, strict=True)):
            client.send_reliable("event", run=1, trial=trial, stimulus_id=int(s), onset=float(onset), duration=0.3,
                                 image=_png(images[s]))  # fmt: skip
        got = {}
        _collect(client, got, lambda: len(got.get("sample", [])) >= n_windows, 30)
        samples = got["sample"]
        assert [m["volume"] for m in samples] == list(range(n_windows))
        counts = np.array([m["values"] for m in samples])
        assert counts.shape == (n_windows, 8) and (counts >= 0).all() and (counts == counts.round()).all()
        bins = np.array([m["time"] for m in samples]) - samples[0]["time"]
        rates = window_rates(bins, counts, width, onsets, window=(0.1, 0.3), baseline=(-0.2, 0.0))
        avg = average_repeats(stim, rates)
        # The stimulus is on (after the 50 ms latency) for the whole analysis window, so the
        # recovered evoked rates are the tuning function's, within sampling error.
        from simulation.tuning import gabor_tuning

        expected = np.clip(gabor_tuning(8)(images), 0, None)
        assert expected[1:].max() > 10 and np.allclose(expected[0], 0, atol=1e-6)
        assert np.all(np.abs(avg.mean - expected) < 4 * avg.se + 1.0)
        strong = expected > 10
        assert (avg.mean[strong] > 3 * avg.se[strong]).all()  # driven sites are detected
    finally:
        client.close()
        rig.kill()
        rig.wait()


def test_unloadable_subject_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "control_loop.cli", "rig", "simulate-fmri", "--subject", "nope:thing",
                           "--duration", "1"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "cannot load 'nope:thing'" in proc.stderr and "Traceback" not in proc.stderr


def test_endpoints_that_cannot_be_used_are_one_line_errors(tmp_path):
    """A port another process serves, a malformed endpoint, an address this machine lacks, a negative speed:
    each names the problem (exit status 2 from the command line), before any journal is opened."""
    port = free_port()
    first = PeerServer(f"tcp://127.0.0.1:{port}", journal=tmp_path / "first.journal")
    try:
        with pytest.raises(EndpointError, match=f"cannot listen on 'tcp://127.0.0.1:{port}': Address already in use"):
            PeerServer(f"tcp://127.0.0.1:{port}", journal=tmp_path / "second.journal")
        with pytest.raises(EndpointError, match="cannot connect to 'localhost': Invalid argument; an endpoint looks"):
            PeerClient("localhost", journal=tmp_path / "client.journal")
        cli = [sys.executable, "-m", "control_loop.cli"]
        cases = [  # command line: what stderr says
            (["rig", "simulate-fmri", "--bind", f"tcp://127.0.0.1:{port}", "--journal", tmp_path / "rig.journal"],
             "another process (an earlier rig or presenter?) serves there: stop it or use another port"),
            (["present", "--null", "--bind", "tcp://203.0.113.7:5555", "--journal", tmp_path / "p.journal"],
             "this machine has no such address: use one of its own, or tcp://*:PORT"),
            (["rig", "simulate-ephys", "--bind", "tcp://127.0.0.1", "--journal", tmp_path / "e.journal"],
             "cannot listen on 'tcp://127.0.0.1': Invalid argument"),
            (["rig", "simulate-fmri", "--bind", "tcp://127.0.0.1:99999", "--journal", tmp_path / "w.journal"],
             "cannot listen on 'tcp://127.0.0.1:99999': the port must be a number from 1 to 65535"),
            (["session", "run", ROOT / "tests" / "protocols" / "live_localizer.toml", "--rig", "tcp://127.0.0.1:99999",
              "--presenter", f"tcp://127.0.0.1:{port}", "--out", tmp_path / "s.h5"],
             "cannot connect to 'tcp://127.0.0.1:99999': the port must be a number from 1 to 65535"),
            (["rig", "simulate-fmri", "--speed", "-3", "--duration", "1"],
             "Invalid value for '--speed': -3.0 is not in the range x>0"),
        ]  # fmt: skip
        procs = side_by_side([[*cli, *map(str, args)] for args, _ in cases], {**os.environ}, ROOT)
        for proc, (args, message) in zip(procs, cases, strict=True):
            assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (
                args,
                proc.stderr,
            )
    finally:
        first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.journal"]  # nothing else was opened


def test_a_journal_is_never_another_programs_file(tmp_path):
    """--journal given a file it did not write (a session file, a text file) is refused and left byte for byte;
    a folder, or a folder that is a file, is named. A journal whose header a crash cut short starts afresh;
    one with records, after its header, is restored (records() leaves the header out)."""
    import h5py

    session = tmp_path / "session.h5"
    with h5py.File(session, "w") as f:
        f["x"] = np.arange(10)
    notes = tmp_path / "notes.txt"
    notes.write_text("trial notes\n")
    before = {p: p.read_bytes() for p in (session, notes)}
    for path in before:
        with pytest.raises(BridgeFileError, match=f"'{path}' is not a NeuroTwin journal"):
            Journal(path)
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(BridgeFileError, match="is a folder"):
        Journal(tmp_path)
    with pytest.raises(BridgeFileError, match=f"its folder '{notes}' is a file"):
        Journal(notes / "j")
    cut = tmp_path / "cut.journal"
    journal = Journal(cut)
    journal.append("out", 1, b"payload")
    journal.close()
    whole = cut.read_bytes()
    cut.write_bytes(whole[:7])  # killed while writing the header
    Journal(cut).close()
    assert list(Journal(cut).records()) == [] and cut.read_bytes() == whole[: len(cut.read_bytes())]
    cut.write_bytes(whole)
    assert list(Journal(cut).records()) == [["out", 1, b"payload"]]
    # the command line: one line, exit 2, the file as it was; a key file that holds no key, the same
    cli = [sys.executable, "-m", "control_loop.cli", "rig", "simulate-fmri", "--duration", "1"]
    procs = side_by_side([[*cli, "--journal", str(session)],
                          [*cli, "--curve-secret", str(notes), "--curve-allow", str(notes)],
                          [*cli, "--noise-sd", "-1"]], {**os.environ}, ROOT)  # fmt: skip
    messages = [f"'{session}' is not a NeuroTwin journal", f"'{notes}' is not a CURVE key file",
                "Invalid value for '--noise-sd': -1.0 is not in the range x>=0"]  # fmt: skip
    for proc, message in zip(procs, messages, strict=True):
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_language_subject_prefers_sentences_to_nonword_lists():
    """The default subject on the real localizer materials (Fedorenko 2010): the language network responds
    far more to sentences than to nonword lists, and the multiple-demand control region the other way round;
    a sentence of ordinary words gets its response unchanged, whatever its names."""
    import pandas as pd

    from simulation.language import BASELINE, NONWORD_LEVEL, LanguageSubject, lexicality

    from ..conftest import SHARED

    files = sorted((SHARED / "fedorenko2010_localizer").glob("*.csv"))
    if not files:
        pytest.skip(f"localizer stimuli not found at {SHARED}")
    rows = pd.concat([pd.read_csv(f) for f in files])
    text = list(rows.filter(like="stim").iloc[:, 1:13].astype(str).agg(" ".join, axis=1).str.capitalize())
    kind = rows.iloc[:, 13].astype(str).str.strip().to_numpy()
    response = LanguageSubject()(text)
    lang_s, lang_n = response[kind == "S", 0], response[kind == "N", 0]
    assert lang_s.mean() - lang_n.mean() > 2 * LanguageSubject.signal_sd
    assert lang_n.min() >= NONWORD_LEVEL and lang_n.mean() < (NONWORD_LEVEL + BASELINE) / 2 < lang_s.mean()
    assert response[kind == "N", 1].mean() > response[kind == "S", 1].mean()
    assert lexicality(["Yesterday Anna met Mr Quibbleworth at the market in Vrzonovice."]).tolist() == [1.0]


def test_language_subject_has_more_room_below_than_above_like_tuckute_2024():
    """In Tuckute et al. 2024's blocked sessions, suppress sentences lowered the language network's response
    further below the baseline sentences' than drive sentences raised it; the default subject, on the real
    Pereira 2018 sentences, does the same, and no sentence of words falls below the nonword level."""
    import pandas as pd

    from simulation.language import NONWORD_LEVEL, LanguageSubject, saturate

    from ..conftest import SHARED

    blocked = SHARED / "tuckute2024" / "blocked_condition_means.csv"
    pereira = SHARED / "pereira2018_language_network.csv"
    if not blocked.exists() or not pereira.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    raw = pd.read_csv(blocked).query("roi == 'lang_LH_netw'").groupby("cond").response_target_non_norm.mean()
    assert raw.B - raw.S > 2 * (raw.D - raw.B) > 0
    lang = np.sort(LanguageSubject()(list(pd.read_csv(pereira).sentence))[:, 0])
    top, bottom, middle = lang[-19:].mean(), lang[:19].mean(), np.median(lang)  # the extreme 5 %
    assert middle - bottom > 1.5 * (top - middle) > 0
    assert lang.min() > NONWORD_LEVEL
    g = saturate(np.linspace(-50, 50, 1001), 1.2, 0.4)
    assert np.all(np.diff(g) >= 0) and np.all(np.diff(saturate(np.linspace(-3, 3, 61), 1.2, 0.4)) > 0)
    assert np.isclose(g.max(), 1 / 1.2) and np.isclose(g.min(), -1 / 0.4)


def test_relay_reads_lines_with_or_without_a_time_and_names_a_bad_one():
    from hardware import RelayRig

    server = PeerServer(f"tcp://127.0.0.1:{free_port()}", name="relay")
    try:
        relay = RelayRig(server, ["lang", "md"], iter([]), latency=1.5)
        assert server.channels == ["lang", "md"]  # announced in hello
        assert relay.parse(1, 100.0, "0.25, -1e-1\n") == (98.5, [0.25, -0.1])  # arrival minus the latency
        assert relay.parse(2, 100.0, "1796212785.5\t0.25 0.5") == (1796212785.5, [0.25, 0.5])  # its own time
        assert relay.parse(3, 100.0, "  \n") is None and relay.parse(4, 100.0, "# lang md") is None
        with pytest.raises(ValueError, match=r"line 5 has 4 values; expected 2 \(lang, md\), or a time and 2"):
            relay.parse(5, 100.0, "1 2 3 4")
        with pytest.raises(ValueError, match="line 6 is not numbers: 'lang,md'"):
            relay.parse(6, 100.0, "lang,md")
        with pytest.raises(ValueError, match="line 7 has a value that is not a finite number"):
            relay.parse(7, 100.0, "0.5 nan")
        with pytest.raises(ValueError, match="names of its channels"):
            RelayRig(server, [], iter([]))
    finally:
        server.close()
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "rig", "relay", "--channels", "lang,lang"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "distinct channel names" in done.stderr, done.stderr


def test_relay_from_a_fifo_answers_before_the_writer_and_sends_runs_of_the_lines_after_start(tmp_path):
    import threading

    from hardware import RelayRig
    from hardware.relay import open_input

    fifo = tmp_path / "volumes"
    os.mkfifo(fifo)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = PeerServer(endpoint, name="relay", heartbeat=0.3)
    relay = RelayRig(server, ["lang"], open_input(str(fifo)))
    client = PeerClient(endpoint, heartbeat=0.3)
    got: list[dict] = []

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            relay.step(0.005)
            got.extend(client.poll(0.005))

    try:
        pump(1.0)
        assert client.up and client.peer_channels == ["lang"]  # no writer yet: the relay answers all the same
        written = threading.Event()

        started = threading.Event()

        def write() -> None:
            with open(fifo, "w") as fh:
                fh.write("0.5\n")  # before the run: not a sample
                fh.flush()
                started.wait(5)
                t = time.time()
                # After the start: a volume acquired before it (its line late), two of the run's (and one back in
                # time between them), and one after the run.
                fh.write(f"{t - 0.5} 0.5\n{t + 0.1} 1.5\n{t} 9.9\n{t + 0.6} 2.5\n{t + 1.1} 3.5\n")
            written.set()

        threading.Thread(target=write, daemon=True).start()
        pump(0.3)
        client.send_reliable("start", run=1, tr=0.5, n_volumes=2)
        pump(0.2)
        started.set()
        pump(1.0)
        assert written.is_set()
        assert [(m["type"], m["volume"]) for m in got] == [("trigger", 0), ("sample", 0), ("sample", 1)]
        assert [m["values"] for m in got if m["type"] == "sample"] == [[1.5], [2.5]]
        assert got[0]["time"] == got[1]["time"] and got[2]["time"] - got[1]["time"] == pytest.approx(0.5)
        assert relay.outside == 3 and relay.malformed == 1  # before, acquired before the start, after; the one back
        assert relay.step() is False  # the writer closed the FIFO: the input has ended
    finally:
        client.close()
        server.close()


def test_relay_input_that_cannot_be_read_is_a_one_line_error(tmp_path):
    """A folder given as the input is refused at once; a file still to be created is waited for (and said to
    be); if a folder appears in its place, the relay stops with exit status 2, naming it."""
    cli = [sys.executable, "-m", "control_loop.cli", "rig", "relay", "--channels", "lang", "--duration", "60"]
    folder = subprocess.run([*cli, "--input", str(tmp_path), "--bind", f"tcp://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert folder.returncode == 2 and f"'{tmp_path}' is a folder" in folder.stderr, folder.stderr
    later = tmp_path / "later.txt"
    proc = subprocess.Popen([*cli, "--input", str(later), "--bind", f"tcp://127.0.0.1:{free_port()}"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert f"input: {later} (waiting for it to be created)" in proc.stderr.readline()
        later.mkdir()  # not the file the recording was to write
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2 and f"'{later}': Is a directory" in err and "Traceback" not in err, err


def test_the_default_language_rig_answers_its_first_event_without_falling_silent():
    """The default subject's feature model takes seconds to load; the rig loads it before serving, so its
    first event does not silence it for longer than the controller waits (which was a 'lost fmri-sim' outage
    in the first run of every language simulation)."""
    port = free_port()
    rig = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "simulate-fmri", "--bind",
                            f"tcp://127.0.0.1:{port}", "--heartbeat", "0.2"], cwd=ROOT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)  # fmt: skip
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.2)
    try:
        end = wait_up(client, 120)
        client.send_reliable("event", run=1, trial=0, stimulus_id=1, onset=1.0, duration=2.0,
                             text="The first sentence this rig hears.", image=b"")  # fmt: skip
        client.send_reliable("start", run=1, tr=2.0, n_volumes=2)
        got: list[dict] = []
        while len([m for m in got if m["type"] == "sample"]) < 1 and time.monotonic() < end:
            got += client.poll(0.05)
        assert client.outages == [] and any(m["type"] == "sample" for m in got)
    finally:
        client.close()
        rig.kill()
        rig.wait()
