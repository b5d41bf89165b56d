"""Choose stimuli from scored candidates: drive, suppress, hit a target value, or control one ROI,
under constraints, with a diversity limit and (for the closed loop) uncertainty-aware acquisition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .acquisition import AcquisitionRule, acquisition_rule
from .constraints import ConstraintError, Constraints
from .similarity import DIM, sentence_vectors


@dataclass(frozen=True)
class Goal:
    """What to select for.

    * ``drive`` / ``suppress``: highest / lowest predicted response of ``roi``.
    * ``target``: closest to ``value``.
    * ``control``: raise ``roi`` while holding the other ROIs near their pool means
      (penalty ``hold`` per unit of their absolute deviation).

    ``acquisition``: ``mean`` (exploit), ``ucb`` (add ``beta`` SDs of the predicted mean in the
    goal's direction: the twin's uncertainty about its prediction, ``predict(..., noise=False)``,
    not the trial noise) or ``thompson`` (rank by the predictions of one draw from the twin's
    posterior, ``Twin.sample``: its weights drawn jointly, so candidates alike in features move
    together; the caller passes that draw's predictions as ``mean``).
    """

    kind: Literal["drive", "suppress", "target", "control"] = "drive"
    roi: int = 0
    value: float = 0.0
    hold: float = 1.0
    acquisition: Literal["mean", "ucb", "thompson"] = "mean"
    beta: float = 1.0

    @property
    def rule(self) -> AcquisitionRule:
        """The acquisition rule object (:mod:`stimulus_synthesis.acquisition`)."""
        return acquisition_rule(self.acquisition)


def objective(goal: Goal, mean: np.ndarray, sd: np.ndarray | None = None) -> np.ndarray:
    """Higher is better, per candidate. ``mean``/``sd`` are (n, rois); for ``ucb``, ``sd`` is the SD of
    the predicted mean and for ``thompson``, ``mean`` a posterior draw's predictions (see :class:`Goal`)."""
    mean = np.asarray(mean, np.float64)
    mean = mean[:, None] if mean.ndim == 1 else mean
    sd = np.zeros_like(mean) if sd is None else (np.asarray(sd, np.float64).reshape(mean.shape))
    bonus = goal.rule.bonus(sd[:, goal.roi], goal.beta)
    m = mean[:, goal.roi]
    if goal.kind == "drive":
        return m + bonus
    if goal.kind == "suppress":
        return -m + bonus
    if goal.kind == "target":
        return -np.abs(m - goal.value) + bonus
    if goal.kind == "control":
        others = np.delete(mean, goal.roi, axis=1)
        return m + bonus - goal.hold * np.abs(others - others.mean(0)).sum(1)
    raise ValueError(f"unknown goal {goal.kind!r}")


@dataclass
class Selection:
    """Chosen candidate indices, best first, and why the others were passed over."""

    index: np.ndarray
    score: np.ndarray
    rejected: Counter


def select(
    sentences: list[str],
    mean: np.ndarray,
    n: int,
    goal: Goal = Goal(),
    *,
    sd: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    constraints: Constraints | None = None,
    shown: np.ndarray | Sequence[str] | None = None,
    exclude: set[str] | None = None,
    groups: Sequence[object] | None = None,
) -> Selection:
    """Greedy: the best-scoring candidates that pass the constraints and are not near-duplicates of
    each other or of already ``shown`` stimuli: cosine similarity above ``constraints.max_similarity``
    of their word and word-pair counts (:mod:`.similarity`), or of ``embeddings`` when given (then
    ``shown`` holds the shown stimuli's embeddings rather than their text). ``groups``: a label per
    candidate, at most one chosen per label (None: a group of its own), e.g. a corpus sentence and
    the sentences generated from it.
    Raises ConstraintError if fewer than n qualify."""
    constraints = constraints or Constraints()
    if len(sentences) == 0:
        raise ConstraintError("the candidate pool is empty")
    scores = objective(goal, mean, sd)
    order = np.argsort(-scores, kind="stable")
    diverse = constraints.max_similarity < 1.0 or embeddings is not None
    has_shown = shown is not None and len(shown) > 0
    if embeddings is not None:
        unit = _unit(embeddings)
        earlier = _unit(shown) if has_shown else np.zeros((0, unit.shape[1]), np.float32)

        def vector(i: int) -> np.ndarray:
            return unit[i]
    else:
        earlier = sentence_vectors(list(shown)) if has_shown else np.zeros((0, DIM), np.float32)

        def vector(i: int) -> np.ndarray:
            return sentence_vectors([sentences[i]])[0]

    kept = np.zeros((len(earlier) + n, earlier.shape[1]), np.float32)  # shown, then chosen, vectors
    kept[: len(earlier)] = earlier
    n_kept = len(earlier)
    chosen: list[int] = []
    rejected: Counter = Counter()
    seen_text = set(exclude or ())
    if groups is not None and len(groups) != len(sentences):
        raise ValueError(f"groups has {len(groups)} labels for {len(sentences)} candidates")
    taken: set = set()  # groups already chosen from
    for i in order:
        text = sentences[i]
        if text in seen_text:
            rejected["already shown or chosen"] += 1
            continue
        group = groups[i] if groups is not None else None
        if group is not None and group in taken:
            rejected["same group as a chosen one"] += 1
            continue
        problems = constraints.violations(text)
        if problems:
            rejected.update(p.split(":")[0] for p in problems)
            continue
        if diverse:
            v = vector(i)
            if n_kept and float((kept[:n_kept] @ v).max()) > constraints.max_similarity:
                rejected["near-duplicate"] += 1
                continue
            kept[n_kept] = v
            n_kept += 1
        chosen.append(int(i))
        seen_text.add(text)
        if group is not None:
            taken.add(group)
        if len(chosen) == n:
            break
    if len(chosen) < n:
        reasons = ", ".join(f"{k}: {v}" for k, v in rejected.most_common())
        raise ConstraintError(
            f"only {len(chosen)} of {len(sentences)} candidates satisfy the constraints, {n} needed "
            f"(passed over: {reasons or 'none'})"
        )
    idx = np.array(chosen)
    return Selection(idx, scores[idx], rejected)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
