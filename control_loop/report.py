"""The session report: an HTML page with matplotlib figures (PNG) and a JSON summary of the same numbers."""

from __future__ import annotations

import html
import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from acquisition import read_session, writer_pid
from kit.files import output_folder, replaced_whole

from .protocol import condition_name

if TYPE_CHECKING:
    import pandas as pd

    from acquisition import SessionData


def named(data: SessionData) -> SessionData:
    """The session's conditions by name (a file recorded before names were kept has one-letter codes); in place,
    and again harmlessly."""
    for table in (data.events, data.stimuli):
        table["condition"] = table["condition"].map(condition_name)
    return data


MAX_TIMECOURSE_RUNS = 16  # the time-course figure shows the latest runs, one panel each
COLORS = {"suppress": "#3b6fb6", "baseline": "#999999", "drive": "#c8423b", "control": "#7a4fa3",
          "nonwords": "#999999", "sentences": "#c8423b"}  # by condition  # fmt: skip
ORDER = ("suppress", "baseline", "drive", "control", "nonwords", "sentences")  # in the figures, left to right
# What went wrong in the recording (log kinds, in the words of their lines): listed in the report
PROBLEMS = ("outage", "outage-end", "bad-sample", "missing", "rig-restart", "presenter-restart", "timing", "duplicate",
            "refused", "silence")  # fmt: skip


def run_records(data: SessionData) -> list[dict]:
    """The session's completed runs, as the runner logged them (index, phase, kind, trials, predictions)."""
    return [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]


def _estimates(data: SessionData) -> pd.DataFrame:
    """Each trial's latest estimate with its condition, run and onset."""
    return data.latest_estimates().merge(data.events[["trial", "condition", "measured_onset"]], on="trial")


def r_interval(r: float, n: int, level: float = 0.95) -> list[float]:
    """Confidence interval of a Pearson r from n pairs (Fisher z)."""
    half = stats.norm.ppf(0.5 + level / 2) / np.sqrt(n - 3)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    return [float(np.tanh(z - half)), float(np.tanh(z + half))]


def session_status(data: SessionData, writing: bool) -> dict:
    """Where the session stands: ``state`` (running, complete, stopped by a stopping rule, error, or
    incomplete: paused or killed), runs complete and planned, the log line saying why it ended early, and
    while it runs, the ``current`` run (its ``run-start`` record) with the volumes it has ``recorded`` so far."""
    from .protocol import Protocol

    records = run_records(data)
    done = len(records)
    try:
        planned: int | None = len(Protocol.model_validate_json(data.attrs["protocol"]).runs())
    except ValueError:  # recorded by a version whose protocols this one does not read
        planned = None
    log = data.log
    resumed = np.flatnonzero((log.kind == "resume").to_numpy())
    since = log.iloc[resumed[-1] + 1 :] if len(resumed) else log  # an error before a resume is over
    errors, stops = since[since.kind == "error"], since[since.kind == "stop"]
    current = None  # a run's trials are recorded when it completes; its volumes, as they come
    started = [json.loads(m) for m in since.loc[since.kind == "run-start", "message"]]
    if writing and started and (last := started[-1])["run"] not in {r["run"] for r in records}:
        current = {**last, "recorded": int((data.samples.run == last["run"]).sum()) if len(data.samples) else 0,
                   "unit": "volumes" if data.attrs.get("modality") == "fmri" else "samples"}  # fmt: skip
    if writing:
        state, detail = "running", ""
    elif len(errors):
        state, detail = "error", str(errors.message.iloc[-1]).removeprefix("the session stopped: ")
    elif planned is not None and done >= planned:
        state, detail = "complete", ""
    elif len(stops):
        state, detail = "stopped", str(stops.message.iloc[-1])
    else:
        state, detail = "incomplete", ""
    out = {"state": state, "runs_complete": done, "runs_planned": planned, "detail": detail}
    return {**out, "current": current} if current else out


