"""The HDF5 session file: round trip, bad input, crash safety with SIGKILL, SWMR reading, export."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from acquisition import SessionError, SessionFile, read_session

WRITER = Path(__file__).parents[1] / "support" / "session_writer.py"


def _filled(path: Path) -> SessionFile:
    s = SessionFile.create(path, ["lang", "md"], protocol='name = "t"', seeds={"twin": 3}, peers={"rig": "sim"})
    s.add_stimulus(1, text="The dog barked at the mail carrier.", condition="D", source="corpus")
    s.add_stimulus(2, image="images/grating.png", condition="S", source="generated")
    for v in range(6):
        s.add_trigger(10.0 + 2 * v, v, run=1)
    s.add_samples([10.0, 12.0, 14.0], np.arange(6).reshape(3, 2), run=1)
    s.add_event(1, run=1, trial=0, scheduled_onset=12.0, measured_onset=12.016, duration=4.0, condition="D")
    s.add_event(2, run=1, trial=1, scheduled_onset=20.0, measured_onset=20.017, duration=4.0)
    s.add_estimate(0, 1, [0.5, 0.1], [0.2, 0.2], run=1, provisional=True)
    s.add_estimate(0, 1, [0.7, 0.2], [0.1, 0.1], run=1, provisional=False)
    s.add_twin_snapshot(1, 376, {"r": 0.55})
    s.log("peer", "rig connected")
    return s


def test_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    _filled(path).close()
    d = read_session(path)
    assert d.rois == ["lang", "md"] and d.attrs["seeds"] == {"twin": 3} and d.attrs["protocol"] == 'name = "t"'
    assert d.attrs["software"]["h5py"] == h5py.__version__
    assert list(d.stimuli["text"]) == ["The dog barked at the mail carrier.", ""]
    assert list(d.stimuli["image"]) == ["", "images/grating.png"]
    assert d.samples[["lang", "md"]].to_numpy().tolist() == [[0, 1], [2, 3], [4, 5]]
    assert len(d.triggers) == 6 and d.events["measured_onset"].tolist() == [12.016, 20.017]
    assert len(d.estimates) == 2
    latest = d.latest_estimates()
    assert latest["lang"].tolist() == [0.7] and not latest["provisional"].any()
    assert d.twin["scores"][0] == {"r": 0.55} and d.log["message"].tolist() == ["rig connected"]


def test_bad_input_is_rejected_and_nothing_is_lost(tmp_path):
    path = tmp_path / "s.h5"
    s = _filled(path)
    s.flush()
    before = read_session(path)
    with pytest.raises(SessionError, match="unknown stimulus 99"):
        s.add_event(99, run=1, trial=5, scheduled_onset=30, duration=1)
    with pytest.raises(SessionError, match="unknown stimulus 42"):
        s.add_estimate(5, 42, [1, 1], [1, 1], run=1, provisional=False)
    with pytest.raises(SessionError, match=r"timestamp 13\.000000 is not after the previous sample \(14"):
        s.add_samples(13.0, [1, 1], run=1)
    with pytest.raises(SessionError, match=r"expected values of shape \(1, 2\)"):
        s.add_samples(16.0, [1, 2, 3], run=1)
    with pytest.raises(SessionError, match="must have 2 value"):
        s.add_estimate(0, 1, [1, 2, 3], [1, 1, 1], run=1, provisional=False)
    with pytest.raises(SessionError, match="already recorded"):
        s.add_stimulus(1, text="again")
    s.add_samples(16.0, [7, 7], run=1)  # still usable after the errors
    s.close()
    after = read_session(path)
    assert after.samples.iloc[:3].equals(before.samples)
    assert len(after.samples) == 4 and after.events.equals(before.events)
    with pytest.raises(SessionError, match="already exists"):
        SessionFile.create(path, ["lang"])


def test_files_that_are_not_sessions(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    twin = tmp_path / "twin.h5"  # the format attribute a twin file has
    with h5py.File(twin, "w") as f:
        f.attrs["format"] = "neurotwin.twin"
    damaged = tmp_path / "damaged.h5"  # a session file's marks, but none of its tables
    with h5py.File(damaged, "w") as f:
        f.attrs.update(format="neurotwin.session", format_version=1)
    for path, message in [(text, "not an HDF5 file"), (foreign, "not a NeuroTwin session"),
                          (twin, r"not a NeuroTwin session \(its format is 'neurotwin.twin'\)"),
                          (tmp_path / "none.h5", "does not exist"), (tmp_path, "is a folder")]:  # fmt: skip
        with pytest.raises(SessionError, match=message):
            read_session(path)
        with pytest.raises(SessionError, match=message):
            SessionFile.resume(path)
    with pytest.raises(SessionError, match=r"session file '.*damaged\.h5' is damaged or incomplete: .*'strings'"):
        read_session(damaged)


def _start_writer(path: Path, tr: float, n: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), str(path), str(tr), str(n), *extra],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def test_sigkill_mid_session_loses_nothing_flushed_and_resumes(tmp_path):
    path = tmp_path / "crash.h5"
    proc = _start_writer(path, 0.002, 100000)
    flushed = 0
    while flushed < 300:
        flushed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Our reader opens the crashed file as it is and holds every flushed sample.
    crashed = read_session(path)
    assert len(crashed.samples) >= flushed
    assert np.array_equal(crashed.samples["roi0"].to_numpy(), np.arange(len(crashed.samples)))
    # `session recover` makes a copy openable by other tools without resuming it.
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    cli = [sys.executable, "-m", "control_loop.cli", "session"]
    out = subprocess.run([*cli, "recover", str(copy)], capture_output=True, text=True)
    assert out.returncode == 0 and "recovered" in out.stdout
    with h5py.File(copy, "r") as f:
        assert f["samples/time"].shape[0] == len(crashed.samples)
    assert "nothing to do" in subprocess.run([*cli, "recover", str(copy)], capture_output=True, text=True).stdout
    # A resumed session clears the dead writer's flags and appends.
    proc = _start_writer(path, 0.0, 5, "resume")
    assert proc.stdout.read().strip().endswith("done") and proc.wait() == 0
    final = read_session(path)
    assert len(final.samples) == len(crashed.samples) + 5
    assert final.samples["run"].tolist()[-5:] == [2] * 5
    assert "resume" in final.log["kind"].tolist()
    with h5py.File(path, "r") as f:  # plain (non-SWMR) open works again
        assert f["samples/values"].shape == (len(final.samples), 10)
    for tool in (["h5ls", "-r"], ["h5dump", "-H"]):
        if shutil.which(tool[0]) is None:
            pytest.skip(f"{tool[0]} not installed (Debian hdf5-tools; .ci/setup installs it)")
        out = subprocess.run([*tool, str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "samples" in out.stdout


def test_resume_refuses_a_file_a_live_writer_holds(tmp_path):
    path = tmp_path / "live.h5"
    proc = _start_writer(path, 0.05, 100000)
    try:
        proc.stdout.readline()
        with pytest.raises(SessionError, match="open for writing by another process"):
            SessionFile.resume(path)
    finally:
        proc.kill()
        proc.wait()
    lock = path.with_name(path.name + ".lock")
    assert lock.exists()  # the killed writer's lock file stays, but the kernel released its lock
    session = SessionFile.resume(path)
    assert lock.read_text() == str(os.getpid())
    session.close()
    assert not lock.exists()  # a clean close leaves only the session file


def test_reader_sees_new_samples_while_the_writer_runs(tmp_path):
    path = tmp_path / "live.h5"
    proc = _start_writer(path, 0.02, 100000)
    try:
        proc.stdout.readline()
        counts = []
        for _ in range(5):
            counts.append(len(read_session(path).samples))
            time.sleep(0.3)
        assert proc.poll() is None  # the writer is still running
        assert counts == sorted(counts) and counts[-1] > counts[0] > 0
    finally:
        proc.kill()
        proc.wait()


def test_reader_never_sees_a_row_before_its_text(tmp_path):
    """Strings live in one heap that the writer extends before the rows pointing into it: a reader racing a
    writer that flushes every 2 ms sees whole log rows only (it once read the heap first, and then rows it
    did not cover, as empty strings)."""
    path = tmp_path / "live.h5"
    proc = _start_writer(path, 0.002, 100000)
    try:
        proc.stdout.readline()
        reads, end = 0, time.monotonic() + 3.0
        while time.monotonic() < end:
            log = read_session(path).log
            expected = [f"volume {v} of run 1" for v in range(len(log))]
            assert log.message.tolist() == expected and set(log.kind) <= {"volume"}, log.tail()
            reads += 1
        assert proc.poll() is None and reads > 10 and len(log) > 100
    finally:
        proc.kill()
        proc.wait()


SETTING_UP = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from acquisition import SessionFile
from acquisition.session import _WriterLock
path = Path(sys.argv[1])
lock = _WriterLock(path)  # a writer's lock on a file not yet a session: SessionFile.create's first moments, drawn out
path.write_bytes(b"")
print("setting up", flush=True)
time.sleep(2.0)
path.unlink()
lock.release()
SessionFile.create(path, ["lang"]).close()
"""


