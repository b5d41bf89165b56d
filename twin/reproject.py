"""Recompute the shipped reference projections of the offline causal models' default layers
(``python -m twin.reproject [MODEL ...]``). Apart from :mod:`twin.projection`, which the twin model imports and
which imports none of the model."""

from __future__ import annotations

import argparse

import numpy as np

from .features import TextFeatureExtractor
from .models import GGUF_MODELS
from .plan import FeaturePlan
from .projection import SHIPPED, STORED_COMPONENTS, _stored_file, principal_basis, reference_sentences


def reproject(model: str) -> None:
    """Recompute the shipped projections of one model's default layers."""
    plan = FeaturePlan(model=model).resolve()
    ex = TextFeatureExtractor(plan.model, progress=True, dtype="float32")
    feats = ex.extract(reference_sentences(), layers=plan.layers or (), pooling=plan.poolings)
    arrays = {}
    for b in plan.layer_blocks:
        arrays[f"{b}/mean"], arrays[f"{b}/basis"] = principal_basis(feats[b], STORED_COMPONENTS, bool(plan.standardize))
    SHIPPED.mkdir(exist_ok=True)
    out = _stored_file(ex.model_id, bool(plan.standardize))[0]
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({len(plan.layer_blocks)} blocks, {STORED_COMPONENTS} components)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(GGUF_MODELS), help="offline aliases (default: all)")
    for model in parser.parse_args().models:
        reproject(model)


if __name__ == "__main__":
    main()
