"""Sentence synthesis end to end: score a pool with the twin, optionally generate beyond it, select."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin import TextFeatures, Twin

from .constraints import ConstraintError, Constraints, flesch_reading_ease
from .embedded import EmbeddedPool
from .generate import Candidate, Naturalness, generate
from .selection import Goal, objective, select
from .similarity import sentence_vectors


@dataclass
class SynthesisResult:
    """The chosen sentences with their predictions and provenance, plus the generation log."""

    rows: list[dict]
    log: list[Candidate] = field(default_factory=list)
    rejected: dict = field(default_factory=dict)


def _report(sentence: str, constraints: Constraints, similarity: float) -> str:
    words = len(sentence.split())
    hi = constraints.max_words if constraints.max_words is not None else "any"
    parts = [f"words {words} in [{constraints.min_words}, {hi}]", "charset ok" if constraints.charset else ""]
    if constraints.blocklist:
        parts.append(f"none of {len(constraints.blocklist)} blocked")
    parts.append(f"readability {flesch_reading_ease(sentence):.0f}")
    parts.append(f"max similarity {similarity:.2f} <= {constraints.max_similarity:g}")
    return "; ".join(p for p in parts if p)


def synthesize_sentences(
    twin: Twin,
    pool: EmbeddedPool,
    n: int,
    goal: Goal | None = None,
    constraints: Constraints | None = None,
    *,
    exclude: set[str] | None = None,
    shown: list[str] | None = None,
    generate_budget: int = 0,
    naturalness: Naturalness | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SynthesisResult:
    """The n best sentences for the goal from the pool (and, with a budget, from local search beyond it)."""
    goal = goal or Goal()
    constraints = constraints or Constraints()
    features: TextFeatures = pool.features
    # What the goal ranks by: the twin's predictions (ucb: with the SD of its predicted mean), or (Thompson
    # sampling) those of one draw from its posterior; the CSV reports the twin's own predictions and
    # predictive SDs either way.
    scorer = goal.rule.ranking_twin(twin, np.random.default_rng(seed))
    mean, sd = pool.predict(twin, with_sd=True)
    by, by_sd = mean, sd  # by_sd counts only for a rule that needs it (ucb)
    if scorer is not twin:
        by = pool.predict(scorer)[0]
    if goal.rule.needs_sd:
        by_sd = pool.predict(twin, with_sd=True, noise=False)[1]
    scores = objective(goal, by, by_sd)
    order = np.argsort(-scores, kind="stable")
    size = min(len(order), max(20 * n, 2000))
    while True:  # a shortlist, widened until enough of it passes the constraints
        short = order[:size]
        texts = [pool.sentences[i] for i in short]
        try:
            sel = select(texts, by[short], n, goal, sd=by_sd[short], constraints=constraints, shown=shown,
                         exclude=exclude)  # fmt: skip
            break
        except ConstraintError:
            if size == len(order):
                raise
            size = min(len(order), size * 4)
    chosen = [(pool.sentences[short[i]], mean[short[i]], sd[short[i]], by[short[i]], by_sd[short[i]], "corpus",
               None) for i in sel.index]  # fmt: skip
    log: list[Candidate] = []
    if generate_budget > 0:
        seeds = [c[0] for c in chosen[: min(16, n)]]

        def predict(texts, model=twin, noise=True):
            return model.predict_blocks(features(texts), with_sd=True, noise=noise)

        def ranked(texts):
            return predict(texts, scorer, noise=False)

        nll_of = None
        naturalness = naturalness or Naturalness()
        stats_index = features.surprisal_columns(naturalness.model)
        if stats_index is not None:

            def nll_of(texts):  # the twin's own surprisal block: no second pass through the LM
                return features.matrix(texts)[:, stats_index]

        # Generation searches by what the goal ranks by (for thompson, its log's predictions are the draw's).
        gen = generate(seeds, ranked, goal, naturalness=naturalness, nll_of=nll_of, constraints=constraints,
                       exclude=(exclude or set()) | set(pool.sentences), budget=generate_budget, seed=seed,
                       progress=progress)  # fmt: skip
        log = gen.log
        if gen.best:
            # A generated sentence competes with its corpus sentence and its siblings, not beside them:
            # one per family (a few edits apart, they are near-duplicates however long the sentence).
            family = {c.sentence: c.root for c in [*gen.seeds, *gen.best]}
            texts = texts + [c.sentence for c in gen.best]  # the final shortlist, then the generated
            m, s = predict([c.sentence for c in gen.best])
            r, rs = ranked([c.sentence for c in gen.best])
            all_mean, all_sd = np.vstack([mean[short], m]), np.vstack([sd[short], s])
            all_by, all_by_sd = np.vstack([by[short], r]), np.vstack([by_sd[short], rs])
            sel2 = select(texts, all_by, n, goal, sd=all_by_sd, constraints=constraints, shown=shown,
                          exclude=exclude, groups=[family.get(t) for t in texts])  # fmt: skip
            nll = {c.sentence: c.nll for c in gen.best}
            sources = ["generated" if t in nll else "corpus" for t in texts]
            chosen = [(texts[i], all_mean[i], all_sd[i], all_by[i], all_by_sd[i], sources[i], nll.get(texts[i]))
                      for i in sel2.index]  # fmt: skip
    final_texts = [c[0] for c in chosen]
    unit = sentence_vectors(final_texts)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -1.0)
    if shown:
        sim = np.hstack([sim, unit @ sentence_vectors(shown).T])
    rows = []
    for place, (text, m, s, r, rs, source, nll) in enumerate(chosen, 1):
        row = {"rank": place, "sentence": text, "source": source}
        for t, name in enumerate(twin.targets):
            row[f"predicted_{name}"] = round(float(m[t]), 6)
            row[f"uncertainty_{name}"] = round(float(s[t]), 6)
        row["objective"] = round(float(objective(goal, r[None], rs[None])[0]), 6)
        row["nll"] = "" if nll is None else round(nll, 3)
        row["constraints"] = _report(text, constraints, float(sim[place - 1].max()) if len(chosen) > 1 else 0.0)
        rows.append(row)
    return SynthesisResult(rows, log, dict(sel.rejected))
