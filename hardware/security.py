"""ZeroMQ CURVE keys: generate, load, and the authenticator that admits only configured clients."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import BridgeFileError

_auth: ThreadAuthenticator | None = None
_lock = threading.Lock()


def generate_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public, share it) and ``name.key_secret`` (keep it) into folder."""
    folder = Path(folder)
    made = not folder.exists()
    paths = (folder / f"{name}.key", folder / f"{name}.key_secret")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(folder), name)
        Path(secret).chmod(0o600)
    except OSError as exc:  # a full disk: no empty or half-written key is left
        for path in paths:
            path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise BridgeFileError(f"keys '{paths[0]}' could not be written: {exc.strerror or exc}") from None
    return Path(public), Path(secret)


def _certificate(path: str | Path) -> tuple[bytes, bytes | None]:
    if not Path(path).is_file():
        raise BridgeFileError(f"key file '{path}' " + ("is a folder" if Path(path).is_dir() else "does not exist"))
    try:
        return zmq.auth.load_certificate(str(path))
    except ValueError as exc:  # no key in it, or not text
        raise BridgeFileError(
            f"'{path}' is not a CURVE key file ({exc}); make keys with `neurotwin rig keygen`"
        ) from None
    except OSError as exc:
        raise BridgeFileError(f"key file '{path}': {exc.strerror or exc}") from None


def load_public(path: str | Path) -> bytes:
    """The public key from a ``.key`` or ``.key_secret`` file."""
    return _certificate(path)[0]


def load_pair(secret_path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = _certificate(secret_path)
    if secret is None:
        raise BridgeFileError(f"'{secret_path}' holds no secret key (use the .key_secret file)")
    return public, secret


def start_authenticator(allowed_clients: list[bytes]) -> None:
    """Admit only CURVE clients whose public key is listed (process-wide, once per context)."""
    global _auth
    with _lock:
        if _auth is None:
            _auth = ThreadAuthenticator(zmq.Context.instance())
            _auth.start()
        _auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY if not allowed_clients else "")
        if allowed_clients:
            _auth.certs["*"] = {key: True for key in allowed_clients}
