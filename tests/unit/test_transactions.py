"""Exactly-once bookkeeping without a broker (:mod:`streams.transactions`): which offsets a
micro-batch commits, what each input partition's transaction holds and in which order the
producer is driven, failures, and where a transactional changelog's last data record is."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from recstream.streams.transactions import PartitionTransactions, TransactionFailed, batch_offsets, data_ends

INPUTS = {"p.clicks", "p.purchases"}


def msg(topic: str, partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset)


class Batch:
    def __init__(self, capacity: int) -> None:
        self.records: list = []
        self.capacity = capacity

    def append(self, *, key, value, timestamp):
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class Producer:
    """A transactional producer that logs its calls; offsets are consecutive per partition,
    and a transaction's commit marker takes one offset, as in Kafka."""

    def __init__(self, tid: str, capacity: int = 2, fail_commit: Exception | None = None) -> None:
        self.tid = tid
        self.capacity = capacity
        self.fail_commit = fail_commit
        self.calls: list[tuple] = []
        self.next: dict[tuple[str, int], int] = {}

    async def start(self):
        self.calls.append(("start",))

    async def stop(self):
        self.calls.append(("stop",))

    async def begin_transaction(self):
        self.calls.append(("begin",))

    def create_batch(self) -> Batch:
        return Batch(self.capacity)

    async def send_batch(self, batch, topic, *, partition):
        base = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = base + len(batch.records)
        self.calls.append(("send", topic, partition, list(batch.records)))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=base))
        return fut

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.calls.append(("offsets", {(tp.topic, tp.partition): o for tp, o in offsets.items()}, group_id))

    async def commit_transaction(self):
        if self.fail_commit is not None:
            raise self.fail_commit
        self.calls.append(("commit",))


def manager(**producer_kwargs) -> tuple[PartitionTransactions, dict[str, Producer]]:
    made: dict[str, Producer] = {}

    def make(tid: str) -> Producer:
        made[tid] = Producer(tid, **producer_kwargs)
        return made[tid]

    return PartitionTransactions(app_id="app", input_topics=INPUTS, make_producer=make), made


def test_a_batch_commits_one_past_the_last_offset_of_each_input_topic_partition():
    messages = [msg("p.clicks", 0, 7), msg("p.clicks", 0, 5), msg("p.purchases", 0, 2), msg("p.clicks", 1, 40), msg("items", 0, 99)]
    assert batch_offsets(messages, INPUTS) == {
        0: {("p.clicks", 0): 8, ("p.purchases", 0): 3},
        1: {("p.clicks", 1): 41},
    }


def test_assignment_starts_one_fencing_producer_per_input_partition_and_revocation_stops_it():
    tx, made = manager()
    tps = [SimpleNamespace(topic=t, partition=p) for t in ("p.clicks", "p.purchases", "app-profiles-changelog") for p in (0, 1)]
    asyncio.run(tx.on_assigned(tps))
    assert sorted(made) == ["app-events-0", "app-events-1"]
    # begin_transaction waits for the producer id: the previous holder is fenced on return
    assert all(p.calls == [("start",), ("begin",)] for p in made.values())
    asyncio.run(tx.on_revoked([SimpleNamespace(topic="p.clicks", partition=1)]))
    assert set(tx.producers) == {0} and made["app-events-1"].calls[-1] == ("stop",)


