"""Protocol files: every shipped one passes `protocol check`; malformed ones name the field."""

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_loop.cli import cli
from control_loop.protocol import Protocol, load_protocol

from ..twin.test_cli_twin import neurotwin

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "protocols").glob("*.toml"))


def test_the_four_protocols_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"language_localizer", "open_loop_language", "closed_loop_language", "closed_loop_image"} <= names


def check(path):
    """`neurotwin protocol check PATH`, in this process (the same command code as the console script)."""
    return CliRunner().invoke(cli, ["protocol", "check", str(path)])


def test_shipped_protocols_pass_check():
    assert neurotwin("protocol", "check", SHIPPED[0]).stdout.rstrip().endswith("valid")  # the console command
    for path in SHIPPED:
        result = check(path)
        assert result.exit_code == 0, (path, result.output)
        assert result.stdout.rstrip().endswith("valid") and "runs" in result.stdout and "min of" in result.stdout
        protocol = load_protocol(path)
        totals = protocol.condition_totals()
        assert sum(totals.values()) == protocol.total_trials
        assert "stimuli per condition: " + ", ".join(f"{c} {n}" for c, n in totals.items()) in result.stdout
    closed = load_protocol(ROOT / "protocols" / "closed_loop_language.toml")
    assert closed.condition_totals() == {"baseline": 180 + 60 + 30, "suppress": 60 + 30, "drive": 30}


def test_unloadable_simulated_subject_is_one_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(BASE.replace("[simulation]\n", '[simulation]\nsubject = "nosuch:thing"\n'))
    result = check(path)
    assert result.exit_code == 2 and "simulation.subject: cannot load 'nosuch:thing'" in result.output, result.output


def test_dry_run_options_need_dry_run():
    result = CliRunner().invoke(cli, ["protocol", "check", str(SHIPPED[0]), "--seeds", "3"])
    assert result.exit_code == 2 and "add --dry-run" in result.output


def test_uneven_runs_keep_a_phase_balanced():
    """Leftover trials rotate across conditions: an evaluation of 20 + 10 trials shows 10 of each of three."""
    text = BASE.replace("trials_per_run = 60", "trials_per_run = 20").replace("trials = 90", "trials = 30")
    protocol = Protocol.model_validate(tomllib.loads(text))
    last = len(protocol.runs()) - 1
    assert [protocol.condition_counts(i) for i in (last - 1, last)] == [
        {"drive": 7, "suppress": 7, "baseline": 6}, {"drive": 3, "suppress": 3, "baseline": 4}
    ]  # fmt: skip


