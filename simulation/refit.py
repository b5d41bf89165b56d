"""Refit the default language subject's weights from ../shared/data (run: python -m simulation.refit).

Writes simulation/language.npz: ridge weights from the subject's features
(MiniLM layer 3, word frequency, length) to the Pereira 2018 language-network
responses, and the shape and normalization of its saturating output. Weights only, no data.

The output saturates fast above the mean (gain 1.2) and slowly below it, at a floor
equal to the response to nonword lists: Tuckute et al. 2024's blocked
drive/suppress sessions (../shared/data/tuckute2024) raised the response above
the baseline sentences' by 13 % and lowered it by 57 % (mean of 4 participants, raw units).
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.optimize import brentq

from kit.paths import shared_data
from simulation.language import BASELINE, NONWORD_LEVEL, PARAMS, SIGNAL_SD, saturate, subject_features
from twin import RidgeReadout, load_dataset, loo_ridge

DATA = shared_data() / "pereira2018_language_network.csv"
GAIN_UP = 1.2  # towards the ceiling


def main() -> None:
    if not DATA.exists():
        sys.exit(f"reference data not found at {DATA}")
    data = load_dataset(DATA)
    X = subject_features(data.sentences)
    y = data.responses[:, 0]
    loo = loo_ridge(X, y)
    readout = RidgeReadout.fit(X, y, loo.best_alpha)
    coef, intercept = readout.coef_[:, 0], float(readout.intercept_[0])
    lin = X @ coef + intercept
    z = (lin - lin.mean()) / lin.std()

    def floor_above_nonwords(down: float) -> float:  # the response as z -> -inf, less the nonword level
        g = saturate(z, GAIN_UP, down)
        return BASELINE + SIGNAL_SD * (-1 / down - g.mean()) / g.std() - NONWORD_LEVEL

    gain_down = brentq(floor_above_nonwords, 0.05, 2.0)
    g = saturate(z, GAIN_UP, gain_down)
    small = X[:, -3:]  # frequency, words, characters: difficulty drives the control region
    md_coef = np.array([-1.0, 0.0, 1.0]) / small.std(0)
    md = small @ md_coef
    np.savez(
        PARAMS, coef=coef, intercept=intercept, z_mean=lin.mean(), z_sd=lin.std(), gain_up=GAIN_UP, gain_down=gain_down,
        g_mean=g.mean(), g_sd=g.std(), md_coef=md_coef, md_mean=md.mean(), md_sd=md.std(),
    )  # fmt: skip
    print(f"LOO r of the subject's linear part on Pereira: {loo.r()[0]:.3f}; gain below the mean "
          f"{gain_down:.3f}; wrote {PARAMS}")  # fmt: skip


if __name__ == "__main__":
    main()
