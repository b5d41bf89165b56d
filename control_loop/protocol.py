"""Protocol files: TOML validated against a schema, with errors that name the field and the allowed values.

A protocol says what a session does: the modality and target, the design (TR,
trial timing, trials per run), its phases (localizer, baseline measurement,
closed-loop rounds, final evaluation), where stimuli come from and under which
constraints, when to stop, the safety limits, and the seeds.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kit.recording import LSLSource
from stimulus_synthesis.constraints import Constraints

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"


class ProtocolError(Exception):
    """A protocol file is missing, not TOML, or does not follow the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


# Upper bounds: a protocol is one session of one person; anything beyond these is a typo (10**9 trials would
# take years of scanner time, and checking it would take the machine's memory).
MAX_TRIALS = 100_000  # trials in all
MAX_SCANNER_HOURS = 24.0
MAX_SECONDS = 600.0  # any one duration of the design (a trial, the interval between trials, the rest)
# A simulated device (by simulation.via) at most this many times faster than real time: measured, the shipped
# language protocol through LSL at its speed of 200 had its responses 6 s (30 ms of real time) before their onsets;
# at 20, in place. An export's volumes (moved heads, as DICOM mosaics) are realigned by the rig, about 0.1 s each on
# 2 cores shared with the scanner and the controller: at 20 (a volume each 0.1 s at TR 2 s) the rig fell behind.
MAX_DEVICE_SPEED = {"lsl": 20.0, "export": 10.0}


#: Trial conditions, as sessions record them: random candidates, the twin's choices for a goal, the localizer's.
CONDITIONS = ("baseline", "drive", "suppress", "control", "sentences", "nonwords")
#: The one-letter codes sessions recorded before condition names were kept whole, and their names.
LEGACY_CONDITIONS = {"B": "baseline", "D": "drive", "S": "suppress", "SENT": "sentences", "NONW": "nonwords"}


def condition_name(condition: str) -> str:
    """A recorded condition by its name (a legacy one-letter code read as the name it stood for)."""
    return LEGACY_CONDITIONS.get(condition, condition)


#: The conditions a goal's closed-loop rounds choose stimuli for.
GOAL_SIDES = {"both": ("drive", "suppress"), "drive": ("drive",), "suppress": ("suppress",), "control": ("control",)}


class Target(_Strict):
    rois: list[str] = Field(min_length=1, description="Target ROIs (fMRI) or sites (ephys); the first is controlled.")
    goal: Literal["drive", "suppress", "both", "control"] = "both"
    hold: float = Field(1.0, ge=0, le=1e6, description="Control goal: penalty per unit change of the other ROIs.")


class Design(_Strict):
    kind: Literal["event", "blocked"] = "event"
    tr: float = Field(2.0, gt=0, le=10, description="Volume (fMRI) or count window (ephys) length, s.")
    trial_duration: float = Field(gt=0, le=MAX_SECONDS, description="How long each stimulus is shown, s.")
    iti: float = Field(gt=0, le=MAX_SECONDS,
                       description="Onset-to-onset interval between trials, s (at least trial_duration).")  # fmt: skip
    trials_per_run: int = Field(gt=0, le=500)
    block_size: int = Field(1, ge=1, le=500, description="Trials of one condition in a row (blocked designs).")
    rest: float = Field(12.0, ge=0, le=MAX_SECONDS, description="Fixation at the start and the end of each run, s.")

    @model_validator(mode="after")
    def _timing(self) -> Design:
        if self.iti < self.trial_duration:
            raise ValueError(
                f"iti ({self.iti:g} s) is shorter than trial_duration ({self.trial_duration:g} s): trials would overlap"
            )
        if self.kind == "blocked" and self.block_size < 2:
            raise ValueError("a blocked design needs block_size of 2 or more")
        return self


