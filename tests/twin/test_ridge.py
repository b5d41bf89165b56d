"""Ridge readout: exact LOO, online updates equal to batch fits, GCV, predictive SD."""

import numpy as np
import pytest

from twin.ridge import RidgeReadout, loo_ridge, standardize_fit


def _data(n=60, p=25, t=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10, p) + rng.normal(0, 5, p)
    W = rng.normal(size=(p, t))
    Y = X @ W + rng.normal(0, 3, (n, t))
    return X, Y


def _ridge_direct(X, y, alpha):
    mean, sd = standardize_fit(X)
    Xs = (X - mean) / sd
    w = np.linalg.solve(Xs.T @ Xs + alpha * np.eye(X.shape[1]), Xs.T @ (y - y.mean()))
    return lambda Z: ((Z - mean) / sd) @ w + y.mean()


def test_loo_equals_refitting_without_each_row():
    X, Y = _data(n=30, p=40)  # p > n: the dual path
    alphas = np.array([0.1, 10.0, 1000.0])
    loo = loo_ridge(X, Y, alphas)
    for k, a in enumerate(alphas):
        for i in range(0, 30, 7):
            keep = np.arange(30) != i
            # Exact LOO of a ridge whose standardization uses all rows (as the shortcut does).
            mean, sd = standardize_fit(X)
            Xs = (X - mean) / sd
            y = Y[keep, 0]
            A = np.hstack([Xs[keep], np.ones((29, 1))])
            P = np.diag([a] * X.shape[1] + [0.0])
            coef = np.linalg.solve(A.T @ A + P, A.T @ y)
            direct = np.append(Xs[i], 1.0) @ coef
            assert loo.predictions[k, i, 0] == pytest.approx(direct, abs=1e-8)


def test_loo_picks_alpha_per_target():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 10))
    Y = np.column_stack([X @ rng.normal(size=10), rng.normal(size=80)])  # signal, pure noise
    loo = loo_ridge(X, Y)
    assert loo.best_alpha[0] < loo.best_alpha[1]
    assert loo.r()[0] > 0.9


def test_fit_matches_closed_form():
    X, Y = _data()
    model = RidgeReadout.fit(X, Y, [1.0, 10.0, 100.0])
    for t, a in enumerate([1.0, 10.0, 100.0]):
        direct = _ridge_direct(X, Y[:, t], a)
        assert np.allclose(model.predict(X[:5])[:, t], direct(X[:5]), atol=1e-8)


def test_online_updates_equal_batch_fit():
    X, Y = _data(n=150)
    online = RidgeReadout.fit(X[:50], Y[:50], 5.0)
    online.predict(X[:1])  # solve once, so the update must invalidate it
    for a, b in [(50, 51), (51, 100), (100, 150)]:
        online.update(X[a:b], Y[a:b])
    batch = RidgeReadout.fit(X, Y, 5.0)
    assert online.n == 150
    assert np.allclose(online.predict(X), batch.predict(X), atol=1e-9)
    assert np.allclose(online.sxx, batch.sxx)


def test_update_rejects_wrong_shapes():
    X, Y = _data()
    model = RidgeReadout.fit(X, Y, 1.0)
    with pytest.raises(ValueError, match="update expects"):
        model.update(X[:, :3], Y)


def test_gcv_matches_brute_force():
    X, Y = _data(n=70, p=8, t=1)
    alphas = np.logspace(-2, 4, 13)
    model = RidgeReadout.fit(X, Y, 1.0)
    chosen = model.gcv_select(alphas)[0]
    scores = []
    mean, sd = standardize_fit(X)
    Xs = (X - mean) / sd
    for a in alphas:
        H = Xs @ np.linalg.solve(Xs.T @ Xs + a * np.eye(8), Xs.T) + 1.0 / 70
        resid = Y[:, 0] - Y[:, 0].mean() - (H - 1.0 / 70) @ (Y[:, 0] - Y[:, 0].mean())
        scores.append(70 * (resid @ resid) / (70 - np.trace(H)) ** 2)
    assert chosen == alphas[int(np.argmin(scores))]


def test_predictive_sd_grows_away_from_data():
    X, Y = _data(n=100, p=5, t=1)
    model = RidgeReadout.fit(X, Y, 1.0)
    near = model.predict_sd(X.mean(0, keepdims=True))[0, 0]
    far = model.predict_sd(X.mean(0, keepdims=True) + 50 * X.std(0))[0, 0]
    assert far > near > 0
    assert model.predict_sd(X[:3], noise=False).max() < near


def test_state_round_trip():
    X, Y = _data()
    model = RidgeReadout.fit(X, Y, [1.0, 2.0, 3.0])
    again = RidgeReadout.from_state(model.state())
    assert np.array_equal(again.predict(X), model.predict(X))
