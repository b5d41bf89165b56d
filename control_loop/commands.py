"""Commands of the control loop: simulate, session run/resume, protocol check, report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np

from acquisition.cli import session_group
from acquisition.session import FLUSH_RESERVE, SessionError
from hardware.cli import POSITIVE
from kit.cli import OutputFile, OutputFolder

from .protocol import MAX_DEVICE_SPEED, Protocol, ProtocolError, load_prior, load_protocol, load_reference

# A new session file: made with its folders, on a file system with room for it (a flush keeps 1 MiB in reserve)
SESSION_FILE = OutputFile(make_parents=True, session=True, min_free=FLUSH_RESERVE)


def _features(protocol: Protocol):
    from .modality import modality_for

    return modality_for(protocol).features()


def _default_out(protocol_path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("sessions") / f"{protocol_path.stem}-{stamp}.h5"


def _run_or_pause(runner, out: Path) -> None:
    """Run; Ctrl-C or SIGTERM pauses (the file is closed cleanly; the unfinished run is repeated on resume). A
    session that stops on an error after its file was made says how to continue it."""
    import sys

    from acquisition.session import SessionWriteError

    try:
        runner.run()
    except KeyboardInterrupt:
        click.echo(f"paused: {out} is closed and intact; continue with: neurotwin session resume {out}", err=True)
        sys.exit(130)
    except SessionError as exc:
        if runner.session is None or not out.is_file():  # stopped before its file was made (or kept)
            raise
        first = "free space on its disk, then continue" if isinstance(exc, SessionWriteError) else "continue"
        raise SessionError(
            f"{exc}. The session stopped; '{out}' keeps everything recorded before: {first} with: "
            f"neurotwin session resume {out}"
        ) from None


@contextlib.contextmanager
def _simulated_runner(protocol: Protocol, out: Path, peers: dict, progress: Callable[[str], None]) -> Iterator:
    """A session runner for PROTOCOL against a simulated rig and presenter (stopped on exit)."""
    from kit.clock import sim_clock

    from .session import SessionRunner
    from .simulate import simulated_peers, subject_rois

    rois = subject_rois(protocol, peers)  # a subject that does not load fails before anything starts
    features = _features(protocol)
    with simulated_peers(protocol, peers, out.with_name(out.stem + "-logs")) as (rig, presenter, exited):
        yield SessionRunner(protocol, out, rig, presenter, clock=sim_clock(peers["speed"]), features=features,
                            rois=rois, progress=progress, peers=peers, watch=exited)  # fmt: skip


def _finish(session_file: Path, report: bool, peers: str = "") -> None:
    """What a session prints last: its evaluation's effects (from the report), then where its file and report are."""
    import json

    from .report import effect_lines, measured_baseline_sd, write_report

    page = write_report(session_file) if report else None
    if page is not None:
        summary = json.loads(page.with_name("summary.json").read_text())
        for line in effect_lines(summary["evaluation"], summary.get("localizer", {}), summary.get("true", {}),
                                 measured_baseline_sd(summary)):  # fmt: skip
            click.echo(line)
    click.echo(f"session file: {session_file}{peers}")
    if page is not None:
        click.echo(f"report: {page}")


def _run_simulated(protocol: Protocol, out: Path, peers: dict, report: bool) -> None:
    logs = out.with_name(out.stem + "-logs")
    try:
        with _simulated_runner(protocol, out, peers, click.echo) as runner:
            _run_or_pause(runner, out)
    except Exception as exc:
        if not out.exists() and str(logs) not in str(exc):  # nothing recorded, and no peer's log to read
            import shutil

            shutil.rmtree(logs, ignore_errors=True)
        raise
    _finish(out, report)


@click.command("simulate")
@click.argument("protocol_file", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=SESSION_FILE,
    default=None,
    help="Session file (default: sessions/NAME-TIME.h5).",
)
@click.option(
    "--speed",
    type=POSITIVE,
    default=None,
    help="Simulated time speed (default: the protocol's).",
)
@click.option("--subject", default=None,
              help="Simulated subject: a registered name (language, population:p01 to population:p08; images: v4, "
                   "gabor; or one another installed package adds) or module:attr (default: the protocol's, else "
                   "language; v4 for images).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the protocol's seed.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the HTML report at the end.")
