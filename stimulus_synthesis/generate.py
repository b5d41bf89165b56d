"""Generate sentences beyond the corpus: local search under the twin, kept natural.

Edits are word substitutions, insertions and deletions, and recombinations of two
sentences' clauses. A causal language model proposes the substitutes and
insertions (its likeliest whole words after each prefix, one forward pass per
parent) and judges naturalness. A candidate passes when its mean surprisal
(nats per token) is at most ``max_nll`` and at most ``slack`` above that of the
corpus sentence it descends from and of its parent; when the edit costs little log-probability
(a substitution or deletion at most ``edit_cost`` nats more surprisal in total than
its parent, an insertion at most the parent's mean per-token surprisal plus
``edit_cost``); when the two words after the edit (after the junction, for a
recombination) are together at most ``local_slack`` nats more surprising than
where they came from, read after a short ``context`` that steadies a small LM's
view of a sentence's first words; when no word is doubled, no word triple
repeats and the sentence does not end on a function word; and when every word is a
known word (``wordfreq``).
An optuna ask/tell study is the optimizer over edits (which operator, which
parent, where, which proposal): it learns which edits raise the objective. Every
candidate evaluated is logged.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from twin.features import SURPRISAL_KEY, TextFeatureExtractor

from .constraints import ConstraintError, Constraints
from .selection import Goal, objective

log = logging.getLogger(__name__)

OPERATORS = ("substitute", "insert", "delete", "recombine")
#: A sentence cut short ends on one of these; generated sentences may not (unless their corpus ancestor did).
DANGLING = frozenset(
    "a an the of to in on at by for with from into and or but nor so if that which who whom whose "
    "is are was were be been being not no very my your his her its our their this these those".split()
)
_CLAUSE = re.compile(r"(?<=,)\s+|\s+(?=(?:and|but|while|because|which|that|when|so)\s)")
_CORE = re.compile(r"^([\"'(]*)([A-Za-z][A-Za-z'-]*)([^A-Za-z]*)$")
_END = re.compile(r"^(.*[^.!?\s])([.!?]*)$", re.S)  # a sentence and its last word's final punctuation


@dataclass
class Naturalness:
    """Causal-LM surprisal and word-frequency check of candidate sentences."""

    model: str = "smollm2-135m"
    max_nll: float = 7.0
    slack: float = 0.1
    edit_cost: float = 1.0
    min_zipf: float = 1.5
    local_slack: float = 2.0
    context_words: int = 2
    context: str = "Example sentence:"
    device: str = "cpu"
    # Edits a generated sentence may be from its corpus sentence. Each edit is judged against its parent, so a
    # long chain of small edits drifts into word salad that SmolLM2 finds as likely as a news sentence full of
    # names ("... has not been finalised with Kerry as their default Nettle will from the Greens ..." after 13).
    max_edits: int | None = 2
    _extractor: TextFeatureExtractor | None = field(default=None, repr=False)

    @property
    def extractor(self) -> TextFeatureExtractor:
        if self._extractor is None:
            self._extractor = TextFeatureExtractor(self.model, device=self.device)
        return self._extractor

    def nll(self, sentences: Sequence[str]) -> np.ndarray:
        """Mean, total and maximum token surprisal (nats) of each sentence, (n, 3)."""
        return self.extractor.extract(list(sentences), surprisal=True)[SURPRISAL_KEY].astype(np.float64)

    def word_surprisal(self, sentences: Sequence[str], batch: int = 8) -> list[np.ndarray]:
        """Surprisal (nats) of each whitespace-separated word of each sentence given the words before it,
        then of the sentence's end: its final punctuation (a full stop if it has none) and a line break.

        The last word is scored without its final punctuation, so a sentence cut short
        ("She bought a new.") shows up in the end's surprisal. The sentence follows
        ``context``: a small LM misjudges the first words of a sentence given no context at all.
        """
        import torch

        tm = self.extractor.text_model
        tok = tm.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else bos
        seqs, starts = [], []
        for s in sentences:
            m = _END.match(s.rstrip())
            body, stop = m.groups() if m else (s, "")
            ids, first = _word_token_ids(tok, body, self.context)
            end = len(ids)
            ids += tok((stop or ".") + "\n", add_special_tokens=False)["input_ids"]
            seqs.append(ids)
            starts.append([*first, end, len(ids)])
        out: list[np.ndarray] = []
        for a in range(0, len(seqs), batch):
            chunk = seqs[a : a + batch]
            width = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, x in enumerate(chunk):
                input_ids[row, : len(x)] = torch.tensor(x)
                attention[row, : len(x)] = 1
            with torch.inference_mode():
                logits = tm.model(input_ids=input_ids.to(tm.device), attention_mask=attention.to(tm.device)).logits
                logits = logits[:, :-1].float().cpu()
                target = input_ids[:, 1:, None]
                nll = (torch.logsumexp(logits, -1) - logits.gather(2, target)[..., 0]).numpy()  # token t+1 | <= t
            for row, first in enumerate(starts[a : a + batch]):
                out.append(np.array([nll[row, b - 1 : e - 1].sum() for b, e in itertools.pairwise(first)]))
        return out

    def junction_problems(self, child: np.ndarray, source: np.ndarray, child_at: int, source_at: int) -> list[str]:
        """Whether the words after an edit became much more surprising than where they came from.

        ``child`` and ``source``: word surprisals (:meth:`word_surprisal`) of the edited
        sentence and of the sentence its words from ``child_at`` on came from (the
        parent, or the partner of a recombination), where they start at ``source_at``.
        The sentence's end counts as a word, so an edit of the last word is checked too.
        """
        n = min(self.context_words, len(child) - child_at, len(source) - source_at)
        if n <= 0:
            return []
        rise = float(child[child_at : child_at + n].sum() - source[source_at : source_at + n].sum())
        if rise > self.local_slack:
            return [f"unnatural edit: the next {n} word(s) {rise:.1f} nats more surprising > {self.local_slack}"]
        return []

    def edit_problems(
        self, sentence: str, nll: np.ndarray, origin: np.ndarray | None, parent: np.ndarray | None,
        operator: str, site: tuple[str, int, int] | None, surprisal: Mapping[str, np.ndarray],
    ) -> list[str]:  # fmt: skip
        """:meth:`problems` of an edited sentence, plus :meth:`junction_problems` at its edit's ``site``
        (:func:`edit_with_site`); ``surprisal`` holds the word surprisals of the sentence and the site's source."""
        out = self.problems(sentence, nll, origin, parent, operator)
        if site is not None:
            source, at, source_at = site
            out += self.junction_problems(surprisal[sentence], surprisal[source], at, source_at)
        return out

    def unknown_words(self, sentence: str) -> list[str]:
        from wordfreq import tokenize, zipf_frequency

        return [w for w in tokenize(sentence, "en") if w.isalpha() and zipf_frequency(w, "en") < self.min_zipf]

    def problems(
        self, sentence: str, nll: np.ndarray, origin: np.ndarray | None = None,
        parent: np.ndarray | None = None, operator: str = "",
    ) -> list[str]:  # fmt: skip
        """Why a sentence fails the filter (empty if it passes).

        ``nll``, ``origin``, ``parent``: (mean, total, max) surprisal of the sentence,
        its corpus ancestor and the sentence it was edited from.
        """
        out = []
        mean = float(nll[0])
        limit = self.max_nll if origin is None else min(self.max_nll, float(origin[0]) + self.slack)
        if not np.isfinite(mean) or mean > limit:
            out.append(f"unnatural: {mean:.2f} nats/token > {limit:.2f}")
        if parent is not None and mean > float(parent[0]) + self.slack:
            out.append(f"unnatural edit: {mean:.2f} nats/token > parent's {float(parent[0]):.2f} + {self.slack}")
        if parent is not None and operator in ("substitute", "delete", "insert"):
            allowed = self.edit_cost + (float(parent[0]) if operator == "insert" else 0.0)
            cost = float(nll[1] - parent[1])
            if cost > allowed:
                out.append(f"unnatural edit: {cost:.1f} nats more surprisal > {allowed:.1f}")
        words = [w.strip(".,;:!?\"'()").lower() for w in sentence.split()]
        if origin is not None and words and words[-1] in DANGLING:
            out.append(f"ends on '{words[-1]}'")
        if any(a == b and a for a, b in itertools.pairwise(words)):
            out.append("doubled word")
        if parent is not None:
            triples = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
            repeated = [t for t in dict.fromkeys(triples) if triples.count(t) > 1]
            if repeated:
                out.append(f"repeated phrase: '{repeated[0]}'")
        unknown = self.unknown_words(sentence)
        if unknown:
            out.append(f"unknown words: {', '.join(unknown[:3])}")
        return out


