"""Sentence synthesis with the real twin: cached pools, re-scoring, generation, the CLI, bad input."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stimulus_synthesis import Constraints, Goal, select
from stimulus_synthesis.embedded import EmbeddedPool
from stimulus_synthesis.generate import Naturalness, apply_edit, edit_with_site, generate
from twin import DataError, FeatureCache, FeatureModelError, FeaturePlan, TextFeatures, Twin
from twin.cache import text_digests
from twin.projection import reference_sentences

from ..twin.test_cli_twin import neurotwin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lang_twin(pereira, feature_cache, tmp_path_factory) -> Path:
    """The default twin fit on the Pereira data, saved."""
    features = TextFeatures(FeaturePlan(), cache=feature_cache)
    twin = Twin.fit(pereira.sentences, pereira.responses, pereira.targets, features=features)
    path = tmp_path_factory.mktemp("twin") / "twin.h5"
    twin.save(path)
    return path


@pytest.fixture(scope="module")
def pool_sentences() -> list[str]:
    return reference_sentences()[:300]


def _load(path: Path, cache: Path) -> tuple[Twin, TextFeatures]:
    twin = Twin.load(path)
    features = TextFeatures(twin.plan, cache=cache)
    twin.attach(features)
    return twin, features


def test_rescoring_from_the_cache_equals_direct_prediction(lang_twin, feature_cache, pool_sentences):
    twin, features = _load(lang_twin, feature_cache)
    pool = EmbeddedPool.build(pool_sentences, features)
    new = pool_sentences[:20]
    twin.update(new, np.linspace(-1, 1, 20)[:, None])  # a readout update
    mean, sd = pool.predict(twin, with_sd=True)
    direct_mean, direct_sd = twin.predict(pool_sentences, with_sd=True)
    assert np.abs(mean - direct_mean).max() < 1e-5
    assert np.abs(sd - direct_sd).max() < 1e-5
    # A smaller chunk gives the same numbers.
    assert np.allclose(pool.predict(twin, chunk_rows=7)[0], mean, atol=1e-6)


def test_pool_embedded_for_another_plan_is_refused(lang_twin, feature_cache, pool_sentences):
    twin, _ = _load(lang_twin, feature_cache)
    other = TextFeatures(FeaturePlan(layers=(8,), components=8), cache=feature_cache)
    pool = EmbeddedPool.build(pool_sentences[:10], other)
    with pytest.raises(FeatureModelError, match="feature plan differs"):
        pool.predict(twin)
    minilm = EmbeddedPool.build(
        pool_sentences[:10], TextFeatures(FeaturePlan("minilm", layers=(3,)), cache=feature_cache)
    )
    with pytest.raises(FeatureModelError, match="feature model 'smollm2-135m'"):
        minilm.predict(twin)


def test_too_long_sentence_fails_before_anything_is_cached(tmp_path):
    cache = FeatureCache(tmp_path / "f.h5")
    features = TextFeatures(FeaturePlan("minilm", layers=(3,), components=None), cache=cache)
    long = " ".join(["word"] * 700)
    with pytest.raises(DataError, match=r"is \d+ tokens long; minilm takes at most 512"):
        features.ensure(["A short sentence here.", long])
    assert (cache.rows(features.model_id, features.table, text_digests(["A short sentence here."])) < 0).all()


def test_embedding_resumes_after_the_process_is_killed(tmp_path):
    """SIGKILL a real embedding process midway: a second run only embeds what is missing."""
    sentences = reference_sentences()[:600]
    cache_path = tmp_path / "f.h5"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from twin import FeaturePlan, TextFeatures
        from twin.projection import reference_sentences
        f = TextFeatures(FeaturePlan("minilm", layers=(3,), components=None), cache={str(cache_path)!r}, chunk=20)
        f.ensure(reference_sentences()[:600])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    features = TextFeatures(FeaturePlan("minilm", layers=(3,), components=None), cache=cache_path)
    digests = text_digests(sentences)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if cache_path.exists():
            done = int((features.cache.rows(features.model_id, features.table, digests) >= 0).sum())
            if done >= 60:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 60 <= done < 600, f"kill came too late or too early ({done} embedded)"
    kept = int((features.cache.rows(features.model_id, features.table, digests) >= 0).sum())
    assert kept >= done  # nothing already stored was lost
    assert features.ensure(sentences) == 600 - kept  # only the rest is computed
    cached = features.matrix(sentences[:30])
    fresh = TextFeatures(FeaturePlan("minilm", layers=(3,), components=None)).matrix(sentences[:30])
    assert np.allclose(cached, fresh, atol=1e-5)


def test_edits():
    props = [["young", "tall"], ["ran", "sat"], ["to", "into"], ["the", "a"], ["barn", "field"], ["lake", "field"]]
    s = "The old horse walked to the river."
    assert apply_edit(s, "substitute", 0.0, 1, props, None) == "The tall horse walked to the river."
    assert apply_edit(s, "substitute", 0.99, 1, props, None) == "The old horse walked to the field."
    assert apply_edit(s, "delete", 0.99, 0, props, None) == "The old horse walked to the."
    assert apply_edit(s, "delete", 0.0, 0, props, None) == "The horse walked to the river."
    assert apply_edit(s, "insert", 0.0, 0, props, None) == "The young old horse walked to the river."
    joined = apply_edit("He came home, and she left early.", "recombine", 0.0, 0, props, "It rained, so we stayed in.")
    assert joined == "He came home, so we stayed in."
    assert apply_edit("Short", "delete", 0.5, 0, [], None) is None
    # names stay whole: no word of one is replaced or deleted, and nothing is inserted inside one
    named = "Yesterday Ramon Puerta met the press."
    props = [["he"], ["new"], ["with"], ["all"], ["media"]]
    for op in ("substitute", "delete"):
        assert [apply_edit(named, op, p, 0, props, None) for p in (0.0, 0.25)] == [None, None]
    assert apply_edit(named, "insert", 0.25, 0, props, None) is None  # between Ramon and Puerta
    assert apply_edit(named, "insert", 0.5, 0, props, None) == "Yesterday Ramon Puerta with met the press."
    assert apply_edit(named, "substitute", 0.6, 0, props, None) == "Yesterday Ramon Puerta met all press."


def test_naturalness_filter_tells_sentences_from_scrambles():
    nat = Naturalness()
    natural = "The children walked to school together on a sunny morning."
    words = natural.rstrip(".").split()
    scrambled = " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words))) + "."
    stats = nat.nll([natural, scrambled])
    assert stats[0, 0] + 2 < stats[1, 0]
    assert nat.problems(natural, stats[0]) == []
    assert any(p.startswith("unnatural") for p in nat.problems(scrambled, stats[1]))
    assert nat.problems("The zorblax walked home.", stats[0]) == ["unknown words: zorblax"]
    assert "doubled word" in nat.problems("The the children walked.", stats[0])


def test_edits_that_make_the_following_words_surprising_are_rejected():
    nat = Naturalness()
    parent = "She offered us a cold beer"
    props = [["told", "gave"], ["us", "them"], ["her", "all"], ["very", "really"], ["beer", "drink"]]
    bad, bad_site = edit_with_site(parent, "insert", 0.5, 0, props, None)
    good, good_site = edit_with_site(parent, "insert", 0.7, 0, props, None)
    assert (bad, bad_site) == ("She offered us her a cold beer", (parent, 4, 3))
    assert (good, good_site) == ("She offered us a very cold beer", (parent, 5, 4))
    ws = dict(zip([parent, good, bad], nat.word_surprisal([parent, good, bad]), strict=True))
    assert [len(ws[s]) for s in (parent, good, bad)] == [7, 8, 8]  # the words, then the sentence's end
    assert nat.junction_problems(ws[good], ws[parent], 5, 4) == []
    assert nat.junction_problems(ws[bad], ws[parent], 4, 3)[0].startswith("unnatural edit: the next 2 word(s)")
    # an edit of the last word is checked against the sentence's end
    parent = "She bought a new car."
    props = [["sold"], ["the"], ["used"], ["house"]]
    cut, cut_site = edit_with_site(parent, "delete", 1.0, 0, props, None)
    swap, swap_site = edit_with_site(parent, "substitute", 1.0, 0, props, None)
    assert (cut, swap) == ("She bought a new.", "She bought a new house.")
    ws = dict(zip([parent, cut, swap], nat.word_surprisal([parent, cut, swap]), strict=True))
    assert nat.junction_problems(ws[cut], ws[parent], *cut_site[1:])[0].startswith("unnatural edit: the next 1 word")
    assert nat.junction_problems(ws[swap], ws[parent], *swap_site[1:]) == []
    text = "the heat and the rain and the heat and the cold"
    stats = nat.nll([text])[0]
    assert "repeated phrase: 'the heat and'" in nat.problems(text, stats, parent=stats)
    assert not any(p.startswith("repeated") for p in nat.problems(text, stats))  # a corpus sentence may repeat


def test_thompson_sampling_ranks_by_one_posterior_draw(lang_twin, feature_cache, pool_sentences):
    """--acquisition thompson: each seed's set is the best under one draw of the twin's weights, so sets
    differ between seeds (and repeat for the same seed) while staying far below the pool's mean; the CSV
    still reports the twin's own predictions. ucb adds beta SDs of the predicted mean (not trial noise)."""
    from stimulus_synthesis.synthesize import synthesize_sentences

    twin, features = _load(lang_twin, feature_cache)
    pool = EmbeddedPool.build(pool_sentences, features)
    mean, _ = pool.predict(twin)
    predicted = dict(zip(pool_sentences, mean[:, 0], strict=True))
    goal, free = Goal("suppress", acquisition="thompson"), Constraints(max_similarity=1.0)
    sets = {}
    for seed in range(4):
        rows = synthesize_sentences(twin, pool, 10, goal, free, seed=seed).rows
        sets[seed] = [r["sentence"] for r in rows]
        for r in rows:
            assert abs(r["predicted_response"] - predicted[r["sentence"]]) < 1e-5
        drawn = twin.sample(np.random.default_rng(seed)).predict(sets[seed])[0][:, 0]
        assert np.allclose([-r["objective"] for r in rows], drawn, atol=1e-5)  # what it ranked by
        assert np.mean([predicted[x] for x in sets[seed]]) < mean.mean() - 1.5 * mean.std()
    assert len({tuple(v) for v in sets.values()}) > 1
    assert [r["sentence"] for r in synthesize_sentences(twin, pool, 10, goal, free, seed=2).rows] == sets[2]
    rows = synthesize_sentences(twin, pool, 10, Goal("suppress", acquisition="ucb", beta=2.0), free).rows
    _, sd_mean = twin.predict([r["sentence"] for r in rows], with_sd=True, noise=False)
    expected = [-r["predicted_response"] + 2.0 * s for r, s in zip(rows, sd_mean[:, 0], strict=True)]
    assert np.allclose([r["objective"] for r in rows], expected, atol=1e-5)
    reported = np.array([r["uncertainty_response"] for r in rows])  # the predictive SD: trial noise included
    assert np.allclose(reported**2, sd_mean[:, 0] ** 2 + twin.noise_var[0], atol=1e-4)


