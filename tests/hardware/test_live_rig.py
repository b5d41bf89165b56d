"""Real-time sessions against a rig written from docs/PROTOCOL.md alone (docs/examples/minimal_rig.py, a separate
process), with the faults a lab meets: a value that is not a number, a rig restarted without its journal, a rig of
another protocol version, a simulated subject that is slow to answer, an outage on a sped-up clock."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from acquisition import read_session
from control_loop.planner import localizer_folder

from ..support.netutil import ROOT, free_port, neurotwin, start_doc_rig, start_null_presenter

LIVE = ROOT / "tests" / "protocols" / "live_localizer.toml"  # 2 runs of 6 trials, TR 1 s: 16 volumes a run
VOLUMES = 16
SENT = re.compile(r"run (\d+) volume (\d+) time ([\d.]+)")

needs_localizer = pytest.mark.skipif(
    not localizer_folder().exists(), reason=f"localizer stimuli not found at {localizer_folder()}"
)


def _sent(log: Path) -> dict[tuple[int, int], float]:
    """(run, volume) -> time of every volume the example rig says it sent (the last time, if sent twice)."""
    return {(int(r), int(v)): float(t) for r, v, t in SENT.findall(log.read_text())}


def _session(out: Path, rig_port: int, pres_port: int) -> list[str]:
    return neurotwin("session", "run", LIVE, "--rig", f"tcp://127.0.0.1:{rig_port}", "--presenter",
                     f"tcp://127.0.0.1:{pres_port}", "--out", out)  # fmt: skip


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


@needs_localizer
def test_a_rig_written_from_the_doc_drives_a_real_time_session_through_a_nan_and_a_restart(tmp_path):
    """The example rig starts each run's volumes the moment `start` arrives. Killed mid-run 1 and started again (a
    new process: it keeps no journal), it is told where the run goes on, and the session finishes at once (no
    waiting out the run's deadline). Every run keeps the rig's own times (within 10 ms), every volume once, no
    timing warning is given, and the exported onsets are the scheduled ones. A volume whose value is NaN (run 2)
    is named in the log and the report and left out of the estimates; its run keeps every trial's estimate."""
    rig_port, pres_port = free_port(), free_port()
    rig_log = tmp_path / "rig.log"
    rig = start_doc_rig(rig_port, rig_log, "--nan", "2:5")
    presenter = start_null_presenter(pres_port, tmp_path / "presenter.log")
    out = tmp_path / "live.h5"
    started = time.monotonic()
    proc = subprocess.Popen(_session(out, rig_port, pres_port), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("run 1/2"):
                time.sleep(6.0)  # some volumes of run 1 sent
                rig.kill()
                rig.wait()
                time.sleep(1.0)
                rig = start_doc_rig(rig_port, rig_log, "--nan", "2:5")  # a new process, knowing nothing
                break
        stdout, stderr = proc.communicate(timeout=150)
        stdout = "".join(seen) + stdout
    finally:
        proc.kill()
        _stop(rig, presenter)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert elapsed < 90, elapsed  # two 16-s runs and start-up; the run's deadline alone would be 136 s
    data = read_session(out)
    sent = _sent(rig_log)
    for run in (1, 2):
        trig = data.triggers[data.triggers.run == run]
        samples = data.samples[data.samples.run == run]
        assert trig.volume.tolist() == list(range(VOLUMES)) and len(samples) == VOLUMES, (run, trig.volume.tolist())
        rig_times = np.array([sent[(run, v)] for v in range(VOLUMES)])
        assert np.abs(trig.time.to_numpy() - rig_times).max() < 0.010, (run, trig.time.to_numpy() - rig_times)
        assert np.abs(samples.time.to_numpy() - rig_times).max() < 0.010  # the taken-up run keeps its clock
    kinds = data.log.kind.tolist()
    assert "timing" not in kinds and "timing" not in stdout, data.log
    restarts = data.log[data.log.kind == "rig-restart"].message.tolist()
    assert len(restarts) == 1 and restarts[0].startswith("run 1: the rig restarted without its journal after volume")
    assert "it takes the run up again from volume" in restarts[0]

    exported = tmp_path / "exported"
    subprocess.run(neurotwin("session", "export", out, "--out", exported), cwd=ROOT, check=True, capture_output=True)
    for run in (1, 2):
        events = pd.read_csv(exported / f"run-{run}_events.tsv", sep="\t")
        assert len(events) == 6
        assert np.abs(events.onset - events.scheduled_onset).max() < 0.010, events[["onset", "scheduled_onset"]]
        assert events.scheduled_onset.min() == pytest.approx(3.0)  # the protocol's rest before the first trial

    # The NaN: named (run, volume, channel) on the terminal, in the log, in the report; the sample kept as missing
    assert "run 2 volume 5: lang = nan is not a finite number" in stdout, stdout
    missing = data.log[data.log.kind == "missing-volume"].message.tolist()
    assert missing == ['{"run": 2, "volume": 5, "channels": ["lang"]}']
    run2 = data.samples[data.samples.run == 2]
    assert np.isnan(run2.lang.to_numpy()[5]) and np.isfinite(np.delete(run2.lang.to_numpy(), 5)).all()
    est = data.latest_estimates()
    assert len(est) == 12 and np.isfinite(est.lang).all()  # both runs: every trial has its estimate
    assert "no-estimate" not in kinds
    page = (tmp_path / "live-report" / "report.html").read_text()
    assert "Recording problems" in page and "run 2 volume 5: lang = nan" in page
    assert "error from the controller: non-finite" in rig_log.read_text()  # the rig was told


def test_a_rig_of_another_protocol_version_is_one_clear_error_on_both_sides(tmp_path):
    """A rig that speaks version 1: the controller stops within a second with one error naming both versions
    (the rig is told too), instead of waiting a minute for an answer."""
    from hardware import PeerClient

    rig_port, pres_port = free_port(), free_port()
    rig_log = tmp_path / "rig.log"
    rig = start_doc_rig(rig_port, rig_log, "--version", "1")
    try:
        deadline = time.monotonic() + 20.0
        while "serving on" not in rig_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # the rig process starting up
        client = PeerClient(f"tcp://127.0.0.1:{rig_port}", heartbeat=0.3)
        asked = time.monotonic()
        while client.fatal is None and time.monotonic() < asked + 5.0:
            client.poll(0.02)
        answered = time.monotonic() - asked
        client.close()
        assert answered < 1.0, answered  # at its first answer, not after a timeout
        assert client.fatal and "speaks protocol version 1" in client.fatal and "version 2" in client.fatal
        assert sum("version" in e for e in client.errors) == 1  # said once, not once per frame

        out = tmp_path / "never.h5"
        started = time.monotonic()
        done = subprocess.run(_session(out, rig_port, pres_port), cwd=ROOT, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        took = time.monotonic() - started
    finally:
        _stop(rig)
    assert done.returncode == 2 and "speaks protocol version 1" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
    assert took < 15, took  # the interpreter's start-up and imports, then at once (not the 60-s wait)
    said = rig_log.read_text()
    assert "error from the controller" in said and "version 2" in said, said


def test_a_slow_subject_on_a_loaded_machine_is_not_taken_for_lost(tmp_path):
    """The simulated rig computes its subject's responses off the socket's thread: a subject that takes 3 s a
    stimulus, with both cores kept busy by other processes, and the controller declares no outage."""
    from hardware import PeerClient

    from ..support.netutil import start_rig

    port = free_port()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    rig = start_rig(port, tmp_path / "rig.journal", "--subject", "tests.support.subjects:slow_subject", speed=1.0)
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)  # the session's settings
    try:
        deadline = time.monotonic() + 30
        while not client.up and time.monotonic() < deadline:
            client.poll(0.05)
        assert client.up, "the rig never answered"
        for trial, text in enumerate(["One slow sentence.", "Another slow sentence here.", "A third one."]):
            client.send_reliable("event", run=1, trial=trial, stimulus_id=trial, onset=1.0 + trial, duration=1.0,
                                 text=text, image=b"")  # fmt: skip
        client.send_reliable("start", run=1, tr=0.5, n_volumes=4)
        samples = []
        deadline = time.monotonic() + 60
        while len(samples) < 4 and time.monotonic() < deadline:
            samples += [m for m in client.poll(0.05) if m["type"] == "sample"]
        assert [m["volume"] for m in samples] == [0, 1, 2, 3]
        assert client.outages == [], [(o.start, o.end) for o in client.outages]
    finally:
        client.close()
        _stop(rig, *burners)


def test_an_outage_on_a_sped_up_clock_is_said_in_wall_clock_seconds():
    """Outage lines give real seconds, and the simulated ones labelled as such."""
    from hardware import PeerClient, PeerServer
    from kit.clock import sim_clock

    port = free_port()
    lines: list[tuple[str, str]] = []
    server = PeerServer(f"tcp://127.0.0.1:{port}", heartbeat=0.1)
    client = PeerClient(server.endpoint, heartbeat=0.1, timeout=0.5, clock=sim_clock(100.0),
                        on_log=lambda kind, text: lines.append((kind, text)))  # fmt: skip
    try:
        while not client.up:
            server.poll(0.01)
            client.poll(0.01)
        server.close()
        gone = time.monotonic()
        while not client.outages:
            client.poll(0.05)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - gone)))
        server = PeerServer(f"tcp://127.0.0.1:{port}", heartbeat=0.1)
        while client.outages[-1].end is None:
            server.poll(0.01)
            client.poll(0.01)
    finally:
        client.close()
        server.close()
    kind, text = lines[-1]
    found = re.fullmatch(r".* back after ([\d.]+) s \(([\d.]+) s of simulated time\)", text)
    assert kind == "outage-end" and found, text
    wall, simulated = float(found[1]), float(found[2])
    assert 1.0 < wall < 5.0 and simulated == pytest.approx(100 * wall, rel=0.1)


