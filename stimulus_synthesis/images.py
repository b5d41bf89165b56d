"""Image synthesis under the twin, inside the safety limits.

* :func:`synthesize_images`: gradient ascent on the twin's prediction through a
  decorrelated Fourier parametrization (1/f^2-scaled spectrum, decorrelated colour),
  with random jitter, scaling and blur at every step (the feature-visualization
  recipe), projected into the safety limits (contrast scaled about the background
  grey; the scale is refreshed as the image changes). It starts from faint noise or
  from given images (:func:`best_starts`: the ones the twin rates best for the goal).
* :func:`control_images`: one-site control with the hold chosen by the twin.
* :func:`evolve_images`: CMA-ES through optuna's ask/tell over a low-dimensional
  code (a mix of fixed random 1/f images), for twins without
  gradients; any function of images can be the objective.
* :func:`natural_images`: a natural image set from scikit-image's sample photos,
  tiled and cropped, every crop within the safety limits.

Goals as in :class:`~stimulus_synthesis.selection.Goal`: drive, suppress, and
``control`` (raise one site while holding the others at their reference level).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .safety import SafetyLimits, SafetyReport, check_image, make_safe
from .selection import Goal

log = logging.getLogger(__name__)

# Colour decorrelation of natural images (Olah et al. 2017): sqrt of the RGB covariance, normalized.
_COLOR = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR = _COLOR / np.linalg.norm(_COLOR, axis=0).max()
SAMPLE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "brick", "grass", "gravel", "moon",
                 "clock", "immunohistochemistry", "text", "page")  # fmt: skip


@dataclass
class SynthesizedImage:
    """One synthesized image with the twin's prediction and its safety report."""

    image: np.ndarray  # uint8 (H, W, 3)
    predicted: np.ndarray  # (targets,)
    objective: float
    safety: SafetyReport
    contrast_scale: float  # 1: unchanged by the safety projection
    method: str
    evaluations: int
    trace: list[float] = field(default_factory=list, repr=False)


def natural_images(
    n: int = 1000, size: int = 128, seed: int = 0, limits: SafetyLimits | None = None
) -> list[np.ndarray]:
    """n safe crops (size x size, uint8 RGB) of scikit-image's sample photos at random scales and places."""
    import skimage.data
    from PIL import Image

    limits = limits or SafetyLimits()
    photos = []
    for name in SAMPLE_PHOTOS:
        a = np.asarray(getattr(skimage.data, name)())
        a = np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]
        photos.append(a.astype(np.uint8))
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20 * n:
            raise RuntimeError(f"only {len(out)} of {n} natural crops pass the safety limits")
        a = photos[rng.integers(len(photos))]
        h, w = a.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = a[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))
        if check_image(img, limits).ok:
            out.append(img)
    return out


