"""What a protocol's dry run in simulation showed: stimuli per phase and condition, the evaluation's
effects (measured, in the simulated subject's true response, and as the twin predicted them), and
whether every shown stimulus kept the protocol's constraints and safety limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acquisition import read_session

from .protocol import Protocol
from .report import (
    EVALUATION_PAIRS,
    effect_lines,
    measured_baseline_sd,
    named,
    run_records,
    summarize,
    true_contrasts,
)

CONTRASTS = tuple(f"{a} - {b}" for a, b in EVALUATION_PAIRS)  # summarize's names


def dry_run_summary(session_file: Path, protocol: Protocol) -> dict:
    """The numbers of one finished dry-run session, as ``describe`` prints them, with the simulated subject's
    true contrasts (:func:`true_contrasts`, from the true responses the file keeps)."""
    data = named(read_session(session_file))
    summary = summarize(session_file, data)
    runs = run_records(data)
    condition = data.events.set_index("trial").condition
    per_phase: dict[str, dict[str, int]] = {}
    predicted: dict[str, list[float]] = {}
    for run in runs:
        counts = per_phase.setdefault(run["phase"], {})
        for cond, n in condition.loc[run["trials"]].value_counts().items():
            counts[str(cond)] = counts.get(str(cond), 0) + int(n)
        if run["kind"] == "evaluation":
            for trial, value in (run.get("predicted") or {}).items():
                predicted.setdefault(str(condition.loc[int(trial)]), []).append(float(value))
    baseline_sd = measured_baseline_sd(summary)
    twin = {c: float(np.mean(v)) for c, v in predicted.items()}
    out = {
        "trials": len(data.events),
        "per_phase": per_phase,
        "measured": summary["evaluation"],
        "localizer": summary.get("localizer", {}),
        "baseline_sd": float(baseline_sd),
        "twin": {
            name: twin[a] - twin[b]
            for name, (a, b) in zip(CONTRASTS, EVALUATION_PAIRS, strict=True)
            if a in twin and b in twin
        },
        "refused": int((data.log.kind == "refused").sum()),
        "true": true_contrasts(data),
    }
    shown = data.stimuli.set_index("stimulus_id").loc[data.events.stimulus_id]
    shown = shown[shown.condition.isin(["drive", "suppress", "control", "baseline"])]  # (localizer materials: fixed)
    if protocol.modality == "text":
        constraints = protocol.stimuli.constraints()
        words = shown.text.str.split().str.len()
        broken = {t: constraints.violations(t) for t in shown.text}
        out["stimuli"] = {
            "shown": len(shown),
            "failing": {t: v for t, v in broken.items() if v},
            "words": [int(words.min()), int(words.max())] if len(words) else [],
        }
    else:
        from stimulus_synthesis.safety import check_image
        from twin.vision import load_image

        reports = {name: check_image(load_image(session_file.parent / name)) for name in shown.image}
        out["stimuli"] = {"shown": len(shown), "failing": {n: r.reasons for n, r in reports.items() if not r.ok}}
    return out


def describe(summary: dict, protocol: Protocol) -> list[str]:
    """Readable lines for one dry run."""
    phases = "; ".join(
        f"{phase}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
        for phase, counts in summary["per_phase"].items()
    )
    lines = [f"stimuli shown: {phases}"]
    lines += effect_lines(summary["measured"], summary["localizer"], summary.get("true", {}), summary["baseline_sd"])
    if summary["twin"]:
        lines.append("evaluation, as the twin predicted it: " + "; ".join(
            f"{name} {value:+.3f}" for name, value in summary["twin"].items()
        ))  # fmt: skip
    st = summary["stimuli"]
    failing = st["failing"]
    if not st["shown"]:
        pass  # a localizer only: its materials are fixed
    elif protocol.modality == "text":
        s = protocol.stimuli
        words = f"{st['words'][0]}-{st['words'][1]} words" if st["words"] else "none"
        lines.append(
            f"constraints ({s.min_words}-{s.max_words} words, blocklist {s.blocklist or 'none'}): "
            f"{st['shown'] - len(failing)} of {st['shown']} shown sentences pass ({words})"
        )
    else:
        lines.append(f"safety limits: {st['shown'] - len(failing)} of {st['shown']} shown images pass; "
                     f"the presenter refused {summary['refused']} trial(s)")  # fmt: skip
    for stimulus, reasons in list(failing.items())[:5]:
        lines.append(f"  FAILS: {stimulus!r}: {', '.join(reasons)}")
    return lines


def describe_spread(summaries: list[dict]) -> list[str]:
    """Mean and SD over dry runs of each measured evaluation contrast, and how often p < 0.01; the same
    for the simulated subject's true contrasts."""
    lines = []
    for name in CONTRASTS:
        found = [s["measured"][name] for s in summaries if name in s["measured"]]
        if len(found) < 2:
            continue
        d = np.array([c["difference"] for c in found])
        hits = sum(c["p"] < 0.01 and c["difference"] > 0 for c in found)
        lines.append(f"{name} {d.mean():+.3f} +- {d.std(ddof=1):.3f} (mean +- SD over {len(d)} dry runs); "
                     f"positive at p < 0.01 in {hits} of {len(d)}")  # fmt: skip
    true = [s["true"]["contrasts"] for s in summaries if s.get("true", {}).get("contrasts")]
    if len(true) > 1:
        for name in true[0]:
            d = np.array([c[name]["sds"] for c in true])
            hits = sum(c[name]["p"] < 0.01 for c in true)
            lines.append(f"{name}, true: {d.mean():+.2f} +- {d.std(ddof=1):.2f} SDs of its baseline "
                         f"(mean +- SD over {len(d)} dry runs); p < 0.01 in {hits} of {len(d)}")  # fmt: skip
    return lines
