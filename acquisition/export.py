"""Export a session file: BIDS-style events per run (TSV + JSON sidecar) and a CSV of estimates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kit.files import output_folder, replaced_whole

from .reader import integrity_problems, read_session
from .session import SessionError

EVENTS_SIDECAR = {
    "onset": {"Description": "Measured onset, seconds from the run's first scanner trigger", "Units": "s"},
    "duration": {"Description": "Stimulus duration", "Units": "s"},
    "trial_type": {"Description": "Condition of the trial (e.g. D = drive, S = suppress, B = baseline)"},
    "stimulus_id": {"Description": "Stimulus id in the session file's stimuli table"},
    "trial": {"Description": "Trial number within the session"},
    "scheduled_onset": {"Description": "Scheduled onset, seconds from the run's first trigger", "Units": "s"},
    "stim_text": {"Description": "The sentence shown, when the stimulus is text"},
    "stim_file": {"Description": "The image shown, when the stimulus is an image"},
}


def _write(df: pd.DataFrame, path: Path, sep: str) -> None:
    with replaced_whole(path) as tmp:
        df.to_csv(tmp, sep=sep, index=False, na_rep="n/a" if sep == "\t" else "")


def events_table(ev: pd.DataFrame, stimuli: pd.DataFrame, t0: float) -> pd.DataFrame:
    """A run's events as BIDS lays them out: onsets (measured, else scheduled) in s from ``t0``, the condition, the
    stimulus; ``stimuli`` indexed by stimulus id."""
    measured = ev["measured_onset"].where(np.isfinite(ev["measured_onset"]), ev["scheduled_onset"])
    stim = stimuli.loc[ev["stimulus_id"]]
    return pd.DataFrame({
        "onset": np.round(measured - t0, 6),
        "duration": ev["duration"],
        "trial_type": ev["condition"].where(ev["condition"] != "", stim["condition"].values),
        "stimulus_id": ev["stimulus_id"],
        "trial": ev["trial"],
        "scheduled_onset": np.round(ev["scheduled_onset"] - t0, 6),
        "stim_text": stim["text"].replace("", np.nan).values,
        "stim_file": stim["image"].replace("", np.nan).values,
    }).sort_values("onset")  # fmt: skip


def export_session(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``run-<r>_events.tsv`` (+ ``.json``) per run and ``estimates.csv``; returns the paths."""
    data = read_session(path)
    if problems := integrity_problems(data):
        raise SessionError(f"session file '{path}' is damaged, so it is not exported: {'; '.join(problems)}")
    out = Path(out_dir)
    with output_folder(out) as written:  # a failed export (a full disk) leaves none of its files
        stimuli = data.stimuli.set_index("stimulus_id")
        events = data.events.copy()
        for run, ev in events.groupby("run", sort=True):
            trig = data.triggers[data.triggers["run"] == run]["time"]
            t0 = float(trig.min()) if len(trig) else float(data.attrs.get("start_time", 0.0))
            table = events_table(ev, stimuli, t0)
            tsv = out / f"run-{int(run)}_events.tsv"
            _write(table, tsv, "\t")
            written.append(tsv)
            sidecar = tsv.with_suffix(".json")
            with replaced_whole(sidecar) as tmp:
                tmp.write_text(json.dumps(EVENTS_SIDECAR, indent=2))
            written.append(sidecar)
        est = data.latest_estimates()
        if not est.empty:
            est = est.merge(data.stimuli[["stimulus_id", "text", "image", "condition"]], on="stimulus_id", how="left")
            cols = ["trial", "stimulus_id", "run", "condition", "text", "image", "provisional"]
            cols += [c for r in data.rois for c in (r, f"{r}_se")]
            path_csv = out / "estimates.csv"
            _write(est[cols], path_csv, ",")
            written.append(path_csv)
    return list(written)
