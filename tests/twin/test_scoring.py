"""Folds, bootstrap confidence intervals and noise ceilings."""

import numpy as np
import pytest

from twin.scoring import kfold, ncsnr, nsd_ceiling, pearson, score, split_half_ceiling


def test_kfold_partitions_and_is_seeded():
    folds = kfold(103, 10, seed=4)
    joined = np.concatenate(folds)
    assert sorted(joined) == list(range(103))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, kfold(103, 10, seed=4), strict=False))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, kfold(103, 10, seed=5), strict=False))


def test_grouped_folds_never_split_a_group():
    groups = np.repeat(np.arange(23), np.arange(1, 24) % 5 + 1)
    folds = kfold(len(groups), 5, seed=0, groups=groups)
    assert sorted(np.concatenate(folds)) == list(range(len(groups)))
    for g in np.unique(groups):
        assert sum(np.isin(np.flatnonzero(groups == g), f).any() for f in folds) == 1


def test_bootstrap_interval_brackets_r():
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    b = a + rng.normal(size=300)
    s = score(a, b)
    assert s.ci_low < s.r < s.ci_high
    assert s.r == pytest.approx(pearson(a, b))
    assert s.r == pytest.approx(1 / np.sqrt(2), abs=0.08)


def test_noise_ceilings_recover_a_known_snr():
    rng = np.random.default_rng(1)
    n, k, snr = 2000, 4, 0.5
    signal = rng.normal(0, snr, n)
    repeats = [signal[i] + rng.normal(0, 1, k) for i in range(n)]
    assert ncsnr(repeats) == pytest.approx(snr, abs=0.05)
    # Correlation of the k-repeat mean with the true signal.
    expected = np.sqrt(snr**2 / (snr**2 + 1 / k))
    assert nsd_ceiling(ncsnr(repeats), k) == pytest.approx(expected, abs=0.03)
    assert split_half_ceiling(repeats, n_splits=10) == pytest.approx(expected, abs=0.05)


def test_split_half_needs_repeats():
    with pytest.raises(ValueError, match="at least 2 repeats"):
        split_half_ceiling([np.array([1.0]), np.array([1.0, 2.0])])
