"""Where NeuroTwin keeps its caches (converted models, feature tables)."""

from __future__ import annotations

from pathlib import Path

from kit.files import replaced_whole  # (where the packages that write files whole have always found it)
from kit.paths import cache_root, models_root

__all__ = ["cache_root", "default_feature_cache", "models_root", "replaced_whole"]


def default_feature_cache() -> Path:
    """The default HDF5 feature cache file."""
    return cache_root() / "features.h5"
