"""Ridge regression for encoding models.

* :func:`loo_ridge` — exact leave-one-out predictions for a whole grid of alphas at
  once (eigendecomposition of the kernel), used to choose alpha per target and to
  compare feature sets by inner CV without refitting.
* :class:`RidgeReadout` — a fitted multi-target ridge kept as mergeable sufficient
  statistics (counts, means, centred co-moments), so new (stimulus, response) pairs
  update it exactly without refitting, with a Bayesian predictive variance.

Features are standardized with statistics of the training rows only; the intercept
is not penalized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHAS = np.logspace(-2, 7, 28)


def standardize_fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (population); constant columns get sd 1."""
    mean = X.mean(0)
    sd = X.std(0)
    sd[sd < 1e-12] = 1.0
    return mean, sd


@dataclass
class LooResult:
    """Leave-one-out results over an alpha grid for every target."""

    alphas: np.ndarray
    predictions: np.ndarray  # (n_alphas, n, t)
    mse: np.ndarray  # (n_alphas, t)
    best: np.ndarray  # (t,) index of the best alpha per target
    y: np.ndarray  # (n, t) the responses

    @property
    def best_alpha(self) -> np.ndarray:
        return self.alphas[self.best]

    @property
    def best_predictions(self) -> np.ndarray:
        """(n, t) LOO predictions, each target at its own best alpha."""
        t = np.arange(self.predictions.shape[2])
        return self.predictions[self.best, :, t].T

    def r(self) -> np.ndarray:
        """LOO Pearson r per target at the best alpha."""
        return pearson_columns(self.best_predictions, self.y)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of two (n, t) arrays."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, 0.0)


