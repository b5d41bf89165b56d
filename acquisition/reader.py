"""Read a session file into tidy tables, also while it is being written (SWMR) or after a crash."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .session import ROW_ARRAYS, SCHEMAS, TRUTH, SessionError, check_session_file, writer_pid


@dataclass
class SessionData:
    """A session's tables: one DataFrame each, strings decoded, estimates with one column per ROI."""

    attrs: dict
    rois: list[str]
    stimuli: pd.DataFrame
    events: pd.DataFrame
    triggers: pd.DataFrame
    samples: pd.DataFrame
    estimates: pd.DataFrame
    twin: pd.DataFrame
    log: pd.DataFrame
    attachments: dict[str, bytes] = field(default_factory=dict)  # files stored at the start (a reference twin)
    # A simulated session's true, noise-free responses: trial, stimulus_id, run and a column per ROI; None for a
    # session with a real subject (or one recorded before sessions kept them).
    truth: pd.DataFrame | None = None
    # the rig's quality measures per sample (time, run, then one column each: motion, framewise displacement)
    confounds: pd.DataFrame | None = None

    def latest_estimates(self) -> pd.DataFrame:
        """The last revision of each trial's estimate."""
        if self.estimates.empty:
            return self.estimates
        return self.estimates.groupby("trial", sort=True).tail(1).sort_values("trial").reset_index(drop=True)


class _Heap:
    """The /strings byte heap, read again when rows read after it point beyond its end: a live writer
    extends the heap before the rows that use it, so a fresh read holds every string they point to."""

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.data = f["strings"][:]

    def covering(self, end: int) -> np.ndarray:
        """The heap's bytes, at least up to ``end``."""
        if end > len(self.data):
            strings = self.f["strings"]
            strings.refresh()  # SWMR: a dataset's new extent shows only after a refresh
            self.data = strings[:]
        return self.data


def _table(f: h5py.File, name: str, heap: _Heap, n: int | None = None) -> pd.DataFrame:
    data = f[name][: n if n is not None else f[name].shape[0]]
    out = {}
    for col, kind in SCHEMAS[name]:
        if kind == "str":
            offs, lens = data[f"{col}_off"], data[f"{col}_len"]
            strings = heap.covering(int((offs + lens).max()) if len(offs) else 0)
            out[col] = [bytes(strings[o : o + n_]).decode("utf-8") for o, n_ in zip(offs, lens, strict=True)]
        else:
            out[col] = data[col]
    return pd.DataFrame(out)


def read_session(path: str | Path) -> SessionData:
    """Everything flushed so far; safe while a writer is appending."""
    path = Path(path)
    check_session_file(path)
    try:
        return _read(path)
    except KeyError as exc:  # a table or attribute a session file has from its start
        what = exc.args[0] if exc.args else exc
        raise SessionError(f"session file '{path}' is damaged or incomplete: {what}") from None
    except OSError as exc:
        raise SessionError(f"session file '{path}' cannot be read: {exc}") from None


def _read(path: Path) -> SessionData:
    with h5py.File(path, "r", swmr=True) as f:
        heap = _Heap(f)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        for key in ("rois", "seeds", "peers", "software"):
            attrs[key] = json.loads(attrs[key])
        rois = attrs["rois"]
        # A row counts once every dataset it spans is written (values are flushed before the index).
        n_samples = min(f["samples/time"].shape[0], f["samples/values"].shape[0], f["samples/run"].shape[0])
        samples = pd.DataFrame(f["samples/values"][:n_samples], columns=rois)
        samples.insert(0, "run", f["samples/run"][:n_samples])
        samples.insert(0, "time", f["samples/time"][:n_samples])
        confounds = None
        if "samples/confounds" in f:  # the rig's quality measures per sample (motion, framewise displacement)
            n_samples = min(n_samples, f["samples/confounds"].shape[0])
            samples = samples.iloc[:n_samples]
            confounds = pd.DataFrame(f["samples/confounds"][:n_samples], columns=json.loads(attrs["confounds"]))
            confounds.insert(0, "run", samples["run"].to_numpy())
            confounds.insert(0, "time", samples["time"].to_numpy())
        n_est = min(f["estimates"].shape[0], f["estimates_values/beta"].shape[0], f["estimates_values/se"].shape[0])
        est = _table(f, "estimates", heap, n_est)
        est["provisional"] = est["provisional"].astype(bool)
        beta, se = f["estimates_values/beta"][:n_est], f["estimates_values/se"][:n_est]
        for j, roi in enumerate(rois):
            est[roi] = beta[:, j]
            est[f"{roi}_se"] = se[:, j]
        truth = None
        if TRUTH in f:
            values = f[ROW_ARRAYS[TRUTH]["values"]]
            n_truth = min(f[TRUTH].shape[0], values.shape[0])
            truth = _table(f, TRUTH, heap, n_truth)
            for j, roi in enumerate(rois):
                truth[roi] = values[:n_truth, j]
        twin = _table(f, "twin", heap)
        twin["scores"] = [json.loads(s) if s else {} for s in twin["scores"]]
        return SessionData(
            attrs=attrs,
            rois=rois,
            stimuli=_table(f, "stimuli", heap),
            events=_table(f, "events", heap),
            triggers=_table(f, "triggers", heap),
            samples=samples,
            estimates=est,
            twin=twin,
            log=_table(f, "log", heap),
            attachments={name: f["attachments"][name][()].tobytes() for name in f.get("attachments", {})},
            truth=truth,
            confounds=confounds,
        )