def test_generation_raises_the_prediction_and_stays_natural(lang_twin, feature_cache, pool_sentences):
    twin, features = _load(lang_twin, feature_cache)
    pool = EmbeddedPool.build(pool_sentences, features)
    mean, _ = pool.predict(twin)
    seeds = [pool_sentences[i] for i in select(pool_sentences, mean, 6, Goal("drive")).index]
    constraints = Constraints(blocklist=["great", "/[0-9]/"])
    naturalness = Naturalness()

    def predict(texts):
        return twin.predict(texts, with_sd=True)

    gen = generate(seeds, predict, Goal("drive"), naturalness=naturalness, constraints=constraints,
                   budget=64, batch=16, seed=1)  # fmt: skip
    assert 0 < len(gen.log) <= 64
    assert gen.best, "no edit improved on the seeds"
    parent_objective = {c.sentence: c.objective for c in [*gen.seeds, *gen.log]}
    stats = naturalness.nll([c.sentence for c in gen.best])
    for c, st in zip(gen.best, stats, strict=True):
        assert c.objective > parent_objective[c.parent]
        assert not constraints.violations(c.sentence)
        assert abs(st[0] - c.nll) < 1e-4 and st[0] <= naturalness.max_nll
    assert max(c.predicted for c in gen.best) > max(c.predicted for c in gen.seeds)
    assert any(c.problems for c in gen.log)  # the filter did reject something


