"""LSL-to-controller latency of an electrophysiology stream at 1 kHz x 64 channels, and that no sample is lost.

A device process pushes spike counts on 64 channels at 1 kHz to an LSL outlet (chunks every 2 ms, each sample
stamped with its acquisition time on LSL's clock; channel 0 counts 1 in every sample); `neurotwin rig lsl
--signal spike-counts` counts them per window of 0.1 s and sends each window to a controller (the bridge's
PeerClient) on 127.0.0.1. Latency: from the acquisition of a window's last sample to the window's arrival at the
controller (it includes the 1 ms until the next sample shows the window is complete, and up to the 10 ms
between two looks of the controller at its rig, as a session's run loop). Loss: channel 0 of every
window must count its 100 samples, and the windows together every sample the device pushed during the run.
Target: p99 < 20 ms, no sample lost over 5 minutes.

    python bench/lsl_latency.py [--seconds 300] [--channels 64] [--rate 1000] [--window 0.1]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, parser
from hardware.lsl import pylsl


def device(name: str, channels: int, rate: float, seconds: float, counted: Path) -> None:
    """Push ``seconds`` of spike counts (channel 0: one per sample) at ``rate``; write how many were pushed."""
    lsl = pylsl()
    outlet = lsl.StreamOutlet(lsl.StreamInfo(name, "Spikes", channels, rate, lsl.cf_float32, name))
    rng = np.random.default_rng(0)
    t0 = lsl.local_clock()
    pushed = 0
    end = t0 + seconds
    while lsl.local_clock() < end:
        due = int((lsl.local_clock() - t0) * rate) + 1  # samples acquired by now
        if due > pushed:
            k = np.arange(pushed, due)
            counts = rng.poisson(0.02, (len(k), channels)).astype(np.float32)
            counts[:, 0] = 1.0
            outlet.push_chunk(counts, (t0 + k / rate).tolist())
            pushed = due
        time.sleep(0.002)
    counted.write_text(f"{t0!r} {pushed}")
    time.sleep(2.0)  # (the inlet takes the last chunks)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "device":
        _, _, name, channels, rate, seconds, counted = sys.argv
        device(name, int(channels), float(rate), float(seconds), Path(counted))
        return
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=300.0, help="Length of the run (s).")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--rate", type=float, default=1000.0, help="Samples per second.")
    p.add_argument("--window", type=float, default=0.1, help="The run's window (its TR), s.")
    args = p.parse_args()
    import tempfile

    from hardware import PeerClient

    pylsl()  # (LSLError now, if liblsl does not load)
    port = 5000 + int(time.time() * 1000) % 20000
    name = f"neurotwin-bench-array-{port}"
    work = Path(tempfile.mkdtemp(prefix="lsl-bench-"))
    counted = work / "pushed"
    lead = 3.0  # the device streams before the run starts (so it begins mid-stream, as in a lab)
    dev = subprocess.Popen([sys.executable, __file__, "device", name, str(args.channels), str(args.rate),
                            str(args.seconds + lead + 2.0), str(counted)])  # fmt: skip
    rig_log = open(work / "rig.log", "w")
    names = ",".join(f"ch{i}" for i in range(args.channels))
    rig = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "lsl", "--name", name, "--channels",
                            names, "--rate", repr(args.rate), "--signal", "spike-counts", "--bind",
                            f"tcp://127.0.0.1:{port}"], stderr=rig_log, cwd=ROOT)  # fmt: skip
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.5)
    n_windows = round(args.seconds / args.window)
    try:
        end = time.monotonic() + 60
        while not client.up and time.monotonic() < end:
            client.poll(0.05)
        if not client.up:
            sys.exit(f"the LSL rig did not come up (its log: {work / 'rig.log'})")
        time.sleep(lead)
        client.send_reliable("start", run=1, tr=args.window, n_volumes=n_windows)
        samples: list[tuple[dict, float]] = []
        deadline = time.monotonic() + args.seconds + 30
        while len(samples) < n_windows and time.monotonic() < deadline:
            for msg in client.poll(0.01):  # (as often as a session's run loop polls its rig)
                if msg["type"] == "sample":
                    samples.append((msg, time.time()))  # the rig's clock is this machine's wall clock
        while not counted.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.close()
        rig.terminate()
        rig.wait(10)
        dev.wait(30)
    pushed = int(counted.read_text().split()[1])
    last_sample = 1.0 / args.rate
    latency = np.array([arrived - (m["time"] + args.window - last_sample) for m, arrived in samples]) * 1000
    counts0 = np.array([m["values"][0] for m, _ in samples])
    per_window = args.window * args.rate
    volumes = [m["volume"] for m, _ in samples]
    print(
        f"{args.channels} channels at {args.rate:g} Hz, windows of {args.window:g} s over {args.seconds:g} s: "
        f"{len(samples)} of {n_windows} windows came, in order: {volumes == list(range(len(volumes)))}"
    )
    print(
        f"LSL-to-controller latency (window's last sample acquired -> window at the controller): "
        f"p50 {np.percentile(latency, 50):.2f} ms, p99 {np.percentile(latency, 99):.2f} ms, "
        f"max {latency.max():.2f} ms (target p99 < 20 ms)"
    )
    lost = int(n_windows * per_window - counts0.sum())
    full = int((counts0 == per_window).sum())
    print(
        f"samples: {int(counts0.sum())} counted in the run's windows, {n_windows * per_window:.0f} acquired during "
        f"it ({pushed} pushed in all); windows with all {per_window:.0f} samples: {full} of {len(samples)}; "
        f"lost: {lost}"
    )
    problems = [line for line in (work / "rig.log").read_text().splitlines() if "WARNING" in line or "ERROR" in line]
    print(f"rig warnings: {len(problems)}" + "".join(f"\n  {line}" for line in problems[:5]))


if __name__ == "__main__":
    main()