BASE = (ROOT / "protocols" / "closed_loop_language.toml").read_text()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.replace('modality = "text"\n', ""), ["modality", "required"]),
        (lambda t: t.replace("trials_per_run = 60", 'trials_per_run = "sixty"'), ["design.trials_per_run"]),
        (lambda t: t.replace("tr = 2.0", "tr = -2.0"), ["design.tr", "greater than 0"]),
        (lambda t: t.replace("seed = 0", "seed = -1"), ["seed", "greater than or equal to 0"]),
        (lambda t: t.replace("iti = 4.0", "iti = 1.0"), ["design", "iti (1 s) is shorter than trial_duration (2 s)"]),
        (lambda t: t + "\n[safety]\nmax_area = 0.5\n", ["safety.max_area", "0.25"]),
        (lambda t: t.replace('rois = ["lang"]', 'rois = ["broca"]'), ["target.rois", "unknown ROI", "broca"]),
        (lambda t: t.replace('goal = "both"', 'goal = "maximize"'), ["target.goal", "drive", "suppress"]),
        (lambda t: t.replace('goal = "both"', 'goal = "drive"'), ["phases.1.conditions", "target.goal 'drive'"]),
        (lambda t: t.replace('["suppress", "baseline"]', "[]"), ["phases.1.conditions", "at least 1"]),
        (lambda t: t.replace("[stopping]", "[stoping]"), ["stoping", "not a protocol field"]),
        (lambda t: t.replace("name = ", "name = = "), ["not valid TOML"]),
        (lambda t: t.replace("trials = 180", "trials = 100000000000000000000000"), ["phases.0.trials", "100000"]),
        (lambda t: t.replace("trials = 60\n", "trials = 60000\n"), ["the phases hold", "at most 100,000"]),
        (lambda t: t.replace("iti = 4.0", "iti = inf"), ["design.iti", "finite number"]),
        (lambda t: t.replace("tr = 2.0", "tr = nan"), ["design.tr", "finite number"]),
        (
            lambda t: t.replace("iti = 4.0", "iti = 600.0").replace("trials = 180", "trials = 1000"),
            ["scanner time", "at most 24 h"],
        ),
        (lambda t: t + '\n[recording.lsl]\nchannels = ["lang"]\n', ["recording.lsl", "name the LSL stream"]),
        (lambda t: t + '\n[recording.lsl]\nname = "ROIs"\nrate = 0\n', ["recording.lsl.rate", "greater than 0"]),
    ],
    ids=[
        "missing",
        "type",
        "negative-tr",
        "negative-seed",
        "iti",
        "unsafe",
        "roi",
        "goal",
        "rounds",
        "no-conditions",
        "typo",
        "toml",
        "trials-1e23",
        "trials-in-all",
        "iti-inf",
        "tr-nan",
        "scanner-hours",
        "lsl-unnamed",
        "lsl-rate",
    ],
)
def test_malformed_protocol_names_the_field(tmp_path, edit, words):
    path = tmp_path / "p.toml"
    path.write_text(edit(BASE))
    result = check(path)
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.stderr, (w, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_image_rounds_say_how_they_choose(tmp_path):
    """UCB ranks sentences; an image round is synthesized under the twin's predictions (or one posterior
    draw of it), and protocol check says which, whatever the phase's acquisition says."""
    text = (ROOT / "protocols" / "closed_loop_image.toml").read_text()
    assert 'acquisition = "mean"' in text
    path = tmp_path / "p.toml"
    for written, runs in [('acquisition = "ucb"', "mean"), ("", "mean"), ('acquisition = "thompson"', "thompson")]:
        path.write_text(text.replace('acquisition = "mean"', written))
        result = check(path)
        assert result.exit_code == 0, result.stderr
        assert f"closed_loop, 40 trials x 2 rounds: drive, suppress ({runs})" in result.output, (written, result.output)


def test_missing_protocol_file(tmp_path):
    result = check(tmp_path / "nope.toml")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = check(tmp_path)
    assert result.exit_code == 2 and f"protocol '{tmp_path}' is a folder, not a protocol file" in result.stderr


@pytest.mark.parametrize(
    ("source", "candidates", "words"),
    [
        ("missing.txt", None, ["stimuli.source: pool", "missing.txt' does not exist"]),
        ("binary.txt", None, ["stimuli.source", "binary.txt' is not UTF-8 text"]),
        ("one.txt", None, ["stimuli: the protocol shows 390 candidates, each once, but it has 1"]),
        ("default", 1, ["but it has 1", "stimuli.candidates is 1"]),
    ],
    ids=["missing", "binary", "one-sentence", "one-candidate"],
)
def test_a_protocol_whose_stimuli_cannot_run_is_not_valid(tmp_path, source, candidates, words):
    """`protocol check` reads the stimulus source and counts what passes the constraints: a source that is
    missing, not text or too small for the trials that each show a new sentence fails, naming the field; and
    `simulate` fails the same way before it writes any session file."""
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "one.txt").write_text("The only sentence in this pool is this one.\n")
    text = BASE.replace('prior = "priors/', f'prior = "{ROOT / "protocols" / "priors"}/')
    text = text.replace('source = "default"', f"source = '{tmp_path / source}'") if source != "default" else text
    if candidates is not None:
        text = text.replace("candidates = 3000", f"candidates = {candidates}")
    path = tmp_path / "p.toml"
    path.write_text(text)
    result = check(path)
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.stderr, (w, result.stderr)
    if source == "one.txt":  # (the same check, before anything is made)
        run = neurotwin("simulate", path, "--out", tmp_path / "s.h5", check_ok=False)
        assert run.returncode == 2 and words[-1] in run.stderr, run.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.txt", "one.txt", "p.toml"]  # nothing behind
