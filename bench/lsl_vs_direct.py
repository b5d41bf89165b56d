"""A shipped protocol through Lab Streaming Layer (or a scanner's export folder) against the direct simulated rig.

Runs a protocol with `neurotwin simulate` twice per seed: through the direct simulated rig, and with
``[simulation] via = "lsl"`` (a simulated LSL device -> `neurotwin rig lsl` -> the controller: ROI values per
volume for sentences, spike counts at 1 kHz counted per window for images) or, with ``--via export``,
``via = "export"`` (a simulated scanner writing a volume file per TR -> `neurotwin rig rtfmri` -> the controller).
Prints each session's evaluation means (drive, baseline, suppress on the target) in the simulated subject's true
(noise-free) response and as measured, the one-sided Welch p-values of drive > baseline and baseline > suppress,
whether drive > baseline > suppress held, and per path the mean over seeds. An LSL device (or a simulated export)
sends samples only: its sessions' true responses are the subject's, computed here for each shown stimulus. Through
a device the noise's draws depend on where the session starts in its recording, so the two paths are not paired
draw for draw.

    python bench/lsl_vs_direct.py [--protocol protocols/closed_loop_language.toml] [--seeds 3] [--via lsl|export]
        [--work DIR]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, parser
from control_loop.protocol import MAX_DEVICE_SPEED

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measured(session: Path) -> dict:
    """The evaluation block's measured means and the one-sided p-values of its ordering."""
    from control_loop.report import summarize

    s = summarize(session)
    means = {c: s["evaluation_means"][c]["mean"] for c in ("drive", "baseline", "suppress")}
    ev = s["evaluation"]
    return {**means, "p_db": ev["drive - baseline"]["p"], "p_bs": ev["baseline - suppress"]["p"],
            "ordered": means["drive"] > means["baseline"] > means["suppress"]}  # fmt: skip


def true(session: Path) -> dict:
    """The evaluation block in the simulated subject's true (noise-free) response of the target: from the session
    file, or (an LSL device sends none) the subject's response to each shown stimulus, computed here."""

    import pandas as pd

    from acquisition import read_session
    from control_loop.report import true_contrasts
    from simulation.subjects import load_subject

    data = read_session(session)
    if data.truth is None:
        peers = data.attrs["peers"]
        subject = load_subject(peers["subject"] or None)
        ev = data.events.merge(data.stimuli[["stimulus_id", "text", "image"]], on="stimulus_id")
        if data.attrs.get("modality") == "spikes":
            from twin.vision import load_image

            stimuli = [load_image(session.parent / name) for name in ev.image]
        else:
            stimuli = list(ev.text)
        values = np.asarray(subject(stimuli), np.float64)
        data.truth = pd.DataFrame({"trial": ev.trial, "stimulus_id": ev.stimulus_id, "run": ev.run,
                                   **{roi: values[:, i] for i, roi in enumerate(data.rois)}})  # fmt: skip
    t = true_contrasts(data)
    c = t["contrasts"]
    return {**t["means"], "p_db": c["drive - baseline"]["p"], "p_bs": c["baseline - suppress"]["p"],
            "ordered": t["means"]["drive"] > t["means"]["baseline"] > t["means"]["suppress"]}  # fmt: skip


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "closed_loop_language.toml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="Keep the session files here (and reuse finished ones).")
    p.add_argument("--via", choices=("lsl", "export"), default="lsl", help="The path compared with the direct rig.")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lsl-vs-direct-"))
    work.mkdir(parents=True, exist_ok=True)
    text = args.protocol.read_text()
    for key in ("reference", "prior"):  # (files named relative to the protocol's folder: the copies are elsewhere)
        text = re.sub(rf'^{key} = "([^"/][^"]*)"', lambda m, k=key: f'{k} = "{args.protocol.parent.resolve() / m[1]}"',
                      text, flags=re.M)  # fmt: skip
    if "[simulation]" not in text:
        text += "\n[simulation]\n"
    results: dict[tuple[str, str], list[dict]] = {
        (v, w): [] for v in ("direct", args.via) for w in ("true", "measured")
    }
    for seed in range(args.seeds):
        for via in ("direct", args.via):
            protocol = work / f"{args.protocol.stem}-{via}.toml"
            copy = text.replace("[simulation]\n", f'[simulation]\nvia = "{via}"\n', 1)
            if via != "direct":  # (a simulated device runs at most MAX_DEVICE_SPEED times faster than real time)
                top = MAX_DEVICE_SPEED[via]
                copy = re.sub(r"^speed = ([0-9.]+)", lambda m, top=top: f"speed = {min(float(m[1]), top):g}",
                              copy, flags=re.M)  # fmt: skip
            protocol.write_text(copy)
            out = work / f"{via}-{seed}.h5"
            if not out.exists():
                started = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out",
                                       str(out), "--seed", str(seed), "--no-report"], cwd=ROOT,
                                      capture_output=True, text=True)  # fmt: skip
                if done.returncode != 0:
                    sys.exit(f"{via} seed {seed} failed: {done.stderr[-2000:]}")
                took = f" ({time.monotonic() - started:.0f} s)"
            else:
                took = " (kept)"
            for what, r in (("true", true(out)), ("measured", measured(out))):
                results[(via, what)].append(r)
                print(f"seed {seed} {via:7s} {what:8s}: drive {r['drive']:+.3f}  baseline {r['baseline']:+.3f}  "
                      f"suppress {r['suppress']:+.3f}  p(d>b) {r['p_db']:.3g}  p(b>s) {r['p_bs']:.3g}  "
                      f"ordered {r['ordered']}{took}", flush=True)  # fmt: skip
    print(f"{args.protocol.name}, {args.seeds} seeds, the evaluation block's means of the target:")
    for (via, what), rs in results.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("drive", "baseline", "suppress")}
        print(f"  {via:7s} {what:8s}: drive {mean['drive']:+.3f} > baseline {mean['baseline']:+.3f} > suppress "
              f"{mean['suppress']:+.3f}: {mean['drive'] > mean['baseline'] > mean['suppress']}; ordered in "
              f"{sum(r['ordered'] for r in rs)} of {len(rs)} seeds; drive - suppress "
              f"{mean['drive'] - mean['suppress']:+.3f}")  # fmt: skip
    print(f"session files: {work}")


if __name__ == "__main__":
    main()
