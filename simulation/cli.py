"""``neurotwin rig simulate-fmri`` and ``neurotwin rig simulate-ephys``: simulated rigs serving a simulated subject
(the command line mounts them in the ``rig`` group beside the relay)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from hardware.cli import JOURNAL, POSITIVE, curve_options, serve, server_curve
from kit.cli import FiniteFloat


@click.command("simulate-fmri")
@click.option("--bind", default="tcp://127.0.0.1:5560", show_default=True, help="ZeroMQ endpoint to serve on.")
@click.option("--journal", type=JOURNAL, default=None,
              help="Journal file: a rig restarted with the same journal resumes without loss.")  # fmt: skip
@click.option("--subject", default=None,
              help="Ground-truth subject: a registered name (language, or one another package adds) or module:attr "
                   "(default: language).")  # fmt: skip
@click.option("--noise-sd", type=FiniteFloat(min=0), default=None,
              help="Per-trial noise SD (default: the subject's, 0.623).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Noise and drift seed.")
@click.option("--speed", type=POSITIVE, default=1.0, show_default=True, help="Simulated time's speed-up.")
@click.option("--heartbeat", type=POSITIVE, default=0.5, show_default=True, help="Heartbeat interval (s).")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds (default: never).")
@curve_options
def simulate_fmri(bind, journal, subject, noise_sd, seed, speed, heartbeat, duration, curve_secret, curve_allow):
    """A scanner with a simulated subject: a trigger and one sample per ROI every TR."""
    from hardware.peer import PeerServer
    from kit.clock import sim_clock

    from .rigs import SimulatedFMRIRig

    logging.getLogger().setLevel(logging.INFO)
    truth = _load_subject(subject)
    truth.warm_up()  # a subject with a model to load: before serving, not mid-run
    server = PeerServer(bind, role="rig", name="fmri-sim", heartbeat=heartbeat, journal=journal,
                        curve=server_curve(curve_secret, curve_allow), clock=sim_clock(speed))  # fmt: skip
    rig = SimulatedFMRIRig(server, truth, noise_sd=noise_sd, seed=seed)
    serve(rig, server, f"fmri-sim serving on {server.endpoint} (ROIs: {', '.join(rig.rois)})", duration)


@click.command("simulate-ephys")
@click.option("--bind", default="tcp://127.0.0.1:5561", show_default=True, help="ZeroMQ endpoint to serve on.")
@click.option("--journal", type=JOURNAL, default=None, help="Journal file (restart without loss).")
@click.option("--tuning", default=None,
              help="Tuning function: a registered subject name (gabor, v4, or one another package adds) or "
                   "module:attr (default: V1-like Gabor sites, --sites of them).")  # fmt: skip
@click.option("--sites", default=16, show_default=True, help="Number of sites of the default tuning.")
@click.option("--baseline", type=FiniteFloat(min=0), default=5.0, show_default=True,
              help="Spontaneous rate (spikes/s).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Spike-count seed.")
@click.option("--speed", type=POSITIVE, default=1.0, show_default=True, help="Simulated time's speed-up.")
@click.option("--heartbeat", type=POSITIVE, default=0.5, show_default=True, help="Heartbeat interval (s).")
@curve_options
def simulate_ephys(bind, journal, tuning, sites, baseline, seed, speed, heartbeat, curve_secret, curve_allow):
    """An electrophysiology array: Poisson spike counts per window from a tuning function."""
    from hardware.peer import PeerServer
    from kit.clock import sim_clock

    from .rigs import SimulatedEphysRig
    from .subjects import as_subject
    from .tuning import gabor_tuning

    logging.getLogger().setLevel(logging.INFO)
    subject = _load_subject(tuning) if tuning else as_subject(gabor_tuning(sites))
    server = PeerServer(bind, role="rig", name="ephys-sim", heartbeat=heartbeat, journal=journal,
                        curve=server_curve(curve_secret, curve_allow), clock=sim_clock(speed))  # fmt: skip
    rig = SimulatedEphysRig(server, subject, baseline=baseline, seed=seed)
    serve(rig, server, f"ephys-sim serving on {server.endpoint} ({len(rig.rois)} sites)", None)


@click.command("simulate-lsl")
@click.option("--name", required=True, help="Name of the LSL stream to publish (a channel per ROI or site).")
@click.option("--markers", required=True, help="Name of the presenter's LSL marker stream: what the subject sees.")
@click.option("--signal", type=click.Choice(["volumes", "spike-counts"]), default="volumes", show_default=True,
              help="A scanner's ROI values, one sample per volume (type fMRI), or an array's spike counts per "
                   "sample at --rate (type Spikes).")  # fmt: skip
@click.option("--tr", type=POSITIVE, default=2.0, show_default=True, help="Volume length (simulated s).")
@click.option("--rate", type=POSITIVE, default=1000.0, show_default=True,
              help="Spike counts: samples per simulated second.")  # fmt: skip
@click.option("--subject", default=None,
              help="Ground-truth subject: a registered name or module:attr (default: language; for spike counts, "
                   "v4).")  # fmt: skip
@click.option("--noise-sd", type=FiniteFloat(min=0), default=None,
              help="Volumes: per-trial noise SD (default: the subject's, 0.623).")  # fmt: skip
@click.option("--baseline", type=FiniteFloat(min=0), default=5.0, show_default=True,
              help="Spike counts: spontaneous rate (spikes/s).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Noise and drift seed.")
@click.option("--speed", type=POSITIVE, default=1.0, show_default=True, help="Simulated time's speed-up.")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds (default: never).")
def simulate_lsl(name, markers, signal, tr, rate, subject, noise_sd, baseline, seed, speed, duration):
    """A simulated LSL device: a scanner (ROI values per volume) or a recording array (spike counts at 1 kHz) with a
    simulated subject, seeing what the presenter's marker stream says is shown (for `rig lsl`)."""
    from hardware.lsl import LSLError

    from .lsl_device import SimulatedLSLArray, SimulatedLSLScanner

    logging.getLogger().setLevel(logging.INFO)
    try:
        if signal == "volumes":
            truth = _load_subject(subject)
            device = SimulatedLSLScanner(truth, name, markers, tr=tr, speed=speed, seed=seed, noise_sd=noise_sd)
        else:
            truth = _load_subject(subject or "v4")
            device = SimulatedLSLArray(truth, name, markers, rate=rate, speed=speed, seed=seed, baseline=baseline)
    except LSLError as exc:
        raise click.ClickException(str(exc)) from None
    _record(device, f"simulated LSL device streaming '{name}' ({signal} of {', '.join(device.rois)}; markers: "
                    f"'{markers}')", duration)  # fmt: skip


