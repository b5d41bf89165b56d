"""Errors raised by the twin for bad input; the command line turns them into exit code 2."""

from __future__ import annotations


class TwinError(Exception):
    """Base class for every user-facing twin error (bad data, unknown model, bad twin file)."""


class DataError(TwinError, ValueError):
    """Training or prediction data (or its file) is missing, too small, empty or malformed."""


class FeatureModelError(TwinError):
    """A feature model cannot be found or loaded, or does not match a twin."""


class TwinFileError(TwinError):
    """A twin file is unreadable, truncated, foreign, or from an incompatible version."""


class CacheError(TwinError):
    """A feature cache path that names a folder or another kind of file (which is left as it is)."""
