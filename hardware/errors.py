"""Errors of the hardware bridge that the command line turns into one line and exit code 2."""

from __future__ import annotations


class EndpointError(OSError):
    """An endpoint (tcp://HOST:PORT) that cannot be listened on or connected to: malformed, on an interface
    this machine does not have, or already in use."""


class BridgeFileError(OSError):
    """A file the bridge was given that is not what it should be: a --journal that is a folder or another
    program's file (left untouched), a CURVE key file without the key."""
