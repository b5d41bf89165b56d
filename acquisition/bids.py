"""A session as a BIDS dataset: each run's events (raw), and the recording's time series and the trial estimates
as the derivatives of NeuroTwin, so BIDS tools (pybids, nilearn, fMRIPrep's neighbours) read a session as they read
a scan.

Layout (``sub``/``ses`` labels as given; ``task`` from the protocol's name)::

    DIR/dataset_description.json, README, participants.tsv
    DIR/sub-01/ses-01/func/sub-01_ses-01_task-T_run-1_events.tsv (+ .json)
    DIR/derivatives/neurotwin/dataset_description.json
    DIR/derivatives/neurotwin/sub-01/ses-01/func/sub-01_ses-01_task-T_run-1_timeseries.tsv (+ .json)
    DIR/derivatives/neurotwin/sub-01/ses-01/func/sub-01_ses-01_task-T_run-1_desc-confounds_timeseries.tsv (+ .json),
        when the rig sent motion parameters and framewise displacement (as fMRIPrep names them)
    DIR/derivatives/neurotwin/sub-01/ses-01/func/sub-01_ses-01_task-T_estimates.tsv (+ .json)

Onsets and sample times count from each run's first volume (its first trigger; for a recording without
triggers, its first sample). Electrophysiology sessions use the ``ephys`` folder in place of ``func``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kit.files import output_folder, replaced_whole

from .export import events_table
from .reader import SessionData, integrity_problems, read_session
from .session import SessionError

BIDS_VERSION = "1.9.0"
LABEL = re.compile(r"^[A-Za-z0-9]+$")

EVENTS_SIDECAR = {
    "onset": {"Description": "Measured onset, seconds from the run's first volume", "Units": "s"},
    "duration": {"Description": "How long the stimulus was shown", "Units": "s"},
    "trial_type": {"Description": "The trial's condition (drive, suppress, baseline; or a localizer's)"},
    "trial": {"Description": "Trial number within the session (unique)"},
    "stimulus_id": {"Description": "Stimulus id in the session file's stimuli table"},
    "scheduled_onset": {"Description": "When the onset was due, seconds from the run's first volume", "Units": "s"},
    "stim_text": {"Description": "The sentence shown, when the stimulus is text"},
    "stim_file": {"Description": "The image shown (beside the session file), when the stimulus is an image"},
}


_AXES = {"x": "x (left to right)", "y": "y (posterior to anterior)", "z": "z (inferior to superior)"}
CONFOUNDS_SIDECAR = {
    **{f"trans_{a}": {"Description": f"Translation along {d} to the reference volume", "Units": "mm"}
       for a, d in _AXES.items()},
    **{f"rot_{a}": {"Description": f"Rotation about {d} to the reference volume", "Units": "rad"}
       for a, d in _AXES.items()},
    "framewise_displacement": {"Description": "Framewise displacement from the volume before (Power et al. 2012: "
                                              "rotations as arcs on a 50-mm sphere)", "Units": "mm"},
}  # fmt: skip


def label(text: str) -> str:
    """A BIDS label from free text: its letters and digits (``closed-loop language`` -> ``closedlooplanguage``)."""
    out = re.sub(r"[^A-Za-z0-9]", "", text)
    return out or "neurotwin"


def _run_origin(data: SessionData, run: int) -> float:
    """The run's first volume on the session's clock: its first trigger, else its first sample."""
    for table in (data.triggers, data.samples):
        times = table.loc[table["run"] == run, "time"]
        if len(times):
            return float(times.min())
    raise SessionError(f"run {run} has no recorded volume, so its onsets have no origin")


def _write_json(path: Path, content: dict) -> None:
    with replaced_whole(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    with replaced_whole(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def export_bids(path: str | Path, out_dir: str | Path, subject: str = "01", session: str = "01") -> list[Path]:
    """Write the session file ``path`` as a BIDS dataset in ``out_dir`` (a new or empty folder); returns the files
    written. Raises SessionError for a damaged file, ValueError for a subject or session label that is not
    letters and digits."""
    for name, value in (("subject", subject), ("session", session)):
        if not LABEL.match(value):
            raise ValueError(f"a BIDS {name} label is letters and digits only, not {value!r}")
    data = read_session(path)
    if problems := integrity_problems(data):
        raise SessionError(f"session file '{path}' is damaged, so it is not exported: {'; '.join(problems)}")
    protocol = json.loads(data.attrs.get("protocol") or "{}")
    task = label(protocol.get("name", "neurotwin"))
    tr = float(protocol.get("design", {}).get("tr", 0.0)) or None
    datatype = "func" if data.attrs.get("modality", "fmri") == "fmri" else "ephys"
    stem = f"sub-{subject}_ses-{session}_task-{task}"
    out = Path(out_dir)
    with output_folder(out) as written:  # a failed export (a full disk) leaves none of its files

        def put(relative: str, content: dict | pd.DataFrame | str) -> None:
            target = out / relative
            for folder in reversed(target.relative_to(out).parents[:-1]):  # (those made: removed if it fails)
                if not (out / folder).exists():
                    (out / folder).mkdir()
                    written.append(out / folder)
            if isinstance(content, str):
                with replaced_whole(target) as tmp:
                    tmp.write_text(content)
            else:
                (_write_json if isinstance(content, dict) else _write_tsv)(target, content)
            written.append(target)

        name = protocol.get("name", "NeuroTwin session")
        made_by = [{"Name": "NeuroTwin", "Description": "session export"}]
        put("dataset_description.json", {"Name": f"{name} (NeuroTwin session)", "BIDSVersion": BIDS_VERSION,
                                         "DatasetType": "raw", "GeneratedBy": made_by})  # fmt: skip
        put("participants.tsv", pd.DataFrame({"participant_id": [f"sub-{subject}"]}))
        put("README", f"{name}: a NeuroTwin closed-loop session ({Path(path).name}), exported as BIDS.\n")
        deriv = "derivatives/neurotwin"
        put(f"{deriv}/dataset_description.json", {
            "Name": f"{name}: recorded time series and trial estimates", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "NeuroTwin"}]})  # fmt: skip
        folder = f"sub-{subject}/ses-{session}/{datatype}"
        stimuli = data.stimuli.set_index("stimulus_id")
        for run, ev in data.events.groupby("run", sort=True):
            run = int(run)
            t0 = _run_origin(data, run)
            events = events_table(ev, stimuli, t0)
            put(f"{folder}/{stem}_run-{run}_events.tsv", events)
            put(f"{folder}/{stem}_run-{run}_events.json", {**EVENTS_SIDECAR, "TaskName": task})
            samples = data.samples[data.samples["run"] == run]
            if len(samples):
                times = samples["time"].to_numpy() - t0
                series = samples[data.rois].reset_index(drop=True)
                put(f"{deriv}/{folder}/{stem}_run-{run}_timeseries.tsv", series)
                sidecar = {"Columns": list(data.rois), "StartTime": round(float(times[0]), 6),
                           "SampleTimes": np.round(times, 6).tolist(),
                           "Description": "The recording's value per ROI (or spike count per site and window) at each "
                                          "sample, in order; SampleTimes in s from the run's first volume"}  # fmt: skip
                if tr:
                    sidecar["SamplingFrequency"] = 1.0 / tr
                put(f"{deriv}/{folder}/{stem}_run-{run}_timeseries.json", sidecar)
            if data.confounds is not None:
                confounds = data.confounds[data.confounds["run"] == run]
                if len(confounds):
                    names = [c for c in confounds.columns if c not in ("time", "run")]
                    put(f"{deriv}/{folder}/{stem}_run-{run}_desc-confounds_timeseries.tsv",
                        confounds[names].reset_index(drop=True))  # fmt: skip
                    put(f"{deriv}/{folder}/{stem}_run-{run}_desc-confounds_timeseries.json",
                        {c: CONFOUNDS_SIDECAR.get(c, {"Description": "a quality measure the rig sent"})
                         for c in names})  # fmt: skip
        est = data.latest_estimates()
        if not est.empty:
            est = est.merge(data.events[["trial", "condition"]].drop_duplicates("trial"), on="trial", how="left")
            cols = ["trial", "run", "stimulus_id", "condition", "provisional"]
            cols += [c for r in data.rois for c in (r, f"{r}_se")]
            put(f"{deriv}/{folder}/{stem}_estimates.tsv", est[cols])
            put(f"{deriv}/{folder}/{stem}_estimates.json", {
                "Description": "Each trial's response estimate per ROI (its latest revision) and standard error",
                **{r: {"Description": f"Response of {r} to the trial"} for r in data.rois}})  # fmt: skip
    return [p for p in written if p.is_file()]
