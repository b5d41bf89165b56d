"""The command line's shared kit: one-line user errors, and checks of the paths a command will write, made as the
line is read, before any work."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import click

from .formats import HDF5_SIGNATURE, SESSION_FORMAT


class UserError(click.ClickException):
    """A clear message for bad input; exit code 2, no traceback."""

    exit_code = 2


def _kind(mode: int) -> str | None:
    """What a non-regular, non-folder file is ('a character device'...), or None for a regular file or folder."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return None


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (its nearest existing ancestor, for one still to be made), or None."""
    while not folder.exists():
        if folder.parent == folder:
            return None
        folder = folder.parent
    if not folder.is_dir():
        return f"'{folder}' is a file, not a folder"
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        readonly = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        readonly = False
    return f"'{folder}' cannot be written ({'a read-only file system' if readonly else 'permission denied'})"


def free_bytes(path: Path) -> int | None:
    """Bytes free (for this user) on the file system that ``path`` (or its nearest existing folder) is on."""
    folder = path
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_session_file(path: Path) -> bool:
    """Whether ``path`` is a NeuroTwin session file (a regular HDF5 file with its ``format`` attribute)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO is never opened: that would wait for a writer
            return False
        with open(path, "rb") as fh:
            if fh.read(8) != HDF5_SIGNATURE:
                return False
        import h5py

        with h5py.File(path, "r", swmr=True) as f:
            return f.attrs.get("format") == SESSION_FORMAT
    except OSError:
        return False


def output_problem(path: Path, *, folder: bool = False, make_parents: bool = False) -> str | None:
    """Why ``path`` cannot be written as a command's output (a file, or with ``folder`` a folder to write into), or
    None. Nothing is opened or made: a device, a FIFO or a socket is refused as it is, and so is a place that
    cannot be written (a read-only file system). ``make_parents``: missing folders above it will be made."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # (a folder above it that is a file: said below)
        mode = None
    except OSError as exc:
        return f"'{path}': {exc.strerror or exc}"
    if mode is not None and (kind := _kind(mode)):
        what = "folder" if folder else "regular file"
        return f"'{path}' is {kind}, not a {what}: name a {what.split()[-1]}"
    if folder:
        if mode is not None and not stat.S_ISDIR(mode):
            return f"'{path}' is a file, not a folder"
        where = path if mode is not None else path.parent  # (a folder still to be made: its nearest ancestor)
    else:
        where = path.parent
        if not make_parents and not where.is_dir():
            return f"'{path}': its folder '{where}' " + ("is a file" if where.exists() else "does not exist")
    if why := _unwritable(where):
        return f"'{path}': {why}"
    return None


class OutputFile(click.Path):
    """A file to write, checked before any work: a regular file or a new one (never a device, FIFO or socket), in
    a folder that exists and can be written, and not a session file (recorded data is never overwritten by another
    command's output). ``make_parents``: missing folders will be made (checked up to the nearest existing one)."""

    def __init__(self, make_parents: bool = False, session: bool = False, min_free: int = 0) -> None:
        """``session``: a session file to make (the command refuses any existing file itself, saying how to
        continue it); ``min_free``: bytes its file system must have free (what the file needs at the least)."""
        super().__init__(dir_okay=False, path_type=Path)
        self.make_parents, self.session, self.min_free = make_parents, session, min_free

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        if (why := output_problem(path, make_parents=self.make_parents)) is not None:  # before click looks inside
            self.fail(why, param, ctx)
        path = Path(super().convert(value, param, ctx))
        if self.min_free and (free := free_bytes(path)) is not None and free < self.min_free:
            self.fail(f"'{path}': the disk is full ({free / 2**20:.1f} MiB free; this needs at least "
                      f"{self.min_free / 2**20:.1f} MiB)", param, ctx)  # fmt: skip
        if not self.session and is_session_file(path):
            self.fail(f"'{path}' is a session file (recorded data) and is never overwritten: name another file",
                      param, ctx)  # fmt: skip
        return path


class OutputFolder(click.Path):
    """A folder to write into, checked before any work: a folder or a new one that can be made and written."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(super().convert(value, param, ctx))
        if (why := output_problem(path, folder=True)) is not None:
            self.fail(why, param, ctx)
        return path


class FiniteFloat(click.FloatRange):
    """A float in a range that is also a number (not NaN, not infinite)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number
