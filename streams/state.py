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

A write the local database refuses (a full volume, an I/O error) stops the worker at once
with exit status 74 (:func:`state_write`): it is no fault of the record being processed,
which must not be dead-lettered for it.
"""

from __future__ import annotations

import logging
import os
import struct
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Final, Iterable, Iterator, NoReturn, Sequence

import faust
import numpy as np
import orjson
import rocksdict
from faust.streams import _current_event

ITEM_FORMAT = 1
_ITEM_HEADER = struct.Struct("<BI")  # format, length of the orjson metadata
_LOG2 = struct.Struct("<d")

log = logging.getLogger("recstream.worker")

#: Exit status of a worker whose local state cannot be written (sysexits' EX_IOERR).
EXIT_STATE_WRITE = 74


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


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is RocksDB refusing a write for a reason of its storage (rocksdict
    raises RocksDB's status as a plain ``Exception``: "IO error: No space left on device:
    While appending to file: ...", "Corruption: ..."); not the lock a database opened twice
    waits for, which faust retries."""
    text = str(exc)
    return text.startswith(("IO error", "Corruption")) and "While lock file" not in text


def state_write_failed(exc: BaseException, where: str) -> NoReturn:
    """Log one line and end the process at once (status 74), as a crash would: no clean stop,
    so nothing of the micro-batch in flight is committed (its input offsets included) and the
    next start discards the local state and restores the tables from their changelogs
    (:func:`streams.worker.claim_state`)."""
    log.critical(
        "exiting: cannot write the local state (%s): %s. Free space on that volume or point --data-dir "
        "elsewhere, then start the worker again: it restores the tables from their changelogs",
        where,
        exc,
    )
    logging.shutdown()
    os._exit(EXIT_STATE_WRITE)


@contextmanager
def state_write(where: str) -> Iterator[None]:
    """Around a write to a local database: a storage failure stops the worker
    (:func:`state_write_failed`) instead of failing the micro-batch, whose records would be
    retried one by one and dead-lettered, each for the same full disk."""
    try:
        yield
    except Exception as exc:
        if is_storage_failure(exc):
            state_write_failed(exc, where)
        raise


def guard_faust_store_writes() -> None:
    """Make the writes of faust's own RocksDB store (the catalog table, table recovery, the
    changelog offsets it persists) stop the worker on a storage failure too; call once before
    the app starts.  faust would otherwise crash an agent, or log the error of a delivery
    callback and go on."""
    from faust.stores import rocksdb as faust_rocksdb

    store = faust_rocksdb.Store
    if getattr(store, "_recstream_guarded", False):
        return
    for name in ("_set", "_del", "set_persisted_offset", "apply_changelog_batch"):
        original = getattr(store, name)

        def guarded(self: Any, *args: Any, _original: Callable = original, _name: str = name, **kwargs: Any) -> Any:
            with state_write(f"table {getattr(self.table, 'name', '?')}, {_name}"):
                return _original(self, *args, **kwargs)

        setattr(store, name, guarded)
    store._recstream_guarded = True  # type: ignore[attr-defined]  # our marker on faust's class


def _partition_db(store: Any, partition: int) -> Any | None:
    """The RocksDB (rocksdict) database of ``partition`` behind a faust table's store, when
    faust's own per-key path would go there too (a partitioned, non-global table); else None."""
    db_for = getattr(store, "_db_for_partition", None)
    table = getattr(store, "table", None)
    if db_for is None or not getattr(store, "use_rocksdict", False) or table is None or table.is_global or table.use_partitioner:
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


def write_raw(store: Any, event: faust.types.EventT, kvs: Sequence[tuple[bytes, bytes] | tuple[bytes, bytes, int]]) -> None:
    """Set keys of a raw-bytes table's store, in the partition of ``event``, in order
    (a third element of a write, its changelog timestamp, is not stored).

    The same as ``store[key] = value`` for each under :func:`as_event` (the local database
    only: the changelog is the caller's), as one RocksDB write batch.
    """
    partition = event.message.partition
    db = _partition_db(store, partition)
    where = f"table {getattr(getattr(store, 'table', None), 'name', '?')}, partition {partition}"
    if db is None:
        with as_event(event), state_write(where):
            for kv in kvs:
                store[kv[0]] = kv[1]
        return
    batch = rocksdict.WriteBatch(raw_mode=True)
    for kv in kvs:
        batch.put(kv[0], kv[1])
    with state_write(where):
        db.write(batch)
    store._key_index.update((kv[0], partition) for kv in kvs)


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


#: the item id of a partition's progress row in the popularity table (no item: ids are never
#: empty). Its changelog record's timestamp says how far in event time the worker holding the
#: partition has applied its events (streams/evidence.py); its value is empty.
PROGRESS_ITEM: Final = ""


def progress_key(partition: int) -> bytes:
    return popularity_key(partition, PROGRESS_ITEM)


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

    def __init__(self, app: Any, **kwargs: Any) -> None:
        # What ``app.GlobalTable`` passes, and a table built directly (as here, to subclass it)
        # lacks: without ``is_global`` faust assigns the changelog like any table's, to the
        # worker reading the catalog and its one standby, so a third worker of a group never
        # saw the catalog (its events all "unknown items", popularity lists, profiles without
        # the items' text); and it applies the changelog records of a standby only once a
        # buffer of 1,000 fills.
        kwargs.setdefault("is_global", True)
        kwargs.setdefault("standby_buffer_size", 1)
        super().__init__(app, **kwargs)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        batch = list(batch)
        super().apply_changelog_batch(batch)
        if self.on_changes is not None:
            self.on_changes([(ev.message.key, ev.message.value) for ev in batch])
