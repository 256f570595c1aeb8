"""State kept in Faust tables: value codecs and partition-correct table access.

Values are bytes that recstream encodes itself (never pickle):

* ``profiles`` (key user id): :meth:`encoders.profile.UserProfile.to_bytes`;
* ``item-embeddings`` (key item id, a global table): :func:`encode_item` — a format byte,
  the item's title and categories as orjson, and the float32 embedding;
* ``popularity`` (key ``"<partition>:<item id>"``): the partition's decayed count of the
  item as a little-endian float64 ``log2`` score (see :mod:`scoring.popularity`).
* ``cooccurrence`` (key ``"<partition>:<item id>"``, written with blend weights only): the
  partition's co-occurrence row of the item,
  :meth:`scoring.cooccurrence.CooccurrenceRow.to_bytes` (versioned, never pickle).

Faust's RocksDB store chooses the local database, and a table the changelog partition,
from the *current event*. Inside ``stream.take_events`` the current event is whichever
came last, so :func:`as_event` makes the event a write belongs to current for the
duration of the write. Every table write and read in recstream goes through it.
"""

from __future__ import annotations

import struct
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import faust
import numpy as np
import orjson
from faust.streams import _current_event

ITEM_FORMAT = 1
_ITEM_HEADER = struct.Struct("<BI")  # format, length of the orjson metadata
_LOG2 = struct.Struct("<d")


class StateFormatError(ValueError):
    """A stored value that this version of recstream cannot read."""


@contextmanager
def as_event(event: faust.types.EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event (table partition routing) inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass(frozen=True, slots=True)
class StoredItem:
    item_id: str
    title: str
    categories: tuple[str, ...]
    vector: np.ndarray


def encode_item(title: str, categories: Iterable[str], vector: np.ndarray) -> bytes:
    meta = orjson.dumps({"title": title, "categories": list(categories)})
    vec = np.ascontiguousarray(vector, dtype="<f4")
    return _ITEM_HEADER.pack(ITEM_FORMAT, len(meta)) + meta + vec.tobytes()


def decode_item(item_id: str, value: bytes) -> StoredItem:
    if len(value) < _ITEM_HEADER.size:
        raise StateFormatError(f"item {item_id!r}: stored value of {len(value)} bytes is too short")
    fmt, n = _ITEM_HEADER.unpack_from(value)
    if fmt != ITEM_FORMAT:
        raise StateFormatError(f"item {item_id!r}: stored format {fmt}, this recstream reads {ITEM_FORMAT}")
    start = _ITEM_HEADER.size
    meta = orjson.loads(value[start : start + n])
    vec = np.frombuffer(value, dtype="<f4", offset=start + n).astype(np.float32)
    return StoredItem(item_id, meta["title"], tuple(meta["categories"]), vec)


def popularity_key(partition: int, item_id: str) -> bytes:
    return f"{partition}:{item_id}".encode()


def split_popularity_key(key: bytes) -> tuple[int, str]:
    partition, _, item_id = key.decode().partition(":")
    return int(partition), item_id


def encode_log2(value: float) -> bytes:
    return _LOG2.pack(value)


def decode_log2(value: bytes) -> float:
    return _LOG2.unpack(value)[0]


ChangeHandler = Callable[[list[tuple[bytes, bytes | None]]], None]


class ObservedGlobalTable(faust.GlobalTable):
    """A global table that reports the changelog records it applies.

    Every worker replicates the catalog through this table's changelog; the handler
    keeps the worker's in-memory item matrix in step with what other workers (or this
    one, before a restart) wrote.
    """

    on_changes: ChangeHandler | None = None

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        batch = list(batch)
        super().apply_changelog_batch(batch)
        if self.on_changes is not None:
            self.on_changes([(ev.message.key, ev.message.value) for ev in batch])