@click.command("simulate-export")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--markers", required=True, help="Name of the presenter's LSL marker stream: what the subject sees.")
@click.option("--masks", "masks_folder", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where each ROI's mask is written (NAME.nii.gz) [default: FOLDER-masks beside FOLDER].")  # fmt: skip
@click.option("--tr", type=POSITIVE, default=2.0, show_default=True, help="Volume length (simulated s).")
@click.option("--subject", default=None,
              help="Ground-truth subject: a registered name or module:attr (default: language).")  # fmt: skip
@click.option("--noise-sd", type=FiniteFloat(min=0), default=None,
              help="Per-trial noise SD of each ROI's signal (default: the subject's).")  # fmt: skip
@click.option("--thermal", type=FiniteFloat(min=0), default=0.005, show_default=True,
              help="Each voxel's thermal noise SD, as a fraction of the mean brain intensity.")  # fmt: skip
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["nifti", "mosaic", "slices"]),
    default="nifti",
    show_default=True,
    help="Each volume as a NIfTI file, a Siemens DICOM mosaic, or single-frame DICOM slices (a file each).",
)
@click.option(
    "--max-shift",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Head motion: the largest translation along each axis (mm); 0 with --max-rotation 0: none.",
)
@click.option(
    "--max-rotation",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Head motion: the largest rotation about each axis (degrees).",
)
@click.option("--seed", default=0, show_default=True, help="Noise, drift, motion and phantom seed.")
@click.option("--speed", type=POSITIVE, default=1.0, show_default=True, help="Simulated time's speed-up.")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds (default: never).")
def simulate_export(folder, markers, masks_folder, tr, subject, noise_sd, thermal, file_format, max_shift,
                    max_rotation, seed, speed, duration):  # fmt: skip
    """A simulated scanner's real-time export: one volume per TR written into FOLDER (a brain-like phantom, the
    simulated subject's signal in each ROI's voxels, head motion if asked, thermal noise), each ROI's mask beside
    it, the subject seeing what the presenter's marker stream says is shown (for `rig rtfmri`)."""
    from hardware.lsl import LSLError

    from .export_scanner import HeadMotion, SimulatedExportScanner, write_masks

    logging.getLogger().setLevel(logging.INFO)
    truth = _load_subject(subject)
    masks_folder = masks_folder or folder.with_name(folder.name + "-masks")
    written = write_masks([str(r) for r in truth.rois], masks_folder)
    try:
        motion = HeadMotion(max_shift, max_rotation, seed) if max_shift or max_rotation else None
        device = SimulatedExportScanner(truth, folder, markers, tr=tr, speed=speed, seed=seed, noise_sd=noise_sd,
                                        thermal=thermal, file_format=file_format, motion=motion)  # fmt: skip
    except LSLError as exc:
        raise click.ClickException(str(exc)) from None
    _record(device, f"simulated export writing volumes into {folder} (masks: "
                    f"{', '.join(map(str, written.values()))}; markers: '{markers}')", duration)  # fmt: skip


def _record(device, banner: str, duration: float | None) -> None:
    """Say what a simulated device records, then record until Ctrl-C (or ``duration`` seconds)."""
    click.echo(banner, err=True)
    try:
        device.serve(duration)
    except KeyboardInterrupt:
        pass


def _load_subject(spec: str | None):
    from .subjects import load_subject

    try:
        return load_subject(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


SIMULATED_RIGS = (simulate_fmri, simulate_ephys, simulate_lsl, simulate_export)
