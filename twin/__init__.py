"""The digital twin: a brain-aligned encoding model of responses to sentences.

Stimulus -> features of a pretrained network -> cross-validated ridge readout ->
predicted response of target regions. Fit, score, save/load, refine online.
"""

from .cache import FeatureCache
from .data import Dataset, load_dataset, load_sentences
from .errors import DataError, FeatureModelError, TwinError, TwinFileError
from .features import TextFeatureExtractor, length_features, word_frequency_features
from .model import (
    FeaturePlan,
    Hyperparameters,
    TextFeatures,
    Twin,
    baseline_predictions,
    cross_validated_predictions,
)
from .models import OFFLINE_MODELS, load_text_model
from .projection import Projection, reference_projection
from .ridge import RidgeReadout, loo_ridge
from .scoring import Score, kfold, ncsnr, nsd_ceiling, score, split_half_ceiling

__all__ = [
    "OFFLINE_MODELS",
    "DataError",
    "Dataset",
    "FeatureCache",
    "FeatureModelError",
    "FeaturePlan",
    "Hyperparameters",
    "Projection",
    "RidgeReadout",
    "Score",
    "TextFeatureExtractor",
    "TextFeatures",
    "Twin",
    "TwinError",
    "TwinFileError",
    "baseline_predictions",
    "cross_validated_predictions",
    "kfold",
    "length_features",
    "load_dataset",
    "load_sentences",
    "load_text_model",
    "loo_ridge",
    "ncsnr",
    "nsd_ceiling",
    "reference_projection",
    "score",
    "split_half_ceiling",
    "word_frequency_features",
]
