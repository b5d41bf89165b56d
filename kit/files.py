"""Writing files and folders whole: an output is complete, or (on any failure: a full disk, an interrupt) not there
at all, and what a command made for it is removed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_whole(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: it replaces ``path`` when the block ends
    and is removed when the block fails, so ``path`` is never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, or h5py's errors (which name no file): said of the file being written
        tmp.unlink(missing_ok=True)
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def output_folder(folder: str | Path) -> Iterator[list[Path]]:
    """Make ``folder`` (and missing parents) for a command's files; yields a list to add each file written to (and
    each folder made inside it, before its files). If the block fails, those files are removed, and so are the
    folders made, when empty."""
    folder = Path(folder)
    made = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        made.append(probe)
        probe = probe.parent
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield written
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
