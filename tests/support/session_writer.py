"""A session writer run as a separate process by the tests: one 10-ROI sample per 'TR'.

Usage: python session_writer.py PATH TR_SECONDS N_VOLUMES [resume]
Prints the number of samples flushed after each flush, then 'done'. Logs a line per volume.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from acquisition import SessionFile


def main() -> None:
    path, tr, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    resume = len(sys.argv) > 4
    rois = [f"roi{i}" for i in range(10)]
    session = SessionFile.resume(path) if resume else SessionFile.create(path, rois, protocol="test", seeds={"a": 1})
    start = 1000.0 if resume else 0.0
    session.add_stimulus(int(start) + 1, text="A sentence shown once.", condition="B")
    for v in range(n):
        t = start + v * 2.0
        session.add_trigger(t, v, run=2 if resume else 1)
        session.add_samples(t, np.full(10, v, np.float32), run=2 if resume else 1)
        session.log("volume", f"volume {v} of run {2 if resume else 1}")  # strings, in the shared heap
        session.flush()  # at least every TR
        print(v + 1, flush=True)
        time.sleep(tr)
    session.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