class Phase(_Strict):
    name: str
    kind: Literal["localizer", "baseline", "closed_loop", "evaluation"]
    trials: int = Field(gt=0, le=MAX_TRIALS, description="Trials per round (closed_loop) or in all (other phases).")
    rounds: int = Field(1, ge=1, le=1000, description="Closed loop: propose -> measure -> refine rounds.")
    acquisition: Literal["mean", "ucb", "thompson"] = Field(
        "ucb", description="Closed loop: choose by the twin's predictions (mean), plus beta SDs of them (ucb; "
        "sentences only: image rounds take it as mean), or by one draw from its posterior (thompson).",
    )  # fmt: skip
    beta: float = Field(1.0, ge=0, le=100)
    conditions: list[Literal["drive", "suppress", "baseline"]] | None = Field(
        None, min_length=1,
        description="Evaluation: the conditions shown (default drive, suppress, baseline). Closed loop: what "
        "the rounds spend their trials on (default: the target's goal; baseline adds random unshown stimuli).",
    )  # fmt: skip

    def conditions_for(self, goal: str) -> list[str]:
        """The conditions this phase's runs show, for a target with this goal."""
        if self.conditions is not None:
            return list(self.conditions)
        if self.kind == "evaluation":
            return ["drive", "suppress", "baseline"]
        return list(GOAL_SIDES[goal])


class Stimuli(_Strict):
    source: str = Field("default", description="'default' (the offline corpus or natural images) or a pool file.")
    candidates: int = Field(4000, gt=0, le=10_000_000, description="Candidates drawn from the source.")
    min_words: int = Field(3, ge=1, le=500)
    max_words: int = Field(40, ge=1, le=500)
    blocklist: list[str] = []
    max_similarity: float = Field(
        0.9, gt=0, le=1, description="Text: highest word/word-pair cosine between chosen or shown sentences."
    )
    image_size: int = Field(128, ge=32, le=1024)
    synthesis_steps: int = Field(128, ge=1, le=100_000, description="Images: twin evaluations per synthesized image.")

    @model_validator(mode="after")
    def _words(self) -> Stimuli:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self

    def constraints(self) -> Constraints:
        """What every sentence shown in the session satisfies (random baseline sentences too)."""
        return Constraints(self.min_words, self.max_words, None, list(self.blocklist), None, None, self.max_similarity)


class Stopping(_Strict):
    max_trials: int | None = Field(None, gt=0, le=MAX_TRIALS)
    max_minutes: float | None = Field(None, gt=0, le=MAX_SCANNER_HOURS * 60)
    target_effect: float | None = Field(
        None,
        gt=0,
        description="Stop closed-loop rounds once the last round's measured drive - suppress (a one-sided "
        "round: against its own baseline trials, or without any, the baseline runs' mean), in baseline SDs, "
        "reaches it.",
    )


class Safety(_Strict):
    peak_luminance: float = Field(200.0, gt=0)
    max_mean_luminance: float = Field(160.0, gt=0, le=160)
    max_area: float = Field(0.25, gt=0, le=0.25, description="ITU-R BT.1702: at most a quarter of the screen.")
    max_flashes_per_s: int = Field(3, ge=0, le=3, description="ITU-R BT.1702: at most 3 flashes per second.")
    flash_delta: float = Field(20.0, gt=0, le=20, description="cd/m^2; the guideline's 20 is the most allowed.")


class Simulation(_Strict):
    subject: str | None = Field(None, description="The simulated subject: a registered name (language; images: v4, "
                                "gabor; or one another installed package adds) or module:attr (default: language, or "
                                "v4 for images).")  # fmt: skip
    speed: float = Field(100.0, gt=0, le=10_000,
                         description="Simulated time runs this many times faster than real time.")  # fmt: skip
    noise_sd: float | None = Field(None, gt=0, le=100)
    via: Literal["direct", "lsl", "export"] = Field(
        "direct", description="How the simulated recording reaches the controller: direct (the simulated rig); lsl "
        "(a simulated LSL device streaming ROI values per volume, or for images spike counts at 1 kHz, read by "
        "`neurotwin rig lsl`); or export (sentences: a simulated scanner writing NIfTI volumes into a folder, read "
        "by `neurotwin rig rtfmri`). Through lsl and export the subject sees what the presenter's LSL marker stream "
        "says is shown.")  # fmt: skip


class Recording(_Strict):
    """Where a live session's recording comes from (a simulated one's: see ``simulation``)."""

    lsl: LSLSource | None = Field(
        None, description="An LSL stream, read by `neurotwin rig lsl --protocol FILE` (docs/LSL.md): name, type, "
        "source_id (at least one), signal, channels, rate.")  # fmt: skip
    pause_after: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="Seconds of a run without a volume (or window) from the rig after "
        "which the session pauses, to be resumed once the recording is back (the run is repeated). Unset: a run goes "
        "on through any silence of its recording, the volumes that never came recorded as missing.")  # fmt: skip


