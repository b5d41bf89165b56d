"""The digital twin: a brain-aligned encoding model of responses to sentences.

Stimulus -> features of a pretrained network -> cross-validated ridge readout ->
predicted response of target regions. Fit, score, save/load, refine online.

Names load on first use (lazy_loader), so the command line and light modules (``twin.errors``)
do not pull in torch and the language models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cache": ["FeatureCache"],
        "data": ["Dataset", "load_dataset", "load_sentences"],
        "errors": ["DataError", "FeatureModelError", "TwinError", "TwinFileError"],
        "features": ["TextFeatureExtractor", "length_features", "word_frequency_features"],
        "hyperparameters": ["Hyperparameters"],
        "model": ["Prior", "Twin", "baseline_predictions", "cross_validated_predictions"],
        "plan": ["FeaturePlan", "StackedPlan", "TextFeatures", "features_for", "plan_for"],
        "models": ["OFFLINE_MODELS", "load_text_model"],
        "projection": ["Projection", "reference_projection"],
        "ridge": ["RidgeReadout", "loo_ridge"],
        "scoring": ["Score", "kfold", "ncsnr", "nsd_ceiling", "score", "split_half_ceiling"],
    },
)

if TYPE_CHECKING:
    from .cache import FeatureCache
    from .data import Dataset, load_dataset, load_sentences
    from .errors import DataError, FeatureModelError, TwinError, TwinFileError
    from .features import TextFeatureExtractor, length_features, word_frequency_features
    from .hyperparameters import Hyperparameters
    from .model import Prior, Twin, baseline_predictions, cross_validated_predictions
    from .models import OFFLINE_MODELS, load_text_model
    from .plan import FeaturePlan, StackedPlan, TextFeatures, features_for, plan_for
    from .projection import Projection, reference_projection
    from .ridge import RidgeReadout, loo_ridge
    from .scoring import Score, kfold, ncsnr, nsd_ceiling, score, split_half_ceiling
