"""The twin on real brain data: accuracy, online refinement, persistence, file checks."""

import h5py
import numpy as np
import pytest

from acquisition import SessionFile
from twin import (
    FeatureModelError,
    FeaturePlan,
    Prior,
    TextFeatures,
    Twin,
    TwinFileError,
    baseline_predictions,
    cross_validated_predictions,
    length_features,
    score,
)
from twin.paths import replaced_whole


@pytest.fixture(scope="module")
def pereira_blocks(pereira, feature_cache):
    features = TextFeatures(FeaturePlan(), cache=feature_cache)
    return features, features(pereira.sentences)


def test_accuracy_on_pereira_beats_length(pereira, pereira_blocks):
    """Nested 10-fold CV: every choice (alpha, layers, combination) inside the training folds."""
    _, blocks = pereira_blocks
    Y = pereira.responses
    twin_r = score(cross_validated_predictions(blocks, Y, 10, seed=0)[:, 0], Y[:, 0]).r
    length = length_features(pereira.sentences)
    length_r = max(score(baseline_predictions(length[:, [j]], Y, 10, seed=0)[:, 0], Y[:, 0]).r for j in range(2))
    print(f"twin r = {twin_r:.3f}, best length baseline r = {length_r:.3f}")
    assert twin_r >= 0.53
    assert twin_r >= length_r + 0.12


def test_online_refinement_equals_refit(pereira, pereira_blocks):
    features, _ = pereira_blocks
    s, Y = pereira.sentences, pereira.responses
    twin = Twin.fit(s[:276], Y[:276], ["response"], features=features)
    before = twin.predict(s[-20:])[0]
    twin.update(s[276:], Y[276:])
    refit = Twin.fit(s, Y, ["response"], features=features, hyperparameters=twin.hyperparameters)
    new = ["A quiet river runs past the old mill.", "Numbers were written on the wall."]
    assert np.allclose(twin.predict(new)[0], refit.predict(new)[0], atol=1e-6, rtol=0)
    assert np.allclose(twin.predict(s[-20:])[0], refit.predict(s[-20:])[0], atol=1e-6, rtol=0)
    assert not np.allclose(before, twin.predict(s[-20:])[0])  # the update changed the twin
    assert twin.n_train == 376 and len(twin.training_digests) == 376


def test_predictive_sd_and_reselection(pereira, pereira_blocks):
    features, _ = pereira_blocks
    twin = Twin.fit(pereira.sentences[:200], pereira.responses[:200], ["response"], features=features)
    _, sd = twin.predict(pereira.sentences[200:230], with_sd=True)
    assert sd.shape == (30, 1) and (sd > 0).all()
    assert sd.min() >= np.sqrt(twin.noise_var[0]) - 1e-12
    _, sd_mean = twin.predict(pereira.sentences[200:230], with_sd=True, noise=False)  # what UCB adds
    assert (sd_mean > 0).all() and np.allclose(sd_mean**2 + twin.noise_var, sd**2)
    twin.reselect_alphas()
    assert np.isfinite(twin.predict(pereira.sentences[:3])[0]).all()


