"""Refit the default language subject's weights from ../shared/data (run: python -m hardware.subjects.refit).

Writes hardware/subjects/language.npz: ridge weights from the subject's features
(MiniLM layer 3, word frequency, length) to the Pereira 2018 language-network
responses, and the normalization of its saturating output. Weights only, no data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hardware.subject import PARAMS, subject_features
from twin import RidgeReadout, load_dataset, loo_ridge

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pereira2018_language_network.csv"
GAIN = 1.2


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
    g = np.tanh(GAIN * z)
    small = X[:, -3:]  # frequency, words, characters: difficulty drives the control region
    md_coef = np.array([-1.0, 0.0, 1.0]) / small.std(0)
    md = small @ md_coef
    np.savez(
        PARAMS, coef=coef, intercept=intercept, z_mean=lin.mean(), z_sd=lin.std(), gain=GAIN,
        g_mean=g.mean(), g_sd=g.std(), md_coef=md_coef, md_mean=md.mean(), md_sd=md.std(),
    )  # fmt: skip
    print(f"LOO r of the subject's linear part on Pereira: {loo.r()[0]:.3f}; wrote {PARAMS}")


if __name__ == "__main__":
    main()