@dataclass
class Candidate:
    """One evaluated sentence and why it was kept or not."""

    sentence: str
    parent: str
    operator: str
    predicted: float
    objective: float
    nll: float
    problems: list[str]
    accepted: bool = False
    round: int = 0
    edits: int = 0  # edits from its corpus sentence
    root: str = ""  # that corpus sentence
    origin: np.ndarray | None = field(default=None, repr=False)
    stats: np.ndarray | None = field(default=None, repr=False)
    site: tuple[str, int, int] | None = field(default=None, repr=False)  # see edit_with_site

    def row(self) -> dict:
        d = asdict(self)
        d["problems"] = "; ".join(self.problems)
        for key in ("origin", "stats", "site"):
            d.pop(key)
        return d


class _Proposer:
    """The causal LM's likeliest whole words after each word prefix of a sentence."""

    def __init__(self, extractor: TextFeatureExtractor, k: int = 12, min_zipf: float = 3.0) -> None:
        self.tm = extractor.text_model
        self.k = k
        self._words = self._word_tokens(min_zipf)
        self._cache: dict[str, list[list[str]]] = {}

    def _word_tokens(self, min_zipf: float) -> np.ndarray:
        """Token ids that are a space plus a whole, common, alphabetic word."""
        from wordfreq import zipf_frequency

        tok = self.tm.tokenizer
        ids = []
        for i in range(len(tok)):
            s = tok.decode([i])
            if (
                len(s) > 2
                and s[0] == " "
                and s[1:].isalpha()
                and s[1:].islower()
                and zipf_frequency(s[1:], "en") >= min_zipf
            ):
                ids.append(i)
        return np.array(ids)

    def proposals(self, sentences: Sequence[str]) -> list[list[list[str]]]:
        """For each sentence and each word position j >= 1: the likeliest words to stand at j."""
        import torch

        todo = [s for s in dict.fromkeys(sentences) if s not in self._cache]
        tok = self.tm.tokenizer
        allowed = torch.full((self.tm.model.config.vocab_size,), float("-inf"))
        allowed[torch.as_tensor(self._words)] = 0.0
        for s in todo:
            ids, starts = _word_token_ids(tok, s)
            with torch.inference_mode():
                logits = self.tm.model(input_ids=torch.tensor([ids], device=self.tm.device)).logits[0].float().cpu()
            at = torch.tensor(starts[1:]) - 1  # logits that predict word j's first token
            top = (logits[at] + allowed).topk(self.k, dim=1).indices
            self._cache[s] = [[tok.decode([int(i)]).strip() for i in row] for row in top]
        return [self._cache[s] for s in sentences]


