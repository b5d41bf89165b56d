"""Simulated subjects: the registry, and a subject that another installed package adds through the entry point."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ..support.netutil import ROOT

PLUGIN = '''
"""A lab's own simulated subject, registered in the neurotwin.subjects entry-point group."""
import numpy as np


class LengthSubject:
    rois = ("lang", "md")
    noise_sd = 0.25

    def __call__(self, stimuli):
        return np.array([[0.1 * len(s.split()), 2.0] for s in stimuli])

    def warm_up(self):
        pass
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "lab-subjects"
version = "0.1"

[project.entry-points."neurotwin.subjects"]
lab-length = "lab_subjects:LengthSubject"

[tool.setuptools]
packages = ["lab_subjects"]
"""

PROTOCOL = """
name = "a lab's subject"
modality = "text"
seed = 1

[target]
rois = ["lang"]

[design]
tr = 2.0
trial_duration = 2.0
iti = 4.0
trials_per_run = 10
rest = 4.0

[[phases]]
name = "baseline"
kind = "baseline"
trials = 10

[stimuli]
candidates = 40
max_words = 25

[simulation]
speed = 200
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A separately installed package (pip, into a folder of its own) that registers the subject `lab-length`."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    (src / "lab_subjects").mkdir(parents=True)
    (src / "lab_subjects" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(src)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return site


def _env(site, cache):
    return {**os.environ, "PYTHONPATH": str(site), "NEUROTWIN_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_a_subject_from_another_installed_package_runs_with_simulate(plugin_site, tmp_path):
    env = _env(plugin_site, tmp_path / "cache")
    code = "from simulation import SUBJECTS; print(' '.join(SUBJECTS.names()))"
    listed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)  # fmt: skip
    population = [f"population:p{k:02d}" for k in range(1, 9)]
    assert listed.stdout.split() == ["language", *population, "gabor", "v4", "lab-length"]
    protocol = tmp_path / "lab.toml"
    protocol.write_text(PROTOCOL)
    out = tmp_path / "lab.h5"
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--subject",
                           "lab-length", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from acquisition import read_session

    data = read_session(out)
    assert data.attrs["peers"]["subject"] == "lab-length" and data.rois == ["lang", "md"]
    # the rig served the plugin's subject: the file's true responses are its, for every trial shown
    text = data.stimuli.set_index("stimulus_id").text
    truth = data.truth.set_index("trial").loc[data.events.trial]
    expected = [0.1 * len(text[i].split()) for i in data.events.stimulus_id]
    np.testing.assert_allclose(truth.lang, expected)
    np.testing.assert_allclose(truth.md, 2.0)
    assert len(truth) == len(data.events) == 10


def test_an_unknown_subject_name_lists_the_registered_ones(plugin_site, tmp_path):
    protocol = tmp_path / "lab.toml"
    protocol.write_text(PROTOCOL)
    done = subprocess.run([sys.executable, "-m", "control_loop.cli", "simulate", str(protocol), "--subject",
                           "lab-lenght", "--out", str(tmp_path / "x.h5")], cwd=ROOT,
                          env=_env(plugin_site, tmp_path / "cache"), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        "simulation.subject: unknown subject 'lab-lenght': give one of language, population:p01, population:p02"
    ) in done.stderr and "population:p08, gabor, v4, lab-length, or module:attr" in done.stderr
    assert not (tmp_path / "x.h5").exists()


def test_subjects_without_every_figure_get_the_defaults():
    from simulation.subjects import NOISE_SD, Subject, as_subject, load_subject

    from ..support.subjects import length_subject

    plain = as_subject(lambda stimuli: np.ones((len(stimuli), 1)))
    assert isinstance(plain, Subject) and list(plain.rois) == ["roi0"] and plain.noise_sd == NOISE_SD
    plain.warm_up()
    loaded = load_subject("tests.support.subjects:length_subject")  # module:attr still works
    assert list(loaded.rois) == ["lang", "md"] and loaded.noise_sd == length_subject.noise_sd
    np.testing.assert_allclose(loaded(["two words"]), [[0.2, 0.5]])
    assert load_subject("hardware.rigs:gabor_tuning").rois == load_subject("gabor").rois  # sessions recorded before
    with pytest.raises(ValueError, match="unknown subject 'nobody'"):
        load_subject("nobody")
