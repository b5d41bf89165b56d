"""Real-time fMRI through a scanner's export folder: a simulated export -> `neurotwin rig rtfmri` -> the controller."""

import json
import os
import subprocess
import sys

import pytest

from ..support.netutil import ROOT
from .test_session import TINY, TOTAL, _trial_table


@pytest.mark.slow  # (a minute and a half; tests/hardware/test_rtfmri.py covers the rig in the quick suite)
def test_the_tiny_closed_loop_runs_through_a_scanner_export(tmp_path):
    """`[simulation] via = "export"`: the simulated scanner writes a Siemens DICOM mosaic per TR (the subject's signal
    in each ROI's voxels of a phantom, a head moving up to 2 mm and 2 degrees, thermal noise), the rtfmri rig reads
    each, realigns it and averages it in the ROI masks, the session records each volume's motion, and the twin
    learns the subject from it (it chooses longer sentences to drive)."""
    protocol = tmp_path / "tiny_export.toml"
    protocol.write_text(TINY.read_text().replace("speed = 100\n", 'speed = 10\nvia = "export"\n'))
    out = tmp_path / "export.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out", str(out),
                           "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data, _est = _trial_table(out)
    assert len(data.events) == TOTAL and data.events.trial.is_unique
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert len(runs) == 6 and not (data.log.kind == "missing").any()  # every volume of every run, from its file
    words = data.stimuli.set_index("stimulus_id").text.str.split().str.len()
    ev = data.events.merge(words.rename("words"), left_on="stimulus_id", right_index=True)
    final = ev[ev.run.isin([r["run"] for r in runs if r["kind"] == "evaluation"])]
    assert final[final.condition == "drive"].words.mean() > final[final.condition == "suppress"].words.mean() + 5
    logs = out.parent / f"{out.stem}-logs"
    (folder,) = [p for p in logs.iterdir() if p.is_dir() and p.name.startswith("export-") and "masks" not in p.name]
    assert 0 < len(list(folder.glob("vol_*.dcm"))) <= 100  # the simulated export keeps its last 100 volumes
    motion = data.confounds  # (each volume's, as the rig estimated it)
    assert list(motion.columns[2:]) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                        "framewise_displacement"] and len(motion) == len(data.samples)  # fmt: skip
    assert 0.3 < motion[["trans_x", "trans_y", "trans_z"]].abs().to_numpy().max() < 2.3
    assert {p.name for p in folder.with_name(folder.name + "-masks").iterdir()} == {"lang.nii.gz", "md.nii.gz"}