def status_line(status: dict) -> str:
    """The status in words, as the report's banner and ``report --follow`` say it."""
    runs = f"{status['runs_complete']} of {status['runs_planned'] or '?'} runs"
    if status["state"] == "running":
        c = status.get("current")
        return f"running: {runs} complete" + (
            f"; run {c['index'] + 1} ({c['phase']}, {c['trials']} trials) in progress: {c['recorded']} of "
            f"{c['volumes']} {c['unit']} recorded"
            if c else "")  # fmt: skip
    return {
        "complete": f"complete: {runs}",
        "stopped": f"stopped by a stopping rule after {runs}: {status['detail']}",
        "error": f"stopped on an error after {runs}: {status['detail']}",
        "incomplete": f"incomplete: {runs}, paused or interrupted",
    }[status["state"]]


def summarize(session_file: str | Path, data: SessionData | None = None) -> dict:
    """The report's numbers: per-condition means, twin accuracy per run, evaluation contrasts."""
    data = named(data if data is not None else read_session(session_file))
    protocol = json.loads(data.attrs["protocol"])
    target = protocol["target"]["rois"][0]
    est = _estimates(data)
    runs = run_records(data)
    out: dict = {
        "session": str(session_file),
        "protocol": protocol["name"],
        "modality": protocol["modality"],
        "target": target,
        "trials": len(est),
        "runs": [],
        "conditions": {},
        "evaluation": {},
    }
    for record in runs:
        rows = est[est.trial.isin(record["trials"])]
        entry = {"index": record["index"], "run": record["run"], "phase": record["phase"], "kind": record["kind"],
                 "trials": len(rows),
                 "means": {str(c): float(v.mean()) for c, v in rows.groupby("condition")[target]}}  # fmt: skip
        pred = record.get("predicted") or {}
        if pred:
            p = np.array([pred[str(t)] for t in rows.trial])
            entry["twin_r"] = float(np.corrcoef(p, rows[target])[0, 1]) if len(rows) > 2 else None
            if len(rows) > 3 and np.isfinite(entry["twin_r"]):
                entry["twin_r_ci"] = r_interval(entry["twin_r"], len(rows))
        out["runs"].append(entry)
    for cond, rows in est.groupby("condition"):
        v = rows[target].to_numpy()
        sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        out["conditions"][str(cond)] = {"n": len(v), "mean": float(v.mean()), "sem": sem}
    evaluation = [r["trials"] for r in runs if r["kind"] == "evaluation"]
    if evaluation:
        ev = est[est.trial.isin([t for trials in evaluation for t in trials])]
        out["evaluation"] = evaluation_contrasts(ev, target)
        out["evaluation_means"] = condition_means(ev, target)
    problems = data.log[data.log.kind.isin(PROBLEMS)]
    out["problems"] = [{"kind": k, "message": m} for k, m in zip(problems.kind, problems.message, strict=True)]
    localizer = [t for r in runs if r["kind"] == "localizer" for t in r["trials"]]
    if localizer:
        block, pairs = est[est.trial.isin(localizer)], LOCALIZER_PAIRS
        out["localizer"] = evaluation_contrasts(block, target, pairs)
        out["localizer_means"] = condition_means(block, target, pairs)
    return out


EVALUATION_PAIRS = (("drive", "baseline"), ("baseline", "suppress"), ("drive", "suppress"))
LOCALIZER_PAIRS = (("sentences", "nonwords"),)


