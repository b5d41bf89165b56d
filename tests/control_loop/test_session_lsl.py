"""A session through Lab Streaming Layer: a simulated LSL device -> `neurotwin rig lsl` -> the controller, the
device seeing what the presenter's LSL marker stream says is shown."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acquisition import read_session
from control_loop.planner import localizer_folder

from ..support.netutil import ROOT
from .test_session import TINY, TOTAL, _trial_table

LIVE = ROOT / "tests" / "protocols" / "live_localizer.toml"  # 2 runs of 6 trials, TR 1 s: 16 volumes a run


def _simulate(protocol: Path, out: Path, cache: Path) -> None:
    """`neurotwin simulate PROTOCOL --out OUT`, which must succeed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROTWIN_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--out", str(out),
                           "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_tiny_closed_loop_runs_through_lsl(lsl, tmp_path):
    from control_loop.report import summarize

    protocol = tmp_path / "tiny_lsl.toml"
    # (less noise than the participant of the direct tests: through LSL the noise's draw depends on when the session
    # starts in the device's scan, and this test is of the chain, not of the statistics)
    protocol.write_text(TINY.read_text().replace("speed = 100\n", 'speed = 20\nvia = "lsl"\nnoise_sd = 0.2\n'))
    out = tmp_path / "lsl.h5"
    _simulate(protocol, out, tmp_path / "cache")
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


@pytest.mark.slow  # (a minute; the text session above covers the chain in the quick suite)
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
    _simulate(protocol, out, tmp_path / "cache")
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


def _pull_everything(lsl, name: str, into: list, stop) -> None:
    """An independent inlet on the device's stream (recovering it as a restarted device comes back): every sample
    it gets, as (LSL time, values)."""
    info = lsl.resolve_byprop("name", name, 1, 30.0)[0]
    inlet = lsl.StreamInlet(info, recover=True)
    inlet.open_stream(10.0)
    while not stop.is_set():
        chunk, stamps = inlet.pull_chunk(timeout=0.1)
        into.extend(zip(stamps, map(tuple, chunk), strict=True))