def integrity_problems(data: SessionData) -> list[str]:
    """What breaks a session file's invariants: every run logged complete has an event for each of its trials, and
    an estimate for each (or a ``no-estimate`` line), of the same stimulus; no estimate without its event. []
    for a sound file."""
    problems: list[str] = []
    events = data.events.drop_duplicates("trial", keep="last").set_index("trial")
    est = data.latest_estimates().set_index("trial") if len(data.estimates) else None
    unmeasured = set()
    for message in data.log.message[data.log.kind == "no-estimate"]:
        found = message.split(" trial ", 1)[-1].split(":", 1)[0]
        unmeasured |= {int(found)} if found.isdigit() else set()
    for message in data.log.message[data.log.kind == "run-complete"]:
        record = json.loads(message)
        trials = [int(t) for t in record["trials"]]
        if missing := [t for t in trials if t not in events.index]:
            problems.append(f"run {record['run']} is logged complete but trials {missing[:5]} have no events")
            continue
        lacking = [t for t in trials if (est is None or t not in est.index) and t not in unmeasured]
        if lacking:
            problems.append(f"run {record['run']} is logged complete but trials {lacking[:5]} have no estimates")
        if est is not None:
            measured = [t for t in trials if t in est.index]
            wrong = [t for t in measured if est.stimulus_id[t] != events.stimulus_id[t]]
            if wrong:
                problems.append(f"run {record['run']}: the estimates of trials {wrong[:5]} are of other stimuli than "
                                "their events")  # fmt: skip
    if est is not None and (orphans := sorted(set(est.index) - set(events.index))):
        problems.append(f"estimates of trials {orphans[:5]} have no events")
    return problems


STARTING_S = 30.0  # how long a live writer may take to set up a new file before a follower gives up on it


def read_when_ready(path: str | Path, every: float, say: Callable[[str], None]) -> SessionData:
    """:func:`read_session` for a follower started before the session: waits (saying so once) for the file
    to be created and for its writer to set it up; an error of a file no process is setting up stands."""
    path, announced, found = Path(path), False, None
    while True:
        if not path.exists():
            if not announced:
                say(f"waiting for '{path}' to be created")
                announced = True
            time.sleep(every)
            continue
        found = found or time.monotonic()
        try:
            return read_session(path)
        except SessionError:
            if writer_pid(path) is None or time.monotonic() - found > STARTING_S:
                raise
            time.sleep(0.1)  # created but not yet set up: its writer holds it for a moment


def follow_session(path: str | Path, every: float, say: Callable[[str], None]) -> Iterator[tuple[SessionData, bool]]:
    """A follower's looks at a session (after :func:`read_when_ready`), every ``every`` s: what it holds, and
    whether a process was writing it just before that read. The last look is the first with no writer, so
    it holds everything the writer wrote before closing."""
    read_when_ready(path, every, say)
    while True:
        writing = writer_pid(path) is not None  # before the read
        yield read_session(path), writing
        if not writing:
            return
        time.sleep(every)