def test_a_follower_waits_for_the_file_and_for_its_writer_to_set_it_up(tmp_path):
    """read_when_ready: for a file not there yet it says so once and waits; a file a live writer (another
    process) holds that is not yet a session (here still empty) is read again until it is one; a file no
    process writes that is not a session fails at once."""
    import threading

    from acquisition import read_when_ready

    path, said, got = tmp_path / "later.h5", [], {}
    follower = threading.Thread(target=lambda: got.update(data=read_when_ready(path, 0.05, said.append)))
    follower.start()
    writer = subprocess.Popen([sys.executable, "-c", SETTING_UP, str(path), str(Path(__file__).parents[2])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline() == "setting up\n", writer.stderr.read()
        time.sleep(0.5)
        assert follower.is_alive() and path.read_bytes() == b""  # it saw the empty file, and waits on
        assert writer.wait(60) == 0, writer.stderr.read()
    finally:
        writer.kill()
        follower.join(60)
    assert said == [f"waiting for '{path}' to be created"] and got["data"].rois == ["lang"]
    (tmp_path / "empty.h5").write_bytes(b"")
    started = time.monotonic()
    with pytest.raises(SessionError, match="is not an HDF5 file"):
        read_when_ready(tmp_path / "empty.h5", 0.05, said.append)
    assert time.monotonic() - started < 1 and len(said) == 1


def test_info_says_who_writes_the_file_and_how_much_it_holds(tmp_path):
    """`session info` on a file a live writer (another process) appends to, then after that writer is killed."""
    path = tmp_path / "live.h5"
    proc = _start_writer(path, 0.05, 100000)
    info = [sys.executable, "-m", "control_loop.cli", "session", "info", str(path)]
    try:
        proc.stdout.readline()
        live = subprocess.run(info, capture_output=True, text=True, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    after = subprocess.run(info, capture_output=True, text=True, timeout=120)
    for out in (live, after):
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{path}: modality fmri, ROIs {', '.join(f'roi{i}' for i in range(10))}\n")
    assert f"; being written by process {proc.pid}\n" in live.stdout
    assert "; no process is writing it\n" in after.stdout  # its lock file stays, but nothing holds it
    counts = dict(line.split() for line in after.stdout.splitlines()[2:])
    data = read_session(path)
    assert counts == {name: str(len(getattr(data, name))) for name in counts} and int(counts["samples"]) > 0
    assert list(counts) == ["stimuli", "events", "triggers", "samples", "estimates", "twin", "log"]


def test_export_command(tmp_path):
    path = tmp_path / "s.h5"
    _filled(path).close()
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "control_loop.cli", "session", "export", str(path), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = pd.read_csv(out / "run-1_events.tsv", sep="\t")
    assert list(events.columns[:3]) == ["onset", "duration", "trial_type"]
    assert events["onset"].tolist() == pytest.approx([2.016, 10.017])  # from the run's first trigger
    assert events["trial_type"].tolist() == ["D", "S"]  # the event's, else the stimulus's condition
    assert events["stim_file"].iloc[1] == "images/grating.png"
    assert set(json.loads((out / "run-1_events.json").read_text())) >= {"onset", "duration", "trial_type"}
    est = pd.read_csv(out / "estimates.csv")
    assert est[["trial", "lang", "lang_se", "md"]].values.tolist() == [[0, 0.7, 0.1, 0.2]]
    bad = subprocess.run([sys.executable, "-m", "control_loop.cli", "session", "export", str(out / "estimates.csv"),
                          "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "not an HDF5 file" in bad.stderr and "Traceback" not in bad.stderr
