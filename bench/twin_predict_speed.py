"""`neurotwin twin fit` on the Pereira data, then `twin predict` on 10,000 new sentences.

Cold feature cache (the converted model folder may be reused), then the same predict
again from the cache. Prints wall-clock seconds of each command. --model and --dtype
are passed to both commands (e.g. --model smollm2-135m,gemma3-270m --dtype auto).
Target with the default twin: fit + first predict under 360 s on 2 cores; second predict under 5 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import PEREIRA, need_shared, new_sentences, parser


def run(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "control_loop.cli", *args], env=env, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(n: int = 10_000, model: str = "smollm2-135m", dtype: str = "float32") -> None:
    need_shared()
    from twin.paths import models_root

    work = Path(tempfile.mkdtemp(prefix="nt-speed-"))
    sentences = work / "new.txt"
    texts = new_sentences(n)
    sentences.write_text("\n".join(texts) + "\n")
    words = sum(len(s.split()) for s in texts) / len(texts)
    # A cold feature cache; the converted model is reused from its usual folder.
    env = {**os.environ, "NEUROTWIN_CACHE": str(work / "cache"), "NEUROTWIN_MODELS": str(models_root()),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    twin = work / "twin.h5"
    t_fit = run(["twin", "fit", str(PEREIRA), "--out", str(twin), "--model", model, "--dtype", dtype], env)
    t_pred = run(["twin", "predict", str(twin), str(sentences), "--out", str(work / "p.csv"), "--dtype", dtype], env)
    t_again = run(["twin", "predict", str(twin), str(sentences), "--out", str(work / "p2.csv"), "--dtype", dtype], env)
    same = (work / "p.csv").read_bytes() == (work / "p2.csv").read_bytes()
    print(f"model {model}, {dtype}; sentences: {len(texts)} new (mean {words:.1f} words)")
    print(f"twin fit (376 sentences, cold cache): {t_fit:6.1f} s")
    print(f"twin predict (cold cache):            {t_pred:6.1f} s  ({len(texts) / t_pred:.0f} sentences/s)")
    print(f"fit + predict:                        {t_fit + t_pred:6.1f} s  (target < 360 s)")
    print(f"twin predict again (cached):          {t_again:6.1f} s  (target < 5 s); identical output: {same}")
    shutil.rmtree(work)


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("sentences", nargs="?", type=int, default=10_000, help="new sentences to predict")
    cli.add_argument("--model", default="smollm2-135m", help="feature model(s), comma-separated to stack")
    cli.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    args = cli.parse_args()
    main(args.sentences, args.model, args.dtype)
