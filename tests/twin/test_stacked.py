"""Twins that stack several models' feature blocks, standardized projections, and the Gemma-3 offline alias."""

import numpy as np
import pytest

from stimulus_synthesis.embedded import EmbeddedPool
from twin import (
    FeatureModelError,
    FeaturePlan,
    Prior,
    StackedPlan,
    TextFeatures,
    Twin,
    plan_for,
)
from twin.plan import plan_from_json
from twin.projection import principal_basis

from ..conftest import synthetic_sentences

# Two offline models that load in seconds: the mechanics of stacking do not depend on which.
BOTH = "smollm2-135m,minilm"


def both_plan() -> StackedPlan:
    return plan_for(BOTH, layers=None, poolings=("last",))


def test_a_stacked_plan_names_each_models_blocks_and_round_trips():
    plan = both_plan().resolve()
    assert isinstance(plan, StackedPlan) and plan.model == BOTH
    smol, minilm = plan.parts
    assert smol.length and not minilm.length  # the length columns once
    assert plan.blocks[0] == "smollm2-135m:last/L4" and "smollm2-135m:stats" in plan.blocks
    assert "minilm:last/L1" in plan.blocks and "minilm:stats" not in plan.blocks  # no surprisal, no length
    assert plan_from_json(plan.to_json()) == plan
    assert isinstance(plan_for("smollm2-135m"), FeaturePlan)
    with pytest.raises(FeatureModelError, match="named twice"):
        plan_for("smollm2-135m, SmolLM2-135M")
    with pytest.raises(FeatureModelError, match="layers are one model's"):
        plan_for(BOTH, layers=(4, 8))
    # A plan written before the standardize option reads as plain components (its cache table is kept).
    old = FeaturePlan().resolve().to_json()
    assert "standardize" not in old and FeaturePlan.from_json(old) == FeaturePlan().resolve()


def test_stacked_features_are_each_models_features_side_by_side(feature_cache):
    sentences = synthetic_sentences(12, seed=5)
    stacked = TextFeatures(both_plan(), cache=feature_cache)
    blocks = stacked(sentences)
    alone = {
        "smollm2-135m:": TextFeatures(FeaturePlan(), cache=feature_cache)(sentences),
        "minilm:": TextFeatures(FeaturePlan(model="minilm", length=False), cache=feature_cache)(sentences),
    }
    assert list(blocks) == stacked.plan.blocks
    for prefix, own in alone.items():
        for name, X in own.items():
            np.testing.assert_allclose(blocks[prefix + name], X, rtol=1e-5, atol=1e-5)
    assert stacked.model_id == BOTH
    cols = stacked.surprisal_columns("smollm2-135m")
    np.testing.assert_array_equal(stacked.matrix(sentences)[:, cols], alone["smollm2-135m:"]["stats"][:, :3])
    assert stacked.surprisal_columns("minilm") is None  # a sentence encoder has no surprisal


