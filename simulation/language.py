"""The simulated language subject: a ground-truth response function for sentences.

The default language subject (a :class:`~simulation.subjects.Subject`, registered as
``language``) is not the twin: it reads all-MiniLM-L6-v2 features (layer 3, mean
pooled), word frequency and length through a saturating nonlinearity, fit to the
Pereira 2018 language-network responses (weights in ``subjects/language.npz``;
refit with ``python -m simulation.refit``) and calibrated to the
single-participant figures of Tuckute et al. 2024: signal SD 0.188 and noise SD
0.623 per trial (SNR 0.30). Like that study's drive/suppress sessions, it has
more room below than above: the response saturates fast towards a ceiling about
25 % above the mean sentence's and slowly towards a floor at the nonword level.
Strings that are mostly not words (the localizer's nonword lists) get the
language network's much weaker response to them, so sentences > nonwords, its
defining contrast (Fedorenko et al. 2010).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PARAMS = Path(__file__).with_name("language.npz")
SIGNAL_SD = 0.188
NOISE_SD = 0.623
BASELINE = 1.0  # response to a sentence relative to fixation
NONWORD_LEVEL = 0.4  # response to a list of nonwords: far below sentences, above fixation (Fedorenko et al. 2010)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def lexicality(sentences: Sequence[str], min_zipf: float = 1.5) -> np.ndarray:
    """Fraction of each string's words that are English words (wordfreq Zipf >= ``min_zipf``);
    capitalized words after the first are names and not counted."""
    from wordfreq import zipf_frequency

    out = []
    for s in sentences:
        words = [w.lower() for i, w in enumerate(_WORD.findall(s)) if i == 0 or not w[0].isupper()]
        out.append(np.mean([zipf_frequency(w, "en") >= min_zipf for w in words]) if words else 1.0)
    return np.array(out)


def saturate(z: np.ndarray, up: float, down: float) -> np.ndarray:
    """tanh(gain * z) / gain, with gain ``up`` above 0 and ``down`` below: slope 1 at 0, bounded by 1/up and -1/down."""
    gain = np.where(z > 0, up, down)
    return np.tanh(gain * z) / gain


def subject_features(sentences: Sequence[str], layer: int = 3) -> np.ndarray:
    """The subject's own stimulus features: MiniLM layer ``layer`` (mean over tokens), word frequency, length (in
    float32 whatever ``$NEUROTWIN_DTYPE`` says: the ground truth is the same on every machine)."""
    from twin.features import TextFeatureExtractor, length_features, word_frequency_features

    extractor = TextFeatureExtractor("minilm", dtype="float32")
    emb = extractor.extract(list(sentences), layers=[layer], pooling="mean")[f"mean/L{layer}"]
    return np.hstack([emb, word_frequency_features(sentences), length_features(sentences)])


class LanguageSubject:
    """Language network ('lang') and a multiple-demand control region ('md')."""

    rois = ("lang", "md")
    signal_sd = SIGNAL_SD
    noise_sd = NOISE_SD

    layer = 3  # the MiniLM layer its features come from

    def __init__(self, params: str | Path | dict = PARAMS) -> None:
        """``params``: the weights and shape (a ``.npz`` file, or its arrays by name)."""
        p = params if isinstance(params, dict) else np.load(params)
        self.coef, self.intercept = p["coef"], float(p["intercept"])
        self.z_mean, self.z_sd = float(p["z_mean"]), float(p["z_sd"])
        self.gain_up, self.gain_down = float(p["gain_up"]), float(p["gain_down"])
        self.g_mean, self.g_sd = float(p["g_mean"]), float(p["g_sd"])
        self.md_coef, self.md_mean, self.md_sd = p["md_coef"], float(p["md_mean"]), float(p["md_sd"])

    def warm_up(self) -> None:
        """Load the feature model now (about 5 s), not at the first stimulus, when a rig serving it would
        fall silent long enough to be taken for lost."""
        self(["A sentence to load the model with."])

    def __call__(self, stimuli: Sequence[str]) -> np.ndarray:
        X = subject_features(stimuli, self.layer)
        z = (X @ self.coef + self.intercept - self.z_mean) / self.z_sd
        g = (saturate(z, self.gain_up, self.gain_down) - self.g_mean) / self.g_sd  # unit SD on Pereira
        # Sentences are >= 0.92 words (a few rare or technical ones down to 0.6), nonword lists 0.5 on average.
        understood = np.clip((lexicality(stimuli) - 0.4) / 0.4, 0.0, 1.0)
        lang = NONWORD_LEVEL + understood * (BASELINE + SIGNAL_SD * g - NONWORD_LEVEL)
        md = 0.6 + SIGNAL_SD * ((X[:, -3:] @ self.md_coef - self.md_mean) / self.md_sd)
        return np.column_stack([lang, md])