class _Lab:
    """A lab on 127.0.0.1 at real time: a simulated LSL scanner (the length subject, TR 1 s) -> `neurotwin rig lsl`,
    and a null presenter publishing LSL markers; each process's output in tmp_path/NAME.log."""

    def __init__(self, tmp_path: Path) -> None:
        from ..support.netutil import free_port, neurotwin

        self.rig_port, self.pres_port = free_port(), free_port()
        self.stream = f"neurotwin-test-scanner-{self.rig_port}"
        self.markers = f"neurotwin-test-markers-{self.pres_port}"
        self.device_cmd = neurotwin("rig", "simulate-lsl", "--name", self.stream, "--markers", self.markers, "--tr",
                                    "1.0", "--subject", "tests.support.subjects:length_language_subject", "--seed",
                                    "1")  # fmt: skip
        self.logs = {name: open(tmp_path / f"{name}.log", "a") for name in ("device", "rig", "presenter")}
        self.device = self.start("device", self.device_cmd)
        self.rig = self.start("rig", neurotwin("rig", "lsl", "--name", self.stream, "--channels", "lang,md", "--rate",
                                               "1", "--silence", "1.5", "--bind", f"tcp://127.0.0.1:{self.rig_port}",
                                               "--heartbeat", "0.3", "--resolve-timeout", "60"))  # fmt: skip
        self.presenter = self.start("presenter", neurotwin("present", "--null", "--trigger-key", "", "--bind",
                                                           f"tcp://127.0.0.1:{self.pres_port}", "--lsl-markers",
                                                           self.markers))  # fmt: skip

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=self.logs[name], stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip

    def session(self, *args: object) -> subprocess.Popen:
        """`neurotwin session ARGS` against this lab's rig and presenter (for `run`)."""
        from ..support.netutil import neurotwin

        return subprocess.Popen(neurotwin("session", *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    def run_args(self, protocol: Path, out: Path) -> list[object]:
        return ["run", protocol, "--rig", f"tcp://127.0.0.1:{self.rig_port}", "--presenter",
                f"tcp://127.0.0.1:{self.pres_port}", "--out", out, "--rois", "lang,md"]  # fmt: skip

    def kill_device(self) -> None:
        self.device.kill()
        self.device.wait()

    def close(self) -> None:
        for proc in (self.device, self.rig, self.presenter):
            proc.terminate()
            proc.wait(10)
        for fh in self.logs.values():
            fh.close()


def _after_run_starts(session: subprocess.Popen, run: str, seconds: float) -> None:
    """Wait for the session to say it starts ``run`` (e.g. 'run 1/2'), then ``seconds`` more."""
    for line in session.stdout:
        if line.startswith(run):
            time.sleep(seconds)
            return


needs_localizer = pytest.mark.skipif(
    not localizer_folder().exists(), reason=f"localizer stimuli not found at {localizer_folder()}"
)


@needs_localizer
def test_a_device_killed_and_restarted_mid_run_is_picked_up_again(lsl, tmp_path):
    """A lab's setup at real time: a simulated LSL scanner -> `neurotwin rig lsl` -> `neurotwin session run`, the
    presenter publishing markers. The device is killed mid-run 1 and started again 1 s later under the same stream
    (its source id): the rig's inlet recovers it and logs the outage with its length, the volumes that never came
    are recorded as missing, and every volume an independent inlet received during the runs is in the session file,
    exactly once. An independent inlet on the marker stream gets every trial's marker, in order, with its fields."""
    import threading

    import numpy as np

    lab = _Lab(tmp_path)
    received: list = []
    shown: list = []  # the presenter's markers, as an independent inlet (LabRecorder) gets them
    stop = threading.Event()
    for name, into in ((lab.stream, received), (lab.markers, shown)):
        threading.Thread(target=_pull_everything, args=(lsl, name, into, stop), daemon=True).start()
    out = tmp_path / "live.h5"
    session = lab.session(*lab.run_args(LIVE, out))
    try:
        _after_run_starts(session, "run 1/2", 6.0)  # some volumes of run 1 in
        lab.kill_device()
        time.sleep(1.0)
        # the same stream, a new process (another seed: its noise is not the first one's, volume for volume)
        lab.device = lab.start("device", [*lab.device_cmd[:-1], "2"])
        _, stderr = session.communicate(timeout=180)
    finally:
        session.kill()
        stop.set()
        lab.close()
    assert session.returncode == 0, stderr[-3000:]
    data = read_session(out)
    rig_log = (tmp_path / "rig.log").read_text()
    assert re.search(r"no samples for \d+\.\d s", rig_log), rig_log[-3000:]
    back = re.search(r"is back after (\d+\.\d) s without samples", rig_log)
    assert back and 1.0 < float(back.group(1)) < 20.0, rig_log[-3000:]
    missing = data.log[data.log.kind == "missing"].message.tolist()
    assert len(missing) == 1 and missing[0].startswith("run 1: "), data.log  # the gap, in run 1 only
    recorded = [tuple(v) for v in data.samples[["lang", "md"]].to_numpy()]
    assert len(recorded) == len(set(recorded))  # no volume twice
    pulled = [tuple(np.float32(values)) for _, values in received]  # (the session file keeps float32)
    assert set(recorded) <= set(pulled)  # nothing that the device did not send
    for run in (1, 2):  # every volume received from the run's first to its last is in the file
        mine = [tuple(v) for v in data.samples.loc[data.samples.run == run, ["lang", "md"]].to_numpy()]
        first, last = pulled.index(mine[0]), pulled.index(mine[-1])
        assert set(pulled[first : last + 1]) == set(mine), run
    # Every trial's marker, in order, with its fields
    events = data.events.sort_values("trial")
    got = [json.loads(text) for _, (text,) in shown]
    assert [m["trial"] for m in got] == events.trial.tolist()
    assert [(m["run"], m["stimulus_id"], m["condition"]) for m in got] == list(
        zip(events.run, events.stimulus_id, events.condition, strict=True)
    )
    stimuli = data.stimuli.set_index("stimulus_id").text
    assert [m["text"] for m in got] == stimuli[events.stimulus_id].tolist()
    assert len({m["session"] for m in got}) == 1 and all(m["kind"] == "text" for m in got)
    stamps = [stamp for stamp, _ in shown]
    assert stamps == sorted(stamps)
    print(f"outage: {back.group(1)} s; {missing[0]}; {len(got)} markers")


@needs_localizer
def test_a_silent_recording_pauses_the_session_when_the_protocol_says(lsl, tmp_path):
    """With `[recording] pause_after = 3`, a device killed mid-run and not restarted pauses the session after 3 s
    without a volume: it exits saying so and how to resume, the file keeps what was recorded, and `session resume`
    once the device is back repeats the run and finishes the session."""
    protocol = tmp_path / "live.toml"
    protocol.write_text(LIVE.read_text() + "\n[recording]\npause_after = 3.0\n")
    lab = _Lab(tmp_path)
    out = tmp_path / "live.h5"
    session = lab.session(*lab.run_args(protocol, out))
    try:
        _after_run_starts(session, "run 1/2", 5.0)
        lab.kill_device()
        _, stderr = session.communicate(timeout=120)
        assert session.returncode != 0
        assert "run 1: no volume came from the rig for 3 s (recording.pause_after)" in stderr, stderr[-2000:]
        assert f"neurotwin session resume {out}" in stderr
        paused = read_session(out)
        assert (paused.log.kind == "silence").sum() == 1 and len(paused.samples) >= 3
        lab.device = lab.start("device", lab.device_cmd)
        resumed = lab.session("resume", out)
        _, stderr = resumed.communicate(timeout=180)
    finally:
        session.kill()
        lab.close()
    assert resumed.returncode == 0, stderr[-3000:]
    data = read_session(out)
    runs = [json.loads(m) for m in data.log.loc[data.log.kind == "run-complete", "message"]]
    assert [r["index"] for r in runs] == [0, 1]  # run 1 repeated in full, then run 2
    assert len(data.samples) > len(paused.samples)  # what came before the pause is kept
