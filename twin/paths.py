"""Where NeuroTwin keeps its caches (converted models, feature tables)."""

from __future__ import annotations

import os
from pathlib import Path

from kit.files import replaced_whole  # (where the packages that write files whole have always found it)

__all__ = ["cache_root", "default_feature_cache", "models_root", "replaced_whole"]


def cache_root() -> Path:
    """The cache folder: ``$NEUROTWIN_CACHE``, else ``$XDG_CACHE_HOME/neurotwin``, else ``~/.cache/neurotwin``."""
    env = os.environ.get("NEUROTWIN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neurotwin"


def models_root() -> Path:
    """Where offline models are converted to once: ``$NEUROTWIN_MODELS``, else ``models`` in the cache folder."""
    env = os.environ.get("NEUROTWIN_MODELS")
    return Path(env).expanduser() if env else cache_root() / "models"


def default_feature_cache() -> Path:
    """The default HDF5 feature cache file."""
    return cache_root() / "features.h5"