def loo_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    column_weights: np.ndarray | None = None,
) -> LooResult:
    """Exact LOO predictions of standardized ridge with intercept, for every alpha and target.

    ``column_weights`` multiplies standardized columns (a per-block prior scale, as in
    banded ridge): a weight g divides that column's penalty by g squared.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n = X.shape[0]
    mean, sd = standardize_fit(X)
    Xs = (X - mean) / sd
    if column_weights is not None:
        Xs = Xs * column_weights
    y_mean = Y.mean(0)
    Yc = Y - y_mean
    K = Xs @ Xs.T
    s, U = np.linalg.eigh(K)
    s = np.clip(s, 0.0, None)
    UtY = U.T @ Yc  # (n, t)
    U2 = U * U
    alphas = np.asarray(alphas, np.float64)
    preds = np.empty((len(alphas), n, Y.shape[1]))
    mse = np.empty((len(alphas), Y.shape[1]))
    for k, a in enumerate(alphas):
        shrink = s / (s + a)
        fitted = U @ (shrink[:, None] * UtY)
        h = U2 @ shrink + 1.0 / n
        resid = (Yc - fitted) / (1.0 - h)[:, None]
        preds[k] = Y - resid
        mse[k] = (resid**2).mean(0)
    best = mse.argmin(0)
    return LooResult(alphas, preds, mse, best, Y)


class RidgeReadout:
    """Multi-target ridge held as sufficient statistics; exact online updates.

    ``n``, ``mean_x``, ``mean_y`` and the centred co-moments ``sxx`` (p, p),
    ``sxy`` (p, t), ``syy`` (t,) determine the fit: merging a batch of new rows
    and re-solving gives the same weights as refitting on all rows.
    """

    def __init__(self, n_features: int, n_targets: int, alphas: np.ndarray | float) -> None:
        self.n = 0
        self.mean_x = np.zeros(n_features)
        self.mean_y = np.zeros(n_targets)
        self.sxx = np.zeros((n_features, n_features))
        self.sxy = np.zeros((n_features, n_targets))
        self.syy = np.zeros(n_targets)
        self.alphas = np.broadcast_to(np.asarray(alphas, np.float64), (n_targets,)).copy()
        self._solution: dict[str, np.ndarray] | None = None

    @property
    def n_features(self) -> int:
        return self.sxx.shape[0]

    @property
    def n_targets(self) -> int:
        return self.sxy.shape[1]

    @classmethod
    def fit(cls, X: np.ndarray, Y: np.ndarray, alphas: np.ndarray | float) -> RidgeReadout:
        """Fit on (n, p) features and (n, t) responses with one alpha per target."""
        Y = np.asarray(Y, np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        model = cls(X.shape[1], Y.shape[1], alphas)
        model.update(X, Y)
        return model

    def update(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Merge new rows into the statistics (Chan et al.'s pairwise update)."""
        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.ndim != 2 or X.shape[1] != self.n_features or Y.shape != (X.shape[0], self.n_targets):
            raise ValueError(
                f"update expects X (m, {self.n_features}) and Y (m, {self.n_targets}); got {X.shape} and {Y.shape}"
            )
        m = X.shape[0]
        if m == 0:
            return
        bx, by = X.mean(0), Y.mean(0)
        Xc, Yc = X - bx, Y - by
        n = self.n + m
        dx, dy = bx - self.mean_x, by - self.mean_y
        w = self.n * m / n
        self.sxx += Xc.T @ Xc + w * np.outer(dx, dx)
        self.sxy += Xc.T @ Yc + w * np.outer(dx, dy)
        self.syy += (Yc * Yc).sum(0) + w * dy * dy
        self.mean_x += dx * (m / n)
        self.mean_y += dy * (m / n)
        self.n = n
        self._solution = None

    def set_alphas(self, alphas: np.ndarray | float) -> None:
        self.alphas = np.broadcast_to(np.asarray(alphas, np.float64), (self.n_targets,)).copy()
        self._solution = None

    def _solve(self) -> dict[str, np.ndarray]:
        if self._solution is not None:
            return self._solution
        if self.n < 2:
            raise ValueError("a ridge readout needs at least 2 training rows")
        sd = np.sqrt(np.diag(self.sxx) / self.n)
        sd[sd < 1e-12] = 1.0
        C = self.sxx / np.outer(sd, sd)
        B = self.sxy / sd[:, None]
        lam, V = np.linalg.eigh(C)
        lam = np.clip(lam, 0.0, None)
        VtB = V.T @ B
        W = np.empty_like(B)
        sigma2 = np.empty(self.n_targets)
        for t, a in enumerate(self.alphas):
            coef = VtB[:, t] / (lam + a)
            w = V @ coef
            W[:, t] = w
            # Residual sum of squares plus the prior term, from the statistics alone.
            rss = self.syy[t] - 2 * w @ B[:, t] + (coef * coef * lam).sum()
            sigma2[t] = max(rss + a * (w @ w), 0.0) / self.n
        self._solution = {"sd": sd, "lam": lam, "V": V, "W": W, "sigma2": sigma2}
        return self._solution

    @property
    def coef_(self) -> np.ndarray:
        """Weights on raw (unstandardized) features, (p, t)."""
        sol = self._solve()
        return sol["W"] / sol["sd"][:, None]

    @property
    def intercept_(self) -> np.ndarray:
        return self.mean_y - self.mean_x @ self.coef_

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted responses, (m, t)."""
        X = np.asarray(X, np.float64)
        return X @ self.coef_ + self.intercept_

    def predict_sd(self, X: np.ndarray, noise: bool = True) -> np.ndarray:
        """Bayesian ridge predictive SD per stimulus and target, (m, t).

        With ``noise=False`` only the uncertainty of the weights (epistemic part).
        """
        sol = self._solve()
        Z = ((np.asarray(X, np.float64) - self.mean_x) / sol["sd"]) @ sol["V"]
        Z2 = Z * Z
        out = np.empty((Z.shape[0], self.n_targets))
        for t, a in enumerate(self.alphas):
            var_w = Z2 @ (1.0 / (sol["lam"] + a))
            out[:, t] = np.sqrt(sol["sigma2"][t] * (float(noise) + 1.0 / self.n + var_w))
        return out

    def draw(self, rng: np.random.Generator) -> FixedReadout:
        """One draw of the weights and intercepts from their Bayesian ridge posterior (the predictive
        SD's epistemic part, jointly over features: not trial noise), as a readout of its own."""
        sol = self._solve()
        lam, V, sd = sol["lam"], sol["V"], sol["sd"]
        coef = np.empty((self.n_features, self.n_targets))
        intercept = np.empty(self.n_targets)
        for t, a in enumerate(self.alphas):
            scale = np.sqrt(sol["sigma2"][t])
            w = sol["W"][:, t] + V @ (scale / np.sqrt(lam + a) * rng.standard_normal(len(lam)))
            coef[:, t] = w / sd
            intercept[t] = self.mean_y[t] - self.mean_x @ coef[:, t] + scale / np.sqrt(self.n) * rng.standard_normal()
        return FixedReadout(coef, intercept, self.mean_y.copy())

    def state(self) -> dict[str, np.ndarray]:
        """The sufficient statistics and alphas, for saving."""
        return {
            "n": np.array(self.n),
            "mean_x": self.mean_x,
            "mean_y": self.mean_y,
            "sxx": self.sxx,
            "sxy": self.sxy,
            "syy": self.syy,
            "alphas": self.alphas,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> RidgeReadout:
        model = cls(state["sxx"].shape[0], state["sxy"].shape[1], state["alphas"])
        model.n = int(state["n"])
        for key in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
            setattr(model, key, np.array(state[key], np.float64))
        return model

    def gcv_select(self, alphas: np.ndarray = DEFAULT_ALPHAS) -> np.ndarray:
        """Re-choose alpha per target by generalized cross-validation from the statistics alone."""
        self.set_alphas(self.alphas)  # invalidate
        sol = self._solve()
        lam, V = sol["lam"], sol["V"]
        B = self.sxy / sol["sd"][:, None]
        VtB2 = (V.T @ B) ** 2
        scores = np.empty((len(alphas), self.n_targets))
        for k, a in enumerate(alphas):
            rss = self.syy - (VtB2 * ((lam + 2 * a) / (lam + a) ** 2)[:, None]).sum(0)
            df = (lam / (lam + a)).sum() + 1.0
            scores[k] = self.n * rss / max(self.n - df, 1e-9) ** 2
        best = np.asarray(alphas)[scores.argmin(0)]
        self.set_alphas(best)
        return best


class FixedReadout:
    """A readout with given weights and no uncertainty: one posterior draw of a :class:`RidgeReadout`."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, mean_y: np.ndarray) -> None:
        self.coef_, self.intercept_, self.mean_y = coef, intercept, mean_y

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Responses (m, t) under these weights."""
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_

    def predict_sd(self, X: np.ndarray, noise: bool = True) -> np.ndarray:
        """Zero: the weights are given (a twin of drawn readouts keeps its trial noise, ``Twin.noise_var``)."""
        return np.zeros((len(X), self.coef_.shape[1]))