def test_thompson_draws_come_jointly_from_the_posterior(pereira, pereira_blocks):
    """Twin.sample: predictions of posterior draws average to the twin's, spread by the readouts' posterior SD
    (the weights' uncertainty, each block's drawn on its own; not trial noise), and move together for alike
    sentences: one draw of the weights, not one per sentence."""
    features, blocks = pereira_blocks
    rows = lambda index: {k: v[index] for k, v in blocks.items()}  # noqa: E731
    rng = np.random.default_rng(0)
    y = pereira.responses[:150, 0] + rng.standard_normal(150) * pereira.responses[:, 0].std()  # SNR 1
    twin = Twin.fit_blocks(rows(np.arange(150)), y, ["lang"], features.plan, features.model_id)
    held = rows(np.arange(150, 376))
    mean, _ = twin.predict_blocks(held, with_sd=True)
    readouts = zip(twin.stack_weights, twin.readouts.items(), strict=True)
    parts = [w[0] * r.predict_sd(held[k], noise=False)[:, 0] for w, (k, r) in readouts]
    epistemic = np.sqrt(np.sum(np.square(parts), axis=0))
    draws = np.stack([twin.sample(np.random.default_rng(i)).predict_blocks(held)[0][:, 0] for i in range(400)])
    assert np.abs(draws.mean(0) - mean[:, 0]).max() < 4 * epistemic.max() / np.sqrt(400)
    ratio = draws.std(0) / epistemic
    assert 0.85 < np.median(ratio) < 1.15 and ratio.min() > 0.7 and ratio.max() < 1.3
    assert epistemic.max() < 0.5 * np.sqrt(twin.noise_var[0])  # trial noise would have spread them far more
    # The two held-out sentences closest in the twin's features: their draws differ by far less than
    # independent draws would.
    Z = np.hstack([held[k] for k in twin.readouts])
    Z = (Z - Z.mean(0)) / (Z.std(0) + 1e-9)
    d2 = ((Z[:, None] - Z[None]) ** 2).sum(-1) + np.eye(len(Z)) * 1e12
    i, j = np.unravel_index(d2.argmin(), d2.shape)
    assert (draws[:, i] - draws[:, j]).var() < 0.5 * (draws[:, i].var() + draws[:, j].var())
    # A draw is an ordinary affine twin (pools re-score with it), the same for the same seed.
    drawn = twin.sample(np.random.default_rng(7))
    W, b = drawn.linear()
    assert np.allclose(np.hstack([held[k] for k in twin.readouts]) @ W + b, drawn.predict_blocks(held)[0], atol=1e-6)
    assert np.array_equal(drawn.predict_blocks(held)[0], twin.sample(np.random.default_rng(7)).predict_blocks(held)[0])


def test_multiple_targets_and_save_load(tmp_path, small_csv, feature_cache):
    from twin import load_dataset

    data = load_dataset(small_csv)
    plan = FeaturePlan(model="minilm", layers=(2, 4))
    twin = Twin.fit(data.sentences, data.responses, data.targets, features=TextFeatures(plan, cache=feature_cache))
    assert twin.targets == ["response", "other"]
    assert twin.stack_weights.shape == (3, 2)
    path = tmp_path / "twin.h5"
    twin.save(path)
    again = Twin.load(path)
    assert again.model_id == "minilm" and again.plan == twin.plan
    # Loaded on its own, it computes the features afresh: in other batches, so equal to float precision.
    mean, sd = twin.predict(data.sentences[:4], with_sd=True)
    mean2, sd2 = again.predict(data.sentences[:4], with_sd=True)
    assert np.allclose(mean, mean2, atol=1e-5, rtol=0) and np.allclose(sd, sd2, atol=1e-5, rtol=0)
    # On the same features, the saved readout predicts exactly as the original.
    again.attach(TextFeatures(plan, cache=feature_cache))
    mean3, sd3 = again.predict(data.sentences[:4], with_sd=True)
    assert np.array_equal(mean, mean3) and np.array_equal(sd, sd3)
    with pytest.raises(FeatureModelError, match="uses feature model 'minilm'"):
        Twin.load(path, model="smollm2-135m")
    with pytest.raises(FeatureModelError, match="fit on features of 'minilm'"):
        again.attach(TextFeatures(FeaturePlan(model="smollm2-135m", layers=(2,), surprisal=False)))


