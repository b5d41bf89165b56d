"""Where NeuroTwin finds things outside the repository: its caches and the shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


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


def shared_data() -> Path:
    """The reference data (fMRI responses to sentences, localizer stimuli, the drive/suppress results):
    ``$NEUROTWIN_DATA``, else ``shared/data`` beside the repository (``../shared/data``; see its README)."""
    env = os.environ.get("NEUROTWIN_DATA")
    return Path(env).expanduser() if env else REPOSITORY.parent / "shared" / "data"
