"""Shared fixtures: offline Hugging Face, the reference data, small synthetic datasets."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.paths import shared_data
from twin.paths import models_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Features in float32 whatever the shell says: the references and exact comparisons are float32 figures.
os.environ["NEUROTWIN_DTYPE"] = "float32"
# Tests give their processes feature caches of their own; the offline model is converted once, for all of them.
os.environ.setdefault("NEUROTWIN_MODELS", str(models_root()))
# LSL streams resolve on this machine even where its network has no multicast route (liblsl reads this at its first
# use, in the tests' processes and those they start)
os.environ.setdefault("LSLAPICFG", str(Path(__file__).resolve().parent / "support" / "lsl_api.cfg"))
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # one thread per worker (and its subprocesses): no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data()
PEREIRA = SHARED / "pereira2018_language_network.csv"
TINY_LANGUAGE = ROOT / "tests" / "protocols" / "tiny_language.toml"

ADJ = ["old", "quiet", "bright", "heavy", "small", "clever", "angry", "gentle"]
NOUN = ["farmer", "river", "teacher", "machine", "garden", "doctor", "window", "village"]
VERB = ["watched", "crossed", "painted", "repaired", "visited", "followed", "opened", "described"]


# Module fixtures that take tens of seconds: a whole simulated session; Pereira 2018's features (embedded into
# the worker's feature cache) and a twin fit on them. Under `--dist loadgroup` (.ci/run) the tests that use
# one (or, for Pereira's, either) run on one worker, so it is built once, not once per worker.
SHARED_FIXTURES = {"uninterrupted": "session", "lang_twin": "pereira", "pereira_blocks": "pereira", "fitted": "outputs"}


def pytest_itemcollected(item: pytest.Item) -> None:  # (before xdist reads the groups, as items are modified)
    for name, group in SHARED_FIXTURES.items():
        if name in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(group))
            break


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The tests' tiny closed-loop language protocol simulated whole, once: (folder, session file, stdout)."""
    import sys

    work = tmp_path_factory.mktemp("session")
    out = work / "full.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(TINY_LANGUAGE), "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, out, proc.stdout


@pytest.fixture(scope="session")
def pereira():
    """The shared Pereira 2018 language-network data, or a skip saying where it was looked for."""
    if not PEREIRA.exists():
        pytest.skip(f"reference data not found at {PEREIRA}")
    from twin import load_dataset

    return load_dataset(PEREIRA)


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct, grammatical sentences of varying length."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        words = ["The", rng.choice(ADJ), rng.choice(NOUN), rng.choice(VERB), "the", rng.choice(NOUN)]
        if rng.random() < 0.5:
            words += ["near", "the", rng.choice(ADJ), rng.choice(NOUN)]
        s = " ".join(words) + "."
        if s not in out:
            out.append(s)
    return out


@pytest.fixture()
def small_csv(tmp_path: Path) -> Path:
    """40 sentences with a length-driven response and a second target."""
    rng = random.Random(1)
    rows = ["sentence,response,other"]
    for s in synthetic_sentences(40):
        rows.append(f'"{s}",{len(s.split()) * 0.1 + rng.gauss(0, 0.1):.4f},{rng.gauss(0, 1):.4f}')
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def lsl():
    """The pylsl module, or a skip saying why Lab Streaming Layer cannot be used here."""
    from hardware.lsl import LSLError, pylsl

    try:
        return pylsl()
    except LSLError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the session, so each sentence is embedded once across tests."""
    return tmp_path_factory.mktemp("cache") / "features.h5"


def side_by_side(cmds: list[list[str]], env: dict, cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Run command lines at once (none may write what another reads); their completed processes, in order."""
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outputs, strict=True)]


@pytest.fixture()
def xvfb():
    if importlib.util.find_spec("psychopy") is None:
        pytest.skip("PsychoPy is not installed (pip install 'neurotwin[presenter]'; .ci/setup installs it)")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian package xvfb; .ci/setup installs it)")
    # -displayfd: the server picks a free display number and writes it once it accepts clients.
    proc = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    number = proc.stdout.readline().strip()
    assert number.isdigit(), f"Xvfb did not start (exit status {proc.poll()})"
    yield f":{number}"
    proc.kill()
    proc.wait()
