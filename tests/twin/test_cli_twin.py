"""`neurotwin twin ...` as a user runs it: real subprocesses, real files, exit codes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twin import Twin

from ..conftest import side_by_side, synthetic_sentences


def neurotwin(*args, cache: Path | None = None, check_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "control_loop.cli", *map(str, args)]
    if cache is not None and args and args[0] == "twin":
        cmd += ["--cache", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check_ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def neurotwin_all(*calls: tuple) -> list[subprocess.CompletedProcess]:
    """Run several ``neurotwin`` command lines side by side (none may write what another reads)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return side_by_side([[sys.executable, "-m", "control_loop.cli", *map(str, args)] for args in calls], env)


def test_fit_predict_score_round_trip(tmp_path, small_csv):
    cache = tmp_path / "features.h5"
    twin = tmp_path / "twin.h5"
    fit = neurotwin("twin", "fit", small_csv, "--out", twin, "--model", "minilm", cache=cache)
    assert "fit 40 unique sentences, targets: response, other" in fit.stdout
    assert "inner leave-one-out r" in fit.stdout

    sentences = tmp_path / "new.txt"
    new = synthetic_sentences(60, seed=7)[40:]
    sentences.write_text("\n".join(new) + "\n\n")
    out = tmp_path / "pred.csv"
    first = neurotwin("twin", "predict", twin, sentences, "--out", out, cache=cache)
    assert "features minilm" in first.stderr  # the progress bar on a cold cache
    rows = list(csv.DictReader(out.open()))
    assert [r["sentence"] for r in rows] == new
    assert list(rows[0]) == ["sentence", "response", "response_sd", "other", "other_sd"]
    assert all(float(r["response_sd"]) > 0 for r in rows)

    again = tmp_path / "pred2.csv"
    second = neurotwin("twin", "predict", twin, sentences, "--out", again, cache=cache)
    assert "features minilm" not in second.stderr  # every sentence came from the cache
    assert again.read_bytes() == out.read_bytes()

    held = tmp_path / "held.csv"
    held.write_text("sentence,response,other\n" + "".join(f'"{s}",{len(s.split())},0.5\n' for s in new))
    prior = neurotwin("twin", "prior", twin, "--out", tmp_path / "prior.json")
    assert f"wrote {tmp_path / 'prior.json'}: minilm" in prior.stdout and "40 training stimuli" in prior.stdout
    assert "sxy" not in (tmp_path / "prior.json").read_text()  # hyperparameters only
    # side by side: CV scores, held-out scores, and 20 new sentences fit with the first twin's
    # hyperparameters as the prior (one multiplier per target)
    scored, held_out, borrowed = neurotwin_all(
        ("twin", "score", twin, small_csv, "--folds", "5", "--json", tmp_path / "s.json", "--cache", cache),
        ("twin", "score", twin, held, "--cache", cache),
        ("twin", "fit", held, "--out", tmp_path / "b.h5", "--model", "minilm", "--prior", tmp_path / "prior.json",
         "--cache", cache),
    )  # fmt: skip
    assert "5-fold cross-validated" in scored.stdout, scored.stderr
    for name in ("twin", "length (words)", "length (characters)", "word frequency"):
        assert name in scored.stdout
    assert "held-out" in held_out.stdout, held_out.stderr
    assert f"hyperparameters from {tmp_path / 'prior.json'} (40 training stimuli), penalties x" in borrowed.stdout
    assert Twin.load(tmp_path / "b.h5").scores["prior_n_train"] == 40
    # An output that is a folder, in a folder that does not exist (or is a file), or a session file: said before
    # any work, and the session's recorded data is never overwritten.
    from acquisition import SessionFile

    folder, blocker, session = tmp_path / "a-folder", tmp_path / "a-file", tmp_path / "session.h5"
    folder.mkdir()
    blocker.write_text("")
    SessionFile.create(session, ["response"]).close()
    before, recorded = sorted(tmp_path.iterdir()), session.read_bytes()
    outputs = [(folder, f"File '{folder}' is a directory"),
               (tmp_path / "none" / "x", f"its folder '{tmp_path / 'none'}' does not exist"),
               (blocker / "x", f"its folder '{blocker}' is a file"),
               (session, f"'{session}' is a session file (recorded data) and is never overwritten")]  # fmt: skip
    calls = [(cmd, flag, message) for where, message in outputs for cmd, flag in [
        (("twin", "fit", small_csv, "--out", where), "--out"),
        (("twin", "predict", twin, sentences, "--out", where), "--out"),
        (("twin", "score", twin, small_csv, "--json", where), "--json"),
        (("twin", "prior", twin, "--out", where), "--out"),
        (("synthesize", "--twin", twin, "--pool", sentences, "--out", where), "--out"),
        (("synthesize", "--twin", twin, "--pool", sentences, "--out", tmp_path / "o.csv", "--log", where), "--log"),
        (("corpus", "build", "--out", where), "--out"),
    ]]  # fmt: skip
    for proc, (_, flag, message) in zip(neurotwin_all(*[c for c, _, _ in calls]), calls, strict=True):
        assert proc.returncode == 2 and f"Invalid value for '{flag}': " in proc.stderr, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    assert sorted(tmp_path.iterdir()) == before and list(folder.iterdir()) == [] and session.read_bytes() == recorded