def simulate_cmd(protocol_file: Path, out: Path | None, speed: float | None, subject: str | None, seed: int | None,
                 report: bool) -> None:  # fmt: skip
    """Run PROTOCOL end to end against a simulated rig and presenter (separate processes, 127.0.0.1)."""
    from .simulate import simulation_peers

    protocol = load_protocol(protocol_file)
    if seed is not None:
        protocol = protocol.model_copy(update={"seed": seed})
    via = protocol.simulation.via
    if speed is not None and via in MAX_DEVICE_SPEED and speed > MAX_DEVICE_SPEED[via]:
        raise click.BadParameter(f"at most {MAX_DEVICE_SPEED[via]:g} with the protocol's simulation.via = '{via}' "
                                 "(its device's timing)", param_hint="--speed")  # fmt: skip
    out = out or _default_out(protocol_file)
    _refuse_existing(out)
    _run_simulated(protocol, out, simulation_peers(protocol, subject, speed), report)


def _refuse_existing(out: Path) -> None:
    """A new session never writes into an existing file: continuing one is `session resume`."""
    if out.exists():
        raise SessionError(f"session file '{out}' already exists: continue it with `neurotwin session resume {out}`, "
                           "or choose another --out")  # fmt: skip


PEER_TIMEOUT = click.option(
    "--peer-timeout",
    type=POSITIVE,
    default=3.0,
    show_default=True,
    help="Seconds of silence from the rig or presenter before it is taken for lost (an outage; it is reconnected).",
)


@session_group.command("run")
@click.argument("protocol_file", type=click.Path(path_type=Path))
@click.option("--rig", required=True, help="Rig endpoint, e.g. tcp://scanner-pc:5560.")
@click.option("--presenter", required=True, help="Presenter endpoint, e.g. tcp://stim-pc:5570.")
@click.option("--out", type=SESSION_FILE, required=True, help="Session file to write.")
@click.option("--rois", default=None, help="ROIs the rig reports, comma-separated (default: the protocol's).")
@PEER_TIMEOUT
def run_cmd(protocol_file: Path, rig: str, presenter: str, out: Path, rois: str | None, peer_timeout: float) -> None:
    """Run PROTOCOL with a real rig and presenter."""
    from .session import SessionRunner

    protocol = load_protocol(protocol_file)
    _refuse_existing(out)
    runner = SessionRunner(protocol, out, rig, presenter, features=_features(protocol), peer_timeout=peer_timeout,
                           rois=rois.split(",") if rois else None, progress=click.echo)  # fmt: skip
    _run_or_pause(runner, out)
    _finish(out, report=True)


@session_group.command("resume")
@click.argument("session_file", type=click.Path(path_type=Path, exists=True))
@click.option("--report/--no-report", default=True, show_default=True)
@PEER_TIMEOUT
def resume_cmd(session_file: Path, report: bool, peer_timeout: float) -> None:
    """Continue a stopped or killed session from its file, without repeating or losing a trial."""
    import json

    from acquisition import read_session, recover

    from .session import SessionRunner
    from .simulate import peers_of

    recover(session_file)
    recorded = read_session(session_file)
    protocol = Protocol.model_validate_json(recorded.attrs["protocol"])
    peers = peers_of(session_file)
    if peers.get("mode") == "simulation":
        _run_simulated(protocol, session_file, peers, report)
        return
    runner = SessionRunner(protocol, session_file, peers["rig"], peers["presenter"], features=_features(protocol),
                           rois=recorded.rois, progress=click.echo, peers=peers, peer_timeout=peer_timeout)  # fmt: skip
    _run_or_pause(runner, session_file)
    _finish(session_file, report, f" ({json.dumps(peers)})")


@click.group("protocol")
def protocol_group() -> None:
    """Protocol files: validate and summarize."""


