"""The score report: the twin's held-out r per target beside trivial baselines and the noise ceiling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import digest_keys
from .data import Dataset
from .errors import DataError
from .features import length_features, word_frequency_features
from .model import MIN_TRAIN, Twin, baseline_predictions, cross_validated_predictions
from .plan import stimulus_digests
from .scoring import Score, kfold, score, split_half_ceiling

BASELINES = {
    "length (words)": lambda s: length_features(s)[:, :1],
    "length (characters)": lambda s: length_features(s)[:, 1:],
    "word frequency": word_frequency_features,
}


def _gray(images: list) -> list[np.ndarray]:
    from .vision import load_image

    return [load_image(im, f"image {i}").astype(np.float64).mean(2) / 255.0 for i, im in enumerate(images)]


IMAGE_BASELINES = {  # an image twin's trivial rivals: how bright, and how contrasted, each image is
    "mean luminance": lambda ims: np.array([[g.mean()] for g in _gray(ims)]),
    "RMS contrast": lambda ims: np.array([[g.std()] for g in _gray(ims)]),
}


@dataclass
class ScoreReport:
    """Scores per target: the twin and each baseline."""

    mode: str  # "cross-validated" or "held-out"
    n: int
    folds: int
    unit: str = "sentences"  # or "images"
    rows: dict[str, dict[str, Score]] = field(default_factory=dict)  # target -> name -> score

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "n": self.n,
            "folds": self.folds,
            "targets": {t: {k: v.to_dict() for k, v in row.items()} for t, row in self.rows.items()},
        }

    def text(self) -> str:
        how = f"{self.folds}-fold cross-validated" if self.mode == "cross-validated" else "held-out"
        lines = [f"twin: {how} Pearson r on {self.n} {self.unit} (95% bootstrap CI); baselines cross-validated"]
        for target, row in self.rows.items():
            lines.append(f"{target}:")
            for name, s in row.items():
                lines.append(f"  {name:22s} {s}")
        return "\n".join(lines)


def score_report(twin: Twin, dataset: Dataset, folds: int = 10, seed: int = 0) -> ScoreReport:
    """Cross-validate the twin's recipe on stimuli it was trained on, else score its predictions.

    An image twin's dataset holds image paths; its baselines are image statistics, not sentence ones.
    Raises DataError for data too small to score: under 5 stimuli, or a training fold under MIN_TRAIN."""
    images = twin.modality == "image"
    unit = "images" if images else "sentences"
    if len(dataset) < 5:
        raise DataError(f"scoring needs at least 5 unique {unit}, got {len(dataset)}")
    test_folds = kfold(len(dataset), folds, seed, dataset.groups)
    if (smallest := len(dataset) - max(map(len, test_folds))) < MIN_TRAIN:
        raise DataError(f"{len(test_folds)} folds of {len(dataset)} {unit} leave {smallest} to train on; "
                        f"a twin needs {MIN_TRAIN}: use more --folds or more {unit}")  # fmt: skip
    trained = set(digest_keys(twin.training_digests))
    seen = np.array([k in trained for k in digest_keys(stimulus_digests(dataset.sentences, images=images))])
    features = twin._features()
    Y = dataset.responses
    if seen.any():  # any overlap with the training set: only the recipe can be scored honestly
        blocks = features(dataset.sentences)
        pred = cross_validated_predictions(blocks, Y, folds, seed, dataset.groups)
        mode = "cross-validated"
    else:
        pred = twin.predict(dataset.sentences)[0]
        mode = "held-out"
    # Baselines have no fitted model to reuse: they are always cross-validated on these folds.
    base = {
        name: baseline_predictions(make(dataset.sentences), Y, folds, seed, dataset.groups)
        for name, make in (IMAGE_BASELINES if images else BASELINES).items()
    }
    report = ScoreReport(mode, len(Y), folds, unit)
    for t, target in enumerate(dataset.targets):
        ceiling = None
        if dataset.has_repeats:
            ceiling = split_half_ceiling([r[:, t] for r in dataset.repeats], seed=seed)
        row = {"twin": score(pred[:, t], Y[:, t], seed=seed, noise_ceiling=ceiling)}
        for name, p in base.items():
            row[name] = score(p[:, t], Y[:, t], seed=seed, noise_ceiling=ceiling)
        report.rows[target] = row
    return report
