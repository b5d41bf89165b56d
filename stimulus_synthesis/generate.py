"""Generate sentences beyond the corpus: local search under the twin, kept natural.

Edits are word substitutions, insertions and deletions, and recombinations of two
sentences' clauses. A causal language model proposes the substitutes and
insertions (its likeliest whole words after each prefix, one forward pass per
parent) and judges naturalness. A candidate passes when its mean surprisal
(nats per token) is at most ``max_nll`` and at most ``slack`` above that of the
corpus sentence it descends from and of its parent; when the edit costs little log-probability
(a substitution or deletion at most ``edit_cost`` nats more surprisal in total than
its parent, an insertion at most the parent's mean per-token surprisal plus
``edit_cost``); when no word is doubled and the sentence does not end on a
function word; and when every word is a known word
(``wordfreq``).
An optuna ask/tell study is the optimizer over edits (which operator, which
parent, where, which proposal): it learns which edits raise the objective. Every
candidate evaluated is logged.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

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


@dataclass
class Naturalness:
    """Causal-LM surprisal and word-frequency check of candidate sentences."""

    model: str = "smollm2-135m"
    max_nll: float = 7.0
    slack: float = 0.1
    edit_cost: float = 1.0
    min_zipf: float = 1.5
    device: str = "cpu"
    _extractor: TextFeatureExtractor | None = field(default=None, repr=False)

    @property
    def extractor(self) -> TextFeatureExtractor:
        if self._extractor is None:
            self._extractor = TextFeatureExtractor(self.model, device=self.device)
        return self._extractor

    def nll(self, sentences: Sequence[str]) -> np.ndarray:
        """Mean, total and maximum token surprisal (nats) of each sentence, (n, 3)."""
        return self.extractor.extract(list(sentences), surprisal=True)[SURPRISAL_KEY].astype(np.float64)

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
    origin: np.ndarray | None = field(default=None, repr=False)
    stats: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        d = asdict(self)
        d["problems"] = "; ".join(self.problems)
        d.pop("origin")
        d.pop("stats")
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
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        allowed = torch.full((self.tm.model.config.vocab_size,), float("-inf"))
        allowed[torch.as_tensor(self._words)] = 0.0
        for s in todo:
            words = s.split()
            ids, starts = [bos], []
            for j, w in enumerate(words):
                starts.append(len(ids))
                ids += tok((" " if j else "") + w, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = self.tm.model(input_ids=torch.tensor([ids], device=self.tm.device)).logits[0].float().cpu()
            at = torch.tensor(starts[1:]) - 1  # logits that predict word j's first token
            top = (logits[at] + allowed).topk(self.k, dim=1).indices
            self._cache[s] = [[tok.decode([int(i)]).strip() for i in row] for row in top]
        return [self._cache[s] for s in sentences]


def _split_word(word: str) -> tuple[str, str, str]:
    m = _CORE.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


def _recase(new: str, old: str) -> str:
    return new.capitalize() if old[:1].isupper() else new


def apply_edit(
    parent: str, operator: str, position: float, rank: int, proposals: list[list[str]], partner: str | None
) -> str | None:
    """The sentence an edit makes, or None when the edit does not apply."""
    words = parent.split()
    if operator == "recombine":
        if partner is None:
            return None
        a, b = _CLAUSE.split(parent), _CLAUSE.split(partner)
        if len(a) < 2 or len(b) < 2:
            return None
        cut_a = 1 + int(position * (len(a) - 1)) if len(a) > 2 else 1
        cut_b = 1 + min(rank, len(b) - 2)
        return " ".join(a[:cut_a] + b[cut_b:])
    if len(words) < 2:
        return None
    j = 1 + min(int(position * (len(words) - 1)), len(words) - 2)  # never the first word
    if operator == "delete":
        post = _split_word(words[j])[2]
        if post and j == len(words) - 1 and not _split_word(words[j - 1])[2]:
            words[j - 1] += post  # keep the sentence's final punctuation
        return " ".join(words[:j] + words[j + 1 :])
    options = proposals[j - 1] if j - 1 < len(proposals) else []
    if not options:
        return None
    new = options[min(rank, len(options) - 1)]
    if operator == "substitute":
        pre, core, post = _split_word(words[j])
        if new.lower() == core.lower():
            return None
        words[j] = pre + _recase(new, core) + post
        return " ".join(words)
    if operator == "insert":
        return " ".join([*words[:j], new, *words[j:]])
    raise ValueError(f"unknown edit operator {operator!r}")


@dataclass
class Generation:
    """Best generated sentences (best first) and every candidate evaluated."""

    best: list[Candidate]
    log: list[Candidate]
    seeds: list[Candidate]


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
) -> Generation:
    """Improve seed sentences by edits proposed by the causal LM and chosen by an optuna study.

    ``predict`` maps sentences to the twin's (mean, sd); ``nll_of`` may supply the
    mean surprisal from features already computed (else ``naturalness`` computes it).
    Stops after ``budget`` candidates. Only natural candidates that pass the
    constraints and improve on their parent's objective join the beam.
    """
    import optuna

    naturalness = naturalness or Naturalness()
    goal = goal or Goal()
    constraints = constraints or Constraints()
    nll_of = nll_of or naturalness.nll
    rng = np.random.default_rng(seed)
    seen = set(exclude or ()) | set(seeds)
    proposer = _Proposer(naturalness.extractor)

    def evaluate(texts: list[str], parents: list[Candidate | None], ops: list[str], rnd: int) -> list[Candidate]:
        mean, sd = predict(texts)
        mean = mean[:, None] if mean.ndim == 1 else mean
        score = objective(goal, mean, sd, rng)
        nll = nll_of(texts)
        out = []
        for i, text in enumerate(texts):
            parent = parents[i]
            origin = parent.origin if parent is not None else None
            problems = naturalness.problems(text, nll[i], origin, parent.stats if parent else None, ops[i])
            problems += constraints.violations(text)
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
                    origin=nll[i] if origin is None else origin,
                    stats=nll[i],
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
    try:
        while len(history) < budget:
            rnd += 1
            proposals = dict(zip([c.sentence for c in population],
                                 proposer.proposals([c.sentence for c in population]), strict=True))  # fmt: skip
            trials, texts, parents, ops = [], [], [], []
            for _ in range(min(batch, budget - len(history))):
                trial = study.ask()
                op = trial.suggest_categorical("operator", OPERATORS)
                p = trial.suggest_int("parent", 0, beam - 1)
                parent = population[p % len(population)]
                position = trial.suggest_float("position", 0.0, 1.0)
                rank = trial.suggest_int("rank", 0, proposer.k - 1)
                partner = None
                if op == "recombine":
                    partner = population[trial.suggest_int("partner", 0, beam - 1) % len(population)].sentence
                text = apply_edit(parent.sentence, op, position, rank, proposals[parent.sentence], partner)
                if text is None or text in seen:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                seen.add(text)
                trials.append((trial, parent))
                texts.append(text)
                parents.append(parent)
                ops.append(op)
            if not texts:
                if rnd > budget:  # nothing new can be made
                    break
                continue
            children = evaluate(texts, parents, ops, rnd)
            worst = min(c.objective for c in population) - abs(np.std([c.objective for c in population]) + 1.0)
            for (trial, parent), child in zip(trials, children, strict=True):
                gain = child.objective - parent.objective
                study.tell(trial, gain if not child.problems else worst - parent.objective)
                child.accepted = not child.problems and gain > 0
            history += children
            if bar is not None:
                bar.update(len(children))
            pool = {c.sentence: c for c in population + [c for c in children if c.accepted]}
            population = sorted(pool.values(), key=lambda c: -c.objective)[:beam]
    finally:
        if bar is not None:
            bar.close()
    best = sorted((c for c in history if c.accepted), key=lambda c: -c.objective)
    return Generation(best, history, start)
