"""Simulation mode: the simulated rig and the null presenter as separate processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from kit.net import free_port

from .protocol import Protocol, ProtocolError

DEFAULT_SUBJECTS = {"text": "language", "image": "v4"}  # registered names (simulation.SUBJECTS)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the controller dies, even by kill -9 (Linux; elsewhere a no-op)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def simulation_peers(protocol: Protocol, subject: str | None = None, speed: float | None = None) -> dict:
    """What a simulated session runs against (stored in the session file so `session resume` can restart it)."""
    return {
        "mode": "simulation",
        "subject": subject or protocol.simulation.subject or DEFAULT_SUBJECTS[protocol.modality],
        "speed": speed or protocol.simulation.speed,
        "noise_sd": protocol.simulation.noise_sd,
        "seed": protocol.seed,
        "via": protocol.simulation.via,
    }


@contextlib.contextmanager
def simulated_peers(protocol: Protocol, peers: dict, log_dir: Path) -> Iterator[tuple[str, str, Callable]]:
    """Start the rig and the presenter; yields their endpoints and a check that says which of them has exited
    (with its exit status and the last line of its log), or None; stops them on exit."""
    rig_port, presenter_port = free_port(), free_port()
    rig_ep, pres_ep = f"tcp://127.0.0.1:{rig_port}", f"tcp://127.0.0.1:{presenter_port}"
    exe = [sys.executable, "-m", "control_loop.cli"]
    speed = str(peers["speed"])
    if protocol.modality == "text":
        rig = [*exe, "rig", "simulate-fmri", "--bind", rig_ep, "--speed", speed, "--seed", str(peers["seed"]),
               "--heartbeat", "0.3"]  # fmt: skip
        if peers["subject"]:
            rig += ["--subject", peers["subject"]]
        if peers.get("noise_sd"):
            rig += ["--noise-sd", str(peers["noise_sd"])]
    else:
        rig = [*exe, "rig", "simulate-ephys", "--bind", rig_ep, "--speed", speed, "--seed", str(peers["seed"]),
               "--heartbeat", "0.3", "--tuning", peers["subject"]]  # fmt: skip
    presenter = [*exe, "present", "--null", "--bind", pres_ep, "--trigger-key", "", "--speed", speed,
                 "--heartbeat", "0.3"]  # fmt: skip
    commands = {"rig": rig, "presenter": presenter}
    if peers.get("via") == "lsl":  # device -> LSL -> rig; the device sees the presenter's markers
        stream, markers = f"neurotwin-simulated-{rig_port}", f"neurotwin-markers-{presenter_port}"
        presenter += ["--lsl-markers", markers]
        device = [*exe, "rig", "simulate-lsl", "--name", stream, "--markers", markers, "--speed", speed, "--seed",
                  str(peers["seed"])]  # fmt: skip
        device += ["--subject", peers["subject"]] if peers["subject"] else []
        channels = ",".join(subject_rois(protocol, peers))
        rig = [*exe, "rig", "lsl", "--name", stream, "--channels", channels, "--speed", speed, "--bind", rig_ep,
               "--heartbeat", "0.3", "--resolve-timeout", "120"]  # fmt: skip
        if protocol.modality == "text":  # a scanner's ROI values, one sample per volume
            device += ["--tr", str(protocol.design.tr)]
            device += ["--noise-sd", str(peers["noise_sd"])] if peers.get("noise_sd") else []
            rig += ["--rate", repr(peers["speed"] / protocol.design.tr)]
        else:  # an array's spike counts at 1 kHz, counted per window by the rig; the subject sees the images
            presenter += ["--lsl-marker-images"]
            device += ["--signal", "spike-counts", "--rate", "1000"]
            # (the simulated sites' model may fall seconds behind a sped-up run of images, on a busy machine: its
            # samples come late but whole, and the rig waits for them)
            rig += ["--signal", "spike-counts", "--rate", repr(peers["speed"] * 1000.0), "--grace", "60"]
        commands = {"device": device, "rig": rig, "presenter": presenter}
    elif peers.get("via") == "export":  # scanner -> volume files -> rtfmri rig; the scanner sees the markers
        from simulation.export_scanner import write_masks

        markers = f"neurotwin-markers-{presenter_port}"
        presenter += ["--lsl-markers", markers]
        folder, masks = log_dir / f"export-{rig_port}", log_dir / f"export-{rig_port}-masks"
        files = write_masks(subject_rois(protocol, peers), masks)  # (before the rig reads them)
        # (Siemens mosaics of a head that moves up to 2 mm and 2 degrees; the rig realigns each volume)
        device = [*exe, "rig", "simulate-export", str(folder), "--markers", markers, "--masks", str(masks), "--tr",
                  str(protocol.design.tr), "--speed", speed, "--seed", str(peers["seed"]), "--format", "mosaic",
                  "--max-shift", "2", "--max-rotation", "2"]  # fmt: skip
        device += ["--subject", peers["subject"]] if peers["subject"] else []
        device += ["--noise-sd", str(peers["noise_sd"])] if peers.get("noise_sd") else []
        rig = [*exe, "rig", "rtfmri", "--watch", str(folder), "--realign", "--speed", speed, "--bind", rig_ep,
               "--heartbeat", "0.3"]  # fmt: skip
        for roi, path in files.items():
            rig += ["--mask", f"{roi}={path}"]
        commands = {"device": device, "rig": rig, "presenter": presenter}
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"}
    procs = []
    try:
        for name, cmd in commands.items():
            out = open(log_dir / f"{name}.log", "ab")
            # a session of their own: Ctrl-C in the terminal reaches the controller only, which stops them
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent,
                                    start_new_session=True)  # fmt: skip
            procs.append((proc, out))

        def exited() -> str | None:
            for (proc, out), name in zip(procs, commands, strict=True):
                if proc.poll() is not None:
                    out.flush()
                    lines = Path(out.name).read_text(errors="replace").strip().splitlines()
                    return (f"the simulated {name} exited (status {proc.returncode}): "
                            f"{lines[-1] if lines else 'no output'} (its log: {out.name})")  # fmt: skip
            return None

        yield rig_ep, pres_ep, exited
    finally:
        for proc, out in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()


def subject_rois(protocol: Protocol, peers: dict) -> list[str]:
    """The ROIs (sites) the simulated subject reports (the shipped subjects' without loading any model); raises
    ProtocolError naming simulation.subject for one that does not load."""
    from simulation.subjects import subject_rois as rois

    try:
        return rois(peers["subject"])
    except ValueError as exc:
        raise ProtocolError(f"simulation.subject: {exc}") from None


def peers_of(session_file: Path) -> dict:
    """The peers a session file was recorded with."""
    import h5py

    with h5py.File(session_file, "r", swmr=True) as f:
        return json.loads(f.attrs.get("peers", "{}"))