def test_bad_twin_files(tmp_path, small_csv, feature_cache):
    from twin import load_dataset

    data = load_dataset(small_csv)
    twin = Twin.fit(
        data.sentences,
        data.responses,
        data.targets,
        features=TextFeatures(FeaturePlan(model="minilm", layers=(3,)), cache=feature_cache),
    )
    good = tmp_path / "twin.h5"
    twin.save(good)
    # A twin file's bytes (a session keeps its reference twin so) read as the file does.
    again = Twin.from_bytes(good.read_bytes(), "kept copy")
    again.attach(twin.features)
    assert np.array_equal(again.predict(data.sentences[:3])[0], twin.predict(data.sentences[:3])[0])
    with pytest.raises(TwinFileError, match="'kept copy' is not a readable HDF5 file"):
        Twin.from_bytes(good.read_bytes()[:500], "kept copy")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(TwinFileError, match="truncated or corrupt"):
        Twin.load(truncated)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(TwinFileError, match="not a NeuroTwin twin"):
        Twin.load(foreign)
    SessionFile.create(tmp_path / "session.h5", ["lang"]).close()  # a session file given for a twin
    with pytest.raises(TwinFileError, match=r"not a NeuroTwin twin \(its format is 'neurotwin.session'\)"):
        Twin.load(tmp_path / "session.h5")
    with h5py.File(good, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(TwinFileError, match="format version 99"):
        Twin.load(good)
    with pytest.raises(TwinFileError, match="does not exist"):
        Twin.load(tmp_path / "missing.h5")
    # A save that fails part-way leaves the file there as it was, and no temporary file.
    before = good.read_bytes()
    with pytest.raises(TypeError), replaced_whole(good) as tmp:
        tmp.write_bytes(before[:100])
        raise TypeError("failed part-way")
    assert good.read_bytes() == before and not tmp.exists()


def test_fit_within_runs_ignores_run_offsets(pereira, pereira_blocks):
    """Runs grouped by sentence length, each with an offset that cancels its length effect (as a closed-loop
    round of short suppress candidates can come out high): a pooled fit learns the offsets, a fit within
    runs does not."""
    features, _ = pereira_blocks
    s, y = pereira.sentences, pereira.responses[:, 0]
    order = np.random.default_rng(0).permutation(len(s))
    train, test = order[:300], order[300:]
    by_length = train[np.argsort([len(s[i]) for i in train], kind="stable")]
    runs = np.repeat(np.arange(5), 60)
    run_mean = np.array([y[by_length[runs == r]].mean() for r in range(5)])
    offset = (run_mean.mean() - run_mean) * 1.5  # more than cancels the runs' differences
    measured = y[by_length] + offset[runs]
    texts = [s[i] for i in by_length]

    def held_out_r(twin: Twin) -> float:
        return float(np.corrcoef(twin.predict([s[i] for i in test])[0][:, 0], y[test])[0, 1])

    clean = held_out_r(Twin.fit(texts, y[by_length], ["lang"], features=features, runs=runs))
    pooled = held_out_r(Twin.fit(texts, measured, ["lang"], features=features))
    within = Twin.fit(texts, measured, ["lang"], features=features, runs=runs)
    print(f"held-out r: within runs {held_out_r(within):.3f}, pooled {pooled:.3f}, without offsets {clean:.3f}")
    assert held_out_r(within) == pytest.approx(clean, abs=1e-9)  # the offsets are removed exactly
    assert held_out_r(within) > pooled + 0.1
    assert within.scores["runs"] == 5
    # predictions stay on the responses' scale
    assert within.predict(texts)[0].mean() == pytest.approx(measured.mean(), abs=0.05 * measured.std())
    with pytest.raises(ValueError, match="one label per response row"):
        Twin.fit(texts, measured, ["lang"], features=features, runs=runs[:-1])


def test_twin_starts_from_a_reference_twin(tmp_path, pereira, pereira_blocks, feature_cache):
    """A reference fit on some sentences (other people, in practice) joins a twin fit on noisy new measurements
    (one person's single trials) as one more stacked block: held out, the pair predicts better than those
    measurements alone; it stays one affine map of the features, saves and loads with its reference, and a
    reference on other features is refused."""
    features, blocks = pereira_blocks
    s, y = pereira.sentences, pereira.responses
    order = np.random.default_rng(2).permutation(len(s))
    ref_rows, new_rows, test = order[:150], order[150:300], order[300:]
    reference = Twin.fit([s[i] for i in ref_rows], y[ref_rows], ["response"], features=features)
    new = [s[i] for i in new_rows]

    def held_out_r(twin: Twin) -> float:
        return float(np.corrcoef(twin.predict([s[i] for i in test])[0][:, 0], y[test, 0])[0, 1])

    gains = []
    for seed in range(6):
        noisy = y[new_rows] + np.random.default_rng(seed).normal(0, 3 * y.std(), (len(new_rows), 1))
        with_ref = Twin.fit(new, noisy, ["lang"], features=features, reference=reference)
        gains.append(held_out_r(with_ref) - held_out_r(Twin.fit(new, noisy, ["lang"], features=features)))
    print(f"held-out r gained with the reference: {np.round(gains, 3)}; the reference alone "
          f"{held_out_r(reference):.3f}")  # fmt: skip
    assert np.mean(gains) > 0.1
    assert with_ref.stack_weights[list(with_ref.readouts).index("reference"), 0] > 0
    with pytest.raises(FeatureModelError, match="cannot be a prior"):  # its blocks include the reference's
        with_ref.as_prior()
    W, b = with_ref.linear()  # what pool re-scoring uses
    Z = np.hstack([blocks[name] for name in features.plan.blocks])
    np.testing.assert_allclose(Z @ W + b, with_ref.predict_blocks(blocks)[0], rtol=1e-9, atol=1e-12)
    with_ref.save(tmp_path / "twin.h5")
    loaded = Twin.load(tmp_path / "twin.h5")
    assert loaded.reference is not None and loaded.reference.targets == ["response"]
    np.testing.assert_array_equal(loaded.predict_blocks(blocks)[0], with_ref.predict_blocks(blocks)[0])
    other = TextFeatures(FeaturePlan(components=16), cache=feature_cache)
    with pytest.raises(FeatureModelError, match="reads other features"):
        Twin.fit(new, y[new_rows], ["lang"], features=other, reference=reference)
    renamed = reference.for_targets([0, 0], ["lang", "md"])
    np.testing.assert_allclose(renamed.predict(new)[0], np.repeat(reference.predict(new)[0], 2, axis=1), rtol=1e-12)


def test_twin_borrows_hyperparameters_from_a_prior_twin(tmp_path, pereira, pereira_blocks, feature_cache):
    """From few, noisy responses, a twin that reuses a prior twin's ridge penalties and stacking weights
    (one penalty multiplier chosen on its own data) predicts held-out sentences better than one choosing
    every penalty and weight itself; the multiplier grows with the noise."""
    features, blocks = pereira_blocks
    y = pereira.responses[:, 0]
    plan, model_id = features.plan, features.model_id

    def rows(index):
        return {k: v[index] for k, v in blocks.items()}

    gains, multipliers = [], {0.0: [], 3.0: []}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y))
        prior_rows, new_rows, test = order[:188], order[188:301], order[301:]
        prior = Twin.fit_blocks(rows(prior_rows), y[prior_rows], ["response"], plan, model_id)
        for noise in multipliers:
            noisy = y[new_rows] + rng.normal(0, noise * y.std(), len(new_rows))
            borrowed = Twin.fit_blocks(rows(new_rows), noisy, ["lang"], plan, model_id, prior=prior)
            np.testing.assert_array_equal(borrowed.stack_weights, prior.stack_weights)
            ratio = {k: borrowed.readouts[k].alphas[0] / prior.readouts[k].alphas[0] for k in blocks}
            assert np.ptp(list(ratio.values())) < 1e-9 * max(ratio.values())  # one multiplier for every block
            multipliers[noise].append(ratio["stats"])
            assert borrowed.scores["prior_multiplier"]["lang"] == pytest.approx(ratio["stats"])  # as recorded
            if noise:
                own = Twin.fit_blocks(rows(new_rows), noisy, ["lang"], plan, model_id)
                r = [np.corrcoef(t.predict_blocks(rows(test))[0][:, 0], y[test])[0, 1] for t in (borrowed, own)]
                gains.append(r[0] - r[1])
    print(f"held-out r gained at 3x-SD noise: {np.round(gains, 3)}; penalty multipliers, no noise "
          f"{np.round(multipliers[0.0], 2)}, 3x-SD noise {np.round(multipliers[3.0], 2)}")  # fmt: skip
    assert np.mean(gains) > 0.03
    assert np.median(multipliers[3.0]) > 2 * np.median(multipliers[0.0])
    first = order[:100]  # a prior with one target serves two
    two = Twin.fit_blocks(rows(first), np.column_stack([y[first], -y[first]]), ["a", "b"], plan, model_id, prior=prior)
    assert two.stack_weights.shape == (len(blocks), 2)
    other = TextFeatures(FeaturePlan(components=16), cache=feature_cache)
    with pytest.raises(FeatureModelError, match="prior reads other features"):
        Twin.fit(pereira.sentences[:20], y[:20], ["lang"], features=other, prior=prior)
    # A prior file holds the hyperparameters alone and borrows the same as the twin.
    prior.as_prior().save(tmp_path / "prior.json")
    loaded = Prior.load(tmp_path / "prior.json")
    again = Twin.fit_blocks(rows(new_rows), noisy, ["lang"], plan, model_id, prior=loaded)
    np.testing.assert_array_equal(again.predict_blocks(rows(test))[0], borrowed.predict_blocks(rows(test))[0])
    (tmp_path / "bad.json").write_text('{"format": "neurotwin.prior", "alphas": {}}')
    with pytest.raises(TwinFileError, match="not a readable prior file"):
        Prior.load(tmp_path / "bad.json")