@protocol_group.command("check")
@click.argument("protocol_file", type=click.Path(path_type=Path))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Also run it end to end in simulation and report what it showed and "
    "measured: stimuli per condition, the evaluation's effects with their uncertainty, constraints.",
)
@click.option(
    "--seeds",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Dry runs (simulated participants), seeds from the protocol's; 2 or more give the effects' spread.",
)
@click.option(
    "--speed",
    type=POSITIVE,
    default=None,
    help="Simulated speed of the dry runs (default: the protocol's).",
)
@click.option(
    "--keep",
    type=OutputFolder(),
    default=None,
    help="Folder to keep the dry runs' session files in (default: a temporary folder, removed).",
)
@click.option(
    "--population",
    is_flag=True,
    help="Dry runs against every member of the population of simulated participants (sentences: other features, "
    "weights and response shapes), --seeds each; then each member's make-up and separation.",
)
def check_cmd(protocol_file: Path, dry_run: bool, seeds: int, speed: float | None, keep: Path | None,
              population: bool) -> None:  # fmt: skip
    """Validate PROTOCOL and print what it will do: duration, stimuli per condition, constraints, safety limits;
    with --dry-run, also what it does to the simulated subject (with --population, to each simulated participant)."""
    from .simulate import simulation_peers, subject_rois

    if not dry_run and (seeds != 1 or speed is not None or keep is not None or population):
        raise click.UsageError("--seeds, --speed, --keep and --population set up the dry run: add --dry-run")
    protocol = load_protocol(protocol_file)
    rois = subject_rois(protocol, simulation_peers(protocol))
    unknown = [r for r in protocol.target.rois if r not in rois]
    if unknown:
        raise ProtocolError(f"protocol '{protocol_file}': target.rois: unknown ROI(s) {unknown}; "
                            f"the {protocol.modality} subject reports {rois}")  # fmt: skip
    d = protocol.design
    click.echo(f"{protocol.name} ({protocol.modality}): {protocol.description}")
    click.echo(f"  design: {d.kind}, TR {d.tr:g} s, {d.trial_duration:g} s stimuli every {d.iti:g} s, "
               f"{d.trials_per_run} trials per run")  # fmt: skip
    if (lsl := protocol.recording.lsl) is not None:
        named = ", ".join(f"{k} {v!r}" for k, v in (("name", lsl.name), ("type", lsl.type),
                                                   ("source id", lsl.source_id)) if v)  # fmt: skip
        signal = lsl.signal or ("spike-counts" if protocol.modality == "image" else "volumes")
        channels = ", ".join(lsl.channels or protocol.target.rois)
        click.echo(f"  recording: the LSL stream with {named} ({signal}; channels {channels}): "
                   "`neurotwin rig lsl --protocol FILE` reads it")  # fmt: skip
    runs = protocol.runs()
    click.echo(f"  {len(runs)} runs, {protocol.total_trials} trials, {protocol.scanner_minutes:.1f} min of "
               f"{'scanner' if protocol.modality == 'text' else 'recording'} time")  # fmt: skip
    for phase in protocol.phases:
        rounds = f" x {phase.rounds} rounds" if phase.kind == "closed_loop" else ""
        shown = ", ".join(phase.conditions_for(protocol.target.goal))
        chosen = f"{shown} ({protocol.acquisition(phase)})"
        conds = {"localizer": "sentences / nonword lists", "baseline": "baseline (random from the source)",
                 "closed_loop": chosen, "evaluation": shown}[phase.kind]  # fmt: skip
        click.echo(f"  phase {phase.name!r}: {phase.kind}, {phase.trials} trials{rounds}: {conds}")
    totals = ", ".join(f"{c} {n}" for c, n in protocol.condition_totals().items())
    click.echo(f"  stimuli per condition: {totals}")
    s = protocol.stimuli
    if protocol.modality == "text":
        click.echo(f"  stimuli: {s.source}, {s.candidates} candidates, {s.min_words}-{s.max_words} words, "
                   f"blocklist {s.blocklist or 'none'}, max similarity {s.max_similarity}")  # fmt: skip
    else:
        click.echo(f"  stimuli: natural images ({s.candidates}) and synthesized images ({s.image_size} px, "
                   f"{s.synthesis_steps} twin evaluations each)")  # fmt: skip
        sl = protocol.safety
        click.echo(f"  safety (ITU-R BT.1702): flashes >= {sl.flash_delta:g} cd/m2 over > {sl.max_area:.0%} "
                   f"at most {sl.max_flashes_per_s}/s; no regular pattern or saturated red over > "
                   f"{sl.max_area:.0%}")  # fmt: skip
    if protocol.twin.reference:
        ref, _ = load_reference(protocol, _features(protocol), rois)
        click.echo(f"  twin: starts from {protocol.twin.reference} (targets {', '.join(ref.targets)}; "
                   f"{ref.n_train} training stimuli)")  # fmt: skip
    if protocol.twin.prior:
        prior = load_prior(protocol, _features(protocol), rois)
        click.echo(f"  twin: hyperparameters from {protocol.twin.prior} ({prior.n_train} training stimuli), "
                   "one penalty multiplier chosen at each fit")  # fmt: skip
    st = protocol.stopping
    click.echo(f"  stopping: max trials {st.max_trials or '-'}, max minutes {st.max_minutes or '-'}, "
               f"target effect {st.target_effect or '-'}")  # fmt: skip
    if protocol.candidates_needed:  # the source read and counted: a protocol that cannot run is not valid
        from .modality import candidate_sentences, enough_candidates

        if protocol.modality == "text":
            found = len(candidate_sentences(protocol))
        else:
            enough_candidates(protocol, s.candidates, "natural images")
            found = s.candidates
        click.echo(f"  candidates: {found} for {protocol.candidates_needed} trials that each show a new one")
    click.echo("  valid")
    if dry_run and population:
        if protocol.modality != "text":
            raise click.UsageError("--population: the population's participants respond to sentences")
        from simulation.population import MEMBERS

        found = {name: _dry_runs(protocol, protocol_file, seeds, speed, keep, f"population:{name}")
                 for name in MEMBERS}  # fmt: skip
        click.echo("  the population (drive - suppress in SDs of the baseline sentences' true response, mean over "
                   f"{seeds} dry run(s); drive > baseline > suppress at p < 0.01):")  # fmt: skip
        for name, summaries in found.items():
            true = [s["true"]["contrasts"] for s in summaries if s.get("true", {}).get("contrasts")]
            sep = np.mean([t["drive - suppress"]["sds"] for t in true]) if true else float("nan")
            hits = sum(t["drive - baseline"]["p"] < 0.01 and t["baseline - suppress"]["p"] < 0.01 for t in true)
            click.echo(f"    {name} ({MEMBERS[name].describe()}): {sep:.2f} SDs; {hits} of {len(true)}")
    elif dry_run:
        _dry_runs(protocol, protocol_file, seeds, speed, keep)


