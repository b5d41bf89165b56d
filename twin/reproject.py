"""Recompute the shipped reference projections of the default model's default layers
(``python -m twin.reproject``). Apart from :mod:`twin.projection`, which the twin model imports and which imports
none of the model."""

from __future__ import annotations

import numpy as np

from .features import TextFeatureExtractor
from .plan import FeaturePlan
from .projection import SHIPPED, STORED_COMPONENTS, _stored_file, principal_basis, reference_sentences


def main() -> None:
    """Recompute the shipped projections of the default model's default layers."""
    plan = FeaturePlan().resolve()
    layer_blocks = [b for b in plan.blocks if "/L" in b]
    ex = TextFeatureExtractor(plan.model, progress=True)
    layers = sorted({int(b.split("/L")[1]) for b in layer_blocks})
    poolings = sorted({b.split("/")[0] for b in layer_blocks})
    feats = ex.extract(reference_sentences(), layers=layers, pooling=poolings)
    arrays = {}
    for b in layer_blocks:
        arrays[f"{b}/mean"], arrays[f"{b}/basis"] = principal_basis(feats[b], STORED_COMPONENTS)
    SHIPPED.mkdir(exist_ok=True)
    out = _stored_file(ex.model_id)[0]
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({len(layer_blocks)} blocks, {STORED_COMPONENTS} components)")


if __name__ == "__main__":
    main()