def _within_runs(
    ev: pd.DataFrame, target: str, conds: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """OLS of the target on condition indicators and, when the design allows, run indicators:
    (each condition's least-squares mean at the block's average run offset as rows of a contrast
    matrix, the coefficients, their covariance, the residual degrees of freedom); None without
    residual degrees of freedom."""
    y = ev[target].to_numpy(np.float64)
    X = np.column_stack([(ev.condition == c).to_numpy(np.float64) for c in conds])
    runs = [(ev.run == r).to_numpy(np.float64) for r in sorted(ev.run.unique())[1:]]
    with_runs = np.column_stack([X, *runs])
    if np.linalg.matrix_rank(with_runs) == with_runs.shape[1]:
        X = with_runs
    dof = len(y) - X.shape[1]
    if dof < 1:
        return None
    means = np.zeros((len(conds), X.shape[1]))
    means[:, : len(conds)] = np.eye(len(conds))
    means[:, len(conds) :] = X[:, len(conds) :].mean(0)  # the block's share of trials in each run
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    cov = float(((y - X @ beta) ** 2).sum() / dof) * np.linalg.inv(X.T @ X)
    return means, beta, cov, dof


def _conditions_in(ev: pd.DataFrame, pairs: tuple) -> list[str]:
    return [c for c in dict.fromkeys(c for pair in pairs for c in pair) if (ev.condition == c).sum() > 1]


def evaluation_contrasts(ev: pd.DataFrame, target: str, pairs: tuple = EVALUATION_PAIRS) -> dict:
    """Contrasts of trials (columns condition, run, target) between condition ``pairs`` (default:
    drive/baseline/suppress) by OLS on condition and run indicators.

    Each run's offset (fMRI: its own baseline) is removed, so trials are compared within
    runs; with one run this is Student's t-test. Without a full-rank design (a condition
    only in a run of its own), runs are pooled.
    """
    conds = _conditions_in(ev, pairs)
    ev = ev[ev.condition.isin(conds)]
    if len(conds) < 2:
        return {}
    fit = _within_runs(ev, target, conds)
    if fit is None:
        return {}
    _, beta, cov, dof = fit
    out = {}
    for a, b in pairs:
        if a in conds and b in conds:
            c = np.zeros(len(beta))
            c[conds.index(a)], c[conds.index(b)] = 1.0, -1.0
            diff = float(c @ beta)
            t = diff / float(np.sqrt(c @ cov @ c))
            out[f"{a} - {b}"] = {
                "difference": diff, "t": t, "p": float(2 * stats.t.sf(abs(t), dof))}  # fmt: skip
    return out


def condition_means(ev: pd.DataFrame, target: str, pairs: tuple = EVALUATION_PAIRS) -> dict:
    """Each condition's mean in a block of trials with its SE, with the run offsets removed as in
    :func:`evaluation_contrasts` (least-squares means at the block's average run): ``{condition: {n, mean, se}}``."""
    conds = _conditions_in(ev, pairs)
    ev = ev[ev.condition.isin(conds)]
    if not conds:
        return {}
    fit = _within_runs(ev, target, conds)
    if fit is None:
        return {}
    means, beta, cov, _ = fit
    return {c: {"n": int((ev.condition == c).sum()), "mean": float(L @ beta), "se": float(np.sqrt(L @ cov @ L))}
            for c, L in zip(conds, means, strict=True)}  # fmt: skip


def contrast_text(name: str, c: dict, baseline_sd: float = float("nan")) -> str:
    """One measured contrast in words: difference, SE, p and, given the baseline's SD, the difference in it."""
    se = abs(c["difference"] / c["t"]) if c["t"] else float("nan")
    sds = f", {c['difference'] / baseline_sd:+.2f} baseline SDs" if np.isfinite(baseline_sd) and baseline_sd else ""
    return f"{name} {c['difference']:+.3f} (SE {se:.3f}, p {c['p']:.2g}{sds})"


def measured_baseline_sd(summary: dict) -> float:
    """SD of the baseline condition's trial estimates over the whole session (NaN without two of them)."""
    baseline = summary["conditions"].get("baseline")
    return float(baseline["sem"] * np.sqrt(baseline["n"])) if baseline and baseline["n"] > 1 else float("nan")


def effect_lines(evaluation: dict, localizer: dict, true: dict, baseline_sd: float = float("nan")) -> list[str]:
    """The evaluation's (a localizer's) measured contrasts and, in simulation, its true ones, as lines to print:
    what ``protocol check --dry-run`` says of each dry run and a session says when it ends."""
    lines = []
    if evaluation:
        lines.append("evaluation, measured: " + "; ".join(
            contrast_text(name, c, baseline_sd) for name, c in evaluation.items()))  # fmt: skip
    if localizer:
        lines.append("localizer, measured: " + "; ".join(contrast_text(name, c) for name, c in localizer.items()))
    if true.get("contrasts"):
        lines.append(f"{'evaluation' if evaluation else 'localizer'}, in the simulated subject's true response: "
                     + "; ".join(f"{name} {c['difference']:+.3f} ({c['sds']:+.2f} SDs of its baseline, p "
                                 f"{c['p']:.2g} one-sided)" for name, c in true["contrasts"].items()))  # fmt: skip
    return lines


def true_contrasts(data: SessionData) -> dict:
    """The evaluation block's conditions (a localizer's sentences and nonwords) in a simulated subject's
    true, noise-free response of the protocol's target, as the session file keeps it: condition means, each
    contrast with a one-sided Welch test and in SDs of the true response to the block's baseline stimuli, and
    that SD. ``{}`` for a session without true responses (a real subject)."""
    data = named(data)
    runs = run_records(data)
    kinds = {r["kind"] for r in runs}
    kind, pairs = ("evaluation", EVALUATION_PAIRS) if "evaluation" in kinds else ("localizer", LOCALIZER_PAIRS)
    trials = [t for r in runs if r["kind"] == kind for t in r["trials"]]
    ev, truth = _true_responses(data, trials)
    if not len(ev):
        return {}
    group = {c: truth[ev.condition.to_numpy() == c] for pair in pairs for c in pair}
    sd = float(group[pairs[0][1]].std(ddof=1)) if len(group[pairs[0][1]]) > 1 else float("nan")
    out: dict = {
        "means": {c: float(v.mean()) for c, v in group.items() if len(v)},
        "contrasts": {},
        "sd": sd,
        "sems": {c: float(v.std(ddof=1) / np.sqrt(len(v))) for c, v in group.items() if len(v) > 1},
    }
    for a, b in pairs:
        if len(group[a]) > 1 and len(group[b]) > 1:
            diff = float(group[a].mean() - group[b].mean())
            p = float(stats.ttest_ind(group[a], group[b], equal_var=False, alternative="greater").pvalue)
            out["contrasts"][f"{a} - {b}"] = {"difference": diff, "p": p,
                                                                               "sds": diff / sd}  # fmt: skip
    return out


def _true_responses(data: SessionData, trials: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
    """The events of ``trials`` that have a true response in the file, and that response of the protocol's
    target."""
    if data.truth is None:
        return data.events.iloc[:0], np.zeros(0)
    truth = data.truth.drop_duplicates("trial", keep="last")
    ev = data.events[data.events.trial.isin(trials)].merge(truth.drop(columns=["stimulus_id", "run"]), on="trial",
                                                           suffixes=("", "_true"))  # fmt: skip
    target = json.loads(data.attrs["protocol"])["target"]["rois"][0]
    column = f"{target}_true" if f"{target}_true" in ev else target
    return ev, ev[column].to_numpy(np.float64)


def true_twin_accuracy(data: SessionData) -> dict[str, float]:
    """Per run the twin predicted (by run index): r of its predictions with the subject's true response."""
    data = named(data)
    runs = [r for r in run_records(data) if r.get("predicted")]
    ev, truth = _true_responses(data, [t for r in runs for t in r["trials"]])
    truth_of = dict(zip(ev.trial, truth, strict=True))
    out = {}
    for record in runs:
        trials = [t for t in record["trials"] if t in truth_of]
        if len(trials) > 2:
            pred = [record["predicted"][str(t)] for t in trials]
            out[str(record["index"])] = float(np.corrcoef(pred, [truth_of[t] for t in trials])[0, 1])
    return out


def simulated_truth(data: SessionData) -> dict:
    """:func:`true_contrasts` and :func:`true_twin_accuracy` of a session with a simulated subject, from the true
    responses its file keeps; ``{}`` for a real subject."""
    if data.truth is None:
        return {}
    true = true_contrasts(data)
    twin_r = true_twin_accuracy(data)
    return {**true, "twin_r": twin_r} if twin_r else true


def _r_cell(r: float | None, ci: list[float] | None = None) -> str:
    """A correlation for the report's run table: blank before the twin predicted anything."""
    if r is None or not np.isfinite(r):
        return ""
    return f"{r:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _means_cell(means: dict[str, float]) -> str:
    """A run's condition means for the report's run table, in the figures' order: 'drive +1.21, ...'."""
    known = [c for c in ORDER if c in means] + sorted(set(means) - set(ORDER))
    return ", ".join(f"{c} {means[c]:+.2f}" for c in known)


def _twin_figures(plt, data, est, summary: dict, true: dict, target: str) -> list:
    """Predicted against measured per stimulus, and twin accuracy per run: (file, caption, figure) pairs,
    none when the twin predicted nothing before a run (a localizer)."""
    from matplotlib.ticker import MaxNLocator

    points = []  # (prediction, measured, condition) of every trial the twin predicted before it was shown
    for record in run_records(data):
        pred = record.get("predicted") or {}
        rows = est[est.trial.isin(record["trials"])]
        points += [(pred[str(t)], y, c) for t, y, c in zip(rows.trial, rows[target], rows.condition, strict=True)
                   if str(t) in pred]  # fmt: skip
    if not points:
        return []
    true_r = true.get("twin_r") or {}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in ORDER:
        mine = [(x, y) for x, y, cond in points if cond == c]
        if mine:
            ax.scatter(*zip(*mine, strict=True), s=10, color=COLORS[c], label=c)
    ax.set_xlabel("twin prediction (before measuring)")
    ax.set_ylabel(f"measured {target}")
    ax.set_title("Predicted vs measured, per stimulus")
    ax.legend(fontsize=7)
    figures = [("predicted_vs_measured.png", "Twin predictions, made before each run, against the measured "
                "trial estimates (run offsets not removed), by condition", fig)]  # fmt: skip

    fig, ax = plt.subplots(figsize=(5, 3.5))
    scored = [r for r in summary["runs"] if r.get("twin_r") is not None]
    measured = np.array([run["twin_r"] for run in scored])
    ci = np.array([run.get("twin_r_ci", [run["twin_r"]] * 2) for run in scored]).reshape(-1, 2)
    ax.errorbar([run["index"] + 1 for run in scored], measured, yerr=[measured - ci[:, 0], ci[:, 1] - measured],
                fmt="o-", capsize=4, label="measured (95% CI)")  # fmt: skip
    caption = "Twin accuracy on each run's new stimuli, before they were measured: r with the measured responses"
    if true_r:
        ax.plot([int(i) + 1 for i in true_r], list(true_r.values()), "s--", color="#c8423b",
                label="simulated subject's true response")  # fmt: skip
        ax.legend(fontsize=7)
        caption += " (95% CI, Fisher z) and with the simulated subject's true, noise-free response"
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel("run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("r (prediction, response)")
    ax.set_title("Twin accuracy over runs")
    figures.append(("twin_accuracy.png", caption, fig))
    return figures


def _replace(path: Path, content: bytes, written: list[Path]) -> None:
    """Write a file whole: a browser reloading the report never reads one half-written (nor does a second
    process writing the same report, as the end of a session and ``report --follow`` can at once)."""
    with replaced_whole(path, suffix=f".{os.getpid()}.part") as part:
        part.write_bytes(content)
    written.append(path)


def write_report(
    session_file: str | Path,
    out_dir: str | Path | None = None,
    *,
    data: SessionData | None = None,
    writing: bool | None = None,
    refresh: float | None = None,
) -> Path:
    """Write report.html, its PNG figures and summary.json into out_dir (default: SESSION-report/).

    ``data`` is the session as read (else read here) and ``writing`` whether a process was writing it
    just before (else looked up); while one is, a ``refresh`` (seconds) makes the page reload itself.
    """
    import matplotlib

    matplotlib.use("Agg")

    session_file = Path(session_file)
    out_dir = Path(out_dir) if out_dir else session_file.with_name(session_file.stem + "-report")
    if data is None:
        writing = writer_pid(session_file) is not None if writing is None else writing  # before the read
        data = read_session(session_file)  # before the folder: a file that is not a session leaves nothing behind
    with output_folder(out_dir) as written:  # a report that fails (a full disk) leaves none of its files
        return _write_report(session_file, out_dir, named(data), bool(writing), refresh, written)


def _write_report(session_file: Path, out_dir: Path, data: SessionData, writing: bool, refresh: float | None,
                  written: list[Path]) -> Path:  # fmt: skip
    import matplotlib.pyplot as plt

    summary = summarize(session_file, data)
    summary["status"] = status = session_status(data, bool(writing))
    true = simulated_truth(data)
    if true:
        summary["true"] = true
    target = summary["target"]
    est = _estimates(data)
    figures = []

    block = summary.get("evaluation_means") or summary.get("localizer_means")
    panels = [(block, "se", "measured, run offsets removed")] if block else [(summary["conditions"], "sem", "")]
    if block and true.get("means"):
        panels.append(({c: {"mean": m, "se": true["sems"].get(c, 0.0)} for c, m in true["means"].items()}, "se",
                       "simulated subject's true response"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.5), squeeze=False)
    for ax, (means, err, label) in zip(axes[0], panels, strict=True):
        conds = [c for c in ORDER if c in means]
        ax.bar([c for c in conds], [means[c]["mean"] for c in conds],
               yerr=[means[c][err] for c in conds], capsize=4, color=[COLORS[c] for c in conds])  # fmt: skip
        ax.set_ylabel(f"{target} (mean ± SE)")
        ax.set_title(label, fontsize=9)
    if block:
        name = "evaluation" if summary.get("evaluation_means") else "localizer"
        fig.suptitle(f"Condition means in the {name} block")
        caption = (f"Condition means of the {name} block with standard errors (measured: least-squares means "
                   "with a fixed effect per run, as in the contrasts)")  # fmt: skip
    else:
        fig.suptitle("Condition means, all trials")
        caption = "Condition means of all trials with standard errors"
    figures.append(("conditions.png", caption, fig))

    true_r = true.get("twin_r") or {}
    figures += _twin_figures(plt, data, est, summary, true, target)

    runs = sorted(data.samples.run.unique())[-MAX_TIMECOURSE_RUNS:] if len(data.samples) else []
    fig, axes = plt.subplots(max(len(runs), 1), 1, figsize=(8, 1.0 + 1.2 * max(len(runs), 1)), sharey=True,
                             squeeze=False)  # fmt: skip
    shown: dict[str, object] = {}
    kinds = {r["run"]: r["kind"].replace("_", " ") for r in run_records(data)}
    for ax, run in zip(axes[:, 0], runs, strict=False):
        s = data.samples[data.samples.run == run]
        t0 = s.time.min()
        ax.plot(s.time - t0, s[target], lw=0.8, color="k")
        for t in s.time[s[data.rois].isna().any(axis=1)]:  # volumes with values that were not numbers
            shown["missing volume"] = ax.axvline(t - t0, color="#d08a2b", lw=1.2, ls=":")
        for e in data.events[data.events.run == run].itertuples():
            span = ax.axvspan(e.measured_onset - t0, e.measured_onset - t0 + e.duration, lw=0, alpha=0.3,
                              color=COLORS.get(e.condition, "#999999"))  # fmt: skip
            shown.setdefault(e.condition, span)
        ax.set_ylabel(f"run {int(run)}\n{kinds.get(run, '')}", fontsize=8)
    axes[-1, 0].set_xlabel("time from the run's first sample (s)")
    fig.suptitle(f"{target}: time course of each run, trials shaded by condition", x=0.02, ha="left")
    order = [*(c for c in ORDER), "missing volume"]
    labels = sorted(shown, key=lambda n: order.index(n) if n in order else len(order))
    if labels:
        fig.legend([shown[n] for n in labels], labels, loc="upper right", ncols=len(labels), fontsize=7,
                   frameon=False)  # fmt: skip
    total = data.samples.run.nunique() if len(data.samples) else 0
    caption = "Time course of the target in each run, with each trial shaded from onset to offset by condition"
    if "missing volume" in shown:
        caption += "; dotted lines: volumes recorded as missing (values that were not numbers)"
    if total > len(runs):
        caption += f" (the last {len(runs)} of {total} runs)"
    figures.append(("timecourse.png", caption, fig))

    for name in {"predicted_vs_measured.png", "twin_accuracy.png"} - {n for n, _, _ in figures}:
        (out_dir / name).unlink(missing_ok=True)
    for name, _, fig in figures:
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        _replace(out_dir / name, png.getvalue(), written)
    _replace(out_dir / "summary.json", json.dumps(summary, indent=2).encode(), written)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['difference']:+.3f}</td><td>{v['t']:.2f}</td>"
                   f"<td>{v['p']:.2g}</td></tr>"
                   for k, v in [*summary["evaluation"].items(), *summary.get("localizer", {}).items()])  # fmt: skip
    yet = " yet" if status["state"] == "running" else ""
    contrasts = (f"<table><tr><th>contrast</th><th>difference</th><th>t</th><th>p</th></tr>{rows}</table>" if rows
                 else f"<p>None{yet}: the session has no completed evaluation or localizer run.</p>")  # fmt: skip
    truth = ""
    if true.get("contrasts"):
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['difference']:+.3f}</td><td>{v['sds']:+.2f}</td>"
                        f"<td>{v['p']:.2g}</td></tr>" for k, v in true["contrasts"].items())  # fmt: skip
        truth = ("<h2>In the simulated subject's true (noise-free) response</h2><table><tr><th>contrast</th>"
                 f"<th>difference</th><th>SDs of the baseline condition</th><th>p (one-sided Welch)</th></tr>{cells}"
                 "</table>")  # fmt: skip
    scored = any(r.get("twin_r") is not None for r in summary["runs"])  # else (a localizer) no twin r columns
    head = ("<th>twin r with the measurements (95% CI)</th>" if scored else "") + (
        "<th>twin r with the simulated subject's true response</th>" if true_r else ""
    )
    run_rows = "".join(
        f"<tr><td>{r['index'] + 1}</td><td>{html.escape(r['phase'])}</td><td>{html.escape(r['kind'])}</td>"
        f"<td>{r['trials']}</td><td>{html.escape(_means_cell(r['means']))}</td>"
        + (f"<td>{_r_cell(r.get('twin_r'), r.get('twin_r_ci'))}</td>" if scored else "")
        + (f"<td>{_r_cell(true_r.get(str(r['index'])))}</td>" if true_r else "")
        + "</tr>"
        for r in summary["runs"]
    )
    problems = "".join(f"<li><b>{html.escape(p['kind'])}</b>: {html.escape(p['message'])}</li>"
                       for p in summary["problems"])  # fmt: skip
    problems = f"<h2>Recording problems</h2><ul>{problems}</ul>" if problems else ""
    runs_table = ("<h2>Runs</h2><table><tr><th>run</th><th>phase</th><th>kind</th><th>trials</th><th>measured "
                  f"{html.escape(target)}, mean by condition</th>{head}</tr>{run_rows}</table>")  # fmt: skip
    body = "".join(f'<figure><img src="{n}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
                   for n, c, _ in figures)  # fmt: skip
    live = refresh is not None and status["state"] == "running"
    seconds = max(round(refresh or 0), 1)
    reload = f'<meta http-equiv="refresh" content="{seconds}">' if live else ""
    said = f"Session {html.escape(status_line(status))}."
    if status["state"] in ("error", "incomplete"):
        said += f" <code>neurotwin session resume {html.escape(str(session_file))}</code> continues it."
    said += f" Report written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    said += f"; this page reloads every {seconds} s while <code>neurotwin report --follow</code> runs." if live else "."
    page = f"""<!doctype html><html><head><meta charset="utf-8">{reload}<title>NeuroTwin session report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}figure{{display:inline-block;margin:1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:0.3em 0.6em}}
.status{{padding:0.4em 0.8em;background:#f3f3f3;border-left:4px solid #999}}
.running{{border-color:#3b6fb6}}.complete{{border-color:#3a9a4a}}.stopped{{border-color:#d08a2b}}.error,.incomplete{{border-color:#c8423b}}</style>
</head><body>
<h1>{html.escape(summary["protocol"])}</h1>
<p class="status {status["state"]}" id="status">{said}</p>
<p>Session <code>{html.escape(str(session_file))}</code>: {summary["trials"]} trials in {len(summary["runs"])} runs;
target <b>{html.escape(target)}</b>.</p>
<h2>Contrasts (evaluation and localizer; measured responses compared within runs: OLS with a fixed effect per run)</h2>
{contrasts}
{truth}
{runs_table}
{problems}
<h2>Figures</h2>{body}
<p>Numbers: <a href="summary.json">summary.json</a></p></body></html>"""
    _replace(out_dir / "report.html", page.encode("utf-8"), written)
    return out_dir / "report.html"
