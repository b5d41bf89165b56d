"""Twin accuracy on the shared Pereira 2018 data per offline model and stacked, with feature throughput.

Prints nested 10-fold CV Pearson r (95% bootstrap CI; seed 0, and the mean over seeds 0-4)
of twins on each offline model, on SmolLM2 and Gemma-3 stacked, in float32 and bfloat16,
and of the baselines; every choice a twin makes (alpha per block, stacking weights across
layers and models) is made inside the training folds. Then feature throughput per model
(model loaded outside the timing, cold cache). Run: .venv/bin/python bench/twin_accuracy.py
Target: the default twin's r at least 0.58.
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

STACKED = "smollm2-135m,gemma3-270m"


def main() -> None:
    need_shared()
    from twin import (
        FeaturePlan,
        TextFeatures,
        Twin,
        baseline_predictions,
        cross_validated_predictions,
        length_features,
        load_dataset,
        plan_for,
        score,
        word_frequency_features,
    )
    from twin.models import native_bf16

    data = load_dataset(PEREIRA)
    s, Y = data.sentences, data.responses
    cache = Path(tempfile.mkdtemp(prefix="nt-acc-")) / "features.h5"
    print(f"Pereira 2018 language network: {len(s)} sentences; nested 10-fold CV")
    print(f"this CPU computes bfloat16 natively: {native_bf16()}\n")

    twins = {
        "smollm2-135m (default)": (FeaturePlan(), "float32"),
        "smollm2-135m, bfloat16": (FeaturePlan(), "bfloat16"),
        "gemma3-270m": (FeaturePlan(model="gemma3-270m"), "float32"),
        "gemma3-270m, bfloat16": (FeaturePlan(model="gemma3-270m"), "bfloat16"),
        f"{STACKED} stacked": (plan_for(STACKED), "float32"),
        f"{STACKED} stacked, bfloat16": (plan_for(STACKED), "bfloat16"),
        "minilm": (FeaturePlan(model="minilm", poolings=("mean",)), "float32"),
        "smollm2-135m surprisal + length only": (FeaturePlan(layers=(), surprisal=True), "float32"),
    }
    rows = []
    throughput = []
    for name, (plan, dtype) in twins.items():
        features = TextFeatures(plan, cache=cache, dtype=dtype)
        _ = features.projection  # shipped, or fit once: outside the timing
        for ex in features.extractors:
            _ = ex.text_model
        t = time.perf_counter()
        blocks = features(s)
        if getattr(plan, "layers", None) != ():  # (not the surprisal-only plan)
            throughput.append((name, len(s) / (time.perf_counter() - t)))
        t = time.perf_counter()
        Twin.fit(s, Y, data.targets, features=features)
        fit_s = time.perf_counter() - t
        rs = [score(cross_validated_predictions(blocks, Y, 10, seed=k)[:, 0], Y[:, 0]) for k in range(5)]
        note = f"seeds 0-4 mean {np.mean([r.r for r in rs]):.3f}; fit {fit_s:.1f} s on cached features"
        rows.append((f"twin {name}", rs[0], note))
    L = length_features(s)
    for name, X in [
        ("length (words)", L[:, :1]),
        ("length (characters)", L[:, 1:]),
        ("length (both)", L),
        ("word frequency", word_frequency_features(s)),
    ]:
        rows.append((name, score(baseline_predictions(X, Y, 10, seed=0)[:, 0], Y[:, 0]), ""))

    print("held-out Pearson r (10-fold, nested; seed 0 [95% CI]):")
    for name, sc, note in rows:
        print(f"  {name:58s} {sc}  {note}")
    print("\nfeature throughput of each twin's plan (sentences/s, cold cache, 2 threads):")
    base = {name.removesuffix(" (default)"): rate for name, rate in throughput}
    for name, rate in throughput:
        ratio = rate / base[name.removesuffix(", bfloat16")] if name.endswith(", bfloat16") else 1.0
        print(f"  {name:58s} {rate:6.1f}" + (f"  ({ratio:.2f}x float32)" if ratio != 1.0 else ""))
    best_length = max(sc.r for name, sc, _ in rows if name.startswith("length"))
    twin_r = rows[0][1].r
    print(f"\ndefault twin minus best length baseline: {twin_r - best_length:+.3f}")
    print(f"default twin r: {twin_r:.3f} (target >= 0.58)")


if __name__ == "__main__":
    parser(__doc__).parse_args()
    main()
