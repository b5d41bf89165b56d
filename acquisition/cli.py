"""``neurotwin session ...``: inspect and export session files."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli import OutputFolder


@click.group(name="session")
def session_group() -> None:
    """Inspect, export (and, with the control loop, resume) session files."""


@session_group.command("export")
@click.argument("session_file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=OutputFolder(),
              help="Folder to write into.")  # fmt: skip
@click.option("--bids", is_flag=True,
              help="A BIDS dataset: events per run; the time series and trial estimates as derivatives.")  # fmt: skip
@click.option("--subject", default="01", show_default=True, help="With --bids: the participant's label.")
@click.option("--session", "session_label", default="01", show_default=True, help="With --bids: the session's label.")
def export_cmd(session_file: Path, out: Path, bids: bool, subject: str, session_label: str) -> None:
    """BIDS-style events.tsv (+ JSON sidecar) per run and a CSV of the latest estimates; with --bids, a BIDS
    dataset."""
    if bids:
        from .bids import export_bids

        try:
            paths = export_bids(session_file, out, subject=subject, session=session_label)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--subject/--session") from None
        click.echo(f"wrote a BIDS dataset of {len(paths)} files in {out}")
        return
    from .export import export_session

    for path in export_session(session_file, out):
        click.echo(f"wrote {path}")


SESSION_TABLES = ("stimuli", "events", "triggers", "samples", "estimates", "twin", "log")


@session_group.command("info")
@click.argument("session_file", type=click.Path(path_type=Path))
@click.option(
    "--follow",
    is_flag=True,
    help="Keep watching (from another terminal): the log so far, then new counts and log lines as they are "
    "written, until the writer closes the file (waiting for it first if it does not exist yet).",
)
@click.option("--every", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds between looks.")
def info_cmd(session_file: Path, follow: bool, every: float) -> None:
    """Counts of everything recorded so far (works while the session runs)."""
    import itertools
    import time

    from .reader import follow_session, read_session
    from .session import writer_pid

    looks = follow_session(session_file, every, click.echo) if follow else None
    first = next(looks) if looks else (read_session(session_file), False)
    data = first[0]
    click.echo(f"{session_file}: modality {data.attrs['modality']}, ROIs {', '.join(data.rois)}")
    pid = writer_pid(session_file)
    click.echo(f"started {data.attrs['start_time_iso']}; "
               + (f"being written by process {pid}" if pid else "no process is writing it"))  # fmt: skip
    for name in SESSION_TABLES:
        click.echo(f"  {name:10s} {len(getattr(data, name))}")
    from .reader import integrity_problems

    for problem in integrity_problems(data):
        click.echo(f"  damaged: {problem}")
    if not looks:
        return
    counted = SESSION_TABLES[:-1]  # the log is shown line by line instead: what it holds so far, then each new line
    counts, logged = [len(getattr(data, name)) for name in counted], 0
    for data, _ in itertools.chain([first], looks):  # the header's look first: the log so far
        now = [len(getattr(data, name)) for name in counted]
        if now != counts:
            click.echo(
                time.strftime("%H:%M:%S ") + ", ".join(f"{n} {name}" for name, n in zip(counted, now, strict=True))
            )
            counts = now
        for row in data.log.iloc[logged:].itertuples():
            click.echo(f"  {_log_line(row.kind, row.message)}")
        logged = len(data.log)
    click.echo("no process is writing the file: done")


def _log_line(kind: str, message: str) -> str:
    """A session log record as a line for the terminal (a completed run's JSON record in short)."""
    import json

    if kind not in ("run-start", "run-complete"):
        return f"{kind}: {message}"
    r = json.loads(message)
    trials = r["trials"] if kind == "run-start" else len(r["trials"])  # a count, or the trials completed
    what = "started" if kind == "run-start" else "complete"
    return f"run {r['index'] + 1} {what}: {r['phase']} ({r['kind']}), {trials} trials"


@session_group.command("recover")
@click.argument("session_file", type=click.Path(path_type=Path))
def recover_cmd(session_file: Path) -> None:
    """Clear a crashed writer's flags so any HDF5 tool opens the file (data flushed before the crash is kept)."""
    from .session import recover

    changed = recover(session_file)
    click.echo(f"{session_file}: {'recovered' if changed else 'was closed cleanly; nothing to do'}")
