"""Acquisition rules: how a closed loop ranks candidates by what the twin knows, each rule in one place.

A rule says which twin to rank by (the twin, or one draw from its posterior) and what it adds to a candidate's
predicted response (nothing, or some SDs of the predicted mean). :class:`~stimulus_synthesis.Goal` names its
rule; :func:`~stimulus_synthesis.objective`, corpus selection and image synthesis ask the rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class AcquisitionRule:
    """The base: rank by the twin's predicted mean (``mean``: pure exploitation)."""

    name: ClassVar[str] = "mean"
    needs_sd: ClassVar[bool] = False  # ranks by the SD of the predicted mean too (``predict(..., noise=False)``)

    def ranking_twin(self, twin: Any, rng: np.random.Generator) -> Any:
        """The twin whose predictions rank the candidates."""
        return twin

    def bonus(self, sd: np.ndarray | None, beta: float) -> np.ndarray | float:
        """What a candidate gains on top of its predicted response in the goal's direction."""
        return 0.0


class Mean(AcquisitionRule):
    """Rank by the twin's predictions."""


class UCB(AcquisitionRule):
    """Upper confidence bound: add ``beta`` SDs of the predicted mean in the goal's direction (the twin's
    uncertainty about its prediction, not the trial noise)."""

    name = "ucb"
    needs_sd = True

    def bonus(self, sd: np.ndarray | None, beta: float) -> np.ndarray | float:
        return 0.0 if sd is None else beta * sd


class Thompson(AcquisitionRule):
    """Thompson sampling: rank by the predictions of one draw from the twin's posterior (``Twin.sample``: its
    weights drawn jointly, so candidates alike in features move together)."""

    name = "thompson"

    def ranking_twin(self, twin: Any, rng: np.random.Generator) -> Any:
        return twin.sample(rng)


RULES: dict[str, AcquisitionRule] = {rule.name: rule for rule in (Mean(), UCB(), Thompson())}


def acquisition_rule(name: str) -> AcquisitionRule:
    """The rule called ``name`` (mean, ucb, thompson)."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown acquisition rule {name!r}: give one of {', '.join(RULES)}") from None
