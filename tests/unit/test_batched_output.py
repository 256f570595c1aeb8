"""The events agent's batched output, without a broker: recommendations and table writes
go out as one produce batch per partition, one record per input, in order.

``Pipeline.publish_many``, ``Pipeline.write_table`` and ``Pipeline._send_batches`` are run
on a stand-in for the pipeline (a fake producer records the batches it is handed).
"""

from __future__ import annotations

import asyncio
import gc
from collections import defaultdict
from dataclasses import replace
from types import MethodType, SimpleNamespace

import orjson
import pytest
from faust.streams import current_event

from recstream.streams.app import Metrics, Pipeline
from recstream.streams.transactions import PartitionTransactions
from recstream.streams.records import Recommendation, RecItem, Trigger, decode_recommendation, encode, encode_emitted


class FakeBatch:
    """aiokafka's BatchBuilder as the pipeline uses it: append until full, then close."""

    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.capacity = capacity
        self.closed = False

    def append(self, *, key, value, timestamp, headers=None):
        if self.closed or len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Records every batch sent; deliveries succeed with consecutive offsets per partition,
    or fail when ``fail`` is set."""

    def __init__(self, capacity: int, fail: Exception | None = None) -> None:
        self.capacity = capacity
        self.fail = fail
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.next_offset: dict[tuple[str, int], int] = defaultdict(int)

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int):
        assert batch.closed, "a batch handed to the producer must be closed"
        self.sent.append((topic, partition, list(batch.records)))
        delivery = asyncio.get_running_loop().create_future()
        if self.fail is not None:
            delivery.set_exception(self.fail)
        else:
            base = self.next_offset[(topic, partition)]
            self.next_offset[(topic, partition)] += len(batch.records)
            delivery.set_result(SimpleNamespace(offset=base))
        return delivery

    def records(self, topic: str, partition: int) -> list[tuple[bytes | None, bytes]]:
        return [r for t, p, batch in self.sent if (t, p) == (topic, partition) for r in batch]


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple] = []

    def get_topic_name(self) -> str:
        return self.name


class Event:
    """A faust event as table routing sees it (weak-referenceable, with a message)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


class FakeStore(dict):
    """A table's store: remembers the partition of the current event at each write."""

    def __init__(self) -> None:
        super().__init__()
        self.partition_of: dict[bytes, int] = {}
        self.persisted: dict[tuple[str, int], int] = {}

    def __setitem__(self, key, value) -> None:
        self.partition_of[key] = current_event().message.partition
        super().__setitem__(key, value)

    def set_persisted_offset(self, tp, offset: int) -> None:
        self.persisted[(tp.topic, tp.partition)] = offset


class FakeTable:
    def __init__(self, changelog: str) -> None:
        self.data = FakeStore()
        self.changelog_topic = FakeTopic(changelog)
        self.set_directly: dict[bytes, tuple[bytes, int]] = {}

    def __setitem__(self, key, value) -> None:  # faust's own path (changelog per key)
        self.set_directly[key] = (value, current_event().message.partition)