def _word_token_ids(tok: Any, sentence: str, context: str = "") -> tuple[list[int], list[int]]:
    """Token ids of BOS, ``context`` and the sentence's whitespace-separated words, and where each word starts."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids, starts = [bos, *(tok(context, add_special_tokens=False)["input_ids"] if context else [])], []
    for j, w in enumerate(sentence.split()):
        starts.append(len(ids))
        ids += tok((" " if j or context else "") + w, add_special_tokens=False)["input_ids"]
    return ids, starts


def _split_word(word: str) -> tuple[str, str, str]:
    m = _CORE.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


def _is_name(word: str) -> bool:
    """Whether a word is capitalized: after a sentence's first word, part of a name (or an acronym, or "I")."""
    return _split_word(word)[1][:1].isupper()


def apply_edit(
    parent: str, operator: str, position: float, rank: int, proposals: list[list[str]], partner: str | None
) -> str | None:
    """The sentence an edit makes, or None when the edit does not apply."""
    edit = edit_with_site(parent, operator, position, rank, proposals, partner)
    return None if edit is None else edit[0]


def edit_with_site(
    parent: str, operator: str, position: float, rank: int, proposals: list[list[str]], partner: str | None
) -> tuple[str, tuple[str, int, int]] | None:
    """The edited sentence and where its following words come from: (source sentence, index in the
    edit, index in the source) of the first word after the edit; None when the edit does not apply."""
    words = parent.split()
    if operator == "recombine":
        if partner is None:
            return None
        a, b = _CLAUSE.split(parent), _CLAUSE.split(partner)
        if len(a) < 2 or len(b) < 2:
            return None
        cut_a = 1 + int(position * (len(a) - 1)) if len(a) > 2 else 1
        cut_b = 1 + min(rank, len(b) - 2)
        head = " ".join(a[:cut_a])
        site = (partner, len(head.split()), len(" ".join(b[:cut_b]).split()))
        return " ".join([head, *b[cut_b:]]), site
    if len(words) < 2:
        return None
    j = 1 + min(int(position * (len(words) - 1)), len(words) - 2)  # never the first word
    in_name = _is_name(words[j - 1]) and _is_name(words[j]) if operator == "insert" else _is_name(words[j])
    if in_name:  # names stay whole: not replaced, cut or split ("Ramon Puerta" -> "Ramon centuries Puerta")
        return None
    if operator == "delete":
        post = _split_word(words[j])[2]
        if post and j == len(words) - 1 and not _split_word(words[j - 1])[2]:
            words[j - 1] += post  # keep the sentence's final punctuation
        return " ".join(words[:j] + words[j + 1 :]), (parent, j, j + 1)
    options = proposals[j - 1] if j - 1 < len(proposals) else []
    if not options:
        return None
    new = options[min(rank, len(options) - 1)]
    if operator == "substitute":
        pre, core, post = _split_word(words[j])
        if new.lower() == core.lower():
            return None
        words[j] = pre + new + post
        return " ".join(words), (parent, j + 1, j + 1)
    if operator == "insert":
        return " ".join([*words[:j], new, *words[j:]]), (parent, j + 1, j)
    raise ValueError(f"unknown edit operator {operator!r}")


