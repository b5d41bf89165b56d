"""Twin accuracy on the shared Pereira 2018 data, fit time and feature throughput per offline model.

Prints nested 10-fold CV Pearson r (95% bootstrap CI) of the twin and of each
baseline; every choice the twin makes (alpha, layers, combination) is made inside
the training folds. Run: .venv/bin/python bench/twin_accuracy.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench._common import PEREIRA, need_shared, parser


def main() -> None:
    need_shared()
    from twin import (
        FeaturePlan,
        TextFeatureExtractor,
        TextFeatures,
        Twin,
        baseline_predictions,
        cross_validated_predictions,
        length_features,
        load_dataset,
        score,
        word_frequency_features,
    )

    data = load_dataset(PEREIRA)
    s, Y = data.sentences, data.responses
    cache = Path(tempfile.mkdtemp(prefix="nt-acc-")) / "features.h5"
    print(f"Pereira 2018 language network: {len(s)} sentences; nested 10-fold CV, seed 0\n")

    print("feature throughput (cold, 2 threads):")
    for model, layers, surprisal, label in [
        ("smollm2-135m", range(0, 31), True, "all hidden states + surprisal"),
        ("smollm2-135m", None, None, "twin plan (last-token 4-24:2 + surprisal)"),
        ("smollm2-135m", [8], False, "one layer (8), early stop"),
        ("minilm", range(0, 7), False, "all hidden states"),
    ]:
        ex = TextFeatureExtractor(model)
        _ = ex.text_model  # load outside the timing
        plan = FeaturePlan(model=model, layers=tuple(layers) if layers else None, surprisal=surprisal).resolve()
        t = time.perf_counter()
        ex.extract(s, layers=plan.layers, pooling="last", surprisal=bool(plan.surprisal))
        dt = time.perf_counter() - t
        print(f"  {model:13s} {label:45s} {len(s) / dt:6.1f} sentences/s")

    rows = []
    plans = {
        "twin smollm2-135m (default)": FeaturePlan(),
        "twin minilm": FeaturePlan(model="minilm", poolings=("mean",)),
        "smollm2 surprisal + length only": FeaturePlan(layers=(), surprisal=True),
    }
    for name, plan in plans.items():
        features = TextFeatures(plan, cache=cache)
        blocks = features(s)
        t = time.perf_counter()
        Twin.fit(s, Y, data.targets, features=features)
        fit_s = time.perf_counter() - t
        pred = cross_validated_predictions(blocks, Y, 10, seed=0)
        other = [score(cross_validated_predictions(blocks, Y, 10, seed=k)[:, 0], Y[:, 0]).r for k in (1, 2, 3, 4)]
        note = f"fit {fit_s:.1f} s (cached features); seeds 1-4: " + " ".join(f"{r:.3f}" for r in other)
        rows.append((name, score(pred[:, 0], Y[:, 0]), note))
    L = length_features(s)
    for name, X in [
        ("length (words)", L[:, :1]),
        ("length (characters)", L[:, 1:]),
        ("length (both)", L),
        ("word frequency", word_frequency_features(s)),
    ]:
        rows.append((name, score(baseline_predictions(X, Y, 10, seed=0)[:, 0], Y[:, 0]), ""))
    print("\nheld-out Pearson r (10-fold, nested):")
    for name, sc, note in rows:
        print(f"  {name:32s} {sc}  {note}")
    best_length = max(sc.r for name, sc, _ in rows if name.startswith("length"))
    twin_r = rows[0][1].r
    print(f"\ntwin minus best length baseline: {twin_r - best_length:+.3f} (target >= +0.12)")
    print(f"twin r: {twin_r:.3f} (target >= 0.53)")
    print(f"mean over seeds 0-4: {np.mean([twin_r, *map(float, rows[0][2].split(': ')[1].split())]):.3f}")


if __name__ == "__main__":
    parser(__doc__).parse_args()
    main()