def test_generation_stops_when_the_edits_are_used_up(lang_twin, feature_cache):
    """A three-word seed allows few edits: the search ends when they are used up, not at the budget."""
    twin, _ = _load(lang_twin, feature_cache)
    budget, batch, max_misses = 400, 8, 64
    gen = generate(["The dog barked."], lambda t: twin.predict(t, with_sd=True), Goal("drive"),
                   constraints=Constraints(min_words=1), budget=budget, batch=batch, seed=0,
                   max_misses=max_misses)  # fmt: skip
    texts = [c.sentence for c in gen.log]
    assert 0 < len(texts) < budget and len(set(texts)) == len(texts)
    assert "The dog barked." not in texts
    # Every draw after the last new sentence was a miss, and the run stopped at max_misses of them;
    # the old rule (stop after `budget` empty rounds) drew about budget * batch edits.
    assert gen.edits < budget * batch / 4, gen.edits


def test_generation_keeps_sentences_within_max_edits_of_the_corpus(lang_twin, feature_cache, pool_sentences):
    """Each edit is judged against its parent, so chains are capped: at the cap a candidate is not edited further."""
    twin, _ = _load(lang_twin, feature_cache)
    seeds = pool_sentences[:4]

    def predict(texts):
        return twin.predict(texts, with_sd=True)

    gen = generate(seeds, predict, Goal("drive"), naturalness=Naturalness(max_edits=1), budget=48, batch=8, seed=0)
    assert gen.log and {c.parent for c in gen.log} <= set(seeds)
    assert {c.edits for c in gen.log} == {1} and {c.edits for c in gen.seeds} == {0}
    assert all(c.root == c.parent for c in gen.log) and all(c.root == c.sentence for c in gen.seeds)
    deeper = generate(seeds, predict, Goal("drive"), naturalness=Naturalness(max_edits=None), budget=48, batch=8,
                      seed=0)  # fmt: skip
    edits = {c.sentence: c.edits for c in [*deeper.seeds, *deeper.log]}
    assert all(c.edits == edits[c.parent] + 1 for c in deeper.log)
    assert max(edits.values()) > 1  # without the cap the beam's accepted candidates are edited again
    with pytest.raises(ValueError, match="max_edits"):
        generate(seeds, predict, Goal("drive"), naturalness=Naturalness(max_edits=0), budget=8)


