"""Synthetic-truth check of sentence selection and generation.

Ground truth is the simulated language subject of the bridge (``simulation.language``:
MiniLM features, word frequency and length through a saturating nonlinearity,
not the twin). A pool of new sentences is embedded; 300 of them are "measured"
(true response plus the subject's per-trial noise, SD 0.623, SNR 0.3; and, for
comparison, the mean of 5 such measurements); the default twin is fit on those and
chooses drive and suppress sets of 50 from the rest of the pool. This is repeated for
12 training sets (``--splits``), each line printed, then the mean, the worst and how
many sets met the targets: drive set's true mean above the pool's 90th percentile,
suppress set's below the 10th. For scale, the same sets are chosen by a ridge readout of the
subject's own features (its weights unknown) fit on the same measurements: how far
300 measurements at this noise can take any twin; and by the twin borrowing the
language protocols' prior (``protocols/priors/pereira2018_smollm2.json``), without
constraints. Then local search starts from the corpus' 16 best sentences (by the
twin of training set 0, means of 5 trials) and the margin by which generation
raises (lowers) the predicted response is printed, with the naturalness filter
rechecked on every generated sentence.
Run: .venv/bin/python bench/synthesis_truth.py [pool size, default 4000] [--cache FILE] [--splits N]
(``--cache`` keeps the pool's features for the next run; bench/loop_headroom.py reads the same.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench._common import PRIOR, new_sentences


def percentile(truth: np.ndarray, value: float) -> float:
    """Percent of the pool whose true response is below ``value``."""
    return float((truth < value).mean() * 100)


def main(n_pool: int = 4000, cache: Path | None = None, splits: int = 12) -> None:
    from simulation.language import NOISE_SD, LanguageSubject, subject_features
    from stimulus_synthesis import Constraints, Goal, select
    from stimulus_synthesis.embedded import EmbeddedPool
    from stimulus_synthesis.generate import Naturalness, generate
    from twin import FeaturePlan, Prior, RidgeReadout, TextFeatures, Twin, loo_ridge

    work = Path(tempfile.mkdtemp(prefix="nt-truth-"))
    try:
        sentences = new_sentences(n_pool, seed=11)
        subject = LanguageSubject()
        truth = subject(sentences)[:, 0]
        features = TextFeatures(FeaturePlan(), cache=cache or work / "features.h5", progress=True)
        t = time.perf_counter()
        pool = EmbeddedPool.build(sentences, features)
        print(f"pool: {len(sentences)} sentences embedded in {time.perf_counter() - t:.0f} s")
        p10, p90 = np.percentile(truth, [10, 90])
        print(f"pool true response: floor {truth.min():.3f}, 10th pct {p10:.3f}, median {np.median(truth):.3f}, "
              f"90th pct {p90:.3f}\n")  # fmt: skip
        own = subject_features(sentences)
        free = Constraints(min_words=1, max_words=None, charset=None, max_similarity=1.0)
        prior = Prior.load(PRIOR)
        columns = ["twin", "twin, default constraints", "twin + the protocols' prior", "subject's features"]
        kept = None  # the twin that generation starts from: training set 0, means of 5 trials
        for label, repeats in [("single trials", 1), ("means of 5 trials", 5)]:
            print(
                f"300 {label}, {splits} training sets: pool percentile of the true mean of the 50 chosen, "
                "drive / suppress"
            )
            rows = []
            for split in range(splits):
                rng = np.random.default_rng(split)
                train = rng.choice(len(sentences), 300, replace=False)
                rest = np.setdiff1d(np.arange(len(sentences)), train)
                texts = [sentences[i] for i in rest]
                y = truth[train] + rng.standard_normal((300, repeats)).mean(1) * NOISE_SD
                twin = Twin.fit([sentences[i] for i in train], y, ["lang"], features=features)
                mean, _ = pool.predict(twin)
                if repeats == 5 and split == 0:
                    kept = twin, mean, rest
                r = np.corrcoef(mean[rest, 0], truth[rest])[0, 1]
                row = []
                for constraints in (free, Constraints()):
                    for kind in ("drive", "suppress"):
                        sel = select(texts, mean[rest], 50, Goal(kind), constraints=constraints)
                        row.append(percentile(truth, truth[rest][sel.index].mean()))
                borrowed, _ = pool.predict(Twin.fit([sentences[i] for i in train], y, ["lang"], features=features,
                                                    prior=prior))  # fmt: skip
                for kind in ("drive", "suppress"):
                    sel = select(texts, borrowed[rest], 50, Goal(kind), constraints=free)
                    row.append(percentile(truth, truth[rest][sel.index].mean()))
                ref = RidgeReadout.fit(own[train], y, loo_ridge(own[train], y).best_alpha).predict(own[rest])[:, 0]
                order = np.argsort(ref)
                row += [percentile(truth, truth[rest][order[s]].mean()) for s in (slice(-50, None), slice(50))]
                rows.append(row)
                pairs = zip(columns, row[0::2], row[1::2], strict=True)
                cells = " | ".join(f"{c} {d:.1f} / {s:.1f}" for c, d, s in pairs)
                print(f"  set {split:2d}: twin-vs-truth r {r:.3f} | {cells}")
            a = np.array(rows)
            for j, name in enumerate(columns):
                d, s = a[:, 2 * j], a[:, 2 * j + 1]
                print(f"  {name}: drive mean {d.mean():.1f} (worst {d.min():.1f}, above 90th in "
                      f"{(d > 90).sum()}/{splits}); suppress mean {s.mean():.1f} (worst {s.max():.1f}, below 10th in "
                      f"{(s < 10).sum()}/{splits})")  # fmt: skip
            print()
        twin, mean, rest = kept
        constraints = Constraints()
        naturalness = Naturalness()
        stats = features.surprisal_columns()
        for kind in ("drive", "suppress"):
            goal = Goal(kind)
            sel = select([sentences[i] for i in rest], mean[rest], 16, goal, constraints=constraints)
            seeds = [sentences[rest[i]] for i in sel.index]
            t = time.perf_counter()
            gen = generate(
                seeds, lambda s: twin.predict(s, with_sd=True), goal, naturalness=naturalness,
                nll_of=lambda s: features.matrix(s)[:, stats], constraints=constraints, budget=384, seed=0,
            )  # fmt: skip
            dt = time.perf_counter() - t
            sign = 1 if kind == "drive" else -1
            by_seed = {c.sentence: c.predicted for c in gen.seeds}
            gains = {s: 0.0 for s in by_seed}
            for c in gen.best:
                gains[c.root] = max(gains[c.root], sign * (c.predicted - by_seed[c.root]))
            best = gen.best[:16]
            recheck = naturalness.nll([c.sentence for c in best]) if best else np.zeros((0, 3))
            origin = {c.sentence: c.origin for c in [*gen.seeds, *gen.log]}
            parent = {c.sentence: c.stats for c in [*gen.seeds, *gen.log]}
            texts = [c.sentence for c in best]
            sources = [c.site[0] for c in best if c.site]
            words = dict(zip(texts + sources, naturalness.word_surprisal(texts + sources), strict=True))
            passed = sum(
                not naturalness.edit_problems(c.sentence, st, origin[c.sentence], parent[c.parent], c.operator,
                                              c.site, words)
                for c, st in zip(best, recheck, strict=True)
            )  # fmt: skip
            top_seed = max(sign * v for v in by_seed.values())
            top_gen = max((sign * c.predicted for c in gen.best), default=float("nan"))
            improved = sum(g > 0 for g in gains.values())
            true_seed = subject(seeds)[:, 0].mean()
            true_gen = subject([c.sentence for c in best])[:, 0].mean() if best else float("nan")
            print(f"generation ({kind}): {len(gen.log)} candidates in {dt:.0f} s, {len(gen.best)} accepted; "
                  f"{improved}/16 corpus seeds improved, mean gain per seed {np.mean(list(gains.values())):+.3f} "
                  f"(predicted, in the goal's direction); best corpus {sign * top_seed:.3f} -> best generated "
                  f"{sign * top_gen:.3f}; naturalness filter rechecked on the best {len(best)}: {passed} pass; "
                  f"subject's true mean, seeds {true_seed:.3f}, best generated {true_gen:.3f}")  # fmt: skip
            for c in best[:3]:
                print(f"    {c.predicted:+.3f}  {c.nll:.2f} nats/token  {c.operator:10s} {c.sentence}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="synthetic-truth check of sentence selection and generation")
    parser.add_argument("pool", nargs="?", type=int, default=4000, help="pool size")
    parser.add_argument("--cache", type=Path, help="feature cache to use and keep")
    parser.add_argument("--splits", type=int, default=12, help="training sets of 300 drawn from the pool")
    args = parser.parse_args()
    main(args.pool, args.cache, args.splits)
