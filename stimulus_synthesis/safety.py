"""Photosensitivity safety limits for images shown to a person (numpy only: the presenter uses it too).

Implements the flash, red-flash and regular-pattern criteria of ITU-R BT.1702 /
the Ofcom guidance on flashing images and regular patterns (Harding), with the
saturated-red definition of WCAG 2.2, plus lab comfort bounds on mean luminance
and contrast. Pixel values become screen luminance through a display model
(gamma 2.2, 200 cd/m^2 white by default). Thresholds and their sources are listed
in docs/SAFETY.md. An image counts as the whole visual field (conservative).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

ANALYSIS_SIZE = 128  # images are checked at this resolution


@dataclass(frozen=True)
class SafetyLimits:
    """Thresholds; the defaults follow ITU-R BT.1702 / Ofcom (see docs/SAFETY.md)."""

    peak_luminance: float = 200.0  # cd/m^2 of full white on the display
    gamma: float = 2.2
    background: int = 128  # grey level between stimuli
    min_mean_luminance: float = 2.0  # cd/m^2
    max_mean_luminance: float = 160.0  # cd/m^2
    max_rms_contrast: float = 1.5  # SD / mean of luminance
    flash_delta: float = 20.0  # cd/m^2: a luminance change this large is a flash transition ...
    flash_dark_below: float = 160.0  # ... when the darker frame is below this
    max_area: float = 0.25  # fraction of the field a flash, red or pattern may cover
    max_flashes_per_s: int = 3
    pattern_min_pairs: float = 5.0  # more than this many light-dark pairs is a regular pattern
    pattern_regularity: float = 0.5  # share of local variance in the pattern's frequencies
    red_ratio: float = 0.8  # saturated red: R / (R + G + B) >= 0.8 (linear) ...
    red_excess: float = 20.0 / 320.0  # ... and (R - G - B) > 20/320 (WCAG 2.2)

    def __post_init__(self) -> None:
        bad = [
            name
            for name, ok in [
                ("peak_luminance", self.peak_luminance > 0),
                ("gamma", self.gamma > 0),
                ("background", 0 <= self.background <= 255),
                ("min_mean_luminance", 0 <= self.min_mean_luminance < self.max_mean_luminance),
                ("max_rms_contrast", self.max_rms_contrast > 0),
                ("flash_delta", self.flash_delta > 0),
                ("max_area", 0 < self.max_area <= 1),
                ("max_flashes_per_s", self.max_flashes_per_s >= 0),
                ("pattern_regularity", 0 < self.pattern_regularity <= 1),
                ("red_ratio", 0 < self.red_ratio <= 1),
            ]
            if not ok
        ]
        if bad:
            raise ValueError(f"invalid safety limits: {', '.join(bad)} out of range")


@dataclass
class SafetyReport:
    """Whether an image (or a sequence) is safe, why not, and the measured figures."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return "safe" if self.ok else "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return asdict(self)


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"a safety check needs a uint8 image (H, W[, 3]), got {a.dtype} {a.shape}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, 2)
    a = a[..., :3]
    if a.shape[0] != ANALYSIS_SIZE or a.shape[1] != ANALYSIS_SIZE:
        from PIL import Image

        a = np.asarray(Image.fromarray(a).resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.BILINEAR))
    return a