class TwinSource(_Strict):
    reference: str | None = Field(
        None,
        description="A twin file (neurotwin fit: e.g. on other people's responses) the session's twin starts "
        "from: it chooses stimuli before any baseline, and its predictions are one more block of every twin "
        "the session fits. A relative path is read from the protocol file's folder.",
    )
    prior: str | None = Field(
        None,
        description="A prior file (neurotwin twin prior; or a twin file) on the same features whose ridge "
        "penalties and stacking weights every twin the session fits reuses, with one penalty multiplier chosen "
        "on the session's data: steadier than choosing them all from single trials. A relative path is read "
        "from the protocol file's folder.",
    )

    @model_validator(mode="after")
    def _one(self) -> TwinSource:
        if self.reference and self.prior:
            raise ValueError("give twin.reference or twin.prior, not both (a reference twin already guides the fits)")
        return self


class Protocol(_Strict):
    name: str
    description: str = ""
    modality: Literal["text", "image"]
    target: Target
    design: Design
    phases: list[Phase] = Field(min_length=1)
    stimuli: Stimuli = Stimuli()
    stopping: Stopping = Stopping()
    safety: Safety = Safety()
    simulation: Simulation = Simulation()
    recording: Recording = Recording()
    twin: TwinSource = TwinSource()
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of every random choice (stimuli, simulated noise).")

    @model_validator(mode="after")
    def _phases(self) -> Protocol:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        if self.phases[-1].kind != "evaluation" and any(p.kind == "evaluation" for p in self.phases):
            raise ValueError("the evaluation phase must come last")
        allowed = [*GOAL_SIDES[self.target.goal], "baseline"]
        for i, p in enumerate(self.phases):
            bad = [c for c in p.conditions or () if c not in allowed]
            if p.kind == "closed_loop" and bad:
                raise ValueError(f"phases.{i}.conditions: {bad} cannot be chosen in closed-loop rounds for "
                                 f"target.goal '{self.target.goal}' (allowed: {allowed})")  # fmt: skip
        if self.total_trials > MAX_TRIALS:  # (before anything counts runs: there may be billions)
            raise ValueError(f"the phases hold {self.total_trials:,} trials in all; a protocol holds at most "
                             f"{MAX_TRIALS:,}")  # fmt: skip
        hours = self.scanner_minutes / 60
        if hours > MAX_SCANNER_HOURS:
            raise ValueError(f"the runs take {hours:,.1f} h of scanner time; a protocol takes at most "
                             f"{MAX_SCANNER_HOURS:g} h")  # fmt: skip
        if self.simulation.via == "export" and self.modality != "text":
            raise ValueError("simulation.via = 'export' simulates a scanner's volumes: sentence protocols only")
        top = MAX_DEVICE_SPEED.get(self.simulation.via)
        if top is not None and self.simulation.speed > top:
            raise ValueError(f"simulation.speed ({self.simulation.speed:g}) must be at most {top:g} with "
                             f"via = '{self.simulation.via}': the device's samples carry wall-clock times, where a few "
                             "milliseconds of timing error, multiplied by the speed, would shift every response "
                             "against its onset" + (" (and the rig realigns each volume as it comes)"
                                                    if self.simulation.via == "export" else ""))  # fmt: skip
        pause = self.recording.pause_after
        if pause is not None and pause < 2 * self.design.tr:
            raise ValueError(f"recording.pause_after ({pause:g} s) must be at least two volumes (2 x design.tr = "
                             f"{2 * self.design.tr:g} s): a volume comes every TR")  # fmt: skip
        fits = any(p.kind in ("baseline", "localizer") for p in self.phases) or self.twin.reference
        if any(p.kind in ("closed_loop", "evaluation") for p in self.phases) and not fits:
            raise ValueError(
                "closed_loop and evaluation phases need a baseline phase before them to fit the twin "
                "(or a twin.reference to start from)"
            )
        return self

    def acquisition(self, phase: Phase) -> str:
        """How a closed-loop phase chooses: its acquisition, but the twin's mean for an image phase's 'ucb'
        (images are synthesized by gradient under the twin; session files keep the default 'ucb')."""
        return "mean" if self.modality == "image" and phase.acquisition == "ucb" else phase.acquisition

    @property
    def total_trials(self) -> int:
        return sum(p.trials * (p.rounds if p.kind == "closed_loop" else 1) for p in self.phases)

    @property
    def candidates_needed(self) -> int:
        """Trials that each show a distinct candidate of ``stimuli``: every sentence but the localizer's; random
        baseline images (drive and suppress images are synthesized); at most ``stopping.max_trials``."""
        totals = self.condition_totals()
        if self.modality == "image":
            needed = totals.get("baseline", 0)
        else:
            needed = sum(n for c, n in totals.items() if c not in ("sentences", "nonwords"))
        return min(needed, self.stopping.max_trials or needed)  # (a session that stops early shows fewer)

    def runs(self) -> list[tuple[str, int, int]]:
        """(phase, round, trials) of every run in order (a phase's trials split into runs)."""
        out = []
        for p in self.phases:
            for r in range(p.rounds if p.kind == "closed_loop" else 1):
                left = p.trials
                while left > 0:
                    n = min(left, self.design.trials_per_run)
                    out.append((p.name, r, n))
                    left -= n
        return out

    def condition_counts(self, index: int) -> dict[str, int]:
        """Trials of each condition in run ``index`` of :meth:`runs` (conditions named as in ``Phase.conditions``;
        a localizer's alternating blocks as ``sentences`` and ``nonwords``).

        A run's leftover trials go to the conditions after the ones that earlier runs of the same
        phase and round gave theirs to, so a phase stays balanced when its runs do not divide
        (20 + 10 trials over three conditions: 7/7/6 + 3/3/4).
        """
        runs = self.runs()
        name, round_, n = runs[index]
        phase = next(p for p in self.phases if p.name == name)
        if phase.kind == "baseline":
            return {"baseline": n}
        if phase.kind == "localizer":
            order = self.localizer_order(n)
            return {c: order.count(c) for c in ("sentences", "nonwords")}
        conditions = phase.conditions_for(self.target.goal)
        k = len(conditions)
        start = sum(m % k for p, r, m in runs[:index] if p == name and r == round_)
        return {c: n // k + ((i - start) % k < n % k) for i, c in enumerate(conditions)}

    def localizer_order(self, n: int) -> list[str]:
        """The conditions of a localizer run's n trials: blocks of ``block_size``, sentences first, alternating."""
        b = self.design.block_size
        return [("sentences", "nonwords")[(i // b) % 2] for i in range(n)]

    def condition_totals(self) -> dict[str, int]:
        """Trials of each condition over the whole protocol."""
        out: dict[str, int] = {}
        for index in range(len(self.runs())):
            for c, n in self.condition_counts(index).items():
                out[c] = out.get(c, 0) + n
        return out

    def run_seconds(self, trials: int) -> float:
        return 2 * self.design.rest + trials * self.design.iti

    @property
    def scanner_minutes(self) -> float:
        return sum(self.run_seconds(n) for _, _, n in self.runs()) / 60


def _where(loc: tuple) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file; ProtocolError lists every problem with its field."""
    path = Path(path)
    if not path.exists():
        shipped = PROTOCOLS / path.name
        if shipped.exists() and not path.is_absolute() and len(path.parts) == 1:
            path = shipped
        else:
            raise ProtocolError(f"protocol file '{path}' does not exist")
    if path.is_dir():
        raise ProtocolError(f"protocol '{path}' is a folder, not a protocol file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProtocolError(f"protocol '{path}' cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"protocol '{path}' is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"protocol '{path}' is not valid TOML: {exc}") from None
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                msg = f"must be one of {err['ctx']['expected']}, got {err['input']!r}"
            elif err["type"] == "extra_forbidden":
                msg = "is not a protocol field (misspelt?)"
            elif err["type"] == "missing":
                msg = "is required"
            lines.append(f"  {_where(err['loc'])}: {msg}")
        raise ProtocolError(f"protocol '{path}' has {len(lines)} problem(s):\n" + "\n".join(lines)) from None
    files = {k: v for k, v in protocol.twin.model_dump().items() if v and not Path(v).is_absolute()}
    if files:  # from the protocol's folder, wherever it is run from
        resolved = {k: str((path.parent / v).resolve()) for k, v in files.items()}
        protocol = protocol.model_copy(update={"twin": protocol.twin.model_copy(update=resolved)})
    return protocol


def load_prior(protocol: Protocol, features: Any, rois: list[str]) -> Any:
    """The protocol's prior (:class:`twin.Prior`) with a target per ROI, checked against the session's
    features (None if it has none).

    Raises ProtocolError naming ``twin.prior``: a missing or unreadable file, a prior for other
    features, or one whose targets do not match the ROIs (see :func:`prior_for_rois`)."""
    if not protocol.twin.prior:
        return None
    from twin import Prior, TwinError

    where = f"twin.prior '{protocol.twin.prior}'"
    try:
        prior = Prior.load(protocol.twin.prior)
        if features is not None:  # else the first fit checks it
            prior.check_compatible(features.plan, features.model_id, "twin.prior")
    except TwinError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    return prior_for_rois(prior, rois, where)


def prior_for_rois(prior: Any, rois: list[str], where: str = "twin.prior") -> Any:
    """The prior with a target per ROI: its only target for each, or each ROI's target of the same name."""
    from twin.hyperparameters import REFERENCE_BLOCK

    if REFERENCE_BLOCK in prior.hyperparameters.alphas:
        raise ProtocolError(f"{where} comes from a twin fit with a reference twin: its hyperparameters cover a "
                            "block that the session's twins do not have; use a twin fit without one")  # fmt: skip
    if len(prior.targets) == 1:
        return prior.for_targets([0] * len(rois), rois)
    missing = [r for r in rois if r not in prior.targets]
    if missing:
        raise ProtocolError(f"{where} has targets {prior.targets}, not {missing} (a prior with one target serves all)")
    return prior.for_targets([prior.targets.index(r) for r in rois], rois)


def load_reference(protocol: Protocol, features: Any, rois: list[str]) -> tuple[Any, bytes] | None:
    """The protocol's reference twin, checked against the session's features and ROIs, and the
    bytes of its file as read (None if it has none).

    Raises ProtocolError naming ``twin.reference``: a missing or unreadable file, a twin of
    other features, or one that cannot stand for the ROIs (see :func:`reference_for_rois`)."""
    if not protocol.twin.reference:
        return None
    from twin import Twin, TwinError

    where = f"twin.reference '{protocol.twin.reference}'"
    try:
        data = Path(protocol.twin.reference).read_bytes()
    except FileNotFoundError:
        raise ProtocolError(f"{where}: the file does not exist") from None
    except OSError as exc:
        raise ProtocolError(f"{where}: the file cannot be read ({exc.strerror or exc})") from None
    try:
        ref = Twin.from_bytes(data, protocol.twin.reference)
        if features is not None:  # else the first fit or pool scoring checks it
            ref.check_compatible(features.plan, features.model_id, "twin.reference")
    except TwinError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    reference_for_rois(ref, rois, protocol)  # fails now rather than at the first choice
    return ref, data


def reference_for_rois(reference: Any, rois: list[str], protocol: Protocol) -> Any:
    """The reference twin as the session's twin before any data: a column per ROI.

    An ROI takes the reference's target of the same name; the target ROI may instead take a
    one-target reference's only target. Other ROIs then follow the target ROI's prediction, so the
    goal 'control' (which holds them) needs the reference to predict each of them by name."""
    target = protocol.target.rois[0]
    by_name = {name: i for i, name in enumerate(reference.targets)}
    if target not in by_name and len(reference.targets) != 1:
        raise ProtocolError(f"twin.reference predicts {reference.targets}: none is the target ROI '{target}' "
                            "(a reference with one target stands for it)")  # fmt: skip
    own = by_name.get(target, 0)
    unmatched = [r for r in rois if r not in by_name and r != target]
    if protocol.target.goal == "control" and unmatched:
        raise ProtocolError(f"twin.reference predicts {reference.targets}, not {unmatched}: before a baseline, "
                            "the goal 'control' needs a reference that predicts every ROI it holds")  # fmt: skip
    return reference.for_targets([by_name.get(r, own) if r != target else own for r in rois], rois)
