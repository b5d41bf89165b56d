"""Closed loop against open loop at equal scanner time, in simulation, at 5 seeds.

Runs protocols/closed_loop_language.toml and protocols/open_loop_language.toml
(the same 390 trials and 28.8 min of scanner time; the open loop measures baseline
sentences where the closed loop runs its rounds) with `neurotwin simulate` against
the default simulated subject, then scores each final evaluation block by the
subject's true (noise-free) responses: drive - suppress separation in units of the
evaluation baseline sentences' true SD, and Welch t-tests of drive > baseline >
suppress. Target: closed-loop separation at least 1.25 x the open loop's. Also printed:
a 90 % bootstrap interval of that ratio over seeds, and the closed - open difference
paired by seed (a seed's two sessions measure the same baseline runs), with its SE.
With ``image``, protocols/closed_loop_image.toml against open_loop_image.toml (same
recording time) on the simulated electrophysiology rig, scored by the target site's
true rate (``simulation.tuning.v4_tuning``) in units of the evaluation natural images' SD.
Target: closed-loop separation at least the open loop's.
With ``--reference TWIN`` (a twin file, e.g. fit on ../shared/data's Pereira responses with
``neurotwin twin fit``) both protocols start from that twin (``[twin] reference``), and a third
line scores the reference alone: the evaluation block with no measurement before it, as
Tuckute et al. 2024 tested their model's choices in new people. (The default subject's
weights come from the same Pereira data, so in simulation such a reference is a favourable prior.)
The shipped language protocols' twins borrow a prior (``[twin] prior``); ``--prior FILE`` puts another
(a prior or twin file) in its place.
Run: .venv/bin/python bench/closed_loop.py [seeds, default 5] [text|image] [--work DIR]
     [--reference TWIN | --prior FILE]
With ``--work DIR`` the session files are kept there, and a session already finished
in DIR (``closed-SEED.h5`` / ``open-SEED.h5`` with every run of its protocol) is scored
again rather than rerun, so a long run can be split across sittings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluate(session: Path) -> dict:
    """True responses of the evaluation block's conditions (as the session file keeps them), their separation
    and one-sided Welch tests."""
    from acquisition import read_session
    from control_loop.report import true_contrasts

    t = true_contrasts(read_session(session))
    c = t["contrasts"]
    return {**t["means"], "sep": c["drive - suppress"]["sds"], "p_db": c["drive - baseline"]["p"],
            "p_bs": c["baseline - suppress"]["p"]}  # fmt: skip


def finished(session: Path) -> bool:
    """Whether a session file holds every run of its protocol."""
    from acquisition import read_session
    from control_loop.protocol import Protocol

    if not session.exists():
        return False
    d = read_session(session)
    return (d.log.kind == "run-complete").sum() == len(Protocol.model_validate_json(d.attrs["protocol"]).runs())


def _toml(data: dict) -> str:
    """TOML for a protocol's tables of scalars and lists (json spells those the TOML way)."""
    import json

    top = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict) and k != "phases"]
    tables = [f"\n[{k}]\n" + "\n".join(f"{a} = {json.dumps(b)}" for a, b in v.items())
              for k, v in data.items() if isinstance(v, dict)]  # fmt: skip
    phases = ["\n[[phases]]\n" + "\n".join(f"{a} = {json.dumps(b)}" for a, b in p.items()) for p in data["phases"]]
    return "\n".join(top) + "\n" + "\n".join(tables + phases) + "\n"