def linear_rgb(image: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    """Linear light per channel (0-1) at the analysis resolution."""
    return (_rgb(image).astype(np.float64) / 255.0) ** limits.gamma


def luminance(image: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    """Screen luminance in cd/m^2 at the analysis resolution."""
    lin = linear_rgb(image, limits)
    return limits.peak_luminance * (0.2126 * lin[..., 0] + 0.7152 * lin[..., 1] + 0.0722 * lin[..., 2])


def saturated_red(image: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    """Boolean map of saturated-red pixels."""
    lin = linear_rgb(image, limits)
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    return (r / np.maximum(r + g + b, 1e-9) >= limits.red_ratio) & (r - g - b > limits.red_excess)


def pattern_area(lum: np.ndarray, limits: SafetyLimits) -> tuple[float, float]:
    """Fraction of the field covered by a regular high-contrast pattern, and its pairs across the field.

    The two strongest spatial frequencies with more than ``pattern_min_pairs`` cycles
    across the field are demodulated locally (Gaussian window); a pixel is patterned
    where they hold at least ``pattern_regularity`` of the local variance and their
    peak-to-peak luminance reaches the flash threshold while the dark stripes are
    below ``flash_dark_below``.
    """
    n = lum.shape[0]
    d = lum - lum.mean()
    window = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fft2(d * window)) ** 2
    k = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(k, k, indexing="ij")
    radius = np.hypot(kx, ky)
    power[(radius <= limits.pattern_min_pairs) | (kx < 0) | ((kx == 0) & (ky < 0))] = 0
    if not power.any():
        return 0.0, 0.0
    peaks = np.argsort(power.ravel())[::-1][:2]
    sigma = n / 12
    y, x = np.mgrid[0:n, 0:n]
    local_var = ndimage.gaussian_filter(d**2, sigma) - ndimage.gaussian_filter(d, sigma) ** 2
    share = np.zeros_like(d)
    amp = np.zeros_like(d)
    for p in peaks:
        fy, fx = ky.ravel()[p], kx.ravel()[p]
        carrier = np.exp(-2j * np.pi * (fy * y + fx * x) / n)
        a = 2 * np.abs(
            ndimage.gaussian_filter((d * carrier).real, sigma) + 1j * ndimage.gaussian_filter((d * carrier).imag, sigma)
        )
        share += a**2 / 2
        amp = np.maximum(amp, a)
    share /= np.maximum(local_var, 1e-9)
    dark = ndimage.gaussian_filter(lum, sigma) - amp
    patterned = (
        (share >= limits.pattern_regularity) & (2 * amp >= limits.flash_delta) & (dark < limits.flash_dark_below)
    )
    pairs = float(radius.ravel()[peaks[0]])
    return float(patterned.mean()), pairs


def check_image(image: np.ndarray, limits: SafetyLimits | None = None) -> SafetyReport:
    """Check one image against the limits (it appears on, and leaves to, the background)."""
    limits = limits or SafetyLimits()
    lum = luminance(image, limits)
    mean = float(lum.mean())
    rms = float(lum.std() / max(mean, 1e-9))
    red = float(saturated_red(image, limits).mean())
    area, pairs = pattern_area(lum, limits)
    reasons = []
    if not limits.min_mean_luminance <= mean <= limits.max_mean_luminance:
        reasons.append(
            f"mean luminance {mean:.1f} cd/m2 outside [{limits.min_mean_luminance:g}, {limits.max_mean_luminance:g}]"
        )
    if rms > limits.max_rms_contrast:
        reasons.append(f"RMS contrast {rms:.2f} above {limits.max_rms_contrast:g}")
    if red > limits.max_area:
        reasons.append(f"saturated red over {red:.0%} of the field (limit {limits.max_area:.0%})")
    if area > limits.max_area:
        reasons.append(
            f"regular high-contrast pattern ({pairs:.0f} light-dark pairs across the field) over {area:.0%} "
            f"of the field (limit {limits.max_area:.0%} with more than {limits.pattern_min_pairs:g} pairs)"
        )
    figures = {"mean_luminance": mean, "rms_contrast": rms, "red_area": red, "pattern_area": area}
    return SafetyReport(not reasons, reasons, figures)


def _transition(a: np.ndarray, b: np.ndarray, limits: SafetyLimits) -> tuple[int, bool]:
    """(+1 brighter / -1 darker / 0, whether it is a red transition) for a frame change a -> b."""
    la, lb = luminance(a, limits), luminance(b, limits)
    delta, darker = lb - la, np.minimum(la, lb)
    flashy = darker < limits.flash_dark_below
    up = float(((delta >= limits.flash_delta) & flashy).mean())
    down = float(((delta <= -limits.flash_delta) & flashy).mean())
    sign = 1 if up > limits.max_area and up >= down else -1 if down > limits.max_area else 0
    red = float((saturated_red(a, limits) != saturated_red(b, limits)).mean()) > limits.max_area
    return sign, red


def check_sequence(frames: Sequence[tuple[float, np.ndarray]], limits: SafetyLimits | None = None) -> SafetyReport:
    """Check a timed frame sequence [(onset_s, image), ...] for flashes and red flashes.

    A flash is a pair of opposing large luminance transitions over more than ``max_area``
    of the field; more than ``max_flashes_per_s`` flashes in any one second is refused,
    and so is any pair of transitions to and from saturated red.
    """
    limits = limits or SafetyLimits()
    events: list[tuple[float, int]] = []
    red_times: list[float] = []
    for (_, a), (t, b) in itertools.pairwise(frames):
        sign, red = _transition(a, b, limits)
        if sign:
            events.append((t, sign))
        if red:
            red_times.append(t)
    flashes, i = [], 0
    while i + 1 < len(events):  # a flash is a pair of opposing transitions
        if events[i + 1][1] == -events[i][1]:
            flashes.append(events[i][0])
            i += 2
        else:
            i += 1
    worst = max((sum(1 for u in flashes if t <= u < t + 1.0) for t in flashes), default=0)
    reasons = []
    if worst > limits.max_flashes_per_s:
        reasons.append(f"{worst} luminance flashes within one second (limit {limits.max_flashes_per_s})")
    if len(red_times) >= 2:
        reasons.append(f"saturated red flash: {len(red_times)} transitions to or from saturated red")
    return SafetyReport(not reasons, reasons, {"flashes_per_s": float(worst), "red_transitions": len(red_times)})


def make_safe(image: np.ndarray, limits: SafetyLimits | None = None, steps: int = 10) -> tuple[np.ndarray, float]:
    """The image with its contrast around the background grey scaled down just enough to pass.

    Returns (safe image, scale in [0, 1]); scale 1 means the image was already safe.
    """
    limits = limits or SafetyLimits()
    a = np.asarray(image, np.float64)
    bg = float(limits.background)

    def scaled(s: float) -> np.ndarray:
        return np.clip(np.round(bg + s * (a - bg)), 0, 255).astype(np.uint8)

    if check_image(scaled(1.0), limits).ok:
        return scaled(1.0), 1.0
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if check_image(scaled(mid), limits).ok else (lo, mid)
    return scaled(lo), lo
