"""Pool embedding throughput, and re-scoring 10^5 and 10^6 cached candidates after a readout update.

1. Embeds 1,000 new sentences cold through the twin's plan (sentences/s).
2. Fits the default twin on the Pereira data and fills a real feature cache with
   10^5 and then 10^6 rows in the twin's table (random feature values: the cost
   of re-scoring does not depend on them).
3. Updates the readout online with 50 new responses, then re-scores the whole
   pool from the cache (chunked reads, one matrix-vector product per chunk).
   Prints the median of 5 runs, the peak memory allocated while re-scoring
   (tracemalloc) and the time with predictive SDs as well.
Target: 10^6 candidates re-scored in under 1 s on 2 cores.
Run: .venv/bin/python bench/pool_rescoring.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench._common import PEREIRA, need_shared, new_sentences, parser


def main() -> None:
    need_shared()
    from stimulus_synthesis.embedded import EmbeddedPool
    from twin import FeatureCache, FeaturePlan, TextFeatures, Twin, load_dataset

    work = Path(tempfile.mkdtemp(prefix="nt-rescore-"))
    try:
        cache = FeatureCache(work / "features.h5")
        features = TextFeatures(FeaturePlan(), cache=cache)
        _ = features.extractor.text_model  # load outside the timing
        texts = new_sentences(1000, seed=1)
        t = time.perf_counter()
        features.ensure(texts)
        dt = time.perf_counter() - t
        print(f"pool embedding (twin plan, cold cache, 2 threads): {len(texts) / dt:.1f} sentences/s")
        print(f"  feature width {sum(features.block_dims().values())} floats per sentence\n")

        data = load_dataset(PEREIRA)
        twin = Twin.fit(data.sentences, data.responses, data.targets, features=features)
        rng = np.random.default_rng(0)
        d = sum(features.block_dims().values())
        have = 0
        for n in (100_000, 1_000_000):
            for a in range(have, n, 100_000):
                fake = [f"synthetic candidate {i}" for i in range(a, min(n, a + 100_000))]
                cache.store(features.model_id, features.table, fake, rng.standard_normal((len(fake), d), np.float32))
            have = n
            pool = EmbeddedPool.build([*texts, *(f"synthetic candidate {i}" for i in range(n - len(texts)))], features)
            new = texts[:50]
            twin.update(new, rng.standard_normal((50, len(twin.targets))))
            times = []
            pool.predict(twin)  # warm the page cache
            for _ in range(5):
                t = time.perf_counter()
                mean, _ = pool.predict(twin)
                times.append(time.perf_counter() - t)
            tracemalloc.start()
            pool.predict(twin)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            t = time.perf_counter()
            _, _sd = pool.predict(twin, with_sd=True)
            t_sd = time.perf_counter() - t
            exact = np.abs(mean[:50] - twin.predict(new)[0]).max()
            size = os.path.getsize(cache.path) / 2**30
            print(f"{n:>9,} candidates (cache file {size:.2f} GiB): re-score {np.median(times):.3f} s median "
                  f"(min {min(times):.3f}, max {max(times):.3f}); peak allocation {peak / 2**20:.0f} MiB; "
                  f"with predictive SD {t_sd:.2f} s; max |cached - direct| {exact:.1e}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser(__doc__).parse_args()
    main()
