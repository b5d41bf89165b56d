"""A population of simulated participants for sentences: people who differ from the group, and from each other.

Each member is a language subject (:class:`~simulation.language.LanguageSubject`: its own features through a
saturating output, the single-participant signal and noise of Tuckute et al. 2024) made from

* a **feature basis**: all-MiniLM-L6-v2 layer 3 (as the default subject) or layer 6 (its last), each with word
  frequency and length, fit by ridge to the Pereira 2018 language-network responses (the group's weights);
* an **individual deviation**: the group's weights plus a random deviation (seeded per member; independent normal
  per standardized feature, so no feature's units decide how much it deviates), scaled so that the member's linear
  response to the Pereira sentences correlates :data:`AGREEMENT` with the group's. Tuckute et al.
  2024's encoding model, fit on other participants, predicted a held-out participant's single-trial responses at
  r of about 0.2; at the single-participant SNR of 0.30 (signal SD 0.188, noise SD 0.623) a perfect model of that
  participant would reach r = 0.188 / sqrt(0.188^2 + 0.623^2) = 0.289, so the group's true response agrees with
  a member's at about 0.2 / 0.289 = 0.69;
* a **response shape**: saturating fast at the top and slowly towards the nonword level at the bottom (``top``, as
  the default subject and Tuckute's participants), the mirror image (``bottom``: fast at the bottom, slowly
  towards a ceiling as far above the mean as the nonword level is below), or the same on both sides
  (``symmetric``).

The weights (no data) are in ``population.npz``, written by ``python -m simulation.refit --population``. Members
are registered as subjects named ``population:NAME`` (``neurotwin simulate --subject population:p05``); ``p01``
is the default subject itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .language import LanguageSubject

PARAMS = Path(__file__).with_name("population.npz")
AGREEMENT = 0.69  # correlation of a member's linear response with the group's, on the Pereira sentences
SHAPES = ("top", "bottom", "symmetric")


@dataclass(frozen=True)
class Member:
    """A member's make-up: its feature basis (MiniLM layer), response shape, and deviation seed (None: the group's
    own weights)."""

    layer: int
    shape: str
    seed: int | None

    def describe(self) -> str:
        """The member in words."""
        who = "the group's weights" if self.seed is None else f"individual weights (seed {self.seed})"
        return f"MiniLM layer {self.layer}, saturating at the {self.shape}, {who}".replace(
            "at the symmetric", "symmetrically"
        )


MEMBERS: dict[str, Member] = {
    "p01": Member(3, "top", None),  # the default subject
    "p02": Member(3, "top", 2),
    "p03": Member(3, "bottom", 3),
    "p04": Member(3, "symmetric", 4),
    "p05": Member(6, "top", 5),
    "p06": Member(6, "bottom", 6),
    "p07": Member(6, "symmetric", 7),
    "p08": Member(6, "top", None),
}


class PopulationMember(LanguageSubject):
    """One member of the population (see the module's docstring)."""

    def __init__(self, name: str, params: str | Path = PARAMS) -> None:
        if name not in MEMBERS:
            raise ValueError(f"no population member {name!r}: give one of {', '.join(MEMBERS)}")
        self.name, self.member = name, MEMBERS[name]
        self.layer = self.member.layer
        with np.load(params) as stored:
            mine = {key.split("/", 1)[1]: stored[key] for key in stored.files if key.startswith(f"{name}/")}
        if not mine:
            raise ValueError(f"{params} has no weights for {name!r}: run python -m simulation.refit --population")
        super().__init__(mine)
