"""Bridge latency and throughput between two processes on 127.0.0.1.

Round trip: the controller pings a rig server 5,000 times (one at a time) and
reports p50/p99 of the measured round trip. Throughput: the server streams
samples (10 ROI values each) at a target rate for a few seconds; the controller
counts what arrives, exactly once and in order. Targets: p99 < 2 ms; 10,000
samples/s sustained with no loss.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import parser
from hardware import PeerClient, PeerServer


def serve(endpoint: str, rate: float, seconds: float) -> None:
    server = PeerServer(endpoint, name="bench-rig", heartbeat=0.5)
    while not server.connected:
        server.poll(0.01)
    # Wait for the controller's 'start', answering pings meanwhile.
    started = False
    while not started:
        started = any(m["type"] == "start" for m in server.poll(0.001))
    n = int(rate * seconds)
    t0 = time.perf_counter()
    values = [0.1] * 10
    for i in range(n):
        due = t0 + i / rate
        while time.perf_counter() < due:
            server.poll(0.0)
        server.send_reliable("sample", run=1, kind="fmri", volume=i, time=time.time(), values=values)
    end = time.time() + 5
    while time.time() < end and server.outbox.pending:
        server.poll(0.01)
    server.poll(0.5)
    server.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
        return
    rate, seconds = 10_000.0, 5.0
    endpoint = "tcp://127.0.0.1:5599"
    proc = subprocess.Popen([sys.executable, __file__, "serve", endpoint, str(rate), str(seconds)])
    client = PeerClient(endpoint, heartbeat=10.0)  # no pings of its own during the measurement
    try:
        while not client.up:
            client.poll(0.01)
        rtts = []
        for _ in range(5000):
            n = client.sync.count
            t = time.perf_counter()
            client.ping()
            while client.sync.count == n:
                client.poll(0.0)  # busy-wait: what is measured is the link, not a poll timeout
            rtts.append(time.perf_counter() - t)
        rtts = np.array(rtts) * 1e3
        print(
            f"round trip controller <-> rig (separate processes, 5,000 pings): "
            f"p50 {np.percentile(rtts, 50):.3f} ms, p99 {np.percentile(rtts, 99):.3f} ms (target p99 < 2 ms)"
        )
        client.send_reliable("start", run=1, tr=1.0, n_volumes=1)
        got, first, last = [], None, None
        deadline = time.time() + seconds + 20
        while len(got) < rate * seconds and time.time() < deadline:
            for m in client.poll(0.01):
                got.append(m["volume"])
                first = first or time.perf_counter()
                last = time.perf_counter()
        ok = got == list(range(int(rate * seconds)))
        print(
            f"throughput: {len(got)} samples in {last - first:.2f} s = {len(got) / (last - first):,.0f} samples/s "
            f"at a target of {rate:,.0f}/s; exactly once and in order: {ok}; duplicates dropped: "
            f"{client.inbox.duplicates}"
        )
    finally:
        client.close()
        proc.wait(timeout=30)


if __name__ == "__main__":
    parser(__doc__).parse_args()
    main()
