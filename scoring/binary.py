"""The versioned binary header of the state values recstream serializes itself.

A user profile (:meth:`encoders.profile.UserProfile.to_bytes`) and a co-occurrence row
(:meth:`scoring.cooccurrence.CooccurrenceRow.to_bytes`) both start with the same header:
a two-byte magic naming the kind of value, a format version byte and the length of the
part that follows (uint32, little-endian).  Pure code with no imports from this repository
(the bottom of the layers, like :mod:`scoring.records`).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["HEADER", "pack_header", "unpack_header"]

#: magic (2 bytes) | version (1 byte) | length of the first part (uint32 LE)
HEADER: Final = struct.Struct("<2sBI")


def pack_header(magic: bytes, version: int, length: int) -> bytes:
    """The header of a value of kind ``magic`` in format ``version`` whose first part is
    ``length`` bytes long."""
    return HEADER.pack(magic, version, length)


def unpack_header(data: bytes | bytearray | memoryview, magic: bytes, version: int, error: type[Exception], *, short: str, name: str) -> tuple[bytes, int]:
    """``(bytes(data), length)``: the value as bytes and the length in its header; the first
    part starts at ``HEADER.size``.  Raises ``error`` when ``data`` is shorter than the
    header (``"<short> bytes too short"``), has another magic (``"not a serialized
    <name>"``) or another format version (``"unknown <name> format version"``)."""
    buf = bytes(data)
    if len(buf) < HEADER.size:
        raise error(f"{short} bytes too short ({len(buf)} bytes)")
    got_magic, got_version, length = HEADER.unpack_from(buf)
    if got_magic != magic:
        raise error(f"not a serialized {name} (magic {got_magic!r})")
    if got_version != version:
        raise error(f"unknown {name} format version {got_version} (this code reads version {version})")
    return buf, length
