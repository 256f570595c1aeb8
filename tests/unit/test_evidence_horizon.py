"""How far a worker may go when the workers keep in step (streams/evidence.py), without a broker."""

from __future__ import annotations

from collections import namedtuple

import pytest
from kafka import TopicPartition

from recstream.streams.config import KafkaSettings
from recstream.streams.evidence import EvidenceFollower

Rec = namedtuple("Rec", "timestamp timestamp_type key value")
POP = "x.recstream-popularity-changelog"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follower(max_skew_ms: int | None, clock: Clock) -> EvidenceFollower:
    f = EvidenceFollower(KafkaSettings(), {"popularity": POP}, max_skew_ms=max_skew_ms, idle_s=10.0, clock=clock)
    f.follow([1, 2, 3])
    return f


def arrive(f: EvidenceFollower, partition: int, *stamps: int, kind: int = 0) -> None:
    f._arrived(TopicPartition(POP, partition), [Rec(ts, kind, b"k", b"v") for ts in stamps])


def test_the_horizon_is_the_slowest_progressing_partition_plus_the_skew():
    clock = Clock()
    f = follower(500, clock)
    assert f.horizon() is None  # nothing seen yet: nobody to wait for
    arrive(f, 1, 9_000, 12_000)
    arrive(f, 2, 7_000)
    assert f.horizon() == 7_500
    clock.now += 6
    arrive(f, 1, 13_000)
    clock.now += 5  # partition 2 quiet for 11 s: caught up, idle or its worker gone
    assert f.horizon() == 13_500
    arrive(f, 2, 8_000)  # progressing again
    assert f.horizon() == 8_500


def test_with_the_groups_offsets_known_a_partition_holds_back_while_its_input_is_unprocessed():
    clock = Clock()
    f = follower(0, clock)
    arrive(f, 1, 9_000)
    arrive(f, 2, 7_000)
    f.input_pending = frozenset({2})  # partition 1's worker is done; partition 2's is not
    assert f.horizon() == 7_000
    clock.now += 60  # partition 2 quiet for a minute (its worker starting, recovering, slow)
    assert f.horizon() == 7_000  # still held: its events are not applied yet
    f.input_pending = frozenset()  # all applied: nobody to wait for
    assert f.horizon() is None


def test_the_groups_offsets_are_read_once_a_second_and_a_failure_falls_back_to_quiet_changelogs():
    clock = Clock()
    f = follower(0, clock)
    arrive(f, 1, 9_000)

    class Admin:
        calls = 0
        committed: dict = {}

        def list_consumer_group_offsets(self, group, partitions):
            Admin.calls += 1
            if Admin.committed is None:
                raise OSError("the broker went away")
            return Admin.committed

    class Consumer:
        def end_offsets(self, tps):
            return {tp: (5 if tp.partition == 1 else 0) for tp in tps}

    OffsetAndMetadata = namedtuple("OffsetAndMetadata", "offset metadata")
    f._admin = Admin()
    Admin.committed = {TopicPartition(f.input_topics[0], 1): OffsetAndMetadata(3, "")}
    f._check_input(Consumer())
    assert f.input_pending == frozenset({1}) and f.horizon() == 9_000
    f._check_input(Consumer())  # within the second: not asked again
    assert Admin.calls == 1
    clock.now += 1.5
    Admin.committed = {TopicPartition(t, 1): OffsetAndMetadata(5, "") for t in f.input_topics}
    f._check_input(Consumer())
    assert f.input_pending == frozenset() and f.horizon() is None
    clock.now += 1.5
    Admin.committed = None
    f._check_input(Consumer())
    # not known: partition 1, quiet for 3 s only, holds back again, until quiet for 10 s
    assert f.input_pending is None and f.horizon() == 9_000
    clock.now += 8
    assert f.horizon() is None


def test_broker_stamped_records_and_unfollowed_partitions_do_not_count():
    clock = Clock()
    f = follower(0, clock)
    arrive(f, 1, 5_000)
    arrive(f, 2, 1_000, kind=1)  # LogAppendTime: not an event time
    assert f.horizon() == 5_000
    f.follow([2, 3])  # partition 1 is this worker's now
    assert f.horizon() is None


def test_without_a_skew_bound_there_is_no_horizon():
    f = follower(None, Clock())
    arrive(f, 1, 5_000)
    assert f.horizon() is None
    with pytest.raises(ValueError, match="max_skew_ms"):
        EvidenceFollower(KafkaSettings(), {"popularity": POP}, max_skew_ms=-1)


class _Consumer:
    """A changelog reader (kafka-python's consumer, as the follower uses it) with one batch
    of partition 0 to give; while it is being fetched, the worker's assignment changes."""

    def __init__(self, on_fetch) -> None:
        self.on_fetch = on_fetch
        self.batches = [{TopicPartition(POP, 0): [Rec(5, 0, b"0:item", b"v1"), Rec(6, 0, b"0:other", b"v2")]}]
        self.seeked: list[TopicPartition] = []

    def assign(self, tps) -> None:
        pass

    def seek_to_beginning(self, *tps) -> None:
        self.seeked += tps

    def pause(self, tp) -> None:
        pass

    def resume(self, tp) -> None:
        pass

    def poll(self, timeout_ms: int, max_records: int):
        if not self.batches:
            return {}
        batch = self.batches.pop()
        self.on_fetch()
        return batch

    def close(self) -> None:
        pass


def test_records_fetched_while_the_followed_partitions_change_are_kept(monkeypatch):
    """A partition still followed after a rebalance keeps what was fetched for it meanwhile: its
    position has moved past those records, and only newly followed partitions are read from
    the start again."""
    import time

    import recstream.streams.evidence as ev

    f = EvidenceFollower(KafkaSettings(), {"popularity": POP}, poll_ms=10)
    consumer = _Consumer(on_fetch=lambda: f.follow([0, 2]))
    monkeypatch.setattr(ev, "reader", lambda settings: consumer)
    f.follow([0, 1])
    f.advance(10)
    f.start()
    try:
        deadline, got = time.monotonic() + 10, {}
        while time.monotonic() < deadline and (len(got) < 2 or TopicPartition(POP, 2) not in consumer.seeked):
            got.update(f.drain())
            time.sleep(0.01)
    finally:
        f.stop()
    assert got == {("popularity", 0, b"0:item"): b"v1", ("popularity", 0, b"0:other"): b"v2"}
    assert TopicPartition(POP, 2) in consumer.seeked and consumer.seeked.count(TopicPartition(POP, 0)) == 1


def test_no_admin_client_is_not_a_failure_of_the_follower(monkeypatch):
    # an admin client that cannot be made (the broker away, a refused login) leaves the
    # quiet-changelog rule in force; the follower itself goes on
    from recstream.streams import evidence

    def refused(settings):
        raise OSError("connection refused")

    monkeypatch.setattr(evidence, "admin_client", refused)
    clock = Clock()
    f = follower(0, clock)
    f.input_pending = frozenset({1})
    arrive(f, 1, 9_000)

    class Consumer:
        def end_offsets(self, tps):
            return {}

    f._check_input(Consumer())
    assert f.input_pending is None and f._admin is None and f.horizon() == 9_000
