"""Constraints and selection: every constraint enforced, goals, uncertainty, impossible sets."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stimulus_synthesis import ConstraintError, Constraints, Goal, flesch_reading_ease, select

from ..conftest import synthetic_sentences

WORDS = "the old farmer river bright angry teacher crossed garden near window".split()


def _pool(n=300, seed=0):
    rng = np.random.default_rng(seed)
    sentences = [" ".join(rng.choice(WORDS, rng.integers(2, 14))) + "." for _ in range(n)]
    sentences = list(dict.fromkeys(sentences))
    mean = rng.normal(size=(len(sentences), 2))
    emb = rng.normal(size=(len(sentences), 16))
    return sentences, mean, emb


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), st.integers(0, 10))
def test_blocklisted_words_never_appear(blocked, seed):
    sentences, mean, emb = _pool(seed=seed)
    c = Constraints(min_words=1, blocklist=blocked, max_similarity=1.0)
    try:
        sel = select(sentences, mean, 10, Goal("drive"), embeddings=emb, constraints=c)
    except ConstraintError:
        return  # too few candidates left is a valid, clear outcome
    for i in sel.index:
        tokens = sentences[i].rstrip(".").split()
        assert not set(tokens) & set(blocked)


def test_every_constraint_is_enforced():
    sentences, mean, emb = _pool(2000)
    c = Constraints(min_words=4, max_words=8, blocklist=["angry", "/gard.n/"], min_readability=50,
                    max_readability=110, max_similarity=0.5)  # fmt: skip
    shown = emb[:5]
    sel = select(sentences, mean, 20, Goal("drive"), embeddings=emb, constraints=c, shown=shown,
                 exclude={sentences[0]})  # fmt: skip
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    chosen = unit[sel.index]
    for i in sel.index:
        s = sentences[i]
        assert 4 <= len(s.split()) <= 8 and "angry" not in s and "garden" not in s
        assert 50 <= flesch_reading_ease(s) <= 110
        assert s != sentences[0]
    sims = chosen @ chosen.T - 2 * np.eye(len(chosen))
    assert sims.max() <= 0.5 and (chosen @ (shown / np.linalg.norm(shown, axis=1, keepdims=True)).T).max() <= 0.5
    assert {"near-duplicate", "blocked", "more than 8 words"} <= set(sel.rejected)


def test_near_duplicates_are_judged_by_shared_words():
    from stimulus_synthesis.similarity import similarity

    sentences = [
        "The surgeon realigned my jaw after the accident.",
        "The surgeon realigned my jaw after the accident!",  # the same words: a near-duplicate
        "Her eyesight went after the accident.",  # ends alike, otherwise different: kept
        "The old farmer crossed the river near the mill at dawn.",
        "The old farmer crossed the river near the mill at dusk.",  # one word changed of eleven
        "A shown sentence about the quiet harbour.",
    ]
    assert similarity(sentences[0], sentences[1]) == pytest.approx(1.0)
    assert similarity(sentences[0], sentences[2]) < 0.6
    mean = np.arange(len(sentences), 0, -1, dtype=float)[:, None]
    c = Constraints(min_words=1, max_similarity=0.9)
    sel = select(sentences, mean, 3, Goal("drive"), constraints=c, shown=["A shown sentence about the quiet harbour"])
    assert [sentences[i] for i in sel.index] == [sentences[0], sentences[2], sentences[3]]
    assert sel.rejected["near-duplicate"] == 1
    loose = select(sentences, mean, 4, Goal("drive"), constraints=Constraints(min_words=1, max_similarity=0.95))
    assert [sentences[i] for i in loose.index] == [sentences[0], sentences[2], sentences[3], sentences[4]]
    with pytest.raises(ConstraintError, match="near-duplicate"):
        select(sentences, mean, 5, Goal("drive"), constraints=c, shown=[sentences[5]])


def test_at_most_one_sentence_per_group():
    sentences = [
        "The old farmer crossed the river near the mill at dawn.",
        "The young farmer crossed the wide river near the mill at dawn.",  # generated from the first
        "The old farmer crossed the river near the barn at dawn.",  # and another
        "Her eyesight went after the accident.",
        "A shown sentence about the quiet harbour.",
    ]
    mean = np.array([[1.0], [3.0], [2.0], [0.5], [0.1]])
    groups = ["farmer", "farmer", "farmer", None, None]
    c = Constraints(min_words=1, max_similarity=1.0)  # only the groups keep the variants apart
    sel = select(sentences, mean, 3, Goal("drive"), constraints=c, groups=groups)
    assert [sentences[i] for i in sel.index] == [sentences[1], sentences[3], sentences[4]]  # the family's best
    assert sel.rejected["same group as a chosen one"] == 2
    assert len(select(sentences, mean, 5, Goal("drive"), constraints=c).index) == 5  # without groups: all
    with pytest.raises(ConstraintError, match="same group"):
        select(sentences, mean, 4, Goal("drive"), constraints=c, groups=groups)
    with pytest.raises(ValueError, match="groups has 2 labels for 5"):
        select(sentences, mean, 1, Goal("drive"), constraints=c, groups=groups[:2])


def test_charset():
    c = Constraints(min_words=1)
    assert c.ok("A plain sentence, with punctuation!")
    assert "characters outside the allowed set: 'é'" in c.violations("Un café noir.")


def test_goals_and_uncertainty():
    sentences, mean, _ = _pool(500)
    drive = select(sentences, mean, 10, Goal("drive"))
    suppress = select(sentences, mean, 10, Goal("suppress"))
    assert mean[drive.index, 0].min() > mean[suppress.index, 0].max()
    target = select(sentences, mean, 5, Goal("target", value=0.0))
    assert np.abs(mean[target.index, 0]).max() < np.abs(mean[:, 0]).mean()
    control = select(sentences, mean, 10, Goal("control", roi=0, hold=5.0))
    assert np.abs(mean[control.index, 1]).mean() < np.abs(mean[drive.index, 1]).mean() + 1e-9
    sd = np.zeros_like(mean)
    sd[-1, 0] = 100.0  # one very uncertain candidate
    assert select(sentences, mean, 1, Goal("drive", acquisition="ucb", beta=1.0), sd=sd).index[0] == len(mean) - 1
    assert select(sentences, mean, 1, Goal("drive"), sd=sd).index[0] != len(mean) - 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_words": 5, "max_words": 3}, "max_words (3) is below min_words (5)"),
        ({"min_readability": 80, "max_readability": 20}, "min_readability (80) is above"),
        ({"blocklist": ["/([/"]}, "not a valid regular expression"),
        ({"max_similarity": 0}, "max_similarity must be in"),
    ],
)
def test_malformed_constraints(kwargs, message):
    with pytest.raises(ConstraintError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Constraints(**kwargs)


def test_impossible_and_empty_pools():
    sentences, mean, _ = _pool(100)
    with pytest.raises(ConstraintError, match=r"only 0 of \d+ candidates .* \(passed over: more than 1 words"):
        select(sentences, mean, 5, constraints=Constraints(min_words=1, max_words=1))
    with pytest.raises(ConstraintError, match="pool is empty"):
        select([], np.zeros((0, 1)), 1)
    repeated = ["The same sentence again."] * 10
    with pytest.raises(ConstraintError, match="already shown or chosen: 9"):
        select(repeated, np.zeros((10, 1)), 2)


def test_selection_with_the_twin_on_real_sentences(feature_cache):
    """End to end with real inference: twin predictions for WordNet-like sentences, then selection."""
    from twin import FeaturePlan, TextFeatures, Twin

    train = synthetic_sentences(60, seed=3)
    y = np.array([len(s.split()) for s in train], float)
    features = TextFeatures(FeaturePlan(model="minilm", layers=(3,)), cache=feature_cache)
    twin = Twin.fit(train, y, ["response"], features=features)
    pool = synthetic_sentences(120, seed=9)[60:]
    mean, sd = twin.predict(pool, with_sd=True)
    emb = features(pool)["last/L3"]
    sel = select(pool, mean, 5, Goal("drive", acquisition="ucb"), sd=sd, embeddings=emb,
                 constraints=Constraints(max_similarity=0.99))  # fmt: skip
    longest = sorted(len(s.split()) for s in pool)[-15]
    assert all(len(pool[i].split()) >= longest for i in sel.index)  # the twin learnt 'longer is higher'
    assert flesch_reading_ease("The cat sat on the mat.") > flesch_reading_ease(
        "Institutional heterogeneity complicates epistemological characterization."
    )
