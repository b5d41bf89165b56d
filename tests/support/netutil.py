"""Test helpers: free ports, rig subprocesses, and a TCP proxy that can cut the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from kit.net import free_port  # noqa: F401 (the tests' helper, from here as before)

ROOT = Path(__file__).resolve().parents[2]


def wait_up(client, timeout: float, what: str = "the rig", synced: bool = False) -> float:
    """Poll a PeerClient until its peer has answered (with ``synced``, and its clock is known).

    Fails after ``timeout`` s; returns the deadline, for the waits that follow to share."""
    end = time.monotonic() + timeout
    while (not client.up or (synced and client.offset is None)) and time.monotonic() < end:
        client.poll(0.05)
    assert client.up and (not synced or client.offset is not None), f"{what} never answered"
    return end


def start_rig(port: int, journal: Path, *extra: str, speed: float = 10.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "control_loop.cli", "rig", "simulate-fmri", "--bind", f"tcp://127.0.0.1:{port}",
           "--journal", str(journal), "--subject", "tests.support.subjects:length_subject", "--speed", str(speed),
           "--heartbeat", "0.2", *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a target port; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.blocked = False
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.blocked = True
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns.clear()

    def restore(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


def neurotwin(*args: object) -> list[str]:
    """The command line of ``neurotwin ARGS...`` in this interpreter."""
    return [sys.executable, "-m", "control_loop.cli", *(str(a) for a in args)]


def start_null_presenter(port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A null presenter at real time on 127.0.0.1:port, waiting for relayed triggers; its log appended to ``log``."""
    with open(log, "a") as err:
        return subprocess.Popen(neurotwin("present", "--null", "--trigger-key", "", "--bind", f"tcp://127.0.0.1:{port}",
                                          "--heartbeat", "0.3"),
                                cwd=ROOT, env=env or os.environ, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def start_doc_rig(port: int, log: Path, *faults: str) -> subprocess.Popen:
    """docs/examples/minimal_rig.py (one channel, 'lang') on 127.0.0.1:port, with ``faults`` (tests/doc_rig.py);
    what it prints (every volume it sends, its errors) appended to ``log``."""
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.support.doc_rig", *faults, "--bind", f"tcp://127.0.0.1:{port}",
                                 "--channels", "lang"],
                                cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def fill(path: Path) -> Path:
    """Fill the file system of ``path`` to its last byte with that one file; returns it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path
