"""Closed-loop sessions in simulation: real controller, rig and presenter processes over ZeroMQ, real files."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from acquisition import SessionFile, read_session

from ..conftest import side_by_side
from ..support.netutil import ROOT, fill

TINY = ROOT / "tests" / "protocols" / "tiny_language.toml"
TOTAL = 40 + 2 * 20 + 30


def _env(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "control_loop.cli", *map(str, args)]


def _signal_during(out: Path, cache: Path, prefix: str, sig: int, delay: float, protocol: Path = TINY
                   ) -> subprocess.Popen:  # fmt: skip
    """Simulate a protocol into out; send sig `delay` s after the controller prints a line starting with prefix.
    (Ctrl-C as a terminal would send it, to a controller that has Python's handler for it, even when these tests
    run in the background, which a non-interactive shell starts with SIGINT ignored.)"""
    proc = subprocess.Popen(_cmd("simulate", protocol, "--out", out, "--no-report"), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    for line in proc.stdout:
        if line.startswith(prefix):
            time.sleep(delay)
            break
    proc.send_signal(sig)
    return proc


def summarize_status(path: Path) -> dict:
    """The report's status of a closed session file."""
    from control_loop.report import session_status

    return session_status(read_session(path), writing=False)


def _trial_table(path: Path):
    data = read_session(path)
    est = data.latest_estimates().merge(data.events[["trial", "condition"]], on="trial")  # estimates carry the run
    return data, est


def test_simulated_session_runs_every_phase_and_reports(uninterrupted, tmp_path):
    from control_loop.report import write_report

    from ..support.subjects import length_language_subject

    _work, out, stdout = uninterrupted
    assert f"session file: {out}" in stdout and "report: " in stdout
    data, est = _trial_table(out)
    assert len(data.events) == TOTAL and data.events.trial.is_unique
    assert set(est.condition) == {"baseline", "drive", "suppress"}
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert [r["kind"] for r in runs] == ["baseline"] * 2 + ["closed_loop"] * 2 + ["evaluation"] * 2
    # The twin learned the subject (longer sentences drive 'lang'): it chose longer sentences to drive.
    words = data.stimuli.set_index("stimulus_id").text.str.split().str.len()
    ev = data.events.merge(words.rename("words"), left_on="stimulus_id", right_index=True)
    final = ev[ev.run.isin([r["run"] for r in runs if r["kind"] == "evaluation"])]
    assert final[final.condition == "drive"].words.mean() > final[final.condition == "suppress"].words.mean() + 5
    assert len(data.twin) == 4  # a snapshot after each closed-loop and evaluation run
    report = out.with_name(out.stem + "-report")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["trials"] == TOTAL and "drive - suppress" in summary["evaluation"]
    assert summary["evaluation"]["drive - suppress"]["difference"] > 0
    # the session ends by printing the evaluation's effects, measured and true, then where its files are
    *_, measured, true_line, file_line, report_line = stdout.splitlines()
    assert measured.startswith("evaluation, measured: drive - baseline ")
    assert f"drive - suppress {summary['evaluation']['drive - suppress']['difference']:+.3f} (SE " in measured
    difference = summary["true"]["contrasts"]["drive - suppress"]["difference"]
    assert true_line.startswith("evaluation, in the simulated subject's true response: ")
    assert f"drive - suppress {difference:+.3f} (" in true_line
    assert file_line == f"session file: {out}" and report_line == f"report: {report / 'report.html'}"
    means = summary["evaluation_means"]  # the condition-means figure: the evaluation block, run offsets removed
    assert [means[c]["n"] for c in ("drive", "baseline", "suppress")] == [10, 10, 10]
    assert np.isclose(
        means["drive"]["mean"] - means["suppress"]["mean"], summary["evaluation"]["drive - suppress"]["difference"]
    )
    # a simulated session's report also scores the evaluation by the subject's true, noise-free response
    text = data.stimuli.set_index("stimulus_id").text
    truth = {
        c: length_language_subject(list(text.loc[final[final.condition == c].stimulus_id]))[:, 0]
        for c in ("drive", "baseline", "suppress")
    }
    true = summary["true"]["contrasts"]["drive - suppress"]
    assert np.isclose(true["difference"], truth["drive"].mean() - truth["suppress"].mean()) and true["p"] < 0.01
    assert np.isclose(true["sds"], true["difference"] / truth["baseline"].std(ddof=1))
    # twin accuracy per run: r with the measurements inside its 95% interval, and r with the true response
    scored = [r for r in summary["runs"] if r.get("twin_r") is not None]
    assert [r["kind"] for r in scored] == ["closed_loop"] * 2 + ["evaluation"] * 2
    for entry, record in zip(scored, runs[2:], strict=True):
        events = data.events[data.events.trial.isin(record["trials"])]
        half = 1.959964 / np.sqrt(len(events) - 3)  # Fisher z
        z = np.arctanh(entry["twin_r"])
        np.testing.assert_allclose(entry["twin_r_ci"], np.tanh([z - half, z + half]), rtol=1e-6)
        pred = [record["predicted"][str(t)] for t in events.trial]
        true_r = np.corrcoef(pred, length_language_subject(list(text.loc[events.stimulus_id]))[:, 0])[0, 1]
        assert np.isclose(summary["true"]["twin_r"][str(record["index"])], true_r)
    for entry in summary["runs"]:  # each run's measured condition means
        rows = est[est.run == entry["run"]]
        assert entry["means"] == pytest.approx(rows.groupby("condition").lang.mean().to_dict(), rel=1e-9)
    page = (report / "report.html").read_text()
    last = scored[-1]  # the page's run table has the same numbers
    means = ", ".join(f"{c} {last['means'][c]:+.2f}" for c in ("suppress", "baseline", "drive"))

    assert (f"<td>{last['index'] + 1}</td><td>evaluation</td><td>evaluation</td><td>{last['trials']}</td>"
            f"<td>{means}</td><td>{last['twin_r']:+.2f} [{last['twin_r_ci'][0]:+.2f}, {last['twin_r_ci'][1]:+.2f}]</td>"
            f"<td>{summary['true']['twin_r'][str(last['index'])]:+.2f}</td></tr>") in page  # fmt: skip
    assert f"<td>drive - suppress</td><td>{true['difference']:+.3f}</td><td>{true['sds']:+.2f}</td>" in page
    for png in ("conditions.png", "predicted_vs_measured.png", "twin_accuracy.png", "timecourse.png"):
        assert (report / png).stat().st_size > 5000
        assert png in (report / "report.html").read_text()
    assert "Time course of the target in each run" in page and "(the last" not in page  # all 6 runs, one panel each
    assert summary["status"] == {"state": "complete", "runs_complete": 6, "runs_planned": 6, "detail": ""}
    assert "Session complete: 6 of 6 runs." in page and 'http-equiv="refresh"' not in page
    live = write_report(out, tmp_path / "live", writing=True, refresh=5).read_text()  # as `report --follow` writes
    assert '<meta http-equiv="refresh" content="5">' in live and "Session running: 6 of 6 runs complete." in live
    assert "this page reloads every 5 s" in live


