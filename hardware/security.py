"""ZeroMQ CURVE keys: generate, load, and the authenticator that admits only configured clients."""

from __future__ import annotations

import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

_auth: ThreadAuthenticator | None = None
_lock = threading.Lock()


def generate_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public, share it) and ``name.key_secret`` (keep it) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_public(path: str | Path) -> bytes:
    """The public key from a ``.key`` or ``.key_secret`` file."""
    public, _ = zmq.auth.load_certificate(str(path))
    return public


def load_pair(secret_path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(str(secret_path))
    if secret is None:
        raise ValueError(f"'{secret_path}' holds no secret key (use the .key_secret file)")
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
