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
With ``--population [NAME ...]`` (sentences) both loops run against every member of the population of
simulated participants (``simulation.population``; or the members named) at each seed, two sessions at a
time, and a table gives per participant the closed and open loops' mean separations, their difference paired by
seed with its SE, their ratio, and in how many sessions drive > baseline > suppress held at p < 0.01; then the
population's mean paired difference with its 90 % interval (participants resampled), and the lowest ratio.
Target: the closed loop's mean separation at least the open loop's, on no participant below 0.9 x of it, and
drive > baseline > suppress at p < 0.01 in at least 90 % of closed-loop sessions.
With ``--population --others`` each participant also gets a reference twin fit on the other members (their mean
true response to the Pereira 2018 sentences, plus the trial noise of one trial from each of them; made once into
the work folder), and two more sessions per seed: the reference alone (no measurement of this participant, every
trial on evaluation, as Tuckute et al. 2024's new participants) and the closed loop starting from that reference;
the table adds their separations.
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
            if error := simulate(protocol, out, seed):
                sys.exit(f"seed {seed} {name}: simulate failed:\n{error}")
            r = evaluate(out)
            results[name].append(r)
            print(f"seed {seed} {name:24s}: true drive {r['drive']:.3f}  baseline {r['baseline']:.3f}  "
                  f"suppress {r['suppress']:.3f}  "
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


def simulate(protocol: Path, out: Path, seed: int, subject: str | None = None) -> str | None:
    """Run one simulated session unless ``out`` already holds it; the error's tail if it failed."""
    if finished(out):
        return None
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out", str(out), "--seed",
           str(seed), "--no-report", *(["--subject", subject] if subject else [])]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return proc.stderr[-2000:] if proc.returncode else None


def reference_from_others(member: str, work: Path) -> Path:
    """A reference twin for ``member`` fit on the other population members (see the module's docstring)."""
    from bench._common import PEREIRA, PRIOR
    from simulation.language import NOISE_SD
    from simulation.population import MEMBERS
    from simulation.subjects import load_subject
    from twin import FeaturePlan, Prior, TextFeatures, Twin, load_dataset

    path = work / f"reference-without-{member}.h5"
    if path.exists():
        return path
    data = load_dataset(PEREIRA)
    others = [m for m in MEMBERS if m != member]
    truth = np.mean([load_subject(f"population:{m}")(data.sentences)[:, 0] for m in others], axis=0)
    rng = np.random.default_rng(list(member.encode()))
    y = truth + rng.normal(0, NOISE_SD / np.sqrt(len(others)), len(truth))
    features = TextFeatures(FeaturePlan(), cache=work / "pereira-features.h5")
    Twin.fit(data.sentences, y[:, None], ["lang"], features=features, prior=Prior.load(PRIOR)).save(path)
    return path


def population(members: list[str], n_seeds: int, work: Path | None, jobs: int = 2, others: bool = False) -> None:
    """Closed against open loop on every member of the population, at ``n_seeds`` seeds (with ``others``, also
    from a reference fit on the other members: the reference alone and the closed loop from it)."""
    from concurrent.futures import ThreadPoolExecutor

    from simulation.population import MEMBERS

    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="nt-population-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"session files in {work}")
    runs = protocols("language", {}, work)
    jobs_ = [(m, seed, name, stem, protocol) for m in members for seed in range(n_seeds)
             for name, (stem, protocol) in runs.items()]  # fmt: skip
    if others:
        for m in members:
            folder = work / f"from-others-{m}"
            folder.mkdir(exist_ok=True)
            made = protocols("language", {"reference": reference_from_others(m, work)}, folder)
            for name in ("closed loop + reference", "reference alone"):
                stem, protocol = made[name]
                jobs_ += [(m, seed, name, f"{stem}-others", protocol) for seed in range(n_seeds)]

    def one(job: tuple) -> tuple:
        m, seed, name, stem, protocol = job
        out = work / f"{m}-{stem}-{seed}.h5"
        error = simulate(protocol, out, seed, f"population:{m}")
        if error:
            raise RuntimeError(f"{m} seed {seed} {name}: simulate failed:\n{error}")
        r = evaluate(out)
        print(f"{m} seed {seed} {name:10s}: true D {r['drive']:.3f} B {r['baseline']:.3f} S {r['suppress']:.3f}  "
              f"separation {r['sep']:.2f} SD  p(D>B) {r['p_db']:.1e}  p(B>S) {r['p_bs']:.1e}", flush=True)  # fmt: skip
        return m, seed, name, r

    with ThreadPoolExecutor(jobs) as pool:
        done = list(pool.map(one, jobs_))
    table = {(m, seed, name): r for m, seed, name, r in done}
    if others:
        print(f"\nfrom a reference fit on the other members (mean separation over {n_seeds} seeds; D > B > S at "
              "p < 0.01):")  # fmt: skip
        for m in members:
            cells = []
            for name in ("reference alone", "closed loop + reference", "closed loop", "open loop"):
                rs = [table[(m, s, name)] for s in range(n_seeds)]
                sig = sum(r["p_db"] < 0.01 and r["p_bs"] < 0.01 for r in rs)
                cells.append(f"{name} {np.mean([r['sep'] for r in rs]):.2f} ({sig}/{n_seeds})")
            print(f"  {m}: " + "; ".join(cells))
    print(f"\n{'participant':12s} {'make-up':58s} {'closed':>7s} {'open':>7s} {'closed-open':>13s} {'ratio':>6s} "
          f"{'D>B>S closed':>12s} {'open':>5s}")  # fmt: skip
    diffs, ratios, sig_closed, n_closed = [], [], 0, 0
    for m in members:
        c = np.array([table[(m, s, "closed loop")]["sep"] for s in range(n_seeds)])
        o = np.array([table[(m, s, "open loop")]["sep"] for s in range(n_seeds)])
        sig = {name: sum(table[(m, s, name)]["p_db"] < 0.01 and table[(m, s, name)]["p_bs"] < 0.01
                         for s in range(n_seeds)) for name in runs}  # fmt: skip
        d = c - o
        se = d.std(ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else float("nan")
        diffs.append(d.mean())
        ratios.append(c.mean() / o.mean())
        sig_closed += sig["closed loop"]
        n_closed += n_seeds
        print(f"{m:12s} {MEMBERS[m].describe():58s} {c.mean():7.2f} {o.mean():7.2f} {d.mean():+7.2f} +- {se:4.2f} "
              f"{ratios[-1]:6.2f} {sig['closed loop']:>9d}/{n_seeds} {sig['open loop']:>3d}/{n_seeds}")  # fmt: skip
    diffs = np.array(diffs)
    pick = np.random.default_rng(0).integers(0, len(diffs), (10_000, len(diffs)))
    lo, hi = np.percentile(diffs[pick].mean(1), [5, 95])
    print(f"population ({len(members)} participants x {n_seeds} seeds): closed - open separation {diffs.mean():+.2f} "
          f"SD (90 % interval over participants {lo:+.2f} to {hi:+.2f}); lowest closed/open ratio "
          f"{min(ratios):.2f} (target >= 0.9); closed loop D > B > S at p < 0.01 in {sig_closed}/{n_closed} "
          f"sessions ({100 * sig_closed / n_closed:.0f} %, target >= 90 %)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="closed loop against open loop at equal scanner time")
    parser.add_argument("seeds", nargs="?", type=int, default=5)
    parser.add_argument("modality", nargs="?", choices=["text", "image"], default="text")
    parser.add_argument("--work", type=Path, help="keep session files here; finished ones are scored, not rerun")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--reference", type=Path, help="a twin file both loops start from (text)")
    which.add_argument("--prior", type=Path, help="a prior (or twin) file both loops' twins borrow from")
    parser.add_argument(
        "--population",
        nargs="*",
        metavar="NAME",
        help="run against every member of the population of simulated participants (or those named)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="sessions at a time (--population)")
    parser.add_argument(
        "--others", action="store_true", help="with --population: also from a reference fit on the other members"
    )
    args = parser.parse_args()
    if args.population is not None:
        from simulation.population import MEMBERS

        population(args.population or list(MEMBERS), args.seeds, args.work, args.jobs, args.others)
        sys.exit(0)
    twin = {k: v for k, v in (("reference", args.reference), ("prior", args.prior)) if v is not None}
    main(args.seeds, args.modality, args.work, twin)