def test_duplicates_are_averaged_and_repeats_give_a_ceiling(tmp_path):
    import random

    rng = random.Random(3)
    sentences = synthetic_sentences(40)
    truth = {s: len(s.split()) * 0.2 for s in sentences}
    rows = [f'"{s}",{truth[s] + rng.gauss(0, 0.3):.4f}' for _ in range(2) for s in sentences]
    data = tmp_path / "repeats.csv"
    data.write_text("sentence,response\n" + "\n".join(rows) + "\n")
    cache = tmp_path / "c.h5"
    fit = neurotwin("twin", "fit", data, "--out", tmp_path / "t.h5", "--model", "minilm", cache=cache)
    assert "fit 40 unique sentences" in fit.stdout
    scored = neurotwin("twin", "score", tmp_path / "t.h5", data, "--folds", "5", cache=cache)
    assert "ceiling" in scored.stdout and "normalized" in scored.stdout


def _bad(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", "", "is empty"),
        ("nosentence.csv", "text,response\nhello there,1\n", "no 'sentence' column"),
        ("images.csv", "image,response\na.png,1\n", "its 'image' column is for a twin of images"),
        ("noresponse.csv", "sentence\nhello there\n", "no response column"),
        ("nan.csv", "sentence,response\nhello there,1\nsecond one,\n", "row 3 has a missing or non-numeric"),
        ("text.csv", "sentence,response\nhello there,1\nsecond one,high\n", "non-numeric value 'high'"),
        ("header.csv", "sentence,response\n", "no rows"),
        ("binary.csv", b"sentence,response\n\xff\xfe\x00,1\n", "not UTF-8"),
        (
            "two.csv",
            "sentence,response\nhello there,1\nhello there,2\nsecond one,3\n",
            "has 2 unique sentence(s); a twin needs at least 3",
        ),
    ],
)
def test_bad_training_data_exits_2(tmp_path, name, content, message):
    proc = neurotwin("twin", "fit", _bad(tmp_path, name, content), "--out", tmp_path / "t.h5", check_ok=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "t.h5").exists()


def test_missing_file_and_unknown_model_exit_2(tmp_path, small_csv):
    proc = neurotwin("twin", "fit", tmp_path / "nope.csv", "--out", tmp_path / "t.h5", check_ok=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = neurotwin(
        "twin", "fit", small_csv, "--out", tmp_path / "t.h5", "--model", "no-such-model-xyz", check_ok=False
    )
    assert proc.returncode == 2 and "unknown feature model 'no-such-model-xyz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_twin_files_exit_2(tmp_path, small_csv):
    cache = tmp_path / "c.h5"
    twin = tmp_path / "twin.h5"
    neurotwin("twin", "fit", small_csv, "--out", twin, "--model", "minilm", "--layers", "3", cache=cache)
    sentences = _bad(tmp_path, "s.txt", "One sentence here.\n")
    truncated = _bad(tmp_path, "trunc.h5", twin.read_bytes()[:2000])
    empty = _bad(tmp_path, "empty.txt", "\n\n")
    out = ("--out", tmp_path / "p.csv")
    lines = ["The cat sat on the mat.", "A dog ran in the park.", "She reads every night.", "We went out.", "Hi."]
    few = _bad(tmp_path, "few.csv", "sentence,response,other\n" + "".join(f"{s},{i},1\n" for i, s in enumerate(lines)))
    two = _bad(
        tmp_path, "two.csv", "sentence,response,other\n" + "".join(f"{s},{i},1\n" for i, s in enumerate(lines[:2]))
    )
    cases = [  # command line: the message; run side by side
        (("predict", truncated, sentences, *out), "truncated or corrupt"),
        (("predict", small_csv, sentences, *out), "not a readable HDF5"),
        (("predict", tmp_path / "none.h5", sentences, *out), "does not exist"),
        (("predict", tmp_path, sentences, *out), f"twin file '{tmp_path}' is a folder; name a twin's .h5 file"),
        (("predict", twin, sentences, *out, "--model", "smollm2-135m"), "uses feature model 'minilm'"),
        (("predict", twin, empty, *out), "has no sentences"),
        (("score", twin, two), "scoring needs at least 5 unique sentences, got 2"),
        (("score", twin, few, "--folds", "2"), "2 folds of 5 sentences leave 2 to train on; a twin needs 3"),
    ]
    procs = neurotwin_all(*[("twin", *args) for args, _ in cases])
    for proc, (_, message) in zip(procs, cases, strict=True):
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_fit_and_predict_with_a_twin_that_stacks_two_models(tmp_path, small_csv, feature_cache):
    both = "smollm2-135m,minilm"
    twin, sentences, out = tmp_path / "t.h5", tmp_path / "s.txt", tmp_path / "p.csv"
    fit = neurotwin("twin", "fit", small_csv, "--out", twin, "--model", both, cache=feature_cache)
    assert "feature blocks with weight:" in fit.stdout and ("smollm2-135m:" in fit.stdout or "minilm:" in fit.stdout)
    sentences.write_text("The old dog slept.\nA storm came in from the sea.\n")
    neurotwin("twin", "predict", twin, sentences, "--model", both, "--out", out, cache=feature_cache)
    assert len(out.read_text().splitlines()) == 3
    wrong = neurotwin("twin", "predict", twin, sentences, "--model", "minilm", "--out", out, check_ok=False)
    assert wrong.returncode == 2 and f"uses feature model '{both}', not 'minilm'" in wrong.stderr
    bad = neurotwin(
        "twin", "fit", small_csv, "--out", tmp_path / "u.h5", "--model", both, "--layers", "4-8", check_ok=False
    )
    assert bad.returncode == 2 and "layers are one model's" in bad.stderr and not (tmp_path / "u.h5").exists()
