"""Exactly-once, in-order message streams over an unreliable link.

:class:`Outbox` numbers reliable messages, keeps them until acknowledged and
replays them on request; :class:`Inbox` delivers each seq once and in order,
dropping duplicates and holding early messages until a gap is refilled.
:class:`Journal` makes both survive a crash of the process (even SIGKILL): every
outgoing message, acknowledgement and accepted incoming message is appended to
a file before it takes effect, and replayed on restart.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from .errors import BridgeFileError

_LEN = struct.Struct("<I")
_HEADER_BODY = msgpack.packb(["neurotwin-journal", 1, None], use_bin_type=True)
HEADER = _LEN.pack(len(_HEADER_BODY)) + _HEADER_BODY  # a journal's first record; records() leaves it out


class Journal:
    """Append-only record file: (kind, seq, payload) records, each length-prefixed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise BridgeFileError(f"journal '{self.path}' is a folder; name a file")
        if self.path.exists() and not self.path.is_file():  # a device or FIFO: never read (it may never end)
            raise BridgeFileError(f"journal '{self.path}' is not a regular file (a device, FIFO or socket); name a "
                                  "file")  # fmt: skip
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "is a file" if folder.is_file() else f"cannot be made ({exc.strerror or exc})"
            raise BridgeFileError(f"journal '{self.path}': its folder '{folder}' {why}") from None
        data = self._data()
        head = data[: len(HEADER)]
        if not (head == HEADER or HEADER.startswith(head)):  # (a prefix: the header cut short by a crash)
            raise BridgeFileError(f"'{self.path}' is not a NeuroTwin journal (it does not begin with a journal's "
                               "header), so it is left as it is: give --journal a new file, or one a rig or "
                               "presenter wrote")  # fmt: skip
        valid = max((end for end, _ in _scan(data)), default=0)
        made = not self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise BridgeFileError(f"journal '{self.path}' cannot be opened: {exc.strerror or exc}") from None
        try:
            if valid < os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, valid)  # a record cut short by a crash
            if valid == 0:
                os.write(self._fd, HEADER)
        except OSError as exc:  # a full disk: a new journal is not left behind empty
            os.close(self._fd)
            if made:
                self.path.unlink(missing_ok=True)
            raise BridgeFileError(f"journal '{self.path}' cannot be written: {exc.strerror or exc}") from None

    def _data(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""

    def records(self) -> Iterator[list]:
        for end, record in _scan(self._data()):
            if end > len(HEADER):
                yield record

    def append(self, kind: str, seq: int, payload: Any = None) -> None:
        body = msgpack.packb([kind, seq, payload], use_bin_type=True)
        os.write(self._fd, _LEN.pack(len(body)) + body)

    def close(self) -> None:
        os.close(self._fd)


def _scan(data: bytes) -> Iterator[tuple[int, list]]:
    """(end offset, record) of each whole record, up to the first one cut short or unreadable."""
    pos = 0
    while pos + 4 <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + 4 + n > len(data):
            break
        try:
            record = msgpack.unpackb(data[pos + 4 : pos + 4 + n], raw=False)
        except Exception:
            break
        pos += 4 + n
        yield pos, record


def sent_messages(records: list[list]) -> list[dict]:
    """The reliable messages a peer sent, in order, from its journal's records (``out``: each frame as sent)."""
    return [msgpack.unpackb(payload, raw=False) for kind, _seq, payload in records if kind == "out"]


class Outbox:
    """Reliable sending: seq numbering, unacknowledged buffer, replay."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.next_seq = 1
        self.acked = 0
        self._unacked: OrderedDict[int, bytes] = OrderedDict()

    def restore(self, kind: str, seq: int, payload: Any) -> None:
        """Rebuild from a journal record."""
        if kind == "out":
            self._unacked[seq] = payload
            self.next_seq = max(self.next_seq, seq + 1)
        elif kind == "ack":
            self._drop(seq)

    def add(self, frame_for_seq: Any) -> tuple[int, bytes]:
        """Number a message: ``frame_for_seq(seq) -> frame``; journal it before it is sent."""
        seq = self.next_seq
        frame = frame_for_seq(seq)
        if self.journal is not None:
            self.journal.append("out", seq, frame)
        self._unacked[seq] = frame
        self.next_seq += 1
        return seq, frame

    def ack(self, upto: int) -> None:
        if upto <= self.acked:
            return
        if self.journal is not None:
            self.journal.append("ack", upto)
        self._drop(upto)

    def _drop(self, upto: int) -> None:
        self.acked = max(self.acked, upto)
        while self._unacked and next(iter(self._unacked)) <= upto:
            self._unacked.popitem(last=False)

    def since(self, start: int) -> list[bytes]:
        """Frames of every unacknowledged message with seq >= start, in order."""
        return [frame for seq, frame in self._unacked.items() if seq >= start]

    @property
    def pending(self) -> int:
        return len(self._unacked)


class Inbox:
    """Reliable receiving: each seq delivered once, in order."""

    def __init__(self, journal: Journal | None = None, max_early: int = 100_000) -> None:
        self.journal = journal
        self.expected = 1
        self.duplicates = 0
        self.max_early = max_early
        self._early: dict[int, dict] = {}

    def restore(self, kind: str, seq: int, payload: Any) -> dict | None:
        """Rebuild from a journal record; returns the message delivered then, if any."""
        if kind == "in":
            self.expected = max(self.expected, seq + 1)
            return payload
        return None

    def accept(self, message: dict) -> list[dict]:
        """Messages now deliverable, in order (possibly none: a duplicate, or early behind a gap)."""
        seq = message["seq"]
        if seq < self.expected or seq in self._early:
            self.duplicates += 1
            return []
        if seq > self.expected:
            if len(self._early) < self.max_early:
                self._early[seq] = message
            return []
        out = [message]
        self.expected += 1
        while self.expected in self._early:
            out.append(self._early.pop(self.expected))
            self.expected += 1
        if self.journal is not None:
            for m in out:
                self.journal.append("in", m["seq"], m)
        return out

    @property
    def gap(self) -> bool:
        """True when later messages arrived but ``expected`` has not."""
        return bool(self._early)
