"""Response estimation: HRF, LSS trial betas, condition betas, online vs offline, electrophysiology."""

import numpy as np
import pytest

from acquisition import (
    TrialEstimator,
    average_repeats,
    condition_betas,
    event_regressors,
    hrf,
    hrf_integral,
    lss_betas,
    window_rates,
)
from acquisition.glm import ar1_coefficient

from ..support.simdata import simulate_run


def test_canonical_hrf_shape():
    t = np.arange(0, 40, 0.01)
    assert t[np.argmax(hrf(t))] == pytest.approx(5.0, abs=0.05)
    assert hrf(t).sum() * 0.01 == pytest.approx(1.0, abs=1e-3)
    assert hrf_integral(np.array([200.0]))[0] == pytest.approx(1.0)
    block = event_regressors(np.array([60.0]), np.array([0.0]), np.array([60.0]))
    assert block[0, 0] == pytest.approx(1.0, abs=0.01)  # a long block plateaus at 1


def test_lss_recovers_amplitudes_at_high_snr():
    """SNR 10 (signal SD / noise SD), with drift; r over all 300 trials of 5 runs."""
    betas, truth, rs = [], [], []
    for seed in range(5):
        t, Y, onsets, durations, amp = simulate_run(np.random.default_rng(seed), snr=10)
        beta, se, _ = lss_betas(t, Y, onsets, durations, ar1=True)
        assert (se > 0).all()
        betas.append(beta[:, 0])
        truth.append(amp)
        rs.append(np.corrcoef(beta[:, 0], amp)[0, 1])
    r = np.corrcoef(np.concatenate(betas), np.concatenate(truth))[0, 1]
    print(f"r = {r:.3f}; per run:", np.round(rs, 3))
    assert r >= 0.95


def test_lss_is_unbiased_at_realistic_snr():
    """Single-participant SNR of the language network (shared data README): 0.3."""
    rng = np.random.default_rng(42)
    errors = []
    for _ in range(20):
        t, Y, onsets, durations, amp = simulate_run(rng, snr=0.3)
        beta, _, _ = lss_betas(t, Y, onsets, durations, ar1=True)
        errors.append(beta[:, 0] - amp)
    errors = np.concatenate(errors)
    sem = errors.std(ddof=1) / np.sqrt(len(errors))
    print(f"mean error {errors.mean():.4f}, standard error {sem:.4f}")
    assert abs(errors.mean()) <= 2 * sem


@pytest.mark.parametrize("ar1", [False, True])
def test_online_estimates_end_equal_offline(ar1):
    t, Y, onsets, durations, _ = simulate_run(np.random.default_rng(3), snr=2, n_trials=30)
    online = TrialEstimator(ar1=ar1)
    seen_provisional = False
    for k, (ti, y) in enumerate(zip(t, Y, strict=True)):
        for trial, onset in enumerate(onsets):  # a trial is known once it has been presented
            if onset <= ti and trial not in online.trials:
                online.add_trial(trial, onset, durations[trial])
        online.add_volume(ti, y)
        est = online.estimate()
        if est is not None and k < len(t) - 20:
            seen_provisional |= bool(est.provisional[-1])
    trials = {i: (o, d) for i, (o, d) in enumerate(zip(onsets, durations, strict=True))}
    offline = TrialEstimator.offline(t, Y, trials, ar1=ar1)
    assert seen_provisional and not est.provisional.any()
    assert np.array_equal(est.labels, offline.labels)
    assert np.allclose(est.beta, offline.beta, atol=1e-8, rtol=0)
    assert np.allclose(est.se, offline.se, atol=1e-8, rtol=0)


def test_online_rejects_time_going_back():
    est = TrialEstimator()
    est.add_volume(2.0, [1.0])
    with pytest.raises(ValueError, match="not after"):
        est.add_volume(2.0, [1.0])


def test_condition_betas_in_a_blocked_design():
    rng = np.random.default_rng(0)
    tr, block = 2.0, 18.0
    conditions = ["D", "B", "S"] * 8
    rng.shuffle(conditions)
    onsets = 10 + np.arange(len(conditions)) * (block + 12.0)
    t = np.arange(int((onsets[-1] + 50) / tr)) * tr
    truth = {"D": 1.5, "B": 1.0, "S": 0.4}
    X = event_regressors(t, onsets, np.full(len(onsets), block))
    y = X @ np.array([truth[c] for c in conditions]) + 0.001 * t + rng.normal(0, 0.3, len(t))
    est = condition_betas(t, y, onsets, np.full(len(onsets), block), conditions, ar1=True)
    got = dict(zip(est.labels, est.beta[:, 0], strict=True))
    se = dict(zip(est.labels, est.se[:, 0], strict=True))
    assert got["D"] > got["B"] > got["S"]
    for c in truth:
        assert abs(got[c] - truth[c]) < 4 * se[c]


def test_ar1_coefficient():
    rng = np.random.default_rng(1)
    e = np.zeros(20000)
    for i in range(1, len(e)):
        e[i] = 0.6 * e[i - 1] + rng.normal()
    assert ar1_coefficient(e[:, None])[0] == pytest.approx(0.6, abs=0.02)


def test_ephys_rates_and_repeats():
    rng = np.random.default_rng(0)
    width = 0.01
    bins = np.arange(0, 60, width)
    onsets = np.arange(1.0, 59.0, 0.5)
    stim = np.arange(len(onsets)) % 4
    evoked = np.array([[10, 0], [20, 5], [40, 10], [0, 30]], float)  # spikes/s per stimulus, 2 sites
    rate = np.full((len(bins), 2), 5.0)
    for o, s in zip(onsets, stim, strict=True):
        rate[(bins >= o + 0.05) & (bins < o + 0.25)] += evoked[s]
    counts = rng.poisson(rate * width)
    rates = window_rates(bins, counts, width, onsets)
    avg = average_repeats(stim, rates)
    assert list(avg.n) == [29, 29, 29, 29]
    assert np.all(np.abs(avg.mean - evoked) < 4 * avg.se + 1e-9)
    with pytest.raises(ValueError, match=r"window \(100.050-100.250 s\) overlaps no bin"):
        window_rates(bins, counts, width, [100.0])
    # Windows off the bin grid take each bin in proportion to its overlap: for the same counts, shifting
    # the windows by half a bin gives the mean of the two neighbouring grid-aligned windows' rates.
    half = window_rates(bins, counts, width, onsets + width / 2, window=(0.0, 0.1), baseline=None)
    grid = [window_rates(bins, counts, width, onsets + d, window=(0.0, 0.1), baseline=None) for d in (0, width)]
    ends = [window_rates(bins, counts, width, onsets + d, window=(0.0, width), baseline=None) for d in (0, 0.1)]
    assert np.allclose(half, grid[0] + (ends[1] - ends[0]) * width / 0.1 / 2)
    gap = np.ones(len(bins), bool)
    gap[(bins >= 10.0) & (bins < 10.05)] = False  # 50 ms unrecorded: a window over it uses the rest
    partial = window_rates(bins[gap], counts[gap], width, [9.95], window=(0.0, 0.2), baseline=None)
    kept = (bins >= 9.95 - 1e-9) & (bins < 10.15 - 1e-9) & gap
    assert np.allclose(partial[0], counts[kept].sum(0) / (kept.sum() * width))
    with pytest.raises(ValueError, match="counts must be"):
        window_rates(bins, counts[:10], width, onsets)