def test_a_stacked_twin_fits_predicts_saves_refines_and_lends_its_hyperparameters(tmp_path, pereira, feature_cache):
    s, Y = pereira.sentences[:120], pereira.responses[:120]
    features = TextFeatures(both_plan(), cache=feature_cache)
    twin = Twin.fit(s[:100], Y[:100], ["lang"], features=features)
    assert twin.model_id == BOTH and set(twin.readouts) == set(features.plan.blocks)
    weighted = {name.split(":")[0] for name, w in zip(twin.readouts, twin.stack_weights[:, 0], strict=True) if w > 0}
    print("models with weight:", weighted)
    # The whole stacked twin is one affine map of the concatenated rows (what a pool is re-scored with).
    W, b = twin.linear()
    Z = features.matrix(s[100:])
    np.testing.assert_allclose(Z @ W + b, twin.predict(s[100:])[0], rtol=1e-6, atol=1e-8)
    pool = EmbeddedPool.build(s[100:], features)
    np.testing.assert_allclose(pool.predict(twin)[0], twin.predict(s[100:])[0], rtol=1e-5, atol=1e-6)

    path = tmp_path / "stacked.h5"
    twin.save(path)
    again = Twin.load(path, model=BOTH)
    assert again.plan == twin.plan and set(again.projection.bases) == set(twin.projection.bases)
    again.attach(TextFeatures(both_plan(), cache=feature_cache))
    np.testing.assert_array_equal(again.predict(s[100:])[0], twin.predict(s[100:])[0])
    with pytest.raises(FeatureModelError, match=f"uses feature model '{BOTH}', not 'smollm2-135m'"):
        Twin.load(path, model="smollm2-135m")

    # Online refinement: the exact update equals a refit with the same hyperparameters.
    again.update(s[100:], Y[100:])
    refit = Twin.fit(s, Y, ["lang"], features=features, hyperparameters=twin.hyperparameters)
    np.testing.assert_allclose(again.predict(s[:5])[0], refit.predict(s[:5])[0], rtol=1e-6, atol=1e-8)

    # Its hyperparameters serve another stacked twin as a prior, and only a twin on the same models.
    prior = Prior.from_json(twin.as_prior().to_json())
    borrowed = Twin.fit(s[100:], Y[100:], ["lang"], features=features, prior=prior)
    assert "prior_multiplier" in borrowed.scores
    with pytest.raises(FeatureModelError, match="uses feature model"):
        Twin.fit(s[100:], Y[100:], ["lang"], features=TextFeatures(FeaturePlan(), cache=feature_cache), prior=prior)


def test_standardized_components_are_those_of_standardized_units():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    X[:, 2] *= 1000.0  # one massive unit
    mean, basis = principal_basis(X, 3, standardize=True)
    Z = (X - X.mean(0)) / X.std(0)
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    got = (X - mean) @ basis
    for k in range(3):  # the same components, up to sign
        assert abs(abs(np.corrcoef(got[:, k], Z @ vt[k])[0, 1]) - 1) < 1e-6
    plain_mean, plain = principal_basis(X, 3)
    assert abs(plain[2, 0]) > 0.99  # unstandardized, the first component is the massive unit alone
    np.testing.assert_allclose(plain_mean, X.mean(0), rtol=1e-6)


@pytest.mark.slow
def test_gemma3_is_an_offline_model_with_shipped_projections(pereira):
    """Converts the Gemma-3-270M GGUF once (about a minute), then reads its standardized shipped projections."""
    from twin.models import model_info
    from twin.projection import SHIPPED

    plan = FeaturePlan(model="gemma3-270m").resolve()
    assert plan.standardize and plan.surprisal and plan.layers == tuple(range(2, 15))
    assert model_info("gemma3-270m").hidden_size == 640
    assert (SHIPPED / "gemma3-270m.standardized.npz").exists()
    features = TextFeatures(plan)
    blocks = features(pereira.sentences[:20])
    assert blocks["last/L8"].shape == (20, 32) and np.isfinite(blocks["stats"]).all()
    surprisal = blocks["stats"][:, 0]
    scrambled = TextFeatures(plan)([" ".join(reversed(x.split())) for x in pereira.sentences[:20]])["stats"][:, 0]
    assert (scrambled > surprisal).mean() >= 0.9


def test_bfloat16_features_are_close_to_float32_and_cached_apart(tmp_path, monkeypatch):
    from twin.models import resolve_dtype

    sentences = synthetic_sentences(16, seed=9)
    cache = tmp_path / "f.h5"
    full = TextFeatures(FeaturePlan(), cache=cache)
    half = TextFeatures(FeaturePlan(), cache=cache, dtype="bfloat16")
    assert half.dtype == "bfloat16" and half.table != full.table
    a, b = full.matrix(sentences), half.matrix(sentences)
    assert not np.array_equal(a, b)  # computed in another precision, not read from float32's table
    for name, cols in full.block_slices().items():
        r = np.corrcoef(a[:, cols].ravel(), b[:, cols].ravel())[0, 1]
        assert r > 0.99, (name, r)
    monkeypatch.setenv("NEUROTWIN_DTYPE", "half")
    with pytest.raises(FeatureModelError, match="NEUROTWIN_DTYPE is 'half'"):
        resolve_dtype()
    monkeypatch.setenv("NEUROTWIN_DTYPE", "auto")
    assert resolve_dtype() in ("float32", "bfloat16") and resolve_dtype("float32") == "float32"