def test_killed_session_resumes_without_repeating_or_losing_a_trial(uninterrupted, tmp_path):
    import html

    from control_loop.report import session_status, status_line, write_report

    from ..acquisition.test_bids import bids_trials

    work, full, _ = uninterrupted
    out = tmp_path / "killed.h5"
    proc = _signal_during(out, work / "cache", "run 4/", signal.SIGKILL, 0.4)  # runs 1-3 complete; kill in run 4
    proc.communicate(timeout=60)
    before = read_session(out)  # the killed writer's file is readable (SWMR)
    done = [json.loads(m) for m in before.log.loc[before.log.kind == "run-complete", "message"]]
    assert len(done) == 3, done
    page = write_report(out).read_text()  # what the report says of it
    assert (f"Session incomplete: 3 of 6 runs, paused or interrupted. <code>neurotwin session resume "
            f"{html.escape(str(out))}</code> continues it.") in page  # fmt: skip
    assert "<p>None: the session has no completed evaluation or localizer run.</p>" in page  # not an empty table
    live = tmp_path / "live.h5"  # a copy resumed, as if its next run had started and recorded 7 volumes
    shutil.copy(out, live)
    writer = SessionFile.resume(live)
    assert "current" not in session_status(read_session(live), writing=True)  # a run before the resume is over
    run = int(before.samples.run.max()) + 1
    start = {"index": 3, "run": run, "kind": "closed_loop", "phase": "closed loop", "trials": 20, "volumes": 49}
    writer.log("run-start", json.dumps(start))  # as the runner writes it (checked in the follow test)
    writer.add_samples(before.samples.time.max() + 2.0 * np.arange(1, 8), np.ones((7, 2)), run=run)
    writer.close()
    status = session_status(read_session(live), writing=True)
    assert status["current"] == {**start, "recorded": 7, "unit": "volumes"}
    assert status_line(status) == ("running: 3 of 6 runs complete; run 4 (closed loop, 20 trials) in progress: "
                                   "7 of 49 volumes recorded")  # fmt: skip
    assert "current" not in session_status(read_session(full), writing=True)  # every run it started is complete
    resumed = subprocess.run(_cmd("session", "resume", out), cwd=ROOT, env=_env(work / "cache"),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "report: " in resumed.stdout
    summary = json.loads(out.with_name("killed-report").joinpath("summary.json").read_text())
    assert summary["status"] == {"state": "complete", "runs_complete": 6, "runs_planned": 6, "detail": ""}
    data, est = _trial_table(out)
    assert len(data.events) == TOTAL and data.events.trial.is_unique and sorted(data.events.trial) == list(range(TOTAL))
    assert len(data.samples) > len(before.samples)  # the interrupted run's samples are kept, then more
    assert sorted(bids_trials(out, tmp_path / "bids")) == list(range(TOTAL))  # its BIDS export: every trial once
    # Trials of the runs finished before the kill are exactly what the uninterrupted session recorded.
    _, ref = _trial_table(full)
    first = [t for r in done for t in r["trials"]]
    a = est[est.trial.isin(first)].sort_values("trial")
    b = ref[ref.trial.isin(first)].sort_values("trial")
    assert list(a.stimulus_id) == list(b.stimulus_id) and list(a.condition) == list(b.condition)
    np.testing.assert_allclose(a.lang.to_numpy(), b.lang.to_numpy(), rtol=1e-9)
    # The run cut short is planned again by a twin fit on the same trials as the uninterrupted one's:
    # the same sentences in the same order, with the same predictions.
    again, ref_run = _plan_record(data, 3), _plan_record(read_session(full), 3)
    assert again["kind"] == "closed_loop" and again["stimuli"] == ref_run["stimuli"]
    keys = sorted(ref_run["predicted"])
    np.testing.assert_allclose([again["predicted"][k] for k in keys], [ref_run["predicted"][k] for k in keys],
                               rtol=1e-9)  # fmt: skip


def test_session_starts_from_a_reference_twin_and_resumes_from_its_copy(uninterrupted, tmp_path):
    """A protocol with twin.reference and no baseline phase: the reference (fit with `neurotwin twin fit` on
    another person's responses) chooses the first round; every later twin stacks it with the session's data.
    The session file keeps a copy, so a killed session resumes after the original is gone; a new session
    without the file is refused, naming twin.reference."""
    import csv

    from twin import TextFeatures, Twin

    from ..support.subjects import length_language_subject

    work, full, _ = uninterrupted
    env = _env(work / "cache")
    sentences = list(read_session(full).stimuli.text)  # another person saw these (their features are cached)
    with (tmp_path / "other_person.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "response"])
        w.writerows(zip(sentences, length_language_subject(sentences)[:, 0], strict=True))
    fit = subprocess.run(_cmd("twin", "fit", tmp_path / "other_person.csv", "--out", tmp_path / "reference.h5"),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    baseline = '[[phases]]\nname = "baseline"\nkind = "baseline"\ntrials = 40\n\n'
    assert baseline in TINY.read_text()
    protocol = tmp_path / "from_reference.toml"
    protocol.write_text(TINY.read_text().replace(baseline, "") + '\n[twin]\nreference = "reference.h5"\n')
    check = subprocess.run(_cmd("protocol", "check", protocol), cwd=ROOT, env=env, capture_output=True, text=True)
    assert check.returncode == 0 and f"twin: starts from {tmp_path / 'reference.h5'}" in check.stdout, check.stderr

    out = tmp_path / "session.h5"
    proc = _signal_during(out, work / "cache", "run 2/", signal.SIGKILL, 0.4, protocol)  # run 1 complete
    proc.communicate(timeout=60)
    first = read_session(out)
    assert (tmp_path / "reference.h5").read_bytes() == first.attachments["reference_twin.h5"]
    (tmp_path / "reference.h5").unlink()
    # A resume reads the kept copy; a new session, which has none, is refused before anything starts (a
    # reference on other features: tests/twin/test_twin.py).
    never = tmp_path / "never.h5"
    resumed, refused = side_by_side([_cmd("session", "resume", out, "--no-report"),
                                     _cmd("simulate", protocol, "--out", never)], env, ROOT)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert refused.returncode == 2 and "twin.reference" in refused.stderr and "does not exist" in refused.stderr
    assert not never.exists()
    data = read_session(out)
    assert sorted(data.events.trial) == list(range(2 * 20 + 30))
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert [r["kind"] for r in runs] == ["closed_loop"] * 2 + ["evaluation"] * 2
    # The first round was chosen by the reference alone: its predictions are the reference's ('response'
    # standing for 'lang'), and it sent longer sentences to drive than to suppress.
    reference = Twin.from_bytes(data.attachments["reference_twin.h5"], "the kept copy")
    reference.attach(TextFeatures(reference.plan, cache=work / "cache" / "features.h5"))
    text = data.stimuli.set_index("stimulus_id").text
    events = data.events.set_index("trial")
    trials = sorted(int(t) for t in runs[0]["predicted"])
    predicted = reference.predict(list(text.loc[events.loc[trials, "stimulus_id"]]))[0][:, 0]
    np.testing.assert_allclose([runs[0]["predicted"][str(t)] for t in trials], predicted, rtol=1e-6)
    words = text.loc[events.loc[trials, "stimulus_id"]].str.split().str.len().to_numpy()
    cond = events.loc[trials, "condition"].to_numpy()
    assert words[cond == "drive"].mean() > words[cond == "suppress"].mean() + 5
    assert "the twin starts from" in data.log.loc[data.log.kind == "reference", "message"].iloc[0]


def test_session_twins_reuse_a_prior_twins_hyperparameters(uninterrupted, tmp_path):
    """A protocol with twin.prior (here a twin file): every twin the session fits takes the prior's penalties and
    stacking weights with one penalty multiplier chosen on the session's data, recorded in each twin snapshot.
    The session file keeps the prior's hyperparameters, so a resume needs no original; a prior beside a
    reference is refused, naming both."""
    from twin import FeaturePlan, Prior, TextFeatures, Twin

    from ..support.subjects import length_language_subject

    work, full, _ = uninterrupted
    env = _env(work / "cache")
    sentences = list(read_session(full).stimuli.text)  # another person's responses to them (features cached)
    features = TextFeatures(FeaturePlan(), cache=work / "cache" / "features.h5")
    prior = Twin.fit(sentences, length_language_subject(sentences)[:, :1], ["response"], features=features)
    prior.save(tmp_path / "prior.h5")
    protocol = tmp_path / "with_prior.toml"
    protocol.write_text(TINY.read_text() + '\n[twin]\nprior = "prior.h5"\n')
    out = tmp_path / "session.h5"
    check, run = side_by_side([_cmd("protocol", "check", protocol),
                               _cmd("simulate", protocol, "--out", out, "--no-report")], env, ROOT)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert f"twin: hyperparameters from {tmp_path / 'prior.h5'} ({len(sentences)} training stimuli)" in check.stdout
    assert run.returncode == 0, run.stderr[-3000:]
    data = read_session(out)
    # The session keeps the hyperparameters, the one-target prior's for each ROI the rig measures.
    kept = Prior.from_json(data.attachments["prior.json"].decode())
    assert kept.targets == ["lang", "md"] and kept.n_train == prior.n_train
    for name, alphas in prior.hyperparameters.alphas.items():
        np.testing.assert_array_equal(kept.hyperparameters.alphas[name], np.repeat(alphas, 2))
    np.testing.assert_array_equal(kept.hyperparameters.stack_weights, np.repeat(prior.stack_weights, 2, axis=1))
    assert f"{len(sentences)} training stimuli" in data.log.loc[data.log.kind == "prior", "message"].iloc[0]
    snapshots = list(data.twin.scores)
    assert len(snapshots) == 4 and all(s["penalties_x_prior"] > 0 for s in snapshots)  # 2 rounds + evaluation
    # The twin after round 2 is the one Twin.fit gives with this prior on the trials of runs 1-4.
    est = data.latest_estimates().set_index("trial")
    events = data.events.set_index("trial")
    text = data.stimuli.set_index("stimulus_id").text
    fitted = events[events.run <= 4].sort_index()
    again = Twin.fit(list(text.loc[fitted.stimulus_id]), est.loc[fitted.index, ["lang"]].to_numpy(), ["lang"],
                     features=features, runs=fitted.run.to_numpy(), prior=prior)  # fmt: skip
    name = next(iter(prior.readouts))
    assert again.readouts[name].alphas[0] / prior.readouts[name].alphas[0] == pytest.approx(
        snapshots[1]["penalties_x_prior"]
    )

    (tmp_path / "prior.h5").unlink()  # a resume reads the kept copy
    both = tmp_path / "both.toml"
    both.write_text(TINY.read_text() + '\n[twin]\nprior = "prior.h5"\nreference = "reference.h5"\n')
    resumed, check = side_by_side([_cmd("session", "resume", out, "--no-report"), _cmd("protocol", "check", both)],
                                  env, ROOT)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert check.returncode == 2 and "twin: give twin.reference or twin.prior, not both" in check.stderr


def _plan_record(data, index: int) -> dict:
    """A completed run's record (by its place in the protocol), with its trials' stimulus ids and conditions."""
    records = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    record = next(r for r in records if r["index"] == index)
    events = data.events.set_index("trial")
    record["stimuli"] = [(int(events.loc[t, "stimulus_id"]), events.loc[t, "condition"]) for t in record["trials"]]
    return record


def test_report_reads_the_true_responses_from_the_file_alone(uninterrupted, tmp_path):
    """A simulated session's file keeps each trial's true response (sent by the rig): reported where its subject's
    module is missing, the report's truth section is the same; the file without them (as a real rig's session
    has none) gives a report without one, its measured contrasts whole."""
    import html
    import json

    import h5py

    from control_loop.report import write_report

    _work, out, _ = uninterrupted
    expected = json.loads(out.with_name(out.stem + "-report").joinpath("summary.json").read_text())["true"]
    moved = tmp_path / "elsewhere.h5"
    shutil.copy(out, moved)
    with h5py.File(moved, "r+") as f:
        subject = "tests.support.subjects:length_language_subject"
        f.attrs["peers"] = f.attrs["peers"].replace(subject, "lab_only:subject7")
    page = html.unescape(write_report(moved).read_text())
    assert json.loads(moved.with_name("elsewhere-report").joinpath("summary.json").read_text())["true"] == expected
    assert "In the simulated subject's true (noise-free) response" in page
    real = tmp_path / "real.h5"
    shutil.copy(out, real)
    with h5py.File(real, "r+") as f:
        del f["simulated"]
    page = html.unescape(write_report(real).read_text())
    assert "<td>drive - suppress</td>" in page and "true" not in json.loads(
        real.with_name("real-report").joinpath("summary.json").read_text())  # fmt: skip
    assert "simulated subject" not in page


def test_report_of_a_file_that_is_not_a_session_says_so_and_writes_nothing(tmp_path):
    protocol = tmp_path / "protocol.toml"
    shutil.copy(TINY, protocol)
    proc = subprocess.run(_cmd("report", protocol), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"'{protocol}' is not an HDF5 file, so not a NeuroTwin session" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["protocol.toml"]  # no empty report folder beside it


def test_a_simulated_rig_that_crashes_ends_the_session_saying_why(uninterrupted, tmp_path):
    """The simulated rig dies on its first stimulus (a subject with a bug): the session stops at once, not after
    the run's deadline, with the rig's last words and where its log is; the session file stays readable."""
    work, _, _ = uninterrupted  # its feature cache: the candidates are embedded once
    out = tmp_path / "crash.h5"
    started = time.monotonic()
    cmd = _cmd("simulate", TINY, "--out", out, "--subject", "tests.support.subjects:broken_language_subject")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(work / "cache"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "the simulated rig exited (status 1): RuntimeError: this subject's weights are missing" in proc.stderr
    assert f"(its log: {tmp_path / 'crash-logs' / 'rig.log'})" in proc.stderr and "Traceback" not in proc.stderr
    assert f"continue with: neurotwin session resume {out}" in proc.stderr
    assert time.monotonic() - started < 60, "noticed only at a deadline"
    log = read_session(out).log  # the file says why it stopped
    assert log.kind.tolist()[-1] == "error" and "the simulated rig exited" in log.message.iloc[-1], log
    status = summarize_status(out)
    assert status["state"] == "error" and status["runs_complete"] == 0, status
    assert status["detail"].startswith("the simulated rig exited (status 1): RuntimeError"), status


def test_info_and_report_follow_a_running_session_until_it_closes(uninterrupted, tmp_path):
    """`session info --follow` and `report --follow` from other processes: counts as they grow and each
    completed run as it is logged; the report written again as the session grows, saying how far it is, and
    last as the finished session's report; both done when the writer closes the file."""
    import re

    from control_loop.protocol import load_protocol
    from control_loop.report import write_report

    out = tmp_path / "followed.h5"
    env = _env(uninterrupted[0] / "cache")
    followers = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in (_cmd("session", "info", out, "--follow", "--every", "0.2"),
                           _cmd("report", out, "--follow", "--every", "1"))]  # fmt: skip
    try:  # the followers start first: they wait for the file, then for its writer to set it up
        for proc in followers:
            assert proc.stdout.readline() == f"waiting for '{out}' to be created\n", proc.stderr.read()
        run = subprocess.run(_cmd("simulate", TINY, "--out", out, "--no-report"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        outputs = [p.communicate(timeout=120) for p in followers]  # a few KB each: within the pipes' buffers
        follow, report = (subprocess.CompletedProcess(p.args, p.returncode, *o)
                          for p, o in zip(followers, outputs, strict=True))  # fmt: skip
    finally:
        for proc in followers:
            proc.kill()
    assert follow.returncode == 0, follow.stderr
    lines = follow.stdout.splitlines()
    assert lines[-1] == "no process is writing the file: done"
    runs = read_session(out).log.query("kind == 'run-complete'").message.map(json.loads).tolist()
    announced = [line.strip() for line in lines if " complete: " in line or " started: " in line]
    assert announced == [f"run {r['index'] + 1} {what}: {r['phase']} ({r['kind']}), {len(r['trials'])} trials"
                         for r in runs for what in ("started", "complete")]  # fmt: skip
    log = read_session(out).log  # the runner's run-start records: the run about to be shown, its planned volumes
    starts = log.query("kind == 'run-start'").message.map(json.loads).tolist()
    assert [{k: s[k] for k in ("index", "run", "kind", "phase")} for s in starts] == [
        {k: r[k] for k in ("index", "run", "kind", "phase")} for r in runs
    ]
    assert [s["trials"] for s in starts] == [len(r["trials"]) for r in runs]
    protocol = load_protocol(TINY)
    assert [s["volumes"] for s in starts] == [math.ceil(protocol.run_seconds(s["trials"]) / protocol.design.tr) + 1
                                              for s in starts]  # fmt: skip
    assert any(f"{TOTAL} events" in line for line in lines)  # the last counts, every trial

    assert report.returncode == 0, report.stderr
    page = out.with_name("followed-report") / "report.html"
    said = [re.fullmatch(rf"\d\d:\d\d:\d\d report: {re.escape(str(page))} \((.*)\)", line) for line in
            report.stdout.splitlines()]  # fmt: skip
    assert all(said), report.stdout
    states = [m[1] for m in said]
    assert states[-1] == "complete: 6 of 6 runs" and len(states) > 2, states  # the writes while it ran, then the last
    running = r"running: (\d) of 6 runs complete(; run \d \([^)]+\) in progress: \d+ of \d+ volumes recorded)?"
    done = [int(re.fullmatch(running, s)[1]) for s in states[:-1]]
    assert done == sorted(done) and done[-1] > 0, states  # runs completed while the report followed
    html = page.read_text()
    assert 'http-equiv="refresh"' not in html and "Session complete: 6 of 6 runs." in html
    again = write_report(out, tmp_path / "again")  # the last write is the finished session's whole report
    followed, fresh = (json.loads((d / "summary.json").read_text()) for d in (page.parent, again.parent))
    assert followed == fresh
    assert not list(page.parent.glob("*.part"))  # every file was written whole, then moved into place


def test_a_new_session_never_writes_into_an_existing_file(uninterrupted, tmp_path):
    """`simulate` and `session run` with --out naming an existing session file are refused before any rig is
    started, pointing to `session resume`; the file is unchanged."""
    _work, out, _ = uninterrupted
    before = out.read_bytes()
    live = ["--rig", "tcp://127.0.0.1:1", "--presenter", "tcp://127.0.0.1:2"]
    procs = side_by_side([_cmd("simulate", TINY, "--out", out), _cmd("session", "run", TINY, *live, "--out", out)],
                         _env(tmp_path / "cache"), ROOT)  # fmt: skip
    for proc in procs:
        assert proc.returncode == 2, proc.stderr
        assert f"session file '{out}' already exists: continue it with `neurotwin session resume {out}`" in proc.stderr
    assert out.read_bytes() == before


def test_outputs_that_cannot_be_written_are_one_line_errors(uninterrupted, tmp_path):
    """An output path inside a file (or any folder that cannot be made or written): the path and the reason, in
    one line with exit status 2, and the session file read from is unchanged."""
    _work, out, _ = uninterrupted
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    before = out.read_bytes()
    cmds = [_cmd("simulate", TINY, "--out", blocker / "s.h5"), _cmd("session", "export", out, "--out", blocker / "x"),
            _cmd("report", out, "--out", blocker / "report")]  # fmt: skip
    procs = side_by_side(cmds, _env(tmp_path / "cache"), ROOT)
    for proc in procs:
        assert proc.returncode == 2, proc.stderr
        assert f"'{blocker}' is a file, not a folder" in proc.stderr, proc.stderr  # said as the line is read
        assert "Traceback" not in proc.stderr
    # a folder output that is a file, or a session file output that is a folder: said as the line is read
    cmds = [_cmd("session", "export", out, "--out", blocker), _cmd("report", out, "--out", blocker),
            _cmd("simulate", TINY, "--out", tmp_path)]  # fmt: skip
    messages = [f"Directory '{blocker}' is a file"] * 2 + [f"File '{tmp_path}' is a directory"]
    entries = sorted(tmp_path.iterdir())
    for proc, message in zip(side_by_side(cmds, _env(tmp_path / "cache"), ROOT), messages, strict=True):
        assert proc.returncode == 2 and f"Invalid value for '--out': {message}" in proc.stderr, proc.stderr
    assert out.read_bytes() == before and blocker.read_text() == "" and sorted(tmp_path.iterdir()) == entries


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (.ci/setup installs it)")
def test_report_opens_in_a_real_browser(uninterrupted, tmp_path):
    from PIL import Image

    _work, out, _ = uninterrupted
    html = out.with_name(out.stem + "-report") / "report.html"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,2200", f"--screenshot={shot}", html.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.std() > 10  # not blank
    # The figures loaded: the bars' colours (drive red, suppress blue) appear in the screenshot.
    rgb = np.asarray(Image.open(shot).convert("RGB"), int)
    red = ((rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum()
    blue = ((rgb[..., 2] > 150) & (rgb[..., 0] < 90)).sum()
    assert red > 500 and blue > 500, (red, blue)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_pause_cleanly(uninterrupted, tmp_path, sig):
    """Ctrl-C, and SIGTERM (what `systemctl stop` and container runtimes send), pause: the file closed cleanly,
    no lock left, and how to continue said."""
    work, _, _ = uninterrupted
    out = tmp_path / "paused.h5"
    proc = _signal_during(out, work / "cache", "run 2/", sig, 0.3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"continue with: neurotwin session resume {out}" in err, err[-2000:]
    assert "Traceback" not in err and not out.with_name(out.name + ".lock").exists()
    data = read_session(out)  # closed cleanly: opens without recovery, the finished run is in it
    assert len(data.events) == 20 and data.events.trial.is_unique
    assert not (tmp_path / "paused-logs" / "rig.log").read_text().count("KeyboardInterrupt")
    SessionFile.resume(out).close()  # the paused writer let go of the file
    if sig == signal.SIGTERM:  # and it goes on from there
        resumed = subprocess.run(_cmd("session", "resume", out, "--no-report"), cwd=ROOT, env=_env(work / "cache"),
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert sorted(read_session(out).events.trial) == list(range(TOTAL))


@pytest.fixture()
def small_disk(tmp_path):
    """A file system of 8 MiB of its own (a tmpfs; mounting needs root), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                             text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip() or mounted.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_disk_that_fills_mid_session_stops_it_cleanly_and_resume_finishes_it(uninterrupted, small_disk):
    """The session file's disk fills during run 3: the controller stops with one line (exit 2) naming the file,
    the cause and how to continue; every run logged complete has its estimates, the same as an uninterrupted
    session's; once there is space again, `session resume` finishes with every trial once."""
    work, full, _ = uninterrupted
    out = small_disk / "s.h5"
    proc = subprocess.Popen(_cmd("simulate", TINY, "--out", out, "--no-report"), cwd=ROOT, env=_env(work / "cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("run 3/"):
            filler = fill(small_disk / "filler")
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"session file '{out}': the disk is full" in lines[0]
    assert f"free space on its disk, then continue with: neurotwin session resume {out}" in lines[0]
    data = read_session(out)
    from acquisition import integrity_problems

    assert integrity_problems(data) == []
    done = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert len(done) >= 2, done
    _, ref = _trial_table(full)
    _, est = _trial_table(out)
    first = sorted(t for r in done for t in r["trials"])
    assert sorted(est.trial) == first  # no estimate of an unfinished run, no row of zeros
    a, b = est.sort_values("trial"), ref[ref.trial.isin(first)].sort_values("trial")
    assert list(a.stimulus_id) == list(b.stimulus_id)
    np.testing.assert_allclose(a.lang.to_numpy(), b.lang.to_numpy(), rtol=1e-9)

    filler.unlink()  # space again
    resumed = subprocess.run(_cmd("session", "resume", out, "--no-report"), cwd=ROOT, env=_env(work / "cache"),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    data = read_session(out)
    assert sorted(data.events.trial) == list(range(TOTAL)) and integrity_problems(data) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored one, on purpose
def test_ctrl_c_is_not_lost_when_python_ignores_it():
    """Ctrl-C can arrive while Python runs a finalizer (h5py and zmq objects have them), which ignores the
    KeyboardInterrupt raised there; the runner remembers it and raises it at its next check."""
    from control_loop.session import _Interrupts

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside __del__
                pass

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal, also when run in background)
    with _Interrupts() as interrupts:
        Finalized()  # made and finalized at once: the KeyboardInterrupt inside __del__ is ignored
        assert interrupts.pending
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, before)


def test_protocol_check_dry_run_reports_what_the_session_showed_and_measured(uninterrupted, tmp_path):
    """`protocol check --dry-run`: the protocol end to end in simulation, summarized from its session file."""
    from control_loop.report import summarize

    from ..support.subjects import length_language_subject

    work, _, _ = uninterrupted
    keep, tmp = tmp_path / "keep", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(_cmd("protocol", "check", TINY, "--dry-run", "--keep", keep), cwd=ROOT,
                          env={**_env(work / "cache"), "TMPDIR": str(tmp)}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "  valid\n  dry run 1/1 (seed 3, simulated at 100x real time):\n    110 trials in " in out
    line = next(x for x in out.splitlines() if "stimuli shown: " in x).split("stimuli shown: ")[1]
    shown = {}
    for part in line.split("; "):
        phase, counts = part.split(": ")
        shown[phase] = {c.rsplit(" ", 1)[0]: int(c.rsplit(" ", 1)[1]) for c in counts.split(", ")}
    # every condition of a phase gets its share, also when its runs do not divide (evaluation: 20 + 10 trials)
    assert shown == {"baseline": {"baseline": 40}, "closed loop": {"drive": 20, "suppress": 20},
                     "evaluation": {"drive": 10, "suppress": 10, "baseline": 10}}  # fmt: skip
    session = keep / "tiny_language-dry-run-seed3.h5"
    data = read_session(session)
    assert data.events.condition.value_counts().to_dict() == {"baseline": 50, "drive": 30, "suppress": 30}
    for name, c in summarize(session)["evaluation"].items():  # the printed effects are the session's
        assert f"{name} {c['difference']:+.3f} (SE {abs(c['difference'] / c['t']):.3f}, p {c['p']:.2g}" in out
    assert "evaluation, as the twin predicted it: drive - baseline " in out
    # the simulated subject's true (noise-free) response to the evaluation block's sentences
    last = data.events.sort_values("trial").tail(30).merge(data.stimuli[["stimulus_id", "text"]], on="stimulus_id")
    truth = length_language_subject(list(last.text))[:, 0]  # the protocol's simulated subject
    mean = {c: truth[last.condition.to_numpy() == c].mean() for c in ("drive", "baseline", "suppress")}
    true_line = next(x for x in out.splitlines() if "evaluation, in the simulated subject's true response: " in x)
    for name in ("drive - baseline", "baseline - suppress", "drive - suppress"):
        a, b = name.split(" - ")
        assert f"{name} {mean[a] - mean[b]:+.3f} (" in true_line, (name, mean, true_line)
    assert "constraints (3-25 words, blocklist none): 110 of 110 shown sentences pass" in out
    assert list(tmp.iterdir()) == []  # its temporary folder is gone


def test_localizer_protocol_finds_sentences_above_nonwords(tmp_path):
    """The shipped localizer (blocked, Fedorenko 2010 materials) in a dry run: the simulated language network
    responds more to sentences than to nonword lists, measured through the rig and the GLM."""
    from control_loop.report import summarize, write_report

    keep = tmp_path / "keep"
    proc = subprocess.run(_cmd("protocol", "check", "language_localizer.toml", "--dry-run", "--keep", keep),
                          cwd=ROOT, env=_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stimuli shown: localizer: sentences 36, nonwords 36" in proc.stdout
    session = keep / "language_localizer-dry-run-seed0.h5"
    contrast = summarize(session)["localizer"]["sentences - nonwords"]
    assert contrast["difference"] > 0 and contrast["p"] < 1e-3, contrast
    assert f"localizer, measured: sentences - nonwords {contrast['difference']:+.3f}" in proc.stdout
    stale = session.with_name(session.stem + "-report") / "twin_accuracy.png"
    stale.parent.mkdir()
    stale.write_bytes(b"a figure from an earlier report")
    page = write_report(session).read_text()
    assert f"<td>sentences - nonwords</td><td>{contrast['difference']:+.3f}</td>" in page
    # no twin predicted anything in a localizer: no twin figures (an earlier report's are removed), the rest stay
    assert "twin_accuracy.png" not in page and "predicted_vs_measured.png" not in page and not stale.exists()
    assert "conditions.png" in page and "timecourse.png" in page and "twin r" not in page
    means = summarize(session)["runs"][0]["means"]  # the run table: its condition means, no r cells
    cell = f"nonwords {means['nonwords']:+.2f}, sentences {means['sentences']:+.2f}"
    assert f"<tr><td>1</td><td>localizer</td><td>localizer</td><td>36</td><td>{cell}</td></tr>" in page
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())  # a localizer shows fixed materials: nothing embedded


def test_stopping_rule_ends_the_session(uninterrupted, tmp_path):
    """max_trials ends the session; and a blocklisted word is in no shown sentence, random baseline ones too."""
    work, _, _ = uninterrupted
    protocol = tmp_path / "short.toml"
    text = TINY.read_text().replace("max_words = 25\n", 'max_words = 25\nblocklist = ["the"]\n')
    text = text.replace("candidates = 400", "candidates = 100")  # 40 trials; the pool is new, so embedded
    protocol.write_text(text + "\n[stopping]\nmax_trials = 40\n")
    out = tmp_path / "short.h5"
    proc = subprocess.run(_cmd("simulate", protocol, "--out", out, "--no-report"), cwd=ROOT, env=_env(work / "cache"),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopping rule: max_trials 40 reached" in proc.stdout
    data = read_session(out)
    assert len(data.events) == 40
    assert list(data.log.loc[data.log.kind == "stop", "message"]) == ["max_trials 40 reached"]
    assert summarize_status(out) == {"state": "stopped", "runs_complete": 2, "runs_planned": 6,
                                     "detail": "max_trials 40 reached"}  # fmt: skip
    shown = data.stimuli.set_index("stimulus_id").loc[data.events.stimulus_id, "text"]
    assert not shown.str.contains(r"\bthe\b", case=False).any(), shown[shown.str.contains(r"\bthe\b", case=False)]


@pytest.mark.parametrize(
    "conditions, acquisition",
    [(["suppress"], "ucb"), (["suppress", "baseline"], "ucb"), (["suppress"], "thompson")],
    ids=["suppress", "with-baseline", "thompson"],
)
def test_one_sided_rounds_and_the_target_effect_rule(uninterrupted, tmp_path, conditions, acquisition):
    """Rounds spent on suppression (alone, or beside random sentences; chosen by UCB or by one posterior
    draw of the twin): each round's measured effect is shown, against the round's own baseline trials (the
    same run's offset) if it has any, else against the baseline runs'; once it reaches target_effect the
    rounds end."""
    work, _, _ = uninterrupted
    protocol = tmp_path / "suppress.toml"
    round_lines = f"rounds = 2\nconditions = {json.dumps(conditions)}\nacquisition = {json.dumps(acquisition)}\n"
    text = TINY.read_text().replace("rounds = 2\n", round_lines)
    protocol.write_text(text + "\n[stopping]\ntarget_effect = 0.2\n")
    out = tmp_path / "suppress.h5"
    proc = subprocess.run(_cmd("simulate", protocol, "--out", out, "--no-report"), cwd=ROOT, env=_env(work / "cache"),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, est = _trial_table(out)
    round_ = est[est.run == 3]
    expected = {"suppress": 20} if conditions == ["suppress"] else {"suppress": 10, "baseline": 10}
    assert round_.condition.value_counts().to_dict() == expected  # no drive candidates
    base_runs = est[est.run <= 2].lang
    base = round_[round_.condition == "baseline"].lang.mean() if "baseline" in expected else base_runs.mean()
    effect = (base - round_[round_.condition == "suppress"].lang.mean()) / base_runs.std(ddof=1)
    assert f"baseline - suppress {effect:+.2f} baseline SDs" in proc.stdout, (effect, proc.stdout[-2000:])
    reached = "stopping rule: target_effect 0.2 reached" in proc.stdout
    assert reached == (effect >= 0.2), (effect, proc.stdout[-2000:])
    if conditions == ["suppress"] and acquisition == "ucb":
        assert reached  # the subject's shortest sentences lie well below its baseline mean
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert runs[2]["kind"] == "closed_loop" and sorted(map(int, runs[2]["predicted"])) == sorted(round_.trial)
    assert len(data.events) == 40 + 20 * (1 if reached else 2) + 30  # the evaluation runs either way
    assert set(est[est.run == est.run.max()].condition) == {"drive", "suppress", "baseline"}


def test_image_session_synthesizes_safe_images_and_drives_the_site(tmp_path):
    """The image protocol end to end: ephys rig and presenter processes, synthesis under the twin, report."""
    from stimulus_synthesis.safety import check_image
    from twin.vision import load_image

    from .test_reference import assert_same, incomparable, one_thread

    out = tmp_path / "image.h5"
    proc = subprocess.run(_cmd("simulate", ROOT / "tests" / "protocols" / "tiny_image.toml", "--out", out),
                          cwd=ROOT, env=one_thread(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    if why := incomparable("tiny_image"):
        warnings.warn(f"not compared with its reference: {why}", stacklevel=1)
    else:
        assert_same(out, "tiny_image")  # the images synthesized and what they measured: as before the redesign
    data, est = _trial_table(out)
    assert len(data.events) == 40 + 8 + 12 and data.events.trial.is_unique
    stimuli = data.stimuli.set_index("stimulus_id")
    synthesized = stimuli[stimuli.source == "synthesized"]
    assert len(synthesized) == 8 + 8  # drive and suppress in the closed-loop round and the evaluation
    for name in stimuli.image:  # every shown image is on disk beside the session file and passes the limits
        assert check_image(load_image(out.parent / name)).ok
    means = est.groupby("condition").site0.mean()  # measured rates of the target site
    assert means["drive"] > means["baseline"] > means["suppress"]
    assert (out.with_name(out.stem + "-report") / "report.html").exists()
    # what `protocol check --dry-run` reads from such a file: every shown image re-checked against the limits
    from control_loop.dryrun import describe, dry_run_summary
    from control_loop.protocol import load_protocol

    from ..support.subjects import luminance_sites as sites  # the protocol's simulated sites

    protocol = load_protocol(ROOT / "tests" / "protocols" / "tiny_image.toml")
    summary = dry_run_summary(out, protocol)  # the true responses: the ones the file keeps
    assert summary["stimuli"] == {"shown": 60, "failing": {}} and summary["refused"] == 0
    last = data.events.sort_values("trial").tail(12).merge(stimuli.image.reset_index(), on="stimulus_id")
    rate = sites([load_image(out.parent / name) for name in last.image])[:, 0]
    drive, suppress = (rate[last.condition.to_numpy() == c].mean() for c in ("drive", "suppress"))
    true = summary["true"]["contrasts"]["drive - suppress"]
    assert np.isclose(true["difference"], drive - suppress) and true["difference"] > 0 and true["p"] < 0.05
    assert summary["per_phase"]["evaluation"] == {"drive": 4, "suppress": 4, "baseline": 4}
    assert "safety limits: 60 of 60 shown images pass; the presenter refused 0 trial(s)" in describe(summary, protocol)


def test_live_view_on_a_terminal(uninterrupted, tmp_path):
    """On a terminal each run shows a live bar: volumes, trials shown, the target's signal, time left."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    work, _, _ = uninterrupted  # its feature cache: the candidates are embedded once
    proc = subprocess.Popen(_cmd("simulate", TINY, "--out", tmp_path / "tty.h5", "--no-report"), cwd=ROOT,
                            env=_env(work / "cache"), stdin=slave, stdout=slave, stderr=slave)  # fmt: skip
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0, screen.decode(errors="replace")[-2000:]
    text = screen.decode(errors="replace").replace("\r", "\n")
    bars = [line for line in text.splitlines() if "volumes:" in line and "shown" in line]
    assert any(line.lstrip().startswith("run 6 volumes:") for line in bars)
    assert any(" lang " in line and " s left" in line for line in bars)
    assert f"session file: {tmp_path / 'tty.h5'}" in text


def test_evaluation_contrasts_compare_within_runs():
    """Two evaluation runs with offsets of +1 and -1 and opposite condition mixes: the report's contrasts
    and condition means recover the condition effects, where pooled means would mistake the offsets for them."""
    import pandas as pd

    from control_loop.report import condition_means, evaluation_contrasts

    rng = np.random.default_rng(0)
    effect = {"drive": 0.3, "baseline": 0.0, "suppress": -0.3}
    rows = [
        {"run": run, "condition": cond, "lang": offset + effect[cond] + 0.1 * rng.standard_normal()}
        for run, offset, mix in (
            (1, 1.0, {"drive": 30, "baseline": 15, "suppress": 5}),
            (2, -1.0, {"drive": 5, "baseline": 15, "suppress": 30}),
        )
        for cond, k in mix.items()
        for _ in range(k)
    ]
    ev = pd.DataFrame(rows)
    out = evaluation_contrasts(ev, "lang")
    pooled = ev[ev.condition == "drive"].lang.mean() - ev[ev.condition == "suppress"].lang.mean()
    assert pooled > 1.5  # the runs' offsets, had the runs been pooled
    for name, truth in (("drive - baseline", 0.3), ("baseline - suppress", 0.3), ("drive - suppress", 0.6)):
        se = out[name]["difference"] / out[name]["t"]
        assert abs(out[name]["difference"] - truth) < 4 * se and se < 0.05, (name, out[name])
        assert out[name]["p"] < 1e-6
    one_run = evaluation_contrasts(ev[ev.run == 1], "lang")  # a single run: Student's t on its trials
    assert one_run["drive - suppress"]["difference"] == pytest.approx(0.6, abs=4 * 0.1 * np.sqrt(1 / 30 + 1 / 5))
    assert evaluation_contrasts(ev[ev.condition == "drive"], "lang") == {}  # nothing to compare
    # The report's bars: each condition's mean at the block's average offset (here 0: 50 trials in each run),
    # not the pooled means, which put D at +0.6 and S at -0.6 above and below the offsets' average.
    means = condition_means(ev, "lang")
    for cond, truth in effect.items():
        assert means[cond]["mean"] == pytest.approx(truth, abs=4 * means[cond]["se"]) and means[cond]["se"] < 0.05
    assert [means[c]["n"] for c in ("drive", "baseline", "suppress")] == [35, 30, 35]
    d, s = means["drive"]["mean"], means["suppress"]["mean"]
    assert d - s == pytest.approx(out["drive - suppress"]["difference"], abs=1e-12)


def _serve(kind: str, port: int, journal: Path, log: Path) -> subprocess.Popen:
    """A rig (simulated ephys, 2 sites) or a null presenter that runs at real time until killed."""
    args = {"rig": ["rig", "simulate-ephys", "--tuning", "tests.support.subjects:luminance_sites"],
            "presenter": ["present", "--null", "--trigger-key", ""]}[kind]  # fmt: skip
    with open(log, "a") as err:
        return subprocess.Popen(_cmd(*args, "--bind", f"tcp://127.0.0.1:{port}", "--journal", journal,
                                     "--heartbeat", "0.3"),
                                cwd=ROOT, env=_env(journal.parent / "cache"), stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip


def test_live_session_with_a_rig_and_presenter_that_outlive_it(tmp_path):
    """`session run` against a rig and a presenter started on their own (as in a lab): the rig's channel names
    are taken from its hello (or a mismatch is refused before anything is written); a rig killed and restarted
    mid-run costs nothing and the outage is in the session file; the killed controller's session resumes
    against the same, still running, rig and presenter (a new controller stream), every trial exactly once."""
    from ..support.netutil import free_port

    live = ROOT / "tests" / "protocols" / "live_image.toml"
    rig_port, pres_port = free_port(), free_port()
    rig = _serve("rig", rig_port, tmp_path / "rig.journal", tmp_path / "rig.log")
    presenter = _serve("presenter", pres_port, tmp_path / "presenter.journal", tmp_path / "presenter.log")
    endpoints = ["--rig", f"tcp://127.0.0.1:{rig_port}", "--presenter", f"tcp://127.0.0.1:{pres_port}"]
    env = _env(tmp_path / "cache")
    try:
        cmd = _cmd("session", "run", live, *endpoints, "--out", tmp_path / "wrong.h5", "--rois", "site0")
        wrong = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and "the rig measures ['site0', 'site1']" in wrong.stderr, wrong.stderr
        assert not (tmp_path / "wrong.h5").exists()

        out = tmp_path / "live.h5"
        proc = subprocess.Popen(_cmd("session", "run", live, *endpoints, "--out", out), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("run 2/"):
                time.sleep(1.0)
                rig.kill()  # SIGKILL in the middle of run 2
                rig.wait()
                time.sleep(1.0)
                rig = _serve("rig", rig_port, tmp_path / "rig.journal", tmp_path / "rig.log")  # same journal
            if line.startswith("run 3/"):
                time.sleep(0.5)
                proc.kill()  # the controller dies in run 3; the rig and the presenter keep running
                break
        proc.communicate(timeout=30)
        assert any(line.startswith("run 3/") for line in seen), "".join(seen) + proc.stderr.read()
        resumed = subprocess.run(_cmd("session", "resume", out), cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming" in resumed.stdout and "report: " in resumed.stdout
        data = read_session(out)
        assert data.rois == ["site0", "site1"]  # the rig's names for its channels
        assert sorted(data.events.trial) == list(range(32))  # every trial of the protocol, once
        assert set(data.latest_estimates().trial) == set(range(32))
        kinds = data.log.kind.tolist()
        assert "outage" in kinds and "outage-end" in kinds and "resume" in kinds, data.log
        assert (out.with_name("live-report") / "report.html").exists()
    finally:
        for p in (rig, presenter):
            p.kill()
            p.wait()


def test_live_session_against_a_relay_of_a_recording_that_writes_lines(tmp_path):
    """`rig relay` between a recording that writes one line per window (a time, then each site's count) and
    `session run`: each run takes the lines that follow its start, in order and with their own times; lines
    outside runs, comments and a malformed line are not samples; the relay killed mid-run and restarted on
    its journal keeps its run, and the session finishes with every trial once."""
    import threading

    from ..support.netutil import free_port

    live = ROOT / "tests" / "protocols" / "live_image.toml"
    rig_port, pres_port = free_port(), free_port()
    lines, journal = tmp_path / "recording.txt", tmp_path / "relay.journal"
    lines.touch()
    written: list[tuple[float, int, int]] = []  # every well-formed line, in order
    stop = threading.Event()

    def record() -> None:  # the recording: a line per 0.5-s window, as an acquisition program writes them
        rng = np.random.default_rng(0)
        with open(lines, "a") as fh:
            for k in range(10_000):
                if stop.wait(0.5):
                    return
                if k == 8:
                    fh.write("# the acquisition program's comment\n3.5 oops\n")  # not samples
                row = (time.time(), int(rng.poisson(5)), int(rng.poisson(8)))
                written.append(row)
                fh.write(f"{row[0]:.6f},{row[1]},{row[2]}\n")
                fh.flush()

    def relay() -> subprocess.Popen:
        with open(tmp_path / "relay.log", "a") as err:
            return subprocess.Popen(_cmd("rig", "relay", "--channels", "site0,site1", "--input", lines, "--kind",
                                         "spikes", "--bind", f"tcp://127.0.0.1:{rig_port}", "--journal", journal,
                                         "--heartbeat", "0.3"),
                                    cwd=ROOT, env=_env(tmp_path / "cache"), stderr=err)  # fmt: skip

    rig, writer = relay(), threading.Thread(target=record, daemon=True)
    presenter = _serve("presenter", pres_port, tmp_path / "presenter.journal", tmp_path / "presenter.log")
    writer.start()
    try:
        time.sleep(2.0)  # lines before any run: not sent
        out = tmp_path / "relayed.h5"
        cmd = _cmd("session", "run", live, "--rig", f"tcp://127.0.0.1:{rig_port}", "--presenter",
                   f"tcp://127.0.0.1:{pres_port}", "--out", out)  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path / "cache"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        for line in proc.stdout:
            if line.startswith("run 2/"):
                time.sleep(2.0)
                rig.kill()  # SIGKILL mid-run; the lines written while it is down are lost to the run
                rig.wait()
                time.sleep(1.0)
                rig = relay()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    finally:
        stop.set()
        for p in (rig, presenter):
            p.kill()
            p.wait()
    data = read_session(out)
    assert data.rois == ["site0", "site1"]
    assert sorted(data.events.trial) == list(range(32))  # every trial of the protocol, once
    log = (tmp_path / "relay.log").read_text()
    assert "is not numbers: '3.5 oops': skipped" in log and "acquired outside a run: not sent" in log, log[-3000:]
    times = np.array([t for t, _, _ in written])
    counts = np.array([(a, b) for _, a, b in written])
    for run, samples in data.samples.groupby("run"):
        # Each sample is a written line: the session keeps the lines' own spacing in time (one clock offset
        # per run), so some line is the run's first, and each later sample is the line that far after it.
        rel = samples.time.to_numpy() - samples.time.iloc[0]
        values = samples[["site0", "site1"]].to_numpy()
        found = []
        for base in times:
            k = np.searchsorted(times, base + rel - 1e-4)
            if k.max() < len(times) and np.allclose(times[k], base + rel, atol=1e-4):
                found += [k] if np.array_equal(counts[k], values) else []
        assert len(found) == 1, (run, len(found))  # one stretch of the recording is this run, value for value
    assert len(data.samples) < len(written) - 10  # the lines outside runs were not samples
    gaps = data.samples.groupby("run").time.apply(lambda t: np.diff(t.to_numpy()).max())
    assert (gaps > 1.0).sum() == 1  # one run went on after the relay's restart, with the lines lost meanwhile
    assert "outage" in data.log.kind.tolist()
    # a real recording: no true responses in the file, and none in its report
    from control_loop.report import write_report

    assert data.truth is None
    page = write_report(out).read_text()
    assert "simulated subject" not in page and "Time course of the target" in page
    assert "true" not in json.loads(out.with_name(out.stem + "-report").joinpath("summary.json").read_text())


def test_start_disagreement_flags_a_presenter_and_rig_that_do_not_start_together():
    """The check behind the session's `timing` warning: the median of the measured onsets' distance from where
    the rig's first volume puts them, when above a quarter TR (and 0.1 s)."""
    from control_loop.executor import start_disagreement

    scheduled = {k: 10.0 + 4.0 * k for k in range(8)}
    shifted = {k: t - 0.3 + (0.05 if k == 3 else 0.0) for k, t in scheduled.items()}  # one trial late on its own
    assert start_disagreement(shifted, scheduled, tr=0.5) == pytest.approx(-0.3)
    assert start_disagreement(shifted, scheduled, tr=2.0) is None  # within a quarter of a 2-s TR
    one_late = {**scheduled, 5: scheduled[5] + 1.0}  # a single late flip does not move the median
    assert start_disagreement(one_late, scheduled, tr=0.5) is None
    assert start_disagreement({}, scheduled, tr=0.5) is None  # nothing shown


@pytest.mark.slow  # (eight dry runs: about three minutes)
def test_a_dry_run_against_the_population_names_each_participant_and_its_separation(uninterrupted, tmp_path):
    """`protocol check --dry-run --population`: a dry run against every simulated participant, then per
    participant its make-up (features, response shape, weights) and the separation the protocol gave it."""
    from simulation.population import MEMBERS

    work, _, _ = uninterrupted
    keep = tmp_path / "keep"
    proc = subprocess.run(_cmd("protocol", "check", TINY, "--dry-run", "--population", "--keep", keep), cwd=ROOT,
                          env=_env(work / "cache"), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("the population (drive - suppress")[1].splitlines()[1:]
    assert len(table) == len(MEMBERS)
    for name, line in zip(MEMBERS, table, strict=True):
        assert line.startswith(f"    {name} ({MEMBERS[name].describe()}): ") and " SDs; " in line
        assert (keep / f"tiny_language-dry-run-population-{name}-seed3.h5").exists()