class FakeTransactionalProducer(FakeProducer):
    """aiokafka's transactional producer as :class:`streams.transactions.PartitionTransactions`
    uses it: every call is logged in ``calls``."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.calls: list[tuple] = []

    async def send_batch(self, batch, topic, *, partition):
        self.calls.append(("send", topic, partition, len(batch.records)))
        return await super().send_batch(batch, topic, partition=partition)

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.calls.append(("offsets", {(tp.topic, tp.partition): o for tp, o in offsets.items()}, group_id))

    async def commit_transaction(self):
        self.calls.append(("commit",))

    async def begin_transaction(self):
        self.calls.append(("begin",))


def fake_pipeline(producer: FakeProducer, *, transactions: PartitionTransactions | None = None) -> SimpleNamespace:
    fake = SimpleNamespace(
        app=SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)),
        metrics=Metrics(),
        published=[],
        transactions=transactions,
        uncommitted_writes=False,
    )

    async def publish(topic, key, value, *, source_topic, source_partition, partition=None):
        fake.published.append((topic.name, key, value, source_topic, source_partition, partition))

    fake.publish = publish
    for name in ("publish_many", "write_table", "_to_changelog", "_send_batches", "_batch_delivered"):
        setattr(fake, name, MethodType(getattr(Pipeline, name), fake))
    return fake


def answers(n: int) -> list[tuple[bytes, bytes, str, int]]:
    """Records answering ``n`` inputs spread over two partitions of two topics."""
    out = []
    for i in range(n):
        partition = (i * 7) % 2
        out.append((f"u{i % 5}".encode(), orjson.dumps({"n": i}), "p.clicks" if i % 3 else "p.purchases", partition))
    return out


def test_recommendations_go_out_once_each_in_order_in_batches_per_partition():
    producer = FakeProducer(capacity=4)
    pipeline = fake_pipeline(producer)
    records = answers(23)
    asyncio.run(pipeline.publish_many(FakeTopic("p.recommendations"), records))

    for partition in (0, 1):
        expected = [(key, value) for key, value, _, p in records if p == partition]
        assert producer.records("p.recommendations", partition) == expected
    assert sum(len(batch) for _, _, batch in producer.sent) == len(records)
    assert all(0 < len(batch) <= 4 for _, _, batch in producer.sent)
    assert {topic for topic, _, _ in producer.sent} == {"p.recommendations"}
    assert pipeline.published == [] and pipeline.metrics.counts["send_failures"] == 0


def eos(capacity: int) -> tuple[PartitionTransactions, dict[int, FakeTransactionalProducer]]:
    producers = {p: FakeTransactionalProducer(capacity) for p in (0, 1)}
    transactions = PartitionTransactions(app_id="app", input_topics={"p.clicks", "p.purchases"}, make_producer=None)
    transactions.producers.update(producers)
    return transactions, producers


def test_under_exactly_once_recommendations_wait_for_their_input_partitions_transaction():
    producer = FakeProducer(capacity=4)
    transactions, producers = eos(capacity=4)
    pipeline = fake_pipeline(producer, transactions=transactions)
    records = answers(9)
    asyncio.run(pipeline.publish_many(FakeTopic("p.recommendations"), records))
    assert producer.sent == [] and pipeline.published == []
    asyncio.run(transactions.commit([]))
    for partition in (0, 1):
        expected = [(key, value) for key, value, _, p in records if p == partition]
        assert producers[partition].records("p.recommendations", partition) == expected
        assert producers[partition].calls[-2:] == [("commit",), ("begin",)]


def test_table_writes_reach_the_store_by_partition_and_the_changelog_in_batches():
    producer = FakeProducer(capacity=3)
    pipeline = fake_pipeline(producer)
    table = FakeTable("app-profiles-changelog")
    writes = {0: [(f"a{i}".encode(), b"x%d" % i) for i in range(7)], 1: [(b"b0", b"y0"), (b"b1", b"y1")]}
    events = {0: Event("p.clicks", 0), 1: Event("p.purchases", 1)}

    async def run():
        await pipeline.write_table(table, writes, events)
        await asyncio.sleep(0)  # delivery callbacks

    asyncio.run(run())
    for partition, kvs in writes.items():
        assert producer.records("app-profiles-changelog", partition) == kvs
        assert all(table.data[key] == value and table.data.partition_of[key] == partition for key, value in kvs)
        # the changelog offset of the partition's last record, as faust persists it
        assert table.data.persisted[("app-profiles-changelog", partition)] == len(kvs) - 1
    assert table.set_directly == {}


def test_under_exactly_once_table_writes_reach_the_store_now_and_the_changelog_at_the_commit():
    producer = FakeProducer(capacity=3)
    transactions, producers = eos(capacity=2)
    pipeline = fake_pipeline(producer, transactions=transactions)
    table = FakeTable("app-popularity-changelog")
    writes = [(b"1:i%d" % i, b"v%d" % i) for i in range(5)]
    asyncio.run(pipeline.write_table(table, {1: writes}, {1: Event("p.clicks", 1)}))
    assert table.data == dict(writes) and pipeline.uncommitted_writes
    assert producer.sent == [] and producers[1].sent == [] and table.data.persisted == {}
    asyncio.run(transactions.commit([]))
    assert producers[1].records("app-popularity-changelog", 1) == writes
    assert table.data.persisted == {("app-popularity-changelog", 1): 4}  # persisted once committed
    assert table.set_directly == {} and producers[0].calls == []


def test_a_failed_delivery_is_counted_and_persists_no_offset():
    producer = FakeProducer(capacity=10, fail=RuntimeError("broker gone"))
    pipeline = fake_pipeline(producer)
    table = FakeTable("app-profiles-changelog")

    async def run():
        await pipeline.write_table(table, {0: [(b"k1", b"v1"), (b"k2", b"v2")]}, {0: Event("p.clicks", 0)})
        await asyncio.sleep(0)

    asyncio.run(run())
    assert pipeline.metrics.counts["send_failures"] == 2
    assert table.data.persisted == {}


def test_a_stamped_recommendation_encodes_like_the_record_with_both_stamps_replaced():
    rec = Recommendation(
        user_id="u1",
        items=[RecItem("i1", 0.5, "h1"), RecItem("i2", 0.25, None)],
        trigger=Trigger("p.clicks", 3, 42, "e-1"),
        event_ts=1_700_000_000_000,
        emitted_ts=0,
        model="m",
    )
    for received in (None, 1_700_000_000_123):
        expected = encode(replace(rec, trigger=replace(rec.trigger, received_ts=received), emitted_ts=1_700_000_000_200))
        got = encode_emitted(rec, emitted_ts=1_700_000_000_200, received_ts=received)
        assert got == expected
        assert decode_recommendation(got).trigger.received_ts == received


def test_the_startup_heap_is_frozen_once():
    fake = SimpleNamespace(_startup_heap_frozen=False)
    threshold = gc.get_threshold()
    try:
        Pipeline.freeze_startup_heap(fake)
        frozen = gc.get_freeze_count()
        assert fake._startup_heap_frozen and frozen > 0
        assert gc.get_threshold()[0] >= 10_000
        Pipeline.freeze_startup_heap(fake)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.parametrize("capacity", [1, 2, 100])
def test_batches_split_at_any_capacity(capacity: int):
    producer = FakeProducer(capacity=capacity)
    pipeline = fake_pipeline(producer)
    records = answers(9)
    asyncio.run(pipeline.publish_many(FakeTopic("p.recommendations"), records))
    for partition in (0, 1):
        assert producer.records("p.recommendations", partition) == [(k, v) for k, v, _, p in records if p == partition]
