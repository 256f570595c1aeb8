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
from typing import Any, Callable, Iterable, Iterator, Sequence

import faust
import numpy as np
import orjson
import rocksdict
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


def _partition_db(store: Any, partition: int) -> Any | None:
    """The RocksDB (rocksdict) database of ``partition`` behind a faust table's store, when
    faust's own per-key path would go there too (a partitioned, non-global table); else None."""
    db_for = getattr(store, "_db_for_partition", None)
    table = getattr(store, "table", None)
    if (db_for is None or not getattr(store, "use_rocksdict", False) or table is None
            or table.is_global or table.use_partitioner):
        return None
    return db_for(partition)


def read_raw(store: Any, event: faust.types.EventT, keys: Sequence[bytes]) -> list[bytes | None]:
    """The stored values of ``keys`` (``None``: absent) in a raw-bytes table's store, in the
    partition of ``event``.

    The same as ``store.get(key)`` for each under :func:`as_event`, without faust's per-key
    serializer and current-event lookups: one multi-get on the partition's database (faust's
    key index is kept as its own reads keep it).
    """
    partition = event.message.partition
    db = _partition_db(store, partition)
    if db is None:
        with as_event(event):
            return [store.get(key) for key in keys]
    values = db.get(list(keys))
    store._key_index.update((key, partition) for key, value in zip(keys, values) if value is not None)
    return values


def write_raw(store: Any, event: faust.types.EventT, kvs: Sequence[tuple[bytes, bytes]]) -> None:
    """Set keys of a raw-bytes table's store, in the partition of ``event``, in order.

    The same as ``store[key] = value`` for each under :func:`as_event` (the local database
    only: the changelog is the caller's), as one RocksDB write batch.
    """
    partition = event.message.partition
    db = _partition_db(store, partition)
    if db is None:
        with as_event(event):
            for key, value in kvs:
                store[key] = value
        return
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in kvs:
        batch.put(key, value)
    db.write(batch)
    store._key_index.update((key, partition) for key, _ in kvs)


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