@pytest.mark.parametrize("asks", [False, True], ids=["a-scanner", "a-simulated-subject"])
def test_a_rig_gets_the_stimuli_themselves_only_if_its_hello_asks(asks):
    """Events carry ids and timing; the sentence (or image) only to a rig whose hello asks for content."""
    from control_loop.executor import RunExecutor, RunState
    from control_loop.modality import modality_for
    from control_loop.protocol import load_protocol
    from hardware import PeerClient, PeerServer

    protocol = load_protocol(ROOT / "tests" / "protocols" / "tiny_language.toml")
    server = PeerServer(f"tcp://127.0.0.1:{free_port()}", role="rig", heartbeat=0.1)
    server.content = asks
    client = PeerClient(server.endpoint, heartbeat=0.1)
    try:
        while not client.up:
            server.poll(0.01)
            client.poll(0.01)
        executor = RunExecutor(protocol, client, None, None, modality_for(protocol), ["lang", "md"], 0,
                               check=lambda: None, log=lambda kind, text: None)  # fmt: skip
        trial = {"trial": 0, "stimulus_id": 7, "onset": 8.0, "duration": 2.0, "kind": "text", "text": "A dog ran."}
        executor.start_rig(RunState(1, 10, [trial]))
        got: list[dict] = []
        end = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < end:
            got += server.poll(0.02)
            client.poll(0.0)
    finally:
        client.close()
        server.close()
    event, start = got
    assert (event["type"], event["stimulus_id"], event["onset"], start["type"]) == ("event", 7, 8.0, "start")
    assert event["text"] == ("A dog ran." if asks else "") and event["image"] == b""