def protocols(kind: str, twin: dict[str, Path], work: Path) -> dict[str, tuple[str, Path]]:
    """label -> (session file stem, protocol): the shipped closed and open loops, or copies with the ``[twin]``
    table ``twin`` (a reference twin file, or a prior file) and, with a reference, the reference alone (the
    evaluation phase only)."""
    import tomllib

    shipped = {name: ROOT / "protocols" / f"{name}_loop_{kind}.toml" for name in ("closed", "open")}
    if not twin:
        return {f"{name} loop": (name, path) for name, path in shipped.items()}
    ((field, file),) = twin.items()
    short = {"reference": "ref", "prior": "prior"}[field]
    out = {}
    for name, path in shipped.items():
        data = tomllib.loads(path.read_text())
        data["twin"] = {field: str(file.resolve())}
        out[f"{name} loop + {field}"] = (f"{name}+{short}", work / f"{name}+{short}.toml")
        out[f"{name} loop + {field}"][1].write_text(_toml(data))
    if field == "reference":
        data["phases"] = [p for p in data["phases"] if p["kind"] == "evaluation"]
        out["reference alone"] = ("reference-alone", work / "reference-alone.toml")
        out["reference alone"][1].write_text(_toml(data))
    return out


def main(n_seeds: int = 5, modality: str = "text", work: Path | None = None, twin: dict[str, Path] | None = None
         ) -> None:  # fmt: skip
    kind, target = ("image", 1.0) if modality == "image" else ("language", 1.25)
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="nt-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"session files in {work}")
    twin = twin or {}
    runs = protocols(kind, twin, work)
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for seed in range(n_seeds):
        for name, (stem, protocol) in runs.items():
            out = work / f"{stem}-{seed}.h5"
            cmd = [sys.executable, "-m", "control_loop.cli", "simulate", str(protocol),
                   "--out", str(out), "--seed", str(seed), "--no-report"]  # fmt: skip
            proc = None if finished(out) else subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc is not None and proc.returncode:
                sys.exit(f"seed {seed} {name}: simulate failed:\n{proc.stderr[-2000:]}")
            r = evaluate(out)
            results[name].append(r)
            print(f"seed {seed} {name:24s}: true drive {r['D']:.3f}  baseline {r['B']:.3f}  suppress {r['S']:.3f}  "
                  f"separation {r['sep']:.2f} SD  p(D>B) {r['p_db']:.1e}  p(B>S) {r['p_bs']:.1e}",
                  flush=True)  # fmt: skip
    print()
    for name in runs:
        seps = np.array([r["sep"] for r in results[name]])
        sig = sum(r["p_db"] < 0.01 and r["p_bs"] < 0.01 for r in results[name])
        print(f"{name}: separation mean {seps.mean():.2f} SD (spread {seps.min():.2f}-{seps.max():.2f}); "
              f"drive > baseline > suppress at p < 0.01 in {sig}/{n_seeds} seeds")  # fmt: skip
    suffix = "".join(f" + {field}" for field in twin)
    closed, open_ = (np.array([r["sep"] for r in results[f"{name} loop{suffix}"]]) for name in ("closed", "open"))
    ratio = closed.mean() / open_.mean()
    verdict = "PASS" if ratio >= target else "FAIL"
    if n_seeds > 1:  # resampling seeds (a seed's two sessions together): how far the ratio could move
        pick = np.random.default_rng(0).integers(0, n_seeds, (10_000, n_seeds))
        lo, hi = np.percentile(closed[pick].mean(1) / open_[pick].mean(1), [5, 95])
        verdict += f"; 90 % bootstrap interval over seeds {lo:.2f}-{hi:.2f}"
        if lo < target <= ratio:
            verdict += ", which reaches below the target"
    print(f"closed / open separation: {ratio:.2f} (target at least {target}: {verdict})")
    if n_seeds > 1:  # a seed's two sessions share the protocol seed (the same first runs): compare them paired
        d = closed - open_
        print(f"closed - open separation, paired by seed: {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(n_seeds):.2f} SE")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="closed loop against open loop at equal scanner time")
    parser.add_argument("seeds", nargs="?", type=int, default=5)
    parser.add_argument("modality", nargs="?", choices=["text", "image"], default="text")
    parser.add_argument("--work", type=Path, help="keep session files here; finished ones are scored, not rerun")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--reference", type=Path, help="a twin file both loops start from (text)")
    which.add_argument("--prior", type=Path, help="a prior (or twin) file both loops' twins borrow from")
    args = parser.parse_args()
    twin = {k: v for k, v in (("reference", args.reference), ("prior", args.prior)) if v is not None}
    main(args.seeds, args.modality, args.work, twin)
