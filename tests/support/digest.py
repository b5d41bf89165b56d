"""What a simulated session chose and measured, in a form two sessions can be compared by (run order, trials,
stimuli, onsets within the run, estimates, the twin's predictions): `python -m tests.support.digest FILE`."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def _stimulus(row, folder: Path) -> str:
    if isinstance(row.text, str) and row.text:
        return row.text
    from PIL import Image

    pixels = np.asarray(Image.open(folder / row.image).convert("RGB"))
    return "image:" + hashlib.sha256(pixels.tobytes()).hexdigest()[:16]


def digest(path: str | Path) -> dict:
    """The session's runs, each with its trials in order of trial number."""
    from acquisition import read_session
    from control_loop.protocol import condition_name  # (older files: one-letter codes, read as their names)

    path = Path(path)
    data = read_session(path)
    stimuli = data.stimuli.set_index("stimulus_id")
    est = data.latest_estimates().set_index("trial")
    rois = json.loads(data.attrs["rois"]) if isinstance(data.attrs["rois"], str) else list(data.attrs["rois"])
    runs = []
    for message in data.log.loc[data.log.kind == "run-complete", "message"]:
        record = json.loads(message)
        triggers = data.triggers.loc[data.triggers.run == record["run"], "time"]  # (spike counts come without)
        t0 = triggers.min() if len(triggers) else data.samples.loc[data.samples.run == record["run"], "time"].min()
        trials = []
        for t in record["trials"]:
            ev = data.events.loc[data.events.trial == t].iloc[0]
            row = stimuli.loc[int(ev.stimulus_id)]
            trials.append({
                "trial": int(t),
                "stimulus_id": int(ev.stimulus_id),
                "condition": condition_name(ev.condition),
                "stimulus": _stimulus(row, path.parent),
                "onset": round(float(ev.scheduled_onset - t0), 6),
                "estimate": [float(est.loc[t, r]) for r in rois] if t in est.index else None,
                "predicted": record["predicted"].get(str(t)),
            })  # fmt: skip
        runs.append({"index": record["index"], "kind": record["kind"], "phase": record["phase"], "trials": trials})
    return {"rois": rois, "runs": runs}


def differences(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> list[str]:
    """Where two digests differ: stimuli, conditions and order exactly; numbers to ``rtol`` and ``atol`` (a thread
    count other than the reference's changes float sums in their last bits: 1e-7 in an estimate)."""
    out = []
    if a["rois"] != b["rois"]:
        out.append(f"rois {a['rois']} != {b['rois']}")
    if [(r["index"], r["kind"], len(r["trials"])) for r in a["runs"]] != [
        (r["index"], r["kind"], len(r["trials"])) for r in b["runs"]
    ]:
        return [*out, "the runs differ in order, kind or number of trials"]
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        for ta, tb in zip(ra["trials"], rb["trials"], strict=True):
            where = f"run {ra['index']} trial {ta['trial']}"
            for key in ("trial", "stimulus_id", "condition", "stimulus"):
                if ta[key] != tb[key]:
                    out.append(f"{where}: {key} {ta[key]!r} != {tb[key]!r}")
            for key in ("onset", "estimate", "predicted"):
                x, y = ta[key], tb[key]
                same = (x is None) == (y is None) and (x is None or np.allclose(x, y, rtol, atol, equal_nan=True))
                if not same:
                    out.append(f"{where}: {key} {x} != {y}")
    return out


if __name__ == "__main__":
    json.dump(digest(sys.argv[1]), sys.stdout, indent=1)
