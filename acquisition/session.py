"""The session file: one append-only HDF5 file per session, written in SWMR mode.

Everything a session receives or decides is appended as it happens: stimuli,
events (scheduled and measured onsets), scanner triggers, samples, per-trial
estimates (each revision a new row), twin snapshots and a log. Appends are
buffered and written at :meth:`SessionFile.flush`, which also runs by itself once
``flush_interval`` seconds have passed; a crash loses nothing flushed. Layout:
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kit.cli import free_bytes
from kit.formats import SESSION_FORMAT, SESSION_FORMAT_VERSION

from .recovery import clear_status_flags

FORMAT = SESSION_FORMAT
FORMAT_VERSION = SESSION_FORMAT_VERSION
# The HDF5 1.10 file format: enough for SWMR, and readable by 1.10-era tools (h5dump, h5ls).
LIBVER = ("v110", "v110")


# Free space a flush leaves untouched on top of twice what it writes: HDF5 allocates whole chunks (up to 64 KiB a
# dataset) and metadata, so a flush that fits needs more than its rows.
FLUSH_RESERVE = 1 << 20


class SessionError(Exception):
    """Bad input to, or a bad, session file; nothing already written is changed."""


class SessionWriteError(SessionError):
    """The session file could not be written (a full disk, an I/O error): the writer stopped before writing
    anything of the flush that failed, so the file holds what earlier flushes wrote, whole."""


# Table schemas: 'str' columns are stored as offsets into the /strings byte heap.
TABLES: dict[str, list[tuple[str, str]]] = {
    "stimuli": [("stimulus_id", "i8"), ("time", "f8"), ("text", "str"), ("image", "str"),
                ("condition", "str"), ("source", "str")],
    "events": [("stimulus_id", "i8"), ("run", "i4"), ("trial", "i8"), ("scheduled_onset", "f8"),
               ("measured_onset", "f8"), ("duration", "f8"), ("condition", "str")],
    "triggers": [("time", "f8"), ("volume", "i8"), ("run", "i4")],
    "estimates": [("trial", "i8"), ("stimulus_id", "i8"), ("run", "i4"), ("time", "f8"), ("provisional", "u1")],
    "twin": [("time", "f8"), ("version", "i8"), ("n_train", "i8"), ("scores", "str")],
    "log": [("time", "f8"), ("kind", "str"), ("message", "str")],
}  # fmt: skip
# A simulated session's group: each trial's true, noise-free response (what the simulated subject computed).
SIMULATED = "simulated"
TRUTH = f"{SIMULATED}/truth"
TRUTH_SCHEMA: list[tuple[str, str]] = [("trial", "i8"), ("stimulus_id", "i8"), ("run", "i4")]
SCHEMAS = {**TABLES, TRUTH: TRUTH_SCHEMA}
# The arrays each table's rows carry, by key: written before the rows that index them.
ROW_ARRAYS = {"estimates": {"beta": "estimates_values/beta", "se": "estimates_values/se"},
              TRUTH: {"values": f"{SIMULATED}/truth_values"}}  # fmt: skip


def _dtype(schema: list[tuple[str, str]]) -> np.dtype:
    fields = []
    for name, kind in schema:
        if kind == "str":
            fields += [(f"{name}_off", "i8"), (f"{name}_len", "i8")]
        else:
            fields.append((name, kind))
    return np.dtype(fields)


@dataclass
class _Pending:
    rows: list[tuple]
    arrays: dict[str, list[np.ndarray]]


class SessionFile:
    """Writer of a session file. Use :meth:`create` for a new session and :meth:`resume` to go on."""

    def __init__(self, f: h5py.File, path: Path, flush_interval: float, lock: _WriterLock) -> None:
        self._f = f
        self._lock = lock
        self.path = path
        self.flush_interval = flush_interval
        self.rois: list[str] = json.loads(f.attrs["rois"])
        # the rig's quality measures per sample (motion, framewise displacement), if it sends any
        self.confounds: list[str] = json.loads(f.attrs.get("confounds", "[]"))
        self._heap_pending: list[bytes] = []
        self._heap_pending_size = 0
        self.simulated = SIMULATED in f  # a simulated session: it also keeps each trial's true response
        tables = [*TABLES, "samples", *([TRUTH] if self.simulated else [])]
        self._pending: dict[str, _Pending] = {name: _Pending([], {}) for name in tables}
        self._last_flush = time.monotonic()
        self._held = 0  # > 0: inside together(): no flush by time
        self.failed: SessionWriteError | None = None  # once a write failed, nothing more is written
        names = ["strings", *TABLES, "samples/time", "samples/run", "samples/values",
                 *ROW_ARRAYS["estimates"].values(), *(["samples/confounds"] if self.confounds else [])]  # fmt: skip
        if self.simulated:
            names += [TRUTH, *ROW_ARRAYS[TRUTH].values()]
        self._out = {name: _Appender(f[name]) for name in names}
        # Validation state, read back so a resumed session checks against what is on disk.
        self._stimuli = set(f["stimuli"]["stimulus_id"][:].tolist()) if f["stimuli"].shape[0] else set()
        n = f["samples/time"].shape[0]
        self._last_sample_time = float(f["samples/time"][n - 1]) if n else -np.inf

    # ----- opening -----
    @classmethod
    def create(
        cls,
        path: str | Path,
        rois: Sequence[str],
        *,
        protocol: str = "",
        modality: str = "fmri",
        seeds: dict | None = None,
        peers: dict | None = None,
        software: dict | None = None,
        flush_interval: float = 1.0,
        attachments: dict[str, bytes] | None = None,
        simulated: bool = False,
        confounds: Sequence[str] = (),
    ) -> SessionFile:
        """Start a new session file (refuses to overwrite one); ``attachments``: files to keep in it
        (e.g. the reference twin a session starts from), written once, here; ``simulated``: a session with a
        simulated subject, whose true responses the file keeps too (:meth:`add_truth`); ``confounds``: the names of
        the quality measures the rig sends with each sample (motion parameters, framewise displacement)."""
        path = Path(path)
        if path.exists():
            raise SessionError(f"session file '{path}' already exists; resume it or choose another name")
        if not rois:
            raise SessionError("a session needs at least one ROI or recording site")
        path.parent.mkdir(parents=True, exist_ok=True)
        require_room(path, FLUSH_RESERVE + sum(len(c) for c in (attachments or {}).values()))
        lock = _WriterLock(path)
        f = None
        try:
            f = h5py.File(path, "w", libver=LIBVER)
            R = len(rois)
            f.attrs.update(
                format=FORMAT,
                format_version=FORMAT_VERSION,
                modality=modality,
                rois=json.dumps(list(rois)),
                protocol=protocol,
                seeds=json.dumps(seeds or {}),
                peers=json.dumps(peers or {}),
                software=json.dumps(software or _software_versions()),
                start_time=time.time(),
                start_time_iso=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            if confounds:
                f.attrs["confounds"] = json.dumps(list(confounds))
            f.create_dataset("strings", (0,), np.uint8, maxshape=(None,), chunks=(65536,))
            for name, schema in TABLES.items():
                f.create_dataset(name, (0,), _dtype(schema), maxshape=(None,), chunks=(1024,))
            f.create_dataset("samples/time", (0,), "f8", maxshape=(None,), chunks=(4096,))
            f.create_dataset("samples/run", (0,), "i4", maxshape=(None,), chunks=(4096,))
            f.create_dataset("samples/values", (0, R), "f4", maxshape=(None, R), chunks=(4096, R))
            if confounds:
                C = len(confounds)
                f.create_dataset("samples/confounds", (0, C), "f4", maxshape=(None, C), chunks=(4096, C))
            for key in ("beta", "se"):
                f.create_dataset(f"estimates_values/{key}", (0, R), "f8", maxshape=(None, R), chunks=(1024, R))
            if simulated:
                group = f.create_group(SIMULATED)
                group.attrs["description"] = "a simulated subject's true, noise-free response to each trial"
                f.create_dataset(TRUTH, (0,), _dtype(TRUTH_SCHEMA), maxshape=(None,), chunks=(1024,))
                f.create_dataset(ROW_ARRAYS[TRUTH]["values"], (0, R), "f8", maxshape=(None, R), chunks=(1024, R))
            for name, content in (attachments or {}).items():
                f.create_dataset(f"attachments/{name}", data=np.frombuffer(content, np.uint8))
            f.swmr_mode = True
            f.flush()
        except (OSError, RuntimeError) as exc:  # a full disk, an I/O error: no half-made file is left
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
            path.unlink(missing_ok=True)
            lock.release()
            raise SessionWriteError(
                f"session file '{path}' could not be created: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        return cls(f, path, flush_interval, lock)

    @classmethod
    def resume(cls, path: str | Path, flush_interval: float = 1.0) -> SessionFile:
        """Reopen a session for appending, recovering it first if its writer crashed."""
        path = Path(path)
        check_session_file(path)
        lock = _WriterLock(path)  # no other writer is alive past this point
        clear_status_flags(path)  # a dead writer's flags, if any
        try:
            f = h5py.File(path, "r+", libver=LIBVER)
            f.swmr_mode = True
        except OSError as exc:
            lock.release()
            raise SessionError(f"cannot reopen session file '{path}' for writing: {exc}") from None
        session = cls(f, path, flush_interval, lock)
        session.log("resume", "session reopened for appending")
        return session

    # ----- appending -----
    def _string(self, text: str | None) -> tuple[int, int]:
        data = (text or "").encode("utf-8")
        off = self._out["strings"].n + self._heap_pending_size
        self._heap_pending.append(data)
        self._heap_pending_size += len(data)
        return off, len(data)

    def _row(self, table: str, **values: Any) -> None:
        row: list = []
        for name, kind in SCHEMAS[table]:
            if kind == "str":
                row.extend(self._string(values.get(name)))
            else:
                row.append(values[name])
        self._pending[table].rows.append(tuple(row))
        self._maybe_flush()

    def add_stimulus(
        self,
        stimulus_id: int,
        *,
        text: str | None = None,
        image: str | None = None,
        condition: str = "",
        source: str = "",
    ) -> None:
        """Record a stimulus (a sentence's text, or an image file reference)."""
        if stimulus_id in self._stimuli:
            raise SessionError(f"stimulus {stimulus_id} is already recorded")
        if text is None and image is None:
            raise SessionError(f"stimulus {stimulus_id} has neither text nor an image reference")
        self._stimuli.add(int(stimulus_id))
        self._row("stimuli", stimulus_id=stimulus_id, time=time.time(), text=text, image=image,
                  condition=condition, source=source)  # fmt: skip

    @property
    def last_sample_time(self) -> float:
        """Time of the last sample appended (-inf before the first)."""
        return self._last_sample_time

    def has_stimulus(self, stimulus_id: int) -> bool:
        """Whether a stimulus with this id is recorded."""
        return int(stimulus_id) in self._stimuli

    def _known(self, stimulus_id: int, what: str) -> None:
        if stimulus_id not in self._stimuli:
            raise SessionError(f"{what} refers to unknown stimulus {stimulus_id}; record the stimulus first")

    def add_event(
        self,
        stimulus_id: int,
        *,
        run: int,
        trial: int,
        scheduled_onset: float,
        measured_onset: float = np.nan,
        duration: float,
        condition: str = "",
    ) -> None:
        """Record a presentation: scheduled and measured onset (controller clock, s) and duration."""
        self._known(stimulus_id, "event")
        if not duration > 0:
            raise SessionError(f"event for stimulus {stimulus_id}: duration must be positive, got {duration}")
        self._row("events", stimulus_id=stimulus_id, run=run, trial=trial, scheduled_onset=scheduled_onset,
                  measured_onset=measured_onset, duration=duration, condition=condition)  # fmt: skip

    def add_trigger(self, t: float, volume: int, run: int) -> None:
        """Record a scanner trigger (start of a volume)."""
        self._row("triggers", time=t, volume=volume, run=run)

    def add_samples(self, times: Sequence[float] | float, values: np.ndarray, run: int,
                    confounds: np.ndarray | None = None) -> None:  # fmt: skip
        """Append samples: times (k,) increasing, values (k, n_rois) (one sample may be (n_rois,)); ``confounds``
        (k, n_confounds), in a session that records them (NaN where a sample carries none)."""
        times = np.atleast_1d(np.asarray(times, np.float64))
        values = np.asarray(values, np.float64)
        if values.ndim == 1:
            values = values[None, :]
        R = len(self.rois)
        if values.shape != (len(times), R):
            raise SessionError(
                f"samples: expected values of shape ({len(times)}, {R}) for {len(times)} time(s) and ROIs "
                f"{self.rois}, got {values.shape}"
            )
        if not np.isfinite(times).all():
            raise SessionError("samples: timestamps must be finite")
        last = self._last_sample_time
        if times[0] <= last or (np.diff(times) <= 0).any():
            bad = times[0] if times[0] <= last else times[1:][np.diff(times) <= 0][0]
            raise SessionError(f"samples: timestamp {bad:.6f} is not after the previous sample ({last:.6f})")
        self._last_sample_time = float(times[-1])
        pending = self._pending["samples"]
        pending.arrays.setdefault("time", []).append(times)
        pending.arrays.setdefault("run", []).append(np.full(len(times), run, np.int32))
        pending.arrays.setdefault("values", []).append(values.astype(np.float32))
        if self.confounds:
            C = len(self.confounds)
            extra = np.full((len(times), C), np.nan, np.float32)
            if confounds is not None and np.size(confounds):
                given = np.asarray(confounds, np.float32).reshape(len(times), -1)
                if given.shape[1] != C:
                    raise SessionError(f"samples: {given.shape[1]} confound(s) per sample; this session records {C} "
                                       f"({self.confounds})")  # fmt: skip
                extra = given
            pending.arrays.setdefault("confounds", []).append(extra)
        self._maybe_flush()

    def add_estimate(
        self,
        trial: int,
        stimulus_id: int,
        beta: np.ndarray,
        se: np.ndarray,
        *,
        run: int,
        provisional: bool,
    ) -> None:
        """Append an estimate (revision) of one trial's response per ROI with its standard error."""
        self._known(stimulus_id, "estimate")
        R = len(self.rois)
        beta = np.asarray(beta, np.float64).reshape(-1)
        se = np.asarray(se, np.float64).reshape(-1)
        if beta.shape != (R,) or se.shape != (R,):
            raise SessionError(f"estimate: beta and se must have {R} value(s), got {beta.shape} and {se.shape}")
        pending = self._pending["estimates"]
        pending.arrays.setdefault("beta", []).append(beta[None])
        pending.arrays.setdefault("se", []).append(se[None])
        self._row("estimates", trial=trial, stimulus_id=stimulus_id, run=run, time=time.time(),
                  provisional=int(provisional))  # fmt: skip

    def add_truth(self, trial: int, stimulus_id: int, values: np.ndarray, *, run: int) -> None:
        """Record a simulated subject's true, noise-free response to a trial, per ROI (simulated sessions only)."""
        if not self.simulated:
            raise SessionError("true responses belong to simulated sessions: this file was not created as one")
        self._known(stimulus_id, "true response")
        values = np.asarray(values, np.float64).reshape(-1)
        if values.shape != (len(self.rois),):
            raise SessionError(f"true response: expected {len(self.rois)} value(s), got {values.shape}")
        self._pending[TRUTH].arrays.setdefault("values", []).append(values[None])
        self._row(TRUTH, trial=trial, stimulus_id=stimulus_id, run=run)

    def add_twin_snapshot(self, version: int, n_train: int, scores: dict) -> None:
        """Record a twin update: its version, training-set size and scores."""
        self._row("twin", time=time.time(), version=version, n_train=n_train, scores=json.dumps(scores))

    def log(self, kind: str, message: str) -> None:
        """Record a session event (peer connected, outage, error, pause...)."""
        self._row("log", time=time.time(), kind=kind, message=message)

    # ----- writing -----
    def _maybe_flush(self) -> None:
        if not self._held and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Rows appended inside the block are written by one flush at its end (a run's events, estimates and
        completion): all of them, or none if the block raises or the disk has no room for them. (An I/O error
        in the middle of that write, after the room check, can leave its first tables written.)"""
        if self._held:
            yield
            return
        self.flush()  # what came before is not the block's to lose
        stimuli, last_sample = set(self._stimuli), self._last_sample_time
        self._held = 1
        try:
            yield
        except BaseException:
            for pending in self._pending.values():
                pending.rows.clear()
                pending.arrays.clear()
            self._heap_pending.clear()
            self._heap_pending_size = 0
            self._stimuli, self._last_sample_time = stimuli, last_sample
            raise
        finally:
            self._held = 0
        self.flush()

    def _pending_bytes(self) -> int:
        size = self._heap_pending_size
        for name, pending in self._pending.items():
            size += sum(a.nbytes for arrays in pending.arrays.values() for a in arrays)
            if pending.rows:
                size += len(pending.rows) * self._out[name].dtype.itemsize
        return size

    def _room(self) -> None:
        """Refuse to start a flush that the disk has no room for (a write that fails half-way is worse)."""
        require_room(self.path, 2 * self._pending_bytes() + FLUSH_RESERVE)

    def flush(self) -> None:
        """Write everything buffered and make it durable and visible to SWMR readers. A flush the disk has no
        room for raises :class:`SessionWriteError` having written none of its rows; one that fails part-way (an
        I/O error) raises it having written whole rows of some tables at most (a dataset's rows are written whole
        or not at all). After either, the writer writes nothing more (close it; ``session resume`` continues)."""
        if self.failed is not None:
            raise self.failed
        try:
            self._room()
            self._write()
        except (OSError, RuntimeError, SessionWriteError) as exc:
            if not isinstance(exc, SessionWriteError):
                why = getattr(exc, "strerror", None) or str(exc)
                exc = SessionWriteError(f"session file '{self.path}' could not be written: {why}")
            self.failed = exc
            raise exc from None

    def _write(self) -> None:
        f = self._f
        out = self._out
        if self._heap_pending:
            blob = np.frombuffer(b"".join(self._heap_pending), np.uint8)
            out["strings"].append(blob)
            self._heap_pending.clear()
            self._heap_pending_size = 0
        for name, pending in self._pending.items():
            if name == "samples":
                if pending.arrays:
                    # Values first: the time column's length is what counts a sample as written.
                    for key in ("confounds", "values", "run", "time")[0 if self.confounds else 1 :]:
                        out[f"samples/{key}"].append(np.concatenate(pending.arrays[key]))
            else:
                if pending.arrays:
                    for key, dataset in ROW_ARRAYS[name].items():
                        out[dataset].append(np.concatenate(pending.arrays[key]))
                if pending.rows:
                    out[name].append(np.array(pending.rows, dtype=out[name].dtype))
            pending.rows.clear()
            pending.arrays.clear()
        f.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close; after a failed write, close without writing (the file keeps what was flushed)."""
        try:
            if self._f.id.valid:
                if self.failed is None:
                    self.flush()
                with contextlib.suppress(Exception) if self.failed is not None else contextlib.nullcontext():
                    self._f.close()
        finally:
            self._lock.release()

    def discard(self) -> None:
        """Remove a closed session file that holds nothing worth keeping (a session that failed before its first
        trial), and its lock file."""
        if self._f.id.valid:
            raise SessionError(f"session file '{self.path}' is open: close it first")
        self.path.unlink(missing_ok=True)
        self._lock.path.unlink(missing_ok=True)

    def __enter__(self) -> SessionFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Appender:
    """Appends rows to one resizable dataset through h5py's low-level API (no per-call lookups)."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.id = dataset.id
        self.dtype = dataset.dtype
        self.n = dataset.shape[0]
        self.tail = dataset.shape[1:]

    def append(self, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=self.dtype)
        m = data.shape[0]
        if m == 0:
            return
        self.id.set_extent((self.n + m, *self.tail))
        try:
            fspace = self.id.get_space()
            fspace.select_hyperslab((self.n, *(0 for _ in self.tail)), data.shape)
            self.id.write(h5py.h5s.create_simple(data.shape), fspace, data)
        except BaseException:
            with contextlib.suppress(Exception):  # rows that were not written are not rows (never zeros in the file)
                self.id.set_extent((self.n, *self.tail))
            raise
        self.n += m


def require_room(path: Path, need: int) -> None:
    """Raise SessionWriteError unless the file system of ``path`` has ``need`` bytes free (for its user)."""
    if (free := free_bytes(path)) is not None and free < need:
        raise SessionWriteError(f"session file '{path}': the disk is full ({_size(free)} free, a write of this "
                                f"session needs {_size(need)})")  # fmt: skip


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("neurotwin", "numpy", "h5py", "torch", "transformers", "pyzmq"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    out["hdf5"] = h5py.version.hdf5_version
    return out


def check_session_file(path: Path) -> None:
    """Raise a clear SessionError unless ``path`` is a NeuroTwin session file."""
    if not path.exists():
        raise SessionError(f"session file '{path}' does not exist")
    if path.is_dir():
        raise SessionError(f"session file '{path}' is a folder; name a session's .h5 file")
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            raise SessionError(f"'{path}' is not an HDF5 file, so not a NeuroTwin session")
    try:
        with h5py.File(path, "r", swmr=True) as f:
            if (found := f.attrs.get("format")) != FORMAT:
                what = f" (its format is '{found}')" if isinstance(found, str) else ""
                raise SessionError(f"'{path}' is an HDF5 file but not a NeuroTwin session{what}")
            if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise SessionError(
                    f"session file '{path}' has format version {f.attrs.get('format_version')}; "
                    f"this neurotwin reads version {FORMAT_VERSION}"
                )
    except OSError as exc:
        raise SessionError(f"session file '{path}' cannot be read: {exc}") from None


def recover(path: str | Path) -> bool:
    """Make a crashed session openable by any HDF5 tool; True if it needed it. Refuses a live writer's file."""
    path = Path(path)
    check_session_file(path)
    lock = _WriterLock(path)
    try:
        return clear_status_flags(path)
    finally:
        lock.release()


def writer_pid(path: str | Path) -> int | None:
    """The pid of the process writing this session now, or None. Reads the writer's lock file without
    locking it (so it can never stand in a starting writer's way)."""
    try:
        pid = int(Path(path).with_name(Path(path).name + ".lock").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a dead writer's lock file
    except PermissionError:
        pass  # alive, another user's
    return pid


class _WriterLock:
    """An exclusive lock on ``<session>.lock`` held while a process writes the session.

    HDF5 releases its own file lock in SWMR mode, so this is what tells a live
    writer from a dead one; the kernel drops it when the writer dies, even by SIGKILL.
    A clean release removes the lock file; a dead writer's is reused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        while True:
            self._fh = open(self.path, "a+")
            try:
                fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._fh.seek(0)
                holder = self._fh.read().strip() or "unknown"
                self._fh.close()
                raise SessionError(
                    f"session file '{path}' is open for writing by another process (pid {holder})"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._fh.close()  # locked a file that its releasing writer had just removed: lock the new one
        try:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(str(os.getpid()))
            self._fh.flush()
        except OSError as exc:  # a full disk
            self.release()
            raise SessionWriteError(
                f"'{self.path}' (the session's lock file) could not be written: {exc.strerror or exc}"
            ) from None

    def release(self) -> None:
        if not self._fh.closed:
            self.path.unlink(missing_ok=True)  # while still locked, so no one else holds the removed file
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