def test_each_input_partition_commits_its_records_and_offsets_in_one_transaction():
    tx, made = manager(capacity=2)
    asyncio.run(tx.on_assigned([SimpleNamespace(topic="p.clicks", partition=p) for p in (0, 1)]))
    persisted = []
    tx.add(0, "app-profiles-changelog", 0, [(b"u1", b"a"), (b"u2", b"b"), (b"u3", b"c")], on_delivered=lambda p, o: persisted.append((p, o)))
    tx.add(0, "p.recommendations", 0, [(b"u1", b"r1")])
    tx.add(0, "p.dlq", 0, [(b"u9", b"bad")])  # a dead letter: partition 0 of the DLQ, transaction of input 0
    tx.add(1, "p.recommendations", 1, [(b"u4", b"r4")])
    asyncio.run(tx.commit([msg("p.clicks", 0, 10), msg("p.clicks", 0, 11), msg("p.clicks", 1, 3), msg("p.purchases", 1, 0)]))

    p0 = made["app-events-0"].calls[2:]
    assert p0 == [
        ("send", "app-profiles-changelog", 0, [(b"u1", b"a"), (b"u2", b"b")]),
        ("send", "app-profiles-changelog", 0, [(b"u3", b"c")]),
        ("send", "p.recommendations", 0, [(b"u1", b"r1")]),
        ("send", "p.dlq", 0, [(b"u9", b"bad")]),
        ("offsets", {("p.clicks", 0): 12}, "app"),
        ("commit",),
        ("begin",),
    ]
    p1 = made["app-events-1"].calls[2:]
    assert p1 == [("send", "p.recommendations", 1, [(b"u4", b"r4")]), ("offsets", {("p.clicks", 1): 4, ("p.purchases", 1): 1}, "app"), ("commit",), ("begin",)]
    assert persisted == [(0, 2)]  # the changelog offset of the chunk's last record, after the commit
    assert tx.pending == {} and tx.committed == 2


def test_a_batch_without_output_still_commits_its_offsets():
    tx, made = manager()
    asyncio.run(tx.on_assigned([SimpleNamespace(topic="p.clicks", partition=0)]))
    asyncio.run(tx.commit([msg("p.clicks", 0, 4)]))
    assert made["app-events-0"].calls[2:] == [("offsets", {("p.clicks", 0): 5}, "app"), ("commit",), ("begin",)]


def test_a_failed_commit_is_reported_and_runs_no_delivery_callback():
    tx, _ = manager(fail_commit=RuntimeError("ProducerFenced"))
    asyncio.run(tx.on_assigned([SimpleNamespace(topic="p.clicks", partition=0)]))
    persisted = []
    tx.add(0, "app-profiles-changelog", 0, [(b"u1", b"a")], on_delivered=lambda p, o: persisted.append(o))
    with pytest.raises(TransactionFailed, match="app-events-0.*ProducerFenced"):
        asyncio.run(tx.commit([msg("p.clicks", 0, 0)]))
    assert persisted == []


def test_a_partition_this_worker_does_not_hold_cannot_commit():
    tx, _ = manager()
    with pytest.raises(TransactionFailed, match=r"input partition\(s\) \[3\]"):
        asyncio.run(tx.commit([msg("p.clicks", 3, 0)]))


class TailConsumer:
    """aiokafka's consumer over partitions whose data records are at ``data[tp]`` (the other
    offsets are transaction markers or aborted records, which read_committed skips)."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.pos: dict = {}
        self.ends: dict = {}

    def assign(self, tps) -> None:
        self.assigned = list(tps)

    def seek(self, tp, offset) -> None:
        self.pos[tp] = offset

    async def getmany(self, *tps, timeout_ms):
        out = {}
        for tp in tps:
            key = (tp.topic, tp.partition)
            end = self.ends[key]
            got = [SimpleNamespace(offset=o) for o in self.data[key] if self.pos[tp] <= o < end]
            self.pos[tp] = end
            if got:
                out[tp] = got
        return out

    async def position(self, tp):
        return self.pos[tp]


def test_the_data_end_of_a_transactional_changelog_is_one_past_its_last_data_record():
    a, b, c, d = (TP("t", p) for p in range(4))
    data = {
        ("t", 0): [0, 1, 2, 4, 5],  # 3 and 6 are commit markers
        ("t", 1): [10] + [],  # then 2,000 offsets of aborted attempts and markers
        ("t", 2): [],  # compacted away / never written
        ("t", 3): [0, 1],  # written without transactions: no marker
    }
    consumer = TailConsumer(data)
    ends = {a: 7, b: 2011, c: 5, d: 2}
    consumer.ends = {(tp.topic, tp.partition): end for tp, end in ends.items()}
    found = asyncio.run(data_ends(consumer, ends, {a: 0, b: 10, c: 0, d: 0}))
    assert found == {a: 6, b: 11, c: 0, d: 2}
