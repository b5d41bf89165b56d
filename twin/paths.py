"""Where NeuroTwin keeps its caches (converted models, feature tables)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: ``$NEUROTWIN_CACHE``, else ``$XDG_CACHE_HOME/neurotwin``, else ``~/.cache/neurotwin``."""
    env = os.environ.get("NEUROTWIN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neurotwin"


def default_feature_cache() -> Path:
    """The default HDF5 feature cache file."""
    return cache_root() / "features.h5"