@dataclass
class Generation:
    """Best generated sentences (best first), every candidate evaluated, and how many edits were drawn."""

    best: list[Candidate]
    log: list[Candidate]
    seeds: list[Candidate]
    edits: int = 0  # including those that made nothing new


def _random_edit(rng: np.random.Generator, k: int, beam: int) -> dict[str, Any]:
    """Parameters of one edit drawn uniformly (the study's search space)."""
    return {
        "operator": str(rng.choice(OPERATORS)), "parent": int(rng.integers(beam)),
        "position": float(rng.random()), "rank": int(rng.integers(k)), "partner": int(rng.integers(beam)),
    }  # fmt: skip


def generate(
    seeds: Sequence[str],
    predict: Callable[[list[str]], tuple[np.ndarray, np.ndarray | None]],
    goal: Goal | None = None,
    *,
    naturalness: Naturalness | None = None,
    nll_of: Callable[[list[str]], np.ndarray] | None = None,
    constraints: Constraints | None = None,
    exclude: set[str] | None = None,
    budget: int = 512,
    batch: int = 32,
    beam: int = 16,
    seed: int = 0,
    progress: bool = False,
    max_misses: int = 256,
) -> Generation:
    """Improve seed sentences by edits proposed by the causal LM and chosen by an optuna study.

    ``predict`` maps sentences to the twin's (mean, sd); ``nll_of`` may supply the
    mean surprisal from features already computed (else ``naturalness`` computes it).
    Stops after ``budget`` candidates, or when ``max_misses`` edits in a row (those after the
    first ``batch`` drawn at random) make no new sentence: the edits around the beam are used up.
    Only natural candidates that pass the constraints and improve on their parent's objective join the beam;
    those ``naturalness.max_edits`` edits from their corpus sentence are kept but not edited further.
    """
    import optuna

    naturalness = naturalness or Naturalness()
    max_edits = naturalness.max_edits
    if max_edits is not None and max_edits < 1:
        raise ValueError(f"max_edits must be at least 1 (or None for no limit), got {max_edits}")
    goal = goal or Goal()
    constraints = constraints or Constraints()
    nll_of = nll_of or naturalness.nll
    rng = np.random.default_rng(seed)
    seen = set(exclude or ()) | set(seeds)
    proposer = _Proposer(naturalness.extractor)

    surprisal: dict[str, np.ndarray] = {}  # word surprisals of edited sentences and of their sources

    def remember_surprisal(texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in surprisal]
        if todo:
            surprisal.update(zip(todo, naturalness.word_surprisal(todo), strict=True))

    def evaluate(
        texts: list[str], parents: list[Candidate | None], ops: list[str], rnd: int,
        sites: list[tuple[str, int, int] | None] | None = None,
    ) -> list[Candidate]:  # fmt: skip
        mean, sd = predict(texts)
        mean = mean[:, None] if mean.ndim == 1 else mean
        score = objective(goal, mean, sd)
        nll = nll_of(texts)
        sites = sites or [None] * len(texts)
        if any(sites):
            remember_surprisal([t for t, x in zip(texts, sites, strict=True) if x] + [x[0] for x in sites if x])
        out = []
        for i, text in enumerate(texts):
            parent = parents[i]
            origin = parent.origin if parent is not None else None
            problems = naturalness.edit_problems(
                text, nll[i], origin, parent.stats if parent else None, ops[i], sites[i], surprisal
            ) + constraints.violations(text)
            out.append(
                Candidate(
                    text,
                    parent.sentence if parent else text,
                    ops[i],
                    float(mean[i, goal.roi]),
                    float(score[i]),
                    float(nll[i, 0]),
                    problems,
                    round=rnd,
                    edits=parent.edits + 1 if parent else 0,
                    root=parent.root if parent else text,
                    origin=nll[i] if origin is None else origin,
                    stats=nll[i],
                    site=sites[i],
                )
            )
        return out

    start = evaluate(list(seeds), [None] * len(seeds), ["seed"] * len(seeds), 0)
    population = sorted((c for c in start if not c.problems), key=lambda c: -c.objective)[:beam]
    if not population:
        reasons = "; ".join(sorted({p for c in start for p in c.problems}))[:300]
        raise ConstraintError(f"no seed sentence passes the naturalness filter and the constraints ({reasons})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=48)
    )
    history: list[Candidate] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="generating", unit="cand", mininterval=1.0)
    rnd = 0
    misses = 0  # edits in a row that made nothing new
    drawn = 0
    try:
        while len(history) < budget and misses < max_misses:
            rnd += 1
            proposals = dict(zip([c.sentence for c in population],
                                 proposer.proposals([c.sentence for c in population]), strict=True))  # fmt: skip
            trials, texts, parents, ops, sites = [], [], [], [], []
            for _ in range(min(batch, budget - len(history))):
                if misses >= max_misses:
                    break
                trial = study.ask()
                drawn += 1
                op = trial.suggest_categorical("operator", OPERATORS)
                p = trial.suggest_int("parent", 0, beam - 1)
                parent = population[p % len(population)]
                position = trial.suggest_float("position", 0.0, 1.0)
                rank = trial.suggest_int("rank", 0, proposer.k - 1)
                partner = None
                if op == "recombine":
                    partner = population[trial.suggest_int("partner", 0, beam - 1) % len(population)].sentence
                edit = edit_with_site(parent.sentence, op, position, rank, proposals[parent.sentence], partner)
                if edit is None or edit[0] in seen:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    misses += 1
                    if misses >= batch:  # the sampler keeps repeating itself: explore at random
                        study.enqueue_trial(_random_edit(rng, proposer.k, beam))
                    continue
                misses = 0
                text = edit[0]
                sites.append(edit[1])
                seen.add(text)
                trials.append((trial, parent))
                texts.append(text)
                parents.append(parent)
                ops.append(op)
            if not texts:
                continue
            children = evaluate(texts, parents, ops, rnd, sites)
            worst = min(c.objective for c in population) - abs(np.std([c.objective for c in population]) + 1.0)
            for (trial, parent), child in zip(trials, children, strict=True):
                gain = child.objective - parent.objective
                study.tell(trial, gain if not child.problems else worst - parent.objective)
                child.accepted = not child.problems and gain > 0
            history += children
            if bar is not None:
                bar.update(len(children))
            editable = [c for c in children if c.accepted and (max_edits is None or c.edits < max_edits)]
            pool = {c.sentence: c for c in population + editable}
            population = sorted(pool.values(), key=lambda c: -c.objective)[:beam]
    finally:
        if bar is not None:
            bar.close()
    best = sorted((c for c in history if c.accepted), key=lambda c: -c.objective)
    return Generation(best, history, start, drawn)
