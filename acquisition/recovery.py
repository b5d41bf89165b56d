"""Recover an HDF5 file whose writer died in SWMR mode (what ``h5clear -s`` does).

A writer killed while in SWMR mode leaves the superblock's file-consistency flags
set; HDF5 then refuses every open except an SWMR read. Clearing the flags (and
re-checksumming the superblock) makes the file openable again, with everything
flushed before the crash intact.
"""

from __future__ import annotations

import struct
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M
    a ^= _rot(c, 4)
    c = (c + b) & _M
    b = (b - a) & _M
    b ^= _rot(a, 6)
    a = (a + c) & _M
    c = (c - b) & _M
    c ^= _rot(b, 8)
    b = (b + a) & _M
    a = (a - c) & _M
    a ^= _rot(c, 16)
    c = (c + b) & _M
    b = (b - a) & _M
    b ^= _rot(a, 19)
    a = (a + c) & _M
    c = (c - b) & _M
    c ^= _rot(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rot(b, 14)) & _M
    a ^= c
    a = (a - _rot(c, 11)) & _M
    b ^= a
    b = (b - _rot(a, 25)) & _M
    c ^= b
    c = (c - _rot(b, 16)) & _M
    a ^= c
    a = (a - _rot(c, 4)) & _M
    b ^= a
    b = (b - _rot(a, 14)) & _M
    c ^= b
    c = (c - _rot(b, 24)) & _M
    return c


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum HDF5 uses for metadata."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n - i > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = _mix((a + x) & _M, (b + y) & _M, (c + z) & _M)
        i += 12
    if n - i == 0:
        return c
    tail = data[i:] + b"\0" * (12 - (n - i))
    x, y, z = struct.unpack("<III", tail)
    return _final((a + x) & _M, (b + y) & _M, (c + z) & _M)


def clear_status_flags(path: str | Path) -> bool:
    """Clear a crashed writer's consistency flags; True if the file needed it."""
    path = Path(path)
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != SIGNATURE:
            raise ValueError(f"'{path}' is not an HDF5 file")
        version, size_offsets = head[8], head[9]
        if version < 2:
            return False  # older superblocks have no status flags in this form
        if head[11] == 0:
            return False
        end = 12 + 4 * size_offsets
        f.seek(0)
        block = bytearray(f.read(end))
        block[11] = 0
        f.seek(0)
        f.write(bytes(block) + struct.pack("<I", lookup3(bytes(block))))
        f.flush()
    return True