def _dry_runs(protocol: Protocol, protocol_file: Path, seeds: int, speed: float | None, keep: Path | None,
              subject: str | None = None) -> list[dict]:  # fmt: skip
    """Run the protocol `seeds` times in simulation (against ``subject``, else the protocol's) and print what each
    run showed and measured; the runs' summaries."""
    import tempfile

    from .dryrun import describe, describe_spread, dry_run_summary
    from .simulate import simulation_peers

    with tempfile.TemporaryDirectory(prefix="neurotwin-dry-run-") as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        summaries = []
        who = f"-{subject.replace(':', '-')}" if subject else ""
        for k in range(seeds):
            p = protocol.model_copy(update={"seed": protocol.seed + k})
            out = folder / f"{protocol_file.stem}-dry-run{who}-seed{p.seed}.h5"
            if out.exists():
                raise ProtocolError(f"dry run: '{out}' already exists; choose another --keep folder")
            peers = simulation_peers(p, subject, speed=speed)
            click.echo(f"  dry run {k + 1}/{seeds} (seed {p.seed}{', ' + subject if subject else ''}, simulated at "
                       f"{peers['speed']:g}x real time):")  # fmt: skip
            start = time.perf_counter()
            with _simulated_runner(p, out, peers, lambda _msg: None) as runner:
                runner.run()
            summary = dry_run_summary(out, p)
            summaries.append(summary)
            click.echo(f"    {summary['trials']} trials in {time.perf_counter() - start:.0f} s"
                       + (f", session file {out}" if keep else ""))  # fmt: skip
            for line in describe(summary, p):
                click.echo(f"    {line}")
        for line in describe_spread(summaries):
            click.echo(f"  {line}")
        failing = sum(len(s["stimuli"]["failing"]) for s in summaries)
        if failing:
            raise ProtocolError(f"dry run: {failing} shown stimuli broke the protocol's constraints or safety limits")
    return summaries


@click.command("report")
@click.argument("session_file", type=click.Path(path_type=Path))
@click.option("--out", type=OutputFolder(), default=None, help="Folder (default: SESSION-report/).")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep the report up to date while the session runs (from another terminal; the page reloads "
    "itself), until no process writes the file (waiting for it first if it does not exist yet).",
)
@click.option("--every", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="With --follow: seconds between looks, and between the page's reloads.")  # fmt: skip
def report_cmd(session_file: Path, out: Path | None, follow: bool, every: float) -> None:
    """Write an HTML report (figures as PNG) and a JSON summary of a session."""
    if not follow:
        from .report import write_report

        click.echo(f"report: {write_report(session_file, out)}")
        return
    _follow_report(session_file, out, every)


def _follow_report(session_file: Path, out: Path | None, every: float) -> None:
    """Write the report again whenever the session file has grown, until its writer has closed it."""
    from acquisition import follow_session

    from .report import session_status, status_line, write_report

    seen, data, writing = None, None, False
    try:
        for data, writing in follow_session(session_file, every, click.echo):
            grown = tuple(len(getattr(data, t)) for t in ("log", "events", "estimates", "samples"))
            if grown != seen or not writing:
                page = write_report(session_file, out, data=data, writing=writing, refresh=every)
                said = status_line(session_status(data, writing))
                click.echo(f"{time.strftime('%H:%M:%S')} report: {page} ({said})")
                seen = grown
    except KeyboardInterrupt:  # the page says when it was written, and no longer reloads itself
        if data is not None:
            write_report(session_file, out, data=data, writing=writing)
        raise
