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


@session_group.command("info")
@click.argument("session_file", type=click.Path(path_type=Path))
def info_cmd(session_file: Path) -> None:
    """Counts of everything recorded so far (works while the session runs)."""
    from .reader import read_session

    data = read_session(session_file)
    click.echo(f"{session_file}: modality {data.attrs['modality']}, ROIs {', '.join(data.rois)}")
    click.echo(f"started {data.attrs['start_time_iso']}")
    for name in ("stimuli", "events", "triggers", "samples", "estimates", "twin", "log"):
        click.echo(f"  {name:10s} {len(getattr(data, name))}")


@session_group.command("recover")
@click.argument("session_file", type=click.Path(path_type=Path))
def recover_cmd(session_file: Path) -> None:
    """Clear a crashed writer's flags so any HDF5 tool opens the file (data flushed before the crash is kept)."""
    from .session import recover

    changed = recover(session_file)
    click.echo(f"{session_file}: {'recovered' if changed else 'was closed cleanly; nothing to do'}")
