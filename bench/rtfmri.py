"""Real-time fMRI from a scanner's export folder: latency with realignment, and what realignment recovers.

A simulated scanner (in this process) writes a volume per TR in real time into a folder (Siemens DICOM mosaics by
default: a 64 x 64 x 36 phantom of 3-mm voxels, a known noise-free ROI signal, a head moving up to 2 mm and 2
degrees, thermal noise); `neurotwin rig rtfmri --realign` (a process of its own) reads each volume, realigns it,
averages it in the ROI masks and sends the sample with its motion parameters to a controller (the bridge's
PeerClient, here) on 127.0.0.1. Prints:

- latency from each volume's file being complete (renamed into the folder) to its sample's arrival at the
  controller (an upper bound on file -> sample sent), p50, p99 and max over the volumes; target p99 < 250 ms;
- the ROI time course's correlation with the noise-free ROI signal, realigned (as sent) and without realignment
  (the same files read again here, after the run); target r >= 0.95 realigned;
- the RMS error of the estimated motion parameters against the simulated ones (mm; degrees), and volumes lost.

    python bench/rtfmri.py [--volumes 300] [--tr 0.5] [--format mosaic] [--max-shift 2] [--max-rotation 2]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, parser


def roi_signal(n: int, tr: float, seed: int = 0) -> np.ndarray:
    """A noise-free ROI signal (percent): events every 4-12 s, of random size, through the canonical HRF."""
    from acquisition.glm import hrf

    rng = np.random.default_rng(seed)
    events = np.zeros(n)
    k = 2
    while k < n:
        events[k] = rng.uniform(0.5, 1.5)
        k += int(rng.integers(round(4 / tr), round(12 / tr) + 1))
    kernel = hrf(np.arange(0.0, 30.0, tr))
    return np.convolve(events, kernel / kernel.max())[:n]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--volumes", type=int, default=300)
    p.add_argument("--tr", type=float, default=0.5, help="Seconds between volumes (real time).")
    p.add_argument("--format", dest="file_format", choices=("nifti", "mosaic", "slices"), default="mosaic")
    p.add_argument("--max-shift", type=float, default=2.0, help="mm")
    p.add_argument("--max-rotation", type=float, default=2.0, help="degrees")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from hardware import PeerClient
    from hardware.rtfmri import FD, MOTION, RoiMasks, new_volumes
    from kit.net import free_port
    from simulation.export_scanner import HeadMotion, VolumeWriter, write_masks

    work = Path(tempfile.mkdtemp(prefix="rtfmri-bench-"))
    folder, rois = work / "export", ["lang", "md"]
    masks = write_masks(rois, work / "masks")
    n, tr = args.volumes, args.tr
    signal = roi_signal(n, tr, args.seed)
    rows = np.c_[signal, np.zeros(n)]
    motion = HeadMotion(args.max_shift, args.max_rotation, args.seed) if args.max_shift or args.max_rotation else None
    writer = VolumeWriter(folder, rois, 1.0, seed=args.seed, file_format=args.file_format, motion=motion, keep=n + 1)

    port = free_port()
    cmd = [sys.executable, "-m", "control_loop.cli", "rig", "rtfmri", "--watch", str(folder), "--realign",
           "--bind", f"tcp://127.0.0.1:{port}", "--heartbeat", "0.5"]  # fmt: skip
    for roi, path in masks.items():
        cmd += ["--mask", f"{roi}={path}"]
    rig = subprocess.Popen(cmd, cwd=ROOT, stderr=open(work / "rig.log", "w"))
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.5)
    complete: dict[int, float] = {}
    arrived: dict[int, tuple[float, list[float], list[float]]] = {}
    try:
        end = time.monotonic() + 60
        while not client.up and time.monotonic() < end:
            client.poll(0.05)
        if not client.up:
            sys.exit(f"the rig never answered (its log: {work / 'rig.log'})")
        assert client.peer_confounds == [*MOTION, FD], client.peer_confounds
        client.send_reliable("start", run=1, tr=tr, n_volumes=n)
        client.poll(0.5)
        start = time.time() + 0.5

        def scan() -> None:
            for k in range(n):
                time.sleep(max(0.0, start + k * tr - time.time()))
                complete[k] = writer.push(k, rows[k : k + 1], np.array([start + k * tr]))[0]

        scanner = threading.Thread(target=scan, daemon=True)
        scanner.start()
        end = time.monotonic() + n * tr + 30
        while len(arrived) < n and time.monotonic() < end:
            for msg in client.poll(0.001):
                if msg["type"] == "sample":
                    arrived[msg["volume"]] = (time.time(), msg["values"], msg["confounds"])
        scanner.join()
    finally:
        client.close()
        rig.terminate()
        rig.wait(10)

    got = sorted(arrived)
    latency = np.array([arrived[k][0] - complete[k] for k in got]) * 1000
    sent = np.array([arrived[k][1][0] for k in got])
    truth = np.array([t[3] for t in writer.truth])[got]
    estimated = np.array([arrived[k][2][:6] for k in got])
    # the same files without realignment: each ROI's percent change from its mean in the first volume
    roi = RoiMasks(masks)
    watch = new_volumes(folder, poll=0.001, patience=1.0, existing=True, slices=36)
    raw = np.array([roi.means(next(watch).data)[0] for _ in range(n)])[got]
    raw = 100 * (raw / raw[0] - 1)
    error = estimated - truth
    print(
        f"{len(got)} of {n} volumes ({args.file_format}, TR {tr:g} s, head motion up to "
        f"{np.abs(truth[:, :3]).max():.2f} mm and {np.rad2deg(np.abs(truth[:, 3:]).max()):.2f} deg), realigned:"
    )
    print(
        f"  latency file complete -> sample at the controller: p50 {np.percentile(latency, 50):.1f} ms, "
        f"p99 {np.percentile(latency, 99):.1f} ms, max {latency.max():.1f} ms (target p99 < 250 ms)"
    )
    print(
        f"  ROI time course vs the noise-free signal: r = {np.corrcoef(sent, signal[got])[0, 1]:.4f} realigned, "
        f"{np.corrcoef(raw, signal[got])[0, 1]:.4f} without realignment (target r >= 0.95 realigned)"
    )
    print(
        f"  motion parameters' RMS error: translation {np.sqrt((error[:, :3] ** 2).mean()):.4f} mm, rotation "
        f"{np.rad2deg(np.sqrt((error[:, 3:] ** 2).mean())):.4f} deg; per axis (mm, deg): "
        f"{np.round(np.sqrt((error[:, :3] ** 2).mean(0)), 4).tolist()}, "
        f"{np.round(np.rad2deg(np.sqrt((error[:, 3:] ** 2).mean(0))), 4).tolist()}"
    )
    print(f"files and the rig's log: {work}")


if __name__ == "__main__":
    main()
