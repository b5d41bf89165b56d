"""Sentence features from a pretrained text model: pooled hidden layers and surprisal statistics."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import FeatureCache
from .errors import DataError, FeatureModelError
from .models import TextModel, load_text_model, model_id_of, resolve_dtype

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
SURPRISAL_STATS = ("mean", "sum", "max")


class _Stop(Exception):
    """Raised by a forward hook once the deepest needed layer has run."""


def layer_key(pooling: str, layer: int) -> str:
    """Name of a pooled-layer feature table, e.g. ``mean/L12``."""
    return f"{pooling}/L{layer}"


SURPRISAL_KEY = "surprisal"


def _blocks(model: Any, n_layers: int) -> Any:
    """The transformer's list of blocks: the largest ModuleList with one entry per hidden layer."""
    import torch

    best = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            if best is None:
                best = module
    if best is None:
        raise FeatureModelError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")
    return best


@dataclass
class _Batch:
    index: list[int]
    input_ids: Any
    attention: Any
    pool_mask: Any
    last_pos: Any


class TextFeatureExtractor:
    """Batched, cached, deterministic sentence features from one text model.

    Layers are numbered as Hugging Face's ``hidden_states``: 0 is the embedding
    output and ``l`` the output of block ``l``. The forward pass stops after the
    deepest requested block unless surprisal (which needs the LM head) is asked for.
    ``dtype``: float32, bfloat16 or auto (:func:`twin.models.resolve_dtype`; default ``$NEUROTWIN_DTYPE``,
    else float32); bfloat16 features are cached apart from float32 ones.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        device: str = "cpu",
        cache: FeatureCache | str | Path | None = None,
        batch_tokens: int = 2048,
        progress: bool = False,
        dtype: str | None = None,
    ) -> None:
        self.model_name = model
        self.device = device
        self.dtype = resolve_dtype(dtype, device)
        self.batch_tokens = batch_tokens
        self.progress = progress
        self.cache = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
        self._model: TextModel | None = None

    # The model is loaded only when a sentence misses the cache.
    @property
    def text_model(self) -> TextModel:
        if self._model is None:
            self._model = load_text_model(self.model_name, self.device, self.dtype)
        return self._model

    @property
    def cache_id(self) -> str:
        """Whose features these are in a feature cache: the model's id, with the dtype unless float32."""
        return self.model_id if self.dtype == "float32" else f"{self.model_id}@{self.dtype}"

    @property
    def model_id(self) -> str:
        if self._model is not None:
            return self._model.model_id
        return model_id_of(self.model_name)  # no conversion needed to name it

    def extract(
        self,
        sentences: Sequence[str],
        layers: Iterable[int] = (),
        pooling: str | Iterable[str] = "mean",
        surprisal: bool = False,
    ) -> dict[str, np.ndarray]:
        """Features per sentence: ``{"mean/L12": (n, hidden), ..., "surprisal": (n, 3)}``."""
        poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        for p in poolings:
            if p not in POOLINGS:
                raise ValueError(f"pooling must be one of {POOLINGS}, not {p!r}")
        layers = sorted(set(int(x) for x in layers))
        keys = [layer_key(p, layer) for p in poolings for layer in layers]
        if surprisal:
            keys.append(SURPRISAL_KEY)
        if not keys:
            raise ValueError("ask for at least one layer or for surprisal")
        sentences = list(sentences)
        out: dict[str, np.ndarray] = {}
        missing = np.zeros(len(sentences), dtype=bool)
        model_id = self.cache_id
        if self.cache is not None:
            for key in keys:
                out[key], hit = self.cache.lookup(model_id, key, sentences)
                missing |= ~hit
        else:
            missing[:] = True
        todo = np.flatnonzero(missing)
        if len(todo):
            computed = self._compute([sentences[i] for i in todo], layers, poolings, surprisal)
            for key in keys:
                if out.get(key) is None:
                    out[key] = np.empty((len(sentences), computed[key].shape[1]), np.float32)
                out[key][todo] = computed[key]
                if self.cache is not None:
                    self.cache.store(model_id, key, [sentences[i] for i in todo], computed[key])
        return out

    def check_layers(self, layers: Iterable[int]) -> None:
        """Raise if a layer index is outside the model."""
        n = self.text_model.n_layers
        bad = [layer for layer in layers if not 0 <= layer <= n]
        if bad:
            raise FeatureModelError(f"layer(s) {bad} out of range: {self.model_id} has layers 0..{n}")

    def check_lengths(self, sentences: Sequence[str]) -> None:
        """Raise DataError naming the first sentence that is empty or too long for the model."""
        for a in range(0, len(sentences), 65536):
            self._tokenize(sentences[a : a + 65536], offset=a)

    def _tokenize(self, sentences: Sequence[str], offset: int = 0) -> list[list[int]]:
        tm = self.text_model
        tok = tm.tokenizer
        if tm.is_causal:
            ids = tok(list(sentences), add_special_tokens=False)["input_ids"]
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ids = [[bos, *x] for x in ids]
        else:
            ids = tok(list(sentences), add_special_tokens=True)["input_ids"]
        limit = getattr(tm.model.config, "max_position_embeddings", None) or 10**9
        for i, x in enumerate(ids):
            if len(x) > limit:
                snippet = sentences[i][:60] + ("..." if len(sentences[i]) > 60 else "")
                raise DataError(
                    f"sentence {offset + i + 1} ({snippet!r}) is {len(x)} tokens long; "
                    f"{tm.model_id} takes at most {limit}"
                )
            if len(x) <= (1 if tm.is_causal else 2):
                raise DataError(f"sentence {offset + i + 1} is empty after tokenization: {sentences[i]!r}")
        return ids

    def _batches(self, ids: list[list[int]]) -> Iterable[_Batch]:
        import torch

        tm = self.text_model
        special = set(tm.tokenizer.all_special_ids)
        pad = tm.tokenizer.pad_token_id
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        start = 0
        while start < len(order):
            width = len(ids[order[start]])
            size = max(1, self.batch_tokens // width)
            index = order[start : start + size]
            start += size
            n = len(index)
            input_ids = torch.full((n, width), pad, dtype=torch.long)
            attention = torch.zeros((n, width), dtype=torch.long)
            pool_mask = torch.zeros((n, width), dtype=torch.bool)
            last_pos = torch.zeros(n, dtype=torch.long)
            for row, i in enumerate(index):
                seq = ids[i]
                input_ids[row, : len(seq)] = torch.tensor(seq)
                attention[row, : len(seq)] = 1
                if tm.is_causal:  # every token but the BOS we prepended
                    keep = list(range(1, len(seq)))
                else:
                    keep = [j for j, t in enumerate(seq) if t not in special]
                pool_mask[row, keep] = True
                last_pos[row] = keep[-1]
            yield _Batch(index, input_ids, attention, pool_mask, last_pos)

    def _compute(
        self, sentences: list[str], layers: list[int], poolings: tuple[str, ...], surprisal: bool
    ) -> dict[str, np.ndarray]:
        import torch

        tm = self.text_model
        if surprisal and not tm.is_causal:
            raise FeatureModelError(f"surprisal needs a causal language model; {tm.model_id} is not one")
        self.check_layers(layers)
        ids = self._tokenize(sentences)
        n = len(sentences)
        out = {layer_key(p, layer): np.empty((n, tm.hidden_size), np.float32) for p in poolings for layer in layers}
        if surprisal:
            out[SURPRISAL_KEY] = np.empty((n, len(SURPRISAL_STATS)), np.float32)
        blocks = _blocks(tm.model, tm.n_layers) if any(layer > 0 for layer in layers) else None
        deepest = max(layers, default=0)
        captured: dict[int, Any] = {}

        def hook_for(layer: int, stop: bool):
            def hook(_module, _inputs, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if stop:
                    raise _Stop

            return hook

        handles = []
        for layer in layers:
            stop = layer == deepest and not surprisal
            module = tm.model.get_input_embeddings() if layer == 0 else blocks[layer - 1]
            handles.append(module.register_forward_hook(hook_for(layer, stop)))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"features {tm.model_id}", unit="sent", mininterval=1.0)
        try:
            with torch.inference_mode():
                for batch in self._batches(ids):
                    captured.clear()
                    final = None
                    try:
                        result = tm.model.base_model(
                            input_ids=batch.input_ids.to(tm.device),
                            attention_mask=batch.attention.to(tm.device),
                            use_cache=False,
                        )
                        final = result.last_hidden_state
                    except _Stop:
                        pass
                    mask = batch.pool_mask.to(tm.device)
                    rows = torch.arange(len(batch.index), device=tm.device)
                    for layer in layers:
                        h = captured[layer].float()
                        for p in poolings:
                            if p == "mean":
                                m = mask.unsqueeze(-1).to(h.dtype)
                                pooled = (h * m).sum(1) / m.sum(1)
                            else:
                                pooled = h[rows, batch.last_pos.to(tm.device)]
                            out[layer_key(p, layer)][batch.index] = pooled.cpu().numpy()
                    if surprisal:
                        out[SURPRISAL_KEY][batch.index] = _surprisal_stats(tm.model, final, batch)
                    if bar is not None:
                        bar.update(len(batch.index))
        finally:
            for h in handles:
                h.remove()
            if bar is not None:
                bar.close()
        return out


def _surprisal_stats(model: Any, final: Any, batch: _Batch, chunk: int = 512) -> np.ndarray:
    """Mean, sum and max of -log p (nats) over each sentence's tokens.

    Logits are computed only at real (non-padding) positions, a chunk at a time,
    as logsumexp minus the target's logit: no full-vocabulary tensor per batch.
    """
    import torch

    head = model.get_output_embeddings()
    device = final.device
    valid = batch.attention.to(device)[:, 1:].bool()
    targets = batch.input_ids.to(device)[:, 1:][valid]
    hidden = final[:, :-1][valid]
    nll = torch.empty(len(targets), device=device)
    for a in range(0, len(targets), chunk):
        logits = head(hidden[a : a + chunk]).float()
        tgt = logits.gather(1, targets[a : a + chunk, None]).squeeze(1)
        nll[a : a + chunk] = torch.logsumexp(logits, 1) - tgt
    counts = valid.sum(1)
    rows = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    total = torch.zeros(len(counts), device=device).index_add_(0, rows, nll)
    biggest = torch.full((len(counts),), -math.inf, device=device).scatter_reduce(0, rows, nll, "amax")
    return torch.stack([total / counts.clamp(min=1), total, biggest], 1).cpu().numpy()


def length_features(sentences: Sequence[str]) -> np.ndarray:
    """Sentence length in words and in characters, shape (n, 2)."""
    return np.array([[len(s.split()), len(s)] for s in sentences], dtype=np.float32)


def word_frequency_features(sentences: Sequence[str], lang: str = "en") -> np.ndarray:
    """Mean Zipf word frequency (wordfreq) per sentence, shape (n, 1)."""
    from wordfreq import tokenize, zipf_frequency

    rows = []
    for s in sentences:
        words = tokenize(s, lang)
        rows.append([float(np.mean([zipf_frequency(w, lang) for w in words])) if words else 0.0])
    return np.array(rows, dtype=np.float32)