def goal_objective(goal: Goal, reference: np.ndarray | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The goal as a torch function of predictions (N, targets) -> (N,), higher is better."""
    ref = None if reference is None else torch.as_tensor(np.asarray(reference, np.float32))

    def f(pred: torch.Tensor) -> torch.Tensor:
        m = pred[:, goal.roi]
        if goal.kind == "drive":
            return m
        if goal.kind == "suppress":
            return -m
        if goal.kind == "target":
            return -(m - goal.value).abs()
        if goal.kind == "control":
            keep = [i for i in range(pred.shape[1]) if i != goal.roi]
            base = ref[keep] if ref is not None else pred[:, keep].detach().mean(0)
            return m - goal.hold * (pred[:, keep] - base).abs().sum(1)  # as in sentence selection
        raise ValueError(f"unknown goal {goal.kind!r}")

    return f


def best_starts(
    predict: Callable[[torch.Tensor], torch.Tensor],
    goal: Goal,
    images: list[np.ndarray],
    n: int,
    size: int = 128,
    reference: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
) -> np.ndarray:
    """The n of ``images`` the twin rates best for the goal, as (n, size, size, 3) uint8 starts.

    ``predicted``: the twin's predictions (len(images), targets) for the images, when already known
    (the images then do not go through the feature network again).

    Gradient synthesis from these stays near images where a twin fit on natural images is
    trustworthy: against the simulated V4 sites it lifted the hardest site's true response
    from 1.1 to 1.4 times its natural maximum (bench/image_synthesis.py).
    """
    from twin.vision import to_tensor

    if len(images) < n:
        raise ValueError(f"{n} start images asked for, only {len(images)} given")
    if predicted is None:
        predicted = rate_images(predict, images, size)
    if len(predicted) != len(images):
        raise ValueError(f"{len(predicted)} predictions given for {len(images)} images")
    values = goal_objective(goal, reference)(torch.as_tensor(np.asarray(predicted, np.float32))).numpy()
    best = np.argsort(-values, kind="stable")[:n]
    return np.stack([_to_uint8(to_tensor([images[i]], size)[0]) for i in best])


def rate_images(
    predict: Callable[[torch.Tensor], torch.Tensor], images: list[np.ndarray], size: int = 128
) -> np.ndarray:
    """The twin's predictions (len(images), targets) for images, in batches of 64."""
    from twin.vision import to_tensor

    with torch.no_grad():
        chunks = [predict(to_tensor(images[at : at + 64], size)).numpy() for at in range(0, len(images), 64)]
    return np.concatenate(chunks).astype(np.float64)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.round(x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


class FourierImage(torch.nn.Module):
    """n images (3, size, size) from a 1/f^decay-scaled spectrum and decorrelated colour; values in (0, 1).

    ``decay`` 2 (smoother than the 1 of feature visualization) keeps images where a twin fit
    on natural images still predicts well: against the simulated V4 sites it doubled the true
    response reached for the hardest sites (bench/image_synthesis.py).
    """

    def __init__(self, n: int, size: int, decay: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freq = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / size)
        self.register_buffer("scale", (1.0 / freq**decay) / size)
        self.spectrum = torch.nn.Parameter(0.01 * torch.randn(n, 3, size, size // 2 + 1, 2, generator=g))
        self.size = size

    def start_from(self, images: torch.Tensor) -> None:
        """Set the spectrum so that the module returns ``images`` (n, 3, size, size) in [0, 1]."""
        x = torch.logit(images.clamp(0.02, 0.98)) / 4.0
        x = torch.einsum("ij,njhw->nihw", torch.linalg.inv(torch.as_tensor(_COLOR)), x)
        spec = torch.fft.rfft2(x, norm="ortho") / self.scale
        with torch.no_grad():
            self.spectrum.copy_(torch.view_as_real(spec))

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")  # (n, 3, H, W), decorrelated
        x = torch.einsum("ij,njhw->nihw", torch.as_tensor(_COLOR), x)
        return torch.sigmoid(x * 4.0)


def _robustness(x: torch.Tensor, rng: np.random.Generator, jitter: int) -> torch.Tensor:
    """Random jitter, scaling and a light blur: the twin must like the image, not its pixels."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, 2))
    x = torch.roll(x, (dy, dx), (2, 3))
    s = float(rng.uniform(0.92, 1.08))
    x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    x = F.pad(x, [0, max(0, w - x.shape[3]), 0, max(0, h - x.shape[2])], mode="reflect")[:, :, :h, :w]
    if rng.random() < 0.5:
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
        x = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), k2, groups=3)
    return x


def _scale_about(x: torch.Tensor, scales: torch.Tensor, bg: float) -> torch.Tensor:
    return bg + scales[:, None, None, None] * (x - bg)


def synthesize_images(
    predict: Callable[[torch.Tensor], torch.Tensor],
    goal: Goal,
    n: int = 4,
    steps: int = 256,
    size: int = 128,
    lr: float = 0.05,
    limits: SafetyLimits | None = None,
    reference: np.ndarray | None = None,
    jitter: int = 6,
    seed: int = 0,
    progress: bool = False,
    start: np.ndarray | None = None,
) -> list[SynthesizedImage]:
    """Gradient synthesis of n images; ``predict`` maps images (N, 3, H, W) in [0, 1] to (N, targets).

    ``start``: n images (n, size, size, 3) uint8 to begin from (e.g. :func:`best_starts` of the
    natural images the twin was fit on) instead of faint noise.

    Every ``steps`` iteration evaluates each image once (one twin evaluation per image and step).
    """
    from tqdm.auto import tqdm

    limits = limits or SafetyLimits()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    param = FourierImage(n, size, seed=seed)
    if start is not None:
        if np.shape(start) != (n, size, size, 3):
            raise ValueError(f"start must be {n} images of {size} x {size} x 3, got shape {np.shape(start)}")
        param.start_from(torch.from_numpy(np.asarray(start)).permute(0, 3, 1, 2).float() / 255.0)
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    score = goal_objective(goal, reference)
    bg = limits.background / 255.0
    scales = torch.ones(n)
    trace: list[float] = []
    for step in tqdm(range(steps), desc="gradient synthesis", disable=not progress, leave=False):
        x = param()
        if step % 16 == 0 or step == steps - 1:  # the safety projection: contrast about the background
            scales = torch.tensor([make_safe(_to_uint8(img), limits, steps=6)[1] for img in x.detach()])
        obj = score(predict(_robustness(_scale_about(x, scales, bg), rng, jitter)))
        opt.zero_grad()
        (-obj.sum()).backward()
        opt.step()
        trace.append(float(obj.detach().mean()))
    with torch.no_grad():
        final = param()
    return _finish(predict, score, [_to_uint8(img) for img in final], limits, "gradient", steps, trace)


@dataclass
class ControlledImages:
    """One-site control: the hold the twin chose, its images, and the images of every hold tried."""

    hold: float
    images: list[SynthesizedImage]
    tried: dict[float, list[SynthesizedImage]]


def control_images(
    predict: Callable[[torch.Tensor], torch.Tensor],
    site: int,
    natural: list[np.ndarray],
    n: int = 2,
    holds: tuple[float, ...] = (1.0, 3.0, 6.0),
    bound: float = 1.0,
    margin: float = 1.3,
    predicted: np.ndarray | None = None,
    steps: int = 256,
    size: int = 128,
    seed: int = 0,
    limits: SafetyLimits | None = None,
    progress: bool = False,
) -> ControlledImages:
    """Raise one site while holding the others, with the hold chosen by the twin alone.

    ``natural``: images the twin was fit on (``predicted``: its predictions for them, when
    known). For each hold, gradient synthesis starts from the natural images the twin rates
    best and holds the other sites at the twin's mean over them. Chosen: among holds whose
    predicted others' mean moves less than ``bound`` SDs of the twin's natural ratings, the
    strongest that keeps the predicted target ``margin`` times above its best natural rating;
    failing that, the highest predicted target. The twin is least sure of the held sites far
    from its training images, so what the target does not need goes into holding them
    (against the simulated V4 sites, bench/image_synthesis.py: the others' mean at the
    worst site moved +0.57 SD instead of +1.9 with the weakest hold).
    """
    if not holds or min(holds) < 0:
        raise ValueError(f"holds must be one or more non-negative weights, got {holds}")
    rated = rate_images(predict, natural, size) if predicted is None else np.asarray(predicted, np.float64)
    if rated.ndim != 2 or len(rated) != len(natural) or not 0 <= site < rated.shape[1] or rated.shape[1] < 2:
        raise ValueError(f"one-site control needs a site among 2 or more targets and a rating per natural image; "
                         f"got site {site}, ratings {rated.shape} for {len(natural)} images")  # fmt: skip
    reference, spread = rated.mean(0), rated.std(0) + 1e-12
    best = rated[:, site].max()
    enough = best + (margin - 1) * abs(best)
    ranked, tried = [], {}
    for hold in holds:
        goal = Goal("control", roi=site, hold=hold)
        start = best_starts(predict, goal, natural, n, size, reference, predicted=rated)
        out = synthesize_images(predict, goal, n, steps, size, limits=limits, reference=reference, seed=seed,
                                progress=progress, start=start)  # fmt: skip
        tried[hold] = out
        mean = np.mean([o.predicted for o in out], 0)
        held = abs(np.delete((mean - reference) / spread, site).mean()) < bound
        strong = mean[site] >= enough
        ranked.append((not held, not strong, -hold if strong else -mean[site], hold))
    hold = min(ranked)[-1]
    return ControlledImages(hold, tried[hold], tried)


def _finish(predict, score, images, limits, method, evaluations, trace) -> list[SynthesizedImage]:
    out = []
    for img in images:
        safe, scale = make_safe(img, limits)
        with torch.no_grad():
            x = torch.from_numpy(safe).permute(2, 0, 1).float()[None] / 255.0
            pred = predict(x)
            obj = float(score(pred)[0])
        out.append(SynthesizedImage(safe, pred[0].numpy().astype(np.float64), obj, check_image(safe, limits), scale,
                                    method, evaluations, trace))  # fmt: skip
    return out


def noise_basis(size: int, dims: int, seed: int = 0) -> torch.Tensor:
    """(dims, 3, size, size) fixed random 1/f images in decorrelated colour: a low-dimensional image code."""
    with torch.no_grad():
        gen = FourierImage(dims, size, seed=seed)
        gen.spectrum.normal_(generator=torch.Generator().manual_seed(seed))
        spec = torch.view_as_complex(gen.spectrum) * gen.scale
        x = torch.fft.irfft2(spec, s=(size, size), norm="ortho")
        x = torch.einsum("ij,njhw->nihw", torch.as_tensor(_COLOR), x)
        return x / x.flatten(1).std(1)[:, None, None, None]


def decode_code(code: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Codes (N, dims) -> images (N, 3, H, W) in (0, 1): a sigmoid of the code's mix of basis images."""
    return torch.sigmoid(torch.einsum("nd,dchw->nchw", code, basis) / math.sqrt(basis.shape[0]))


def evolve_images(
    predict: Callable[[torch.Tensor], torch.Tensor],
    goal: Goal,
    n: int = 4,
    evaluations: int = 256,
    size: int = 128,
    dims: int = 48,
    limits: SafetyLimits | None = None,
    reference: np.ndarray | None = None,
    seed: int = 0,
    popsize: int | None = None,
    progress: bool = False,
) -> list[SynthesizedImage]:
    """CMA-ES (optuna ask/tell) over a ``dims``-dimensional code; n independent runs of ``evaluations`` each.

    The code mixes fixed random 1/f images (:func:`noise_basis`), so every scale of
    texture is reachable from a few dozen numbers.

    Each candidate is projected into the safety limits before the twin sees it, so the
    search optimizes inside the limits.
    """
    import optuna
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    limits = limits or SafetyLimits()
    basis = noise_basis(size, dims, seed)
    popsize = popsize or 4 + int(3 * math.log(dims))
    score = goal_objective(goal, reference)
    best_images, traces = [], []
    for run in range(n):
        sampler = optuna.samplers.CmaEsSampler(seed=seed * 1000 + run, popsize=popsize)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        dist = optuna.distributions.FloatDistribution(-4.0, 4.0)
        best, best_val, trace, done = None, -math.inf, [], 0
        bar = tqdm(total=evaluations, desc=f"CMA-ES run {run + 1}/{n}", disable=not progress, leave=False)
        while done < evaluations:
            trials = [study.ask({f"c{i}": dist for i in range(dims)}) for _ in range(min(popsize, evaluations - done))]
            codes = torch.tensor([[t.params[f"c{i}"] for i in range(dims)] for t in trials], dtype=torch.float32)
            with torch.no_grad():
                imgs = [make_safe(_to_uint8(x), limits, steps=6)[0] for x in decode_code(codes, basis)]
                x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
                values = score(predict(x)).numpy()
            for t, v, img in zip(trials, values, imgs, strict=True):
                study.tell(t, float(v))
                if v > best_val:
                    best, best_val = img, float(v)
            done += len(trials)
            bar.update(len(trials))
            trace.append(best_val)
        bar.close()
        best_images.append(best)
        traces.append(trace)
    out = _finish(predict, score, best_images, limits, "cmaes", evaluations, [])
    for item, trace in zip(out, traces, strict=True):
        item.trace = trace
    return out


def twin_predictor(twin: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The image twin as a differentiable function of images in [0, 1]."""
    from twin.vision import predict_torch

    if getattr(twin, "modality", "text") != "image":
        raise ValueError("image synthesis needs a twin fit on images (twin fit --modality image)")
    return predict_torch(twin, twin.feature_source())
