"""``neurotwin rig ...`` and ``neurotwin present``: the relay rig, CURVE keys, the presenter (what a lab runs;
``simulation.cli`` adds the simulated rigs to the ``rig`` group)."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import click

from kit.cli import FiniteFloat, OutputFile, OutputFolder

POSITIVE = FiniteFloat(min=0, min_open=True)  # speeds, intervals, durations
# A journal: a regular file, made with its folders (a device or FIFO is never opened; the journal's own header
# check refuses any other program's file)
JOURNAL = OutputFile(make_parents=True)


def curve_options(f):
    f = click.option("--curve-secret", type=click.Path(path_type=Path), default=None,
                     help="This rig's .key_secret file: turn on CURVE encryption and authentication.")(f)  # fmt: skip
    f = click.option("--curve-allow", type=click.Path(path_type=Path), multiple=True,
                     help="Public .key file of a controller allowed to connect (repeatable).")(f)  # fmt: skip
    return f


def server_curve(secret: Path | None, allow: tuple[Path, ...]):
    if secret is None:
        return None
    from .peer import CurveKeys
    from .security import load_pair, load_public

    public, secret_key = load_pair(secret)
    if not allow:
        raise click.UsageError("--curve-secret needs at least one --curve-allow public key")
    return CurveKeys(public, secret_key, allowed_clients=[load_public(p) for p in allow])


def input_rig_options(f):
    """The serving options of a rig that reads another program's recording: --bind, --journal, --speed,
    --heartbeat, --duration and the CURVE keys."""
    f = curve_options(f)
    f = click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds.")(f)
    f = click.option("--heartbeat", type=POSITIVE, default=0.5, show_default=True,
                     help="Heartbeat interval (s).")(f)  # fmt: skip
    f = click.option("--speed", type=POSITIVE, default=1.0, show_default=True,
                     help="Simulated time speed (simulation).")(f)  # fmt: skip
    f = click.option("--journal", type=JOURNAL, default=None,
                     help="Journal file: restarted with it, the rig resends what was not acknowledged and keeps its "
                          "run.")(f)  # fmt: skip
    return click.option("--bind", default="tcp://127.0.0.1:5560", show_default=True,
                        help="ZeroMQ endpoint to serve on.")(f)  # fmt: skip


def input_rig_server(name: str, bind: str, journal, speed: float, heartbeat: float, curve_secret, curve_allow):
    """(the PeerServer of a rig named ``name``, its clock: simulated ``speed`` times faster)."""
    from kit.clock import sim_clock

    from .peer import PeerServer

    clock = sim_clock(speed)
    server = PeerServer(bind, role="rig", name=name, heartbeat=heartbeat, journal=journal, clock=clock,
                        curve=server_curve(curve_secret, curve_allow))  # fmt: skip
    return server, clock


def channel_names(channels: str) -> list[str]:
    """Distinct channel names from ``--channels`` (comma-separated), or a BadParameter naming the option."""
    names = [c.strip() for c in channels.split(",") if c.strip()]
    if not names or len(set(names)) != len(names):
        raise click.BadParameter(f"give distinct channel names separated by commas, not {channels!r}",
                                 param_hint="--channels")  # fmt: skip
    return names


@click.group(name="rig")
def rig_group() -> None:
    """Rigs (a relay of a real recording's values, or simulated) and rig keys."""


@rig_group.command("relay")
@click.option("--channels", required=True, help="Names of each line's values, in order, e.g. lang,md.")
@click.option(
    "--input",
    "source",
    default="-",
    show_default=True,
    help="Where the lines come from: '-' (standard input), a FIFO, or a file to follow as it grows.",
)
@click.option(
    "--latency",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Seconds from a volume's acquisition to its line, for lines that carry no time.",
)
@click.option("--from-start", is_flag=True, help="Read a followed file from its start, not only new lines.")
@click.option(
    "--kind",
    type=click.Choice(["fmri", "spikes"]),
    default="fmri",
    show_default=True,
    help="What the values are: ROI signals per volume, or spike counts per window.",
)
@click.option("--bind", default="tcp://127.0.0.1:5560", show_default=True, help="ZeroMQ endpoint to serve on.")
@click.option(
    "--journal",
    type=JOURNAL,
    default=None,
    help="Journal file: restarted with it, the relay resends what was not acknowledged and keeps its run.",
)
@click.option("--heartbeat", type=POSITIVE, default=0.5, show_default=True, help="Heartbeat interval (s).")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds.")
@curve_options
def relay(channels, source, latency, from_start, kind, bind, journal, heartbeat, duration, curve_secret,
          curve_allow):  # fmt: skip
    """A real recording: relay the ROI values another program writes, one line per volume (a time first,
    optionally), as the samples of the controller's runs. Each run begins with the first volume acquired after
    its start."""
    from .peer import PeerServer
    from .relay import RelayRig, open_input

    logging.getLogger().setLevel(logging.INFO)
    names = channel_names(channels)
    if source != "-" and Path(source).is_dir():
        raise click.BadParameter(f"'{source}' is a folder: give the file the recording writes, a FIFO, or '-'",
                                 param_hint="--input")  # fmt: skip
    server = PeerServer(bind, role="rig", name="relay", heartbeat=heartbeat, journal=journal,
                        curve=server_curve(curve_secret, curve_allow))  # fmt: skip
    rig = RelayRig(server, names, open_input(source, from_start), latency=latency, kind=kind)
    waiting = " (waiting for it to be created)" if source != "-" and not Path(source).exists() else ""
    serve(rig, server, f"relay serving on {server.endpoint} (channels: {', '.join(names)}; input: {source}{waiting})",
           duration)  # fmt: skip


@rig_group.command("lsl")
@click.option("--name", default=None, help="The LSL stream's name.")
@click.option("--type", "type_", default=None, help="The LSL stream's type (e.g. fMRI, EEG).")
@click.option("--source-id", default=None, help="The LSL stream's source id (the one a restarted device keeps).")
@click.option("--channels", default=None, help="Names of the stream's channels, in order, e.g. lang,md.")
@click.option(
    "--protocol",
    "protocol_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A protocol file whose [recording.lsl] table names the stream (its channels default to the target's "
    "ROIs); the options above and below override it.",
)
@click.option(
    "--rate",
    type=POSITIVE,
    default=None,
    help="Nominal rate the stream must have, in Hz (1/TR for volumes; e.g. 1000 for spike counts).",
)
@click.option(
    "--signal",
    type=click.Choice(["volumes", "spike-counts"]),
    default=None,
    help="What the stream carries [default: volumes; with --protocol, its recording.lsl.signal, or spike-counts "
    "for images]: one sample of ROI values per volume (real-time fMRI), or per-sample "
    "spike counts per channel (electrophysiology), sent as counts per window of one TR.",
)
@click.option(
    "--grace",
    type=POSITIVE,
    default=1.0,
    show_default=True,
    help="Spike counts: seconds after a window's end it is sent, if no later sample has come.",
)
@click.option("--resolve-timeout", type=POSITIVE, default=10.0, show_default=True,
              help="Seconds to wait for the stream to answer.")  # fmt: skip
@click.option("--silence", type=POSITIVE, default=5.0, show_default=True,
              help="Seconds without samples after which the outage is logged.")  # fmt: skip
@input_rig_options
def lsl_rig(name, type_, source_id, channels, protocol_file, rate, signal, grace, resolve_timeout, silence, bind,
            journal, speed, heartbeat, duration, curve_secret, curve_allow):  # fmt: skip
    """A real recording over Lab Streaming Layer, as the samples of the controller's runs at their acquisition
    times: an LSL stream's ROI values, one sample per volume (a real-time fMRI pipeline's), or its spike counts
    per window of one TR (an electrophysiology stream at 1 kHz or more). Each run begins with the first sample
    acquired after its start; a volume or window that never came is left missing."""
    from .lsl import LSLError, check_stream, describe, find_stream, protocol_source, sample_chunks, volume_lines
    from .relay import RelayRig
    from .windows import WindowRig

    logging.getLogger().setLevel(logging.INFO)
    if protocol_file is not None:
        try:
            source = protocol_source(protocol_file)
        except LSLError as exc:
            raise click.BadParameter(str(exc), param_hint="--protocol") from None
        name, type_, source_id = name or source.name, type_ or source.type, source_id or source.source_id
        channels = channels or (",".join(source.channels) if source.channels else None)
        rate, signal = rate or source.rate, signal or source.signal
    if not channels:
        raise click.UsageError("name the stream's channels: --channels, or a --protocol whose target has ROIs")
    signal = signal or "volumes"
    names = channel_names(channels)
    try:
        info = find_stream(name, type_, source_id, resolve_timeout)
        check_stream(info, names, rate)
    except LSLError as exc:
        raise click.ClickException(str(exc)) from None
    server, clock = input_rig_server("lsl", bind, journal, speed, heartbeat, curve_secret, curve_allow)
    if signal == "volumes":
        rig = RelayRig(server, names, volume_lines(info, clock, speed, silence), gaps=True, name="lsl-input")
    else:
        stream_rate = rate or info.nominal_srate()
        if stream_rate <= 0:
            server.close()
            raise click.ClickException(f"{describe(info)} has an irregular rate: spike counts need a regular one")
        # (the stream's rate in real time; the rig counts in simulated time, --speed times faster)
        rig = WindowRig(server, names, sample_chunks(info, clock, speed, silence), stream_rate / speed,
                        grace=grace * speed, name="lsl-input")  # fmt: skip
    serve(rig, server, f"LSL rig serving on {server.endpoint} ({describe(info)}; {signal}; channels: "
                       f"{', '.join(names)})", duration)  # fmt: skip


@rig_group.command("rtfmri")
@click.option(
    "--watch",
    "folder",
    required=True,
    type=click.Path(path_type=Path),
    help="The folder the scanner's real-time export writes into: a file per volume (NIfTI, DICOM mosaic or "
    "multi-frame) or per slice (single-frame DICOM).",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    required=True,
    metavar="[NAME=]FILE",
    help="An ROI: its name (default: the file's, lang.nii.gz: lang) and mask (NIfTI, in the volumes' space); "
    "repeatable, in the order of the channels.",
)
@click.option(
    "--latency",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Seconds from a volume's acquisition to its file, for volumes whose header has no time.",
)
@click.option(
    "--patience",
    type=POSITIVE,
    default=5.0,
    show_default=True,
    help="Seconds a file that cannot be read is waited for (still being written) before it is skipped.",
)
@click.option("--existing", is_flag=True, help="Also read the volumes already in the folder (else only new ones).")
@click.option("--realign", is_flag=True,
              help="Realign each volume to the reference (rigid); send its motion parameters and framewise "
              "displacement with its sample.")  # fmt: skip
@click.option(
    "--reference",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="The volume to realign to (NIfTI or DICOM) [default: the first volume read].",
)
@click.option(
    "--units",
    type=click.Choice(["percent", "raw"]),
    default="percent",
    show_default=True,
    help="Each ROI's value: percent signal change from its mean in the first volume read, or the raw mean.",
)
@input_rig_options
def rtfmri_rig(folder, masks, latency, patience, existing, realign, reference, units, bind, journal, speed,
               heartbeat, duration, curve_secret, curve_allow):  # fmt: skip
    """Real-time fMRI from the scanner's export folder: each new volume, read once its file is complete, realigned
    (--realign) and averaged in each ROI mask, is a sample of the controller's runs at its acquisition time. A file
    that is not a volume is skipped (its volume missing); a volume of another geometry than the masks stops the
    rig, naming both."""
    from .relay import RelayRig
    from .rtfmri import FD, MOTION, MaskError, Realigner, RoiMasks, VolumeError, read_volume, volume_lines

    logging.getLogger().setLevel(logging.INFO)
    named = {}
    for spec in masks:
        name, sep, path = spec.partition("=")
        if not sep:  # a file alone: the ROI is named after it (lang.nii.gz: lang)
            path, name = spec, re.sub(r"\.nii(\.gz)?$", "", Path(spec).name, flags=re.I)
        if not name or not path or name in named:
            raise click.BadParameter(f"give each ROI as NAME=FILE (or FILE, named after it), names distinct, not "
                                     f"{spec!r}", param_hint="--mask")  # fmt: skip
        named[name] = Path(path)
    try:
        rois = RoiMasks(named)
    except MaskError as exc:
        raise click.BadParameter(str(exc), param_hint="--mask") from None
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"'{folder}' is a file, not the export's folder", param_hint="--watch")
    if reference is not None and not realign:
        raise click.BadParameter("a reference volume is for --realign", param_hint="--reference")
    realigner = None
    if realign:
        try:
            first = read_volume(reference) if reference is not None else None
            if first is not None:
                rois.check(first)
        except (VolumeError, MaskError) as exc:
            raise click.BadParameter(str(exc), param_hint="--reference") from None
        realigner = Realigner(first)
    server, clock = input_rig_server("rtfmri", bind, journal, speed, heartbeat, curve_secret, curve_allow)
    lines = volume_lines(folder, rois, clock, latency=latency, patience=patience, existing=existing,
                         realigner=realigner, percent=units == "percent")  # fmt: skip
    rig = RelayRig(
        server, rois.names, lines, gaps=True, name="rtfmri-input", confounds=[*MOTION, FD] if realign else []
    )
    serve(rig, server, f"rtfmri rig serving on {server.endpoint} (watching {folder}; ROIs: {', '.join(rois.names)})",
          duration)  # fmt: skip


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def serve(rig, server, banner: str, duration: float | None) -> None:
    """Serve a rig or presenter until SIGTERM, Ctrl-C or ``duration``; the server is closed either way."""
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(banner, err=True)
    try:
        rig.serve(duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@rig_group.command("keygen")
@click.argument("folder", type=OutputFolder())
@click.argument("name")
def keygen(folder: Path, name: str) -> None:
    """Write NAME.key (public: give it to the other side) and NAME.key_secret (keep it) into FOLDER; existing keys
    are never replaced."""
    from .security import generate_keys

    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise click.BadParameter(f"{name!r}: a key's name is a plain file name (e.g. rig), no folders",
                                 param_hint="NAME")  # fmt: skip
    existing = [p for p in (folder / f"{name}.key", folder / f"{name}.key_secret") if p.exists() or p.is_symlink()]
    if existing:
        raise click.UsageError(f"'{existing[0]}' exists: keys are never replaced (a controller or rig may rely on "
                               "them); remove them first, or choose another NAME")  # fmt: skip
    public, secret = generate_keys(folder, name)
    click.echo(f"public key: {public}\nsecret key: {secret}")


@click.command("present")
@click.option("--bind", default="tcp://127.0.0.1:5570", show_default=True, help="ZeroMQ endpoint to serve on.")
@click.option("--null", "null", is_flag=True, help="No window: the same protocol and timing, for simulation.")
@click.option(
    "--trigger-key", default="5", show_default=True, help="Scanner trigger key; '' to wait for trigger messages."
)
@click.option("--quit-key", default="escape", show_default=True, help="Key that stops the presenter; '' for none.")
@click.option("--fullscreen", is_flag=True, help="Full screen (the scanner projector).")
@click.option("--size", default="1024x768", show_default=True, help="Window size WxH.")
@click.option("--screen", default=0, show_default=True, help="Screen number.")
@click.option("--screenshots", type=click.Path(path_type=Path), default=None, help="Save every frame shown here.")
@click.option("--journal", type=JOURNAL, default=None, help="Journal file (restart without loss).")
@click.option("--speed", type=POSITIVE, default=1.0, show_default=True, help="Simulated time speed (with --null).")
@click.option("--heartbeat", type=POSITIVE, default=0.5, show_default=True, help="Heartbeat interval (s).")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds.")
@click.option(
    "--lsl-markers",
    default=None,
    metavar="NAME",
    help="Publish every shown trial's onset on an LSL marker stream of this name (JSON markers).",
)
@click.option("--lsl-marker-images", is_flag=True,
              help="Image markers carry the image (PNG in base64): for a simulated participant on LSL.")  # fmt: skip
@curve_options
def present_cmd(bind, null, trigger_key, quit_key, fullscreen, size, screen, screenshots, journal, speed, heartbeat,
                duration, lsl_markers, lsl_marker_images, curve_secret, curve_allow):  # fmt: skip
    """Show scheduled sentences and images at the scanner trigger; report measured onsets."""
    from kit.clock import sim_clock

    from .peer import PeerServer
    from .presenter import NullDisplay, Presenter, PsychoPyDisplay, trigger_names

    try:
        trigger_names(trigger_key or None, quit_key or None)  # before a window opens
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    markers = None
    if lsl_markers is not None:
        from .lsl import LSLError, MarkerOutlet

        try:
            markers = MarkerOutlet(lsl_markers or "NeuroTwin markers", images=lsl_marker_images)
        except LSLError as exc:
            raise click.ClickException(str(exc)) from None
    logging.getLogger().setLevel(logging.INFO)
    clock = sim_clock(speed if null else 1.0)
    server = PeerServer(bind, role="presenter", name="null-presenter" if null else "psychopy", heartbeat=heartbeat,
                        journal=journal, curve=server_curve(curve_secret, curve_allow), clock=clock)  # fmt: skip
    if null:
        display = NullDisplay(clock)
    else:
        try:
            w, h = (int(x) for x in size.lower().split("x"))
        except ValueError:
            raise click.UsageError(f"--size must be WxH, e.g. 1024x768, not {size!r}") from None
        try:
            display = PsychoPyDisplay((w, h), fullscreen, screen, screenshots=screenshots)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    presenter = Presenter(server, display, trigger_key or None, speed=speed if null else 1.0, quit_key=quit_key or None,
                          markers=markers)  # fmt: skip
    try:
        serve(presenter, server, f"presenter serving on {server.endpoint}", duration)
    finally:
        display.close()
