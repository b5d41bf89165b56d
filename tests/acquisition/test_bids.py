"""`neurotwin session export --bids`: a session as a BIDS dataset that pybids reads."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from acquisition import read_session

from ..support.netutil import ROOT


def export_bids(session: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "control_loop.cli", "session", "export", str(session), "--out", str(out), "--bids"]
    return subprocess.run([*cmd, *options], cwd=ROOT, capture_output=True, text=True, timeout=120)


def bids_trials(session: Path, out: Path) -> list[int]:
    """Export ``session`` as BIDS into ``out`` and read it back with pybids: every trial number its events hold."""
    from bids import BIDSLayout

    done = export_bids(session, out)
    assert done.returncode == 0, done.stderr[-2000:]
    layout = BIDSLayout(out, derivatives=True)
    files = layout.get(suffix="events", extension=".tsv", scope="raw")
    return [int(t) for f in files for t in pd.read_csv(f.path, sep="\t").trial]


def test_a_session_exports_as_a_bids_dataset_pybids_reads(uninterrupted, tmp_path):
    """pybids finds every run of a finished simulated session with its events, and NeuroTwin's derivatives: each
    run's time series (one row per volume, a column per ROI) and the trial estimates."""
    from bids import BIDSLayout

    _work, session, _ = uninterrupted
    data = read_session(session)
    out = tmp_path / "bids"
    done = export_bids(session, out, "--subject", "p07", "--session", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    layout = BIDSLayout(out, derivatives=True)
    assert layout.get_subjects() == ["p07"] and layout.get_sessions() == ["2"]
    assert layout.get_tasks() == ["tinyclosedloop"]
    runs = sorted(int(r) for r in data.events.run.unique())
    assert sorted(layout.get_runs(suffix="events")) == runs
    for run in runs:
        (events,) = layout.get(subject="p07", session="2", run=run, suffix="events", extension=".tsv")
        table = pd.read_csv(events.path, sep="\t")
        recorded = data.events[data.events.run == run].sort_values("trial")
        assert sorted(table.trial) == recorded.trial.tolist()
        assert set(table.trial_type) <= {"baseline", "drive", "suppress"} and (table.onset >= 0).all()
        assert table.stim_text.notna().all()  # the sentence shown
        assert events.get_metadata()["onset"]["Units"] == "s"
        (series,) = layout.get(run=run, suffix="timeseries", extension=".tsv", scope="NeuroTwin")
        values = pd.read_csv(series.path, sep="\t")
        assert list(values.columns) == data.rois and len(values) == (data.samples.run == run).sum()
        meta = json.loads(Path(series.path).with_suffix(".json").read_text())
        assert meta["SamplingFrequency"] == 0.5 and len(meta["SampleTimes"]) == len(values)
    (estimates,) = layout.get(suffix="estimates", extension=".tsv", scope="NeuroTwin")
    est = pd.read_csv(estimates.path, sep="\t")
    assert sorted(est.trial) == sorted(data.events.trial) and {"lang", "lang_se", "condition"} <= set(est.columns)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]


@pytest.mark.parametrize("label", ["0 1", "sub-01", ""])
def test_a_label_that_is_not_bids_is_refused_and_nothing_is_written(uninterrupted, tmp_path, label):
    _work, session, _ = uninterrupted
    out = tmp_path / "bids"
    done = export_bids(session, out, "--subject", label)
    assert done.returncode == 2 and "a BIDS subject label is letters and digits only" in done.stderr, done.stderr
    assert not out.exists()


def test_a_rigs_motion_estimates_export_as_confounds(tmp_path):
    """A session whose rig sent each volume's motion parameters and framewise displacement (rig rtfmri --realign)
    keeps them beside its samples, and its BIDS export has them per run as fMRIPrep-style confounds."""
    import numpy as np
    from bids import BIDSLayout

    from acquisition import SessionFile
    from hardware.rtfmri import FD, MOTION

    path = tmp_path / "s.h5"
    names = [*MOTION, FD]
    rng = np.random.default_rng(0)
    motion = {run: rng.normal(0, 0.5, (10, 7)) for run in (1, 2)}
    with SessionFile.create(path, ["lang"], protocol=json.dumps({"name": "rt", "design": {"tr": 2.0}}),
                            confounds=names) as s:  # fmt: skip
        for run in (1, 2):
            t0 = 100.0 * run
            s.add_stimulus(run, text=f"sentence {run}", condition="drive")
            s.add_event(run, run=run, trial=run, scheduled_onset=t0 + 4, measured_onset=t0 + 4, duration=2.0,
                        condition="drive")  # fmt: skip
            for k in range(10):
                s.add_trigger(t0 + 2 * k, k, run)
                s.add_samples(t0 + 2 * k, np.array([0.1 * k]), run, confounds=motion[run][k : k + 1])
    data = read_session(path)
    assert list(data.confounds.columns) == ["time", "run", *names] and len(data.confounds) == 20
    np.testing.assert_allclose(data.confounds[names].to_numpy(), np.vstack([motion[1], motion[2]]), rtol=1e-6)
    out = tmp_path / "bids"
    done = export_bids(path, out)
    assert done.returncode == 0, done.stderr[-2000:]
    layout = BIDSLayout(out, derivatives=True)
    for run in (1, 2):
        (confounds,) = layout.get(run=run, desc="confounds", suffix="timeseries", extension=".tsv")
        table = pd.read_csv(confounds.path, sep="\t")
        assert list(table.columns) == names
        np.testing.assert_allclose(table.to_numpy(), motion[run], rtol=1e-6)
        assert confounds.get_metadata()["framewise_displacement"]["Units"] == "mm"
