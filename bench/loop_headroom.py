"""How much better than the open loop can a closed loop be, for the language network at this SNR?

A fast emulation of the language protocols' choices (no scanner, GLM or sockets):
a pool of new sentences is embedded once with the default twin's features; each
"trial" is the default subject's true response plus its per-trial noise (SD 0.623,
SNR 0.3) plus its run's offset (SD 0.26 across runs of 60 trials: what the trial
estimates of bench/closed_loop.py's sessions show, each run's baseline being
estimated from its rests). Twins are fit within runs, as the session runner fits
them. Per seed, 3,000 candidates of 5-40 words; 30 drive and 30 suppress sentences
are chosen by the twin from the unshown candidates, as in the evaluation block, and
scored by their true drive - suppress separation in SDs of the candidates' true
responses.

* open loop: the twin fit on 300 random trials (open_loop_language.toml);
* closed loop: 180 random trials, then 2 rounds of 30 suppress candidates chosen by
  UCB (beta 1) and 30 random sentences, with the twin fit again after each
  (closed_loop_language.toml); and other closed designs of 300 trials (rounds of 60
  suppress candidates, of 30 drive + 30 suppress; 3 rounds);
* open loop at 600 and 1,000 random trials: what more scanner time buys;
* headroom: a twin fit on every pool sentence's noise-free response: what a
  better-informed twin would give, whatever the design.

Twins borrow the language protocols' prior (``protocols/priors/pereira2018_smollm2.json``),
as the shipped protocols' twins do; ``--prior none`` lets them choose their own hyperparameters.
Designs are compared paired: per seed, every design measures random sentences in the
same order, with the same noise for the same sentence; each line prints its mean
difference from the open loop at 300 trials and that difference's SE.

``--noise-sd`` changes the per-trial noise (e.g. 0.188 for SNR 1), to see how the edge depends on SNR.
``--subject NAME`` replays the designs against another simulated subject (e.g. ``population:p03``);
``--population`` against every member of the population (``simulation.population``), then prints per design its
mean over members of the paired difference from the open loop and its lowest ratio to it.

Run: .venv/bin/python bench/loop_headroom.py [seeds, default 40] [--cache FILE] [--prior FILE|none] [--noise-sd SD]
(about 2.5 min on 2 cores, 4 more the first time to embed the pool).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench._common import PRIOR, new_sentences
from simulation.language import NOISE_SD, SIGNAL_SD

RUN_SD = 0.26
RUN = 60  # trials per run
DESIGNS = [  # label, random trials, rounds, each round's run: trials per condition (suppress/drive by UCB, beta 1)
    ("closed loop, 180 + 2 x (30 suppress + 30 random)", 180, 2, {"suppress": 30, "baseline": 30}),
    ("  rounds of 60 suppress", 180, 2, {"suppress": 60}),
    ("  rounds of 30 drive + 30 suppress", 180, 2, {"drive": 30, "suppress": 30}),
    ("  120 + 3 x (30 suppress + 30 random)", 120, 3, {"suppress": 30, "baseline": 30}),
    ("  180 + 2 x (15 drive + 15 suppress + 30 random)", 180, 2, {"drive": 15, "suppress": 15, "baseline": 30}),
    ("  180 + 2 x (30 drive + 30 random)", 180, 2, {"drive": 30, "baseline": 30}),
]


def main(n_seeds: int, cache: Path | None, prior_file: Path | None = PRIOR, noise_sd: float = NOISE_SD,
         subjects: tuple[str, ...] = ("language",)) -> None:  # fmt: skip
    from simulation.subjects import load_subject

    sentences = new_sentences(4000, seed=11)
    table = {}
    for name in subjects:
        print(f"\n== subject {name}")
        table[name] = replay(n_seeds, cache, prior_file, noise_sd, sentences, load_subject(name)(sentences)[:, 0])
    if len(subjects) > 1:
        print(f"\nover {len(subjects)} subjects: per design, the mean of each subject's paired difference from the "
              "open loop at 300 trials, and the lowest ratio to it:")  # fmt: skip
        for label in table[subjects[0]]:
            d = [table[n][label][0] for n in subjects]
            r = [table[n][label][1] for n in subjects]
            print(f"  {label:50s} {np.mean(d):+.2f}   lowest x{min(r):.2f} ({subjects[int(np.argmin(r))]})")


def replay(n_seeds: int, cache: Path | None, prior_file: Path | None, noise_sd: float, sentences: list[str],
           truth: np.ndarray) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Every design against one subject's true responses ``truth``; label -> (paired difference from the open
    loop at 300 trials, ratio to it)."""
    from stimulus_synthesis import Goal, objective
    from twin import FeaturePlan, Prior, TextFeatures, Twin

    prior = Prior.load(prior_file) if prior_file else None
    print(f"twins borrow the hyperparameters of {prior_file}" if prior else "twins choose their own hyperparameters")
    print(f"per-trial noise SD {noise_sd:g} (SNR {SIGNAL_SD / noise_sd:.2f})")
    features = TextFeatures(FeaturePlan(), cache=cache or Path(tempfile.mkdtemp()) / "f.h5", progress=True)
    blocks = features(sentences)
    words = np.array([len(s.split()) for s in sentences])
    eligible = np.flatnonzero((words >= 5) & (words <= 40))

    def part(index: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in blocks.items()}

    def fit(index: np.ndarray, y: np.ndarray) -> Twin:
        """The twin on trials measured in consecutive runs of RUN, fit within runs."""
        runs = np.arange(len(index)) // RUN
        return Twin.fit_blocks(part(index), y, ["lang"], features.plan, features.model_id, runs=runs, prior=prior)

    def best(twin: Twin, free: np.ndarray, kind: str, k: int, acquisition: str = "mean") -> np.ndarray:
        mean, sd = twin.predict_blocks(part(free), with_sd=acquisition != "mean", noise=False)
        return free[np.argsort(-objective(Goal(kind, acquisition=acquisition), mean, sd))[:k]]

    def separation(twin: Twin, candidates: np.ndarray, shown: np.ndarray) -> float:
        free = np.setdiff1d(candidates, shown)
        drive = best(twin, free, "drive", 30)
        suppress = best(twin, np.setdiff1d(free, drive), "suppress", 30)
        return (truth[drive].mean() - truth[suppress].mean()) / truth[candidates].std()

    oracle = Twin.fit_blocks(blocks, truth, ["lang"], features.plan, features.model_id)  # the same for every seed
    results: dict[str, list[float]] = {}
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        candidates = rng.choice(eligible, 3000, replace=False)
        # Common random numbers: every design measures random sentences in the same order, a sentence's
        # one measurement has the same noise in every design and run k the same offset, so designs compare
        # paired.
        order = rng.permutation(candidates)
        noise = rng.standard_normal(len(sentences)) * noise_sd
        offset = rng.standard_normal(1000 // RUN + 1) * RUN_SD

        def measure(index: np.ndarray, run: int = 0, noise: np.ndarray = noise, offset: np.ndarray = offset
                    ) -> np.ndarray:  # fmt: skip
            """Responses of consecutive runs of RUN trials, the first being run ``run``."""
            return truth[index] + noise[index] + offset[run + np.arange(len(index)) // RUN]

        for n in (300, 600, 1000):
            shown = order[:n]
            results.setdefault(f"open loop, {n} trials", []).append(
                separation(fit(shown, measure(shown)), candidates, shown)
            )
        for label, base, rounds, conditions in DESIGNS:
            shown = order[:base]
            y = measure(shown)
            for round_ in range(rounds):
                twin = fit(shown, y)
                new = np.array([], int)
                for cond, k in conditions.items():
                    free = np.setdiff1d(candidates, [*shown, *new])
                    if cond == "baseline":  # the next random sentences, as the open loop measures them
                        new = np.concatenate([new, order[np.isin(order, free)][:k]])
                    else:
                        new = np.concatenate([new, best(twin, free, cond, k, "ucb")])
                y = np.concatenate([y, measure(new, base // RUN + round_)])
                shown = np.concatenate([shown, new])
            results.setdefault(label, []).append(separation(fit(shown, y), candidates, shown))
        results.setdefault("twin on all 4000 noise-free responses", []).append(
            separation(oracle, candidates, np.array([], int))
        )
    open300 = np.array(results["open loop, 300 trials"])
    print(f"\ndrive - suppress separation (true response, SDs of the candidates), {n_seeds} seeds "
          "(mean +- SD over seeds; paired difference from the open loop at 300 trials +- its SE):")  # fmt: skip
    out = {}
    for label, seps in results.items():
        s = np.array(seps)
        d = s - open300
        out[label] = (float(d.mean()), float(s.mean() / open300.mean()))
        print(f"  {label:50s} {s.mean():.2f} +- {s.std():.2f}   x{s.mean() / open300.mean():.2f}   "
              f"{d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f}", flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="?", type=int, default=40)
    parser.add_argument("--cache", type=Path, help="feature cache to use (and keep) for the 4,000 sentences")
    parser.add_argument("--prior", default=str(PRIOR), help="prior the twins borrow ('none': choose their own)")
    parser.add_argument("--noise-sd", type=float, default=NOISE_SD,
                        help=f"per-trial noise SD (default {NOISE_SD}, the subject's: SNR 0.3)")  # fmt: skip
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--subject", default="language", help="the simulated subject (e.g. population:p03)")
    who.add_argument("--population", action="store_true", help="every member of the population, in turn")
    args = parser.parse_args()
    if args.population:
        from simulation.population import MEMBERS

        subjects = tuple(f"population:{m}" for m in MEMBERS)
    else:
        subjects = (args.subject,)
    main(args.seeds, args.cache, None if args.prior == "none" else Path(args.prior), args.noise_sd, subjects)