def _rows(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open()))


def test_synthesize_cli_drive_and_suppress(lang_twin, feature_cache, pool_sentences, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(pool_sentences) + "\n")
    common = ["--twin", lang_twin, "--pool", pool, "--cache", feature_cache, "--n", 20,
              "--blocklist", "man,/[0-9]/", "--max-words", 25]  # fmt: skip
    drive, suppress, log = tmp_path / "drive.csv", tmp_path / "suppress.csv", tmp_path / "log.csv"
    out = neurotwin("synthesize", *common, "--goal", "drive", "--out", drive, "--generate", 32, "--log", log)
    assert "wrote 20 sentences" in out.stdout
    neurotwin("synthesize", *common, "--goal", "suppress", "--out", suppress)
    d, s = _rows(drive), _rows(suppress)
    assert len(d) == len(s) == 20
    assert list(d[0])[:6] == ["rank", "sentence", "source", "predicted_response", "uncertainty_response", "objective"]
    dp = [float(r["predicted_response"]) for r in d]
    sp = [float(r["predicted_response"]) for r in s]
    assert dp == sorted(dp, reverse=True) and sp == sorted(sp)
    assert min(dp) > max(sp)
    for r in d + s:
        assert not re.search(r"(?<![A-Za-z'])man(?![A-Za-z'])", r["sentence"], re.IGNORECASE)
        assert not re.search(r"[0-9]", r["sentence"])
        assert 3 <= len(r["sentence"].split()) <= 25
        assert float(r["uncertainty_response"]) > 0
        assert float(re.search(r"max similarity ([0-9.]+)", r["constraints"]).group(1)) <= 0.9
    assert {r["source"] for r in s} == {"corpus"}
    logged = _rows(log)
    assert 0 < len(logged) <= 32
    for r in logged:
        assert not re.search(r"(?<![A-Za-z'])man(?![A-Za-z'])", r["sentence"], re.IGNORECASE) or r["problems"]
    for r in d:
        if r["source"] == "generated":
            assert any(x["sentence"] == r["sentence"] and x["accepted"] == "True" for x in logged)
    root = {}
    for x in logged:  # in evaluation order: parents first
        root[x["sentence"]] = root.get(x["parent"], x["parent"])
    assert all(x["root"] == root[x["sentence"]] for x in logged)  # each candidate names its corpus sentence
    families = [root.get(r["sentence"], r["sentence"]) for r in d]
    assert len(set(families)) == len(d)  # one sentence per corpus sentence and what was generated from it


