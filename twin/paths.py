"""Where NeuroTwin keeps its caches (converted models, feature tables), and writing files whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


@contextmanager
def replaced_whole(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: it replaces ``path`` when the block ends
    and is removed when the block fails, so ``path`` is never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
