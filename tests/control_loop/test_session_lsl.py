"""A session through Lab Streaming Layer: a simulated LSL device -> `neurotwin rig lsl` -> the controller, the
device seeing what the presenter's LSL marker stream says is shown."""

import json
import os
import subprocess
import sys

from acquisition import read_session

from ..support.netutil import ROOT
from .test_session import TINY, TOTAL, _trial_table


def test_the_tiny_closed_loop_runs_through_lsl(lsl, tmp_path):
    from control_loop.report import summarize

    protocol = tmp_path / "tiny_lsl.toml"
    # (less noise than the participant of the direct tests: through LSL the noise's draw depends on when the session
    # starts in the device's scan, and this test is of the chain, not of the statistics)
    protocol.write_text(TINY.read_text().replace("speed = 100\n", 'speed = 100\nvia = "lsl"\nnoise_sd = 0.2\n'))
    out = tmp_path / "lsl.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out", str(out),
                           "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data, est = _trial_table(out)
    assert len(data.events) == TOTAL and data.events.trial.is_unique
    assert set(est.condition) == {"baseline", "drive", "suppress"}
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert [r["kind"] for r in runs] == ["baseline"] * 2 + ["closed_loop"] * 2 + ["evaluation"] * 2
    assert not (data.log.kind == "missing").any()  # every volume of every run came through LSL
    # The twin learned the subject from the LSL stream (longer sentences drive 'lang'): it chose longer ones to drive.
    words = data.stimuli.set_index("stimulus_id").text.str.split().str.len()
    ev = data.events.merge(words.rename("words"), left_on="stimulus_id", right_index=True)
    final = ev[ev.run.isin([r["run"] for r in runs if r["kind"] == "evaluation"])]
    assert final[final.condition == "drive"].words.mean() > final[final.condition == "suppress"].words.mean() + 5
    effects = summarize(out)["evaluation"]
    print({name: round(c["difference"], 3) for name, c in effects.items()})
    assert read_session(out).truth is None  # a device on LSL sends samples only: no true responses
    logs = {p.stem: p.read_text() for p in out.parent.rglob("*.log")}
    assert any("reading the presenter's markers" in text for text in logs.values()), list(logs)


def test_the_tiny_image_loop_runs_through_lsl_at_1khz(lsl, tmp_path):
    """The image protocol through LSL: a simulated array streaming spike counts at 1 kHz (its sites seeing the images
    the presenter's markers carry) -> `neurotwin rig lsl --signal spike-counts` (counts per window) -> the
    controller, which drives and suppresses the target site as through the direct rig."""
    import numpy as np

    image = ROOT / "tests" / "protocols" / "tiny_image.toml"
    protocol = tmp_path / "tiny_image_lsl.toml"
    # (sites tuned more strongly than the direct test's: through LSL, Poisson draws depend on where the session
    # starts in the device's recording, and this test is of the chain, not of the statistics)
    text = image.read_text().replace("speed = 20\n", 'speed = 20\nvia = "lsl"\n')
    protocol.write_text(text.replace("subjects:luminance_sites", "subjects:bright_sites"))
    out = tmp_path / "image_lsl.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out", str(out),
                           "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data, est = _trial_table(out)
    assert len(data.events) == 40 + 8 + 12 and data.events.trial.is_unique
    assert not (data.log.kind == "missing").any()  # every window of every run came through LSL
    assert np.allclose(data.samples.groupby("run").time.diff().dropna(), 0.5)  # one sample per window of one TR
    means = est.groupby("condition").site0.mean()  # measured rates of the target site
    print(means.round(2).to_dict())
    assert means["drive"] > means["baseline"] > means["suppress"]
    assert read_session(out).truth is None
    rig_log = (out.parent / f"{out.stem}-logs" / "rig.log").read_text()
    assert "spike-counts" in rig_log and "got no sample" not in rig_log and "after their window" not in rig_log