@pytest.mark.parametrize(
    "pool_text, extra, message",
    [
        ("", [], "has no usable sentences"),
        ("The same sentence is here.\n" * 10, [], "only 1 of 1 candidates satisfy the constraints, 5 needed"),
        (b"The caf\xe9 is open.\n", [], "is not UTF-8 text"),
        (" ".join(["word"] * 5000) + "\n", [], "1 outside the length limits"),
        ("A sentence of words.\n" * 3, ["--model", "minilm"], "uses feature model 'smollm2-135m', not 'minilm'"),
        ("A sentence of words.\n", ["--min-words", 10, "--max-words", 5], "max_words (5) is below min_words (10)"),
        ("A sentence of words.\nAnother one is here.\n", ["--blocklist", "/./", "--n", 1], "only 0 of 2 candidates"),
        ("A sentence of words.\n", ["--roi", "md"], "--roi 'md' is not a target of this twin"),
        (b"The caf\xe9 is open.\n", ["--blocklist", "@POOL"], "--blocklist @POOL: not UTF-8 text (byte 7)"),
        ("A sentence of words.\n", ["--blocklist", "@POOL.missing"], "--blocklist @POOL.missing: no such file"),
    ],
    ids=[
        "empty",
        "one-repeated",
        "non-utf8",
        "too-long",
        "other-model",
        "min-above-max",
        "all-blocked",
        "bad-roi",
        "blocklist-non-utf8",
        "blocklist-missing",
    ],
)
def test_synthesize_bad_input(lang_twin, feature_cache, tmp_path, pool_text, extra, message):
    pool = tmp_path / "pool.txt"
    if isinstance(pool_text, bytes):
        pool.write_bytes(pool_text)
    else:
        pool.write_text(pool_text)
    out = tmp_path / "out.csv"
    extra, message = [str(x).replace("POOL", str(pool)) for x in extra], message.replace("POOL", str(pool))
    proc = neurotwin("synthesize", "--twin", lang_twin, "--pool", pool, "--out", out, "--n", 5,
                     "--cache", feature_cache, *extra, check_ok=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
