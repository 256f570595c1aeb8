"""streams.state.read_raw / write_raw: a raw-bytes table's RocksDB store read and written
directly, against faust's own per-key path (no broker: the store is local)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faust
import pytest

from recstream.streams.state import as_event, read_raw, write_raw


class Event:
    """What faust's routing reads of an event: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="t", partition=partition)


@pytest.fixture
def table(tmp_path: Path):
    app = faust.App("raw-store-test", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path), web_enabled=False)
    t = app.Table("profiles", partitions=3, key_type=bytes, value_type=bytes)
    t.key_serializer = t.value_serializer = "raw"
    yield t
    for db in list(t.data._dbs.values()):
        db.close()


def test_the_rocksdb_path_is_taken_and_agrees_with_faust(table) -> None:
    store = table.data

    def per_key(*args):
        raise AssertionError("faust's per-key path")

    store._set = store._get = per_key
    write_raw(store, Event(1), [(b"u1", b"v1"), (b"u2", b"v2"), (b"u1", b"v1-again")])  # in order: last wins
    assert read_raw(store, Event(1), [b"u2"]) == [b"v2"]
    del store._set, store._get
    assert set(store._dbs) == {1}  # the partition's own database
    with as_event(Event(1)):
        store[b"u3"] = b"v3"  # faust's own write
        assert [store.get(k) for k in (b"u1", b"u2", b"u3")] == [b"v1-again", b"v2", b"v3"]  # faust's read
    assert read_raw(store, Event(1), [b"u3", b"u1", b"nope", b"u2"]) == [b"v3", b"v1-again", None, b"v2"]
    assert read_raw(store, Event(2), [b"u1"]) == [None]  # another partition's database
    assert store._key_index[b"u1"] == 1 and b"nope" not in store._key_index.data


def test_other_stores_go_through_faust_routing() -> None:
    seen = []

    class Plain(dict):
        def __setitem__(self, key, value):
            from faust.streams import current_event

            seen.append(current_event().message.partition)
            super().__setitem__(key, value)

    store = Plain()
    write_raw(store, Event(2), [(b"a", b"1"), (b"b", b"2")])
    assert store == {b"a": b"1", b"b": b"2"} and seen == [2, 2]
    assert read_raw(store, Event(2), [b"b", b"c"]) == [b"2", None]
