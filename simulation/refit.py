"""Refit the simulated language subjects' weights from ../shared/data (run: python -m simulation.refit
[--population]).

Writes simulation/language.npz: ridge weights from the subject's features
(MiniLM layer 3, word frequency, length) to the Pereira 2018 language-network
responses, and the shape and normalization of its saturating output. Weights only, no data.
With ``--population``, simulation/population.npz: the same for every member of
:mod:`simulation.population` (its basis's group weights plus its deviation, its shape).

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


def shape_gains(z: np.ndarray, shape: str) -> tuple[float, float]:
    """(gain up, gain down) of a response shape (see :mod:`simulation.population`) for linear responses ``z``:
    the slow side's gain puts its bound at the nonword level (below) or as far above the mean (above)."""

    def bound(up: float, down: float, side: int) -> float:  # the response as z -> side * inf
        g = saturate(z, up, down)
        limit = 1 / up if side > 0 else -1 / down
        return BASELINE + SIGNAL_SD * (limit - g.mean()) / g.std()

    reach = BASELINE - NONWORD_LEVEL  # how far the slow side's bound lies from the mean sentence's response
    if shape == "top":
        return GAIN_UP, brentq(lambda d: bound(GAIN_UP, d, -1) - NONWORD_LEVEL, 0.05, 2.0)
    if shape == "bottom":
        return brentq(lambda u: bound(u, GAIN_UP, 1) - (BASELINE + reach), 0.05, 2.0), GAIN_UP
    gain = brentq(lambda g: bound(g, g, -1) - NONWORD_LEVEL, 0.05, 2.0)
    return gain, gain


def population() -> None:
    """Write every population member's weights and shape (simulation/population.npz)."""
    from simulation.population import AGREEMENT, MEMBERS
    from simulation.population import PARAMS as POPULATION

    data = load_dataset(DATA)
    y = data.responses[:, 0]
    out = {}
    for layer in sorted({m.layer for m in MEMBERS.values()}):
        X = subject_features(data.sentences, layer)
        loo = loo_ridge(X, y)
        group = RidgeReadout.fit(X, y, loo.best_alpha)
        coef, intercept = group.coef_[:, 0], float(group.intercept_[0])
        print(f"MiniLM layer {layer}: LOO r of the group's linear part on Pereira {loo.r()[0]:.3f}")
        Xc = X - X.mean(0)
        for name, m in MEMBERS.items():
            if m.layer != layer:
                continue
            mine = coef
            if m.seed is not None:  # the group's weights plus a deviation, scaled to the agreement
                # (isotropic over standardized features: no feature's units decide how much it deviates)
                delta = np.random.default_rng(m.seed).normal(0, 1, coef.shape) / X.std(0).clip(1e-12)
                shared, own = Xc @ coef, Xc @ delta

                def agreement(scale: float, shared=shared, own=own) -> float:
                    return np.corrcoef(shared, shared + scale * own)[0, 1] - AGREEMENT

                mine = coef + brentq(agreement, 0.0, 100.0) * delta
            lin = X @ mine + intercept
            z = (lin - lin.mean()) / lin.std()
            up, down = shape_gains(z, m.shape)
            g = saturate(z, up, down)
            small = X[:, -3:]
            md_coef = np.array([-1.0, 0.0, 1.0]) / small.std(0)
            md = small @ md_coef
            params = dict(coef=mine, intercept=intercept, z_mean=lin.mean(), z_sd=lin.std(), gain_up=up,
                          gain_down=down, g_mean=g.mean(), g_sd=g.std(), md_coef=md_coef, md_mean=md.mean(),
                          md_sd=md.std())  # fmt: skip
            out.update({f"{name}/{k}": np.asarray(v) for k, v in params.items()})
            print(f"  {name}: agreement with the group {np.corrcoef(Xc @ coef, Xc @ mine)[0, 1]:.2f}, gains "
                  f"up {up:.3f} down {down:.3f} ({m.describe()})")  # fmt: skip
    np.savez(POPULATION, **out)
    print(f"wrote {POPULATION}")


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
    if not DATA.exists():
        sys.exit(f"reference data not found at {DATA}")
    population() if "--population" in sys.argv[1:] else main()
