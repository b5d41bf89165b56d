"""CPU time to write one hour of a session: 1,800 volumes (TR 2 s) of 10 ROIs plus 1,000 events.

Flushes after every volume, as a live session does. Target: under 1 s of CPU in total.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from acquisition import SessionFile, read_session
from bench._common import parser


def main() -> None:
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp(prefix="nt-sess-")) / "hour.h5"
    n_vol, n_roi, n_events = 1800, 10, 1000
    event_at = set(np.linspace(0, n_vol - 1, n_events).astype(int).tolist())
    values = rng.normal(size=(n_vol, n_roi))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    session = SessionFile.create(path, [f"roi{i}" for i in range(n_roi)], protocol="bench")
    stim = 0
    for v in range(n_vol):
        t = 2.0 * v
        session.add_trigger(t, v, run=1)
        session.add_samples(t, values[v], run=1)
        if v in event_at:
            session.add_stimulus(stim, text=f"Sentence number {stim} of the benchmark.", condition="B")
            session.add_event(stim, run=1, trial=stim, scheduled_onset=t, measured_onset=t + 0.016, duration=2.0)
            stim += 1
        session.flush()
    session.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    data = read_session(path)
    assert len(data.samples) == n_vol and len(data.events) == n_events
    print(f"wrote {n_vol} volumes x {n_roi} ROIs, {n_events} events, {n_vol} triggers, flushed every volume")
    print(f"CPU time: {cpu:.3f} s (target < 1 s); wall time {wall:.3f} s; file {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    parser(__doc__).parse_args()
    main()
