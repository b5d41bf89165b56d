"""``neurotwin session ...``: inspect and export session files."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="session")
def session_group() -> None:
    """Inspect, export (and, with the control loop, resume) session files."""


@session_group.command("export")
@click.argument("session_file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to write into.")
def export_cmd(session_file: Path, out: Path) -> None:
    """BIDS-style events.tsv (+ JSON sidecar) per run and a CSV of the latest estimates."""
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
    import time

    from .reader import read_session, read_when_ready
    from .session import writer_pid

    data = read_when_ready(session_file, every, click.echo) if follow else read_session(session_file)
    click.echo(f"{session_file}: modality {data.attrs['modality']}, ROIs {', '.join(data.rois)}")
    pid = writer_pid(session_file)
    click.echo(f"started {data.attrs['start_time_iso']}; "
               + (f"being written by process {pid}" if pid else "no process is writing it"))  # fmt: skip
    for name in SESSION_TABLES:
        click.echo(f"  {name:10s} {len(getattr(data, name))}")
    if not follow:
        return
    counted = SESSION_TABLES[:-1]  # the log is shown line by line instead: what it holds so far, then each new line
    counts, logged = [len(getattr(data, name)) for name in counted], 0
    while True:
        writer = writer_pid(session_file)  # before reading: what it wrote before closing is then in this read
        data = read_session(session_file)
        now = [len(getattr(data, name)) for name in counted]
        if now != counts:
            click.echo(
                time.strftime("%H:%M:%S ") + ", ".join(f"{n} {name}" for name, n in zip(counted, now, strict=True))
            )
            counts = now
        for row in data.log.iloc[logged:].itertuples():
            click.echo(f"  {_log_line(row.kind, row.message)}")
        logged = len(data.log)
        if writer is None:
            click.echo("no process is writing the file: done")
            return
        time.sleep(every)


def _log_line(kind: str, message: str) -> str:
    """A session log record as a line for the terminal (a completed run's JSON record in short)."""
    import json

    if kind == "run-complete":
        record = json.loads(message)
        return (
            f"run {record['index'] + 1} complete: {record['phase']} ({record['kind']}), {len(record['trials'])} trials"
        )
    if kind == "run-start":
        record = json.loads(message)
        return f"run {record['index'] + 1} started: {record['phase']} ({record['kind']}), {record['trials']} trials"
    return f"{kind}: {message}"


@session_group.command("recover")
@click.argument("session_file", type=click.Path(path_type=Path))
def recover_cmd(session_file: Path) -> None:
    """Clear a crashed writer's flags so any HDF5 tool opens the file (data flushed before the crash is kept)."""
    from .session import recover

    changed = recover(session_file)
    click.echo(f"{session_file}: {'recovered' if changed else 'was closed cleanly; nothing to do'}")
