"""What commands write: never a device, FIFO or socket; never on a read-only or full file system without one clear
line, before the work where that can be known; and nothing left behind when a write fails."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import side_by_side, synthetic_sentences
from ..support.netutil import ROOT, fill, neurotwin

LANGUAGE = ROOT / "tests" / "protocols" / "tiny_language.toml"


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(tmp_path / "cache")}


def _mount(where: Path, *options: str) -> Path:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=8m", *options]), "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip() or done.returncode}")
    return where


def _session(path: Path) -> Path:
    """A small session file: one complete run of 6 trials."""
    import json

    import numpy as np

    from acquisition import SessionFile
    from control_loop.protocol import load_protocol

    protocol = load_protocol(LANGUAGE)
    with SessionFile.create(path, ["lang", "md"], protocol=protocol.model_dump_json()) as s:
        s.log("run-start", json.dumps({"index": 0, "run": 1, "kind": "baseline", "phase": "baseline", "trials": 6,
                                       "volumes": 20}))  # fmt: skip
        s.add_samples(np.arange(20) * 2.0, np.random.default_rng(0).normal(size=(20, 2)), run=1)
        for k, sentence in enumerate(synthetic_sentences(6)):
            s.add_stimulus(k, text=sentence, condition="B")
            s.add_event(k, run=1, trial=k, scheduled_onset=4.0 + 6 * k, measured_onset=4.0 + 6 * k, duration=2.0,
                        condition="B")  # fmt: skip
            s.add_estimate(k, k, np.array([0.1 * k, 0.5]), np.array([0.1, 0.1]), run=1, provisional=False)
        s.log("run-complete", json.dumps({"index": 0, "run": 1, "kind": "baseline", "phase": "baseline",
                                          "trials": list(range(6)), "predicted": {}}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A twin (MiniLM, fast) fit on 40 sentences, their CSV, a pool of sentences and a session file, in a folder
    of their own (outside any test file system); made once for the module's tests."""
    work = tmp_path_factory.mktemp("fitted")
    data = work / "data.csv"
    data.write_text("sentence,response\n" + "".join(f'"{s}",{len(s.split()) * 0.1:.2f}\n'
                                                     for s in synthetic_sentences(40)))  # fmt: skip
    twin = work / "twin.h5"
    cmd = neurotwin("twin", "fit", data, "--out", twin, "--model", "minilm", "--cache", work / "f.h5")
    fit = subprocess.run(cmd, cwd=ROOT, env=_env(work), capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr
    pool = work / "pool.txt"
    pool.write_text("\n".join(synthetic_sentences(60, seed=3)) + "\n")
    return twin, data, pool, _session(work / "session.h5")


def _output_commands(target: Path, twin: Path, data: Path, pool: Path, cache: Path, every: bool = True
                     ) -> list[tuple[list, str]]:  # fmt: skip
    """Commands that write a file, writing ``target``: (arguments, what). Not ``every``: one of each way of writing
    (HDF5, JSON, CSV, text, a session, a journal), as `twin score --json` and `synthesize --out` write theirs."""
    more = [(["twin", "score", twin, data, "--json", target, "--cache", cache, "--folds", "3"], "twin score --json"),
            (["synthesize", "--twin", twin, "--pool", pool, "--out", target, "--n", "3", "--cache", cache],
             "synthesize --out")]  # fmt: skip
    return (more if every else []) + [
        (["twin", "fit", data, "--out", target, "--model", "minilm", "--cache", cache], "twin fit --out"),
        (["twin", "prior", twin, "--out", target], "twin prior --out"),
        (["twin", "predict", twin, pool, "--out", target, "--cache", cache], "twin predict --out"),
        (["corpus", "build", "--out", target, "--sources", "lee"], "corpus build --out"),
        (["simulate", LANGUAGE, "--out", target], "simulate --out"),
        (["rig", "simulate-fmri", "--journal", target, "--duration", "1", "--bind", "tcp://127.0.0.1:*",
          "--subject", "tests.support.subjects:length_subject"], "rig --journal"),
    ]  # fmt: skip


def test_devices_and_fifos_are_never_written(tmp_path, fitted):
    """A character device (a node made here, like /dev/null) or a FIFO as any command's output: refused as the
    command line is read, naming it, and left as it was (not opened: a FIFO would wait for a writer)."""
    twin, data, pool, _ = fitted
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
        targets.append(tmp_path / "null")
    except PermissionError:
        pass  # not root: the FIFO stands for both
    for target in targets:
        kind = "a FIFO (named pipe)" if target == fifo else "a character device"
        calls = _output_commands(target, twin, data, pool, twin.with_name("f.h5"))
        calls += [(["session", "export", twin, "--out", target], "session export --out"),
                  (["report", twin, "--out", target], "report --out"),
                  (["rig", "keygen", target, "k"], "rig keygen FOLDER")]  # fmt: skip
        started = time.monotonic()
        procs = side_by_side([neurotwin(*args) for args, _ in calls], _env(tmp_path), ROOT)
        for proc, (_, what) in zip(procs, calls, strict=True):
            assert proc.returncode == 2, (what, proc.stderr)
            assert f"'{target}' is {kind}, not a" in proc.stderr and "Traceback" not in proc.stderr, (what, proc.stderr)
        assert time.monotonic() - started < 60  # refused at once, not after the work
        mode = os.stat(target).st_mode
        assert stat.S_ISFIFO(mode) if target == fifo else stat.S_ISCHR(mode)
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", *(t.name for t in targets)}


def test_a_read_only_place_is_refused_before_the_work(tmp_path, fitted):
    """A read-only file system: every output is refused as the line is read (not after a 30-s fit)."""
    twin, data, pool, _ = fitted
    ro = _mount(tmp_path / "ro", "ro")
    try:
        calls = _output_commands(ro / "out.h5", twin, data, pool, twin.with_name("f.h5"))
        calls += [(["session", "export", twin, "--out", ro / "x"], "session export --out"),
                  (["report", twin, "--out", ro / "r"], "report --out"),
                  (["rig", "keygen", ro / "keys", "k"], "rig keygen FOLDER")]  # fmt: skip
        procs = side_by_side([neurotwin(*args) for args, _ in calls], _env(tmp_path), ROOT)
        for proc, (_, what) in zip(procs, calls, strict=True):
            assert proc.returncode == 2, (what, proc.stderr)
            assert f"'{ro}' cannot be written (a read-only file system)" in proc.stderr, (what, proc.stderr)
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


def test_a_full_disk_on_any_output_is_one_line_and_leaves_nothing(tmp_path, fitted):
    """A full file system under each output: one line naming the file and the cause (exit 2), and nothing left
    on it: no temporary file, lock, logs folder, empty report folder, 0-byte key or journal."""
    twin, data, pool, session = fitted
    disk = _mount(tmp_path / "disk")
    try:
        filler = disk / "filler"
        fill(filler)
        calls = _output_commands(disk / "out.h5", twin, data, pool, twin.with_name("f.h5"), every=False)
        calls += [(["session", "export", session, "--out", disk / "x"], "session export --out"),
                  (["report", session, "--out", disk / "r"], "report --out"),
                  (["rig", "keygen", disk / "keys", "k"], "rig keygen FOLDER")]  # fmt: skip
        procs = side_by_side([neurotwin(*args) for args, _ in calls], _env(tmp_path), ROOT)
        for proc, (_, what) in zip(procs, calls, strict=True):
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, (what, proc.stderr[-3000:])
            assert "Traceback" not in proc.stderr and str(disk) in lines[-1], (what, proc.stderr[-3000:])
            assert "No space left on device" in lines[-1] or "the disk is full" in lines[-1], (what, lines[-1])
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_small_bad_inputs_are_named_and_leave_nothing(tmp_path):
    """Values that are not numbers, a target without its value, a key name that is a path, keys that exist, a
    target ROI the simulated subject lacks: one line each (exit 2), and nothing written."""
    keys = tmp_path / "keys"
    made = subprocess.run(neurotwin("rig", "keygen", keys, "rig"), cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    protocol = tmp_path / "broca.toml"
    protocol.write_text(LANGUAGE.read_text().replace('rois = ["lang"]', 'rois = ["broca"]'))
    out = tmp_path / "work"
    out.mkdir()
    synth = ["synthesize", "--twin", tmp_path / "t.h5", "--pool", tmp_path / "p.txt", "--out", out / "s.csv"]
    cases = [
        (["rig", "simulate-fmri", "--noise-sd", "nan", "--duration", "1"], "'nan' is not a finite number"),
        ([*synth, "--goal", "target"], "--goal target needs --value"),
        ([*synth, "--min-readability", "nan"], "'nan' is not a finite number"),
        (["rig", "keygen", keys, "../../x"], "a key's name is a plain file name"),
        (["rig", "keygen", keys, "rig"], f"'{keys / 'rig.key'}' exists: keys are never replaced"),
        (["simulate", protocol, "--out", out / "s.h5"], "target.rois: ['broca'] not measured by the rig"),
    ]
    procs = side_by_side([neurotwin(*args) for args, _ in cases], _env(tmp_path), ROOT)
    for proc, (args, message) in zip(procs, cases, strict=True):
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before  # the existing keys, as they were
    assert list(out.iterdir()) == [] and not (tmp_path.parent / "x.key").exists()
