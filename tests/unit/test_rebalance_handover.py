"""A rebalance neither loses events nor answers them twice (issue 6, the two-worker handover).

Loss: Faust 0.15 ends a rebalance with ``perform_seek`` (seek to the committed offsets, then reset
the read offsets), then empties the stream buffers (``flow_control.resume()``) and resumes
the flow. Its fetch loop keeps running during the seek and delivers a record only at or after
the partition's read offset. The model below runs Faust's own ``perform_seek`` against that
fetch loop: as shipped, the records fetched during the seek are dropped (below a read offset
left behind by the rebalance) or delivered and then emptied out; either way never processed.
With :class:`streams.worker.HoldFlowDuringSeek` every record from the committed offset on is
delivered exactly once.

Doubles: Faust forgets the acknowledged but not yet committed offsets of revoked partitions
before its revocation handler waits for the streams and commits;
:class:`streams.worker.CommitBeforeRevoke` waits for the micro-batch in flight and commits
first (checked on Faust's real consumer, with the broker calls stubbed).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import faust
import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, Message

from recstream.streams.worker import HoldFlowDuringSeek, RebalanceSafeConsumer, RewindUncommitted, SeekWithinRange, install_consumer_fixes

CLICKS = TP("p.clicks", 3)
END = 3420


class FetchLoopModel:
    """What ``perform_seek`` uses of a consumer, and the fetch loop running beside it."""

    def __init__(self, committed: int, stale_read: int | None) -> None:
        self.committed = {CLICKS: committed}
        self.position = dict(self.committed)  # a reassigned partition starts at its committed offset
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        if stale_read is not None:
            self._read_offset[CLICKS] = stale_read
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.flow_active = True  # recovery resumed the flow to read the changelogs
        self.buffer: list[int] = []  # the stream buffers
        self.processed: list[int] = []
        self.dropped: list[int] = []

    def stop_flow(self) -> None:
        self.flow_active = False

    def resume_flow(self) -> None:
        self.flow_active = True

    def fetch(self, n: int) -> None:
        """The next ``n`` records: nothing while the flow is stopped (``Consumer.getmany``), a
        record delivered only at or after the read offset (``Consumer._drain_messages``)."""
        if not self.flow_active:
            return
        for _ in range(n):
            if self.position[CLICKS] >= END:
                return
            offset = self.position[CLICKS]
            self.position[CLICKS] += 1
            r_offset = self._read_offset[CLICKS]
            if r_offset is None or offset >= r_offset:
                self.buffer.append(offset)
                self._read_offset[CLICKS] = offset
            else:
                self.dropped.append(offset)

    async def seek_to_committed(self) -> dict[TP, int]:
        self.fetch(3)  # while the seek is on its way to the consumer thread
        self.position.update(self.committed)
        self.fetch(3)  # after it took effect, before perform_seek resets the read offsets
        return dict(self.committed)

    async def end_rebalance(self) -> None:
        """``faust.tables.recovery.Recovery._resume_streams`` from the seek on, then the stream."""
        await self.perform_seek()  # type: ignore[attr-defined]
        self.buffer.clear()  # app.flow_control.resume() empties the stream buffers
        self.resume_flow()
        self.fetch(END)
        self.processed += self.buffer

    def lost(self) -> list[int]:
        return sorted(set(range(self.committed[CLICKS], END)) - set(self.processed))


class FaustAsShipped(FetchLoopModel):
    perform_seek = FaustConsumer.perform_seek


class WithFix(HoldFlowDuringSeek, FaustAsShipped):
    pass


@pytest.mark.parametrize("stale_read", [3405, None], ids=["stale read offset", "no stale read offset"])
def test_faust_alone_loses_the_records_fetched_during_the_seek(stale_read: int | None) -> None:
    # 3377: the committed offset of the failing run; 3405: the record whose delivery the
    # rebalance interrupted, which left its offset as the read offset
    model = FaustAsShipped(3377, stale_read)
    asyncio.run(model.end_rebalance())
    assert model.lost() == [3377, 3378, 3379]


@pytest.mark.parametrize("stale_read", [3405, None], ids=["stale read offset", "no stale read offset"])
def test_holding_the_flow_during_the_seek_delivers_every_record_once(stale_read: int | None) -> None:
    model = WithFix(3377, stale_read)
    asyncio.run(model.end_rebalance())
    assert model.lost() == [] and model.dropped == []
    assert model.processed == list(range(3377, END))  # in order, each once
    assert model._read_offset[CLICKS] == END - 1 and model._committed_offset[CLICKS] == 3377


def test_the_worker_app_creates_the_rebalance_safe_consumer() -> None:
    app = faust.App("rebalance-safe-test", broker="kafka://127.0.0.1:9", web_enabled=False)
    install_consumer_fixes(app)
    assert isinstance(app.consumer, RebalanceSafeConsumer)
    with pytest.raises(RuntimeError, match="already exists"):
        install_consumer_fixes(app)


def revoke_after_processing(fixed: bool) -> tuple[list[dict], list[int]]:
    """Offsets 100-104 of a partition processed and acknowledged, 105-109 in a micro-batch
    that finishes (is acknowledged) a moment after the revocation starts, none committed yet.
    Returns the commits sent to the broker, and what the app's revocation handler (the one
    that waits and commits under ``stream_wait_empty``) still sees acknowledged."""
    committed: list[dict] = []
    seen: list[int] = []

    async def run() -> None:
        # created in the running loop: the consumer's futures belong to it
        app = faust.App(f"revoke-test-{fixed}", broker="kafka://127.0.0.1:9", web_enabled=False)
        if fixed:
            install_consumer_fixes(app)
        consumer = app.consumer

        async def broker_commit(offsets: dict) -> bool:
            committed.append(dict(offsets))
            return True

        async def flush() -> None:
            return None

        async def app_handler(revoked: set) -> None:
            seen.extend(consumer._acked.get(CLICKS, []))

        consumer._commit = broker_commit  # the driver's call to the broker
        consumer.assignment = lambda: {CLICKS}
        consumer._on_partitions_revoked = app_handler
        app.producer.flush = flush
        app.topics.acks_enabled_for = lambda topic: True
        consumer._committed_offset[CLICKS] = 100

        def message(offset: int) -> Message:
            return Message(CLICKS.topic, CLICKS.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=CLICKS)

        for offset in range(100, 105):
            consumer.ack(message(offset))
        in_flight = [message(offset) for offset in range(105, 110)]
        for m in in_flight:
            consumer.track_message(m)

        async def batch_finishes() -> None:
            await asyncio.sleep(0.05)
            for m in in_flight:
                consumer.ack(m)

        finishing = asyncio.ensure_future(batch_finishes())
        await consumer.on_partitions_revoked({CLICKS})
        await finishing

    asyncio.run(run())
    return committed, seen


def test_faust_alone_forgets_what_was_processed_since_the_last_commit() -> None:
    committed, seen = revoke_after_processing(fixed=False)
    assert committed == [] and seen == []  # 100-109 will be processed, and answered, again


def test_the_batch_in_flight_finishes_and_everything_is_committed_before_the_partition_goes() -> None:
    committed, seen = revoke_after_processing(fixed=True)
    assert committed and committed[-1] == {CLICKS: 110}
    assert seen == []  # nothing left for Faust to forget


REVIEWS = TP("p.reviews", 5)
CHANGELOG = TP("p.recstream-profiles-changelog", 5)


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class AiokafkaModel:
    """What :class:`streams.worker.RewindUncommitted` uses of Faust's aiokafka consumer: fetches
    advance the position; ``seek_to_committed`` moves only partitions committed above 0."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.position = {tp: 0 if offset is None else offset for tp, offset in committed.items()}

    async def _getmany(self, active_partitions: set | None, timeout: float) -> dict[TP, list[Record]]:
        out = {}
        for tp in self.position:
            out[tp] = [Record(o) for o in range(self.position[tp], self.position[tp] + 4)]
            self.position[tp] += 4
        return out

    async def seek_to_committed(self) -> dict[TP, int | None]:
        for tp, offset in self.committed.items():
            if offset and offset > 0:  # aiokafka's AIOKafkaConsumer.seek_to_committed
                self.position[tp] = offset
        return dict(self.committed)

    async def _seek(self, tp: TP, offset: int) -> None:
        self.position[tp] = offset

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    async def on_partitions_revoked(self, revoked: set) -> None:
        return None


class RewoundModel(RewindUncommitted, AiokafkaModel):
    pass


@pytest.mark.parametrize("fixed", [False, True], ids=["aiokafka alone", "with RewindUncommitted"])
def test_records_dropped_at_a_seek_are_read_again_though_nothing_was_committed(fixed: bool) -> None:
    # the replay through 3 workers: the first reviews of a partition were held by the
    # stream-time merger (dropped at the seek that ended a rebalance) and never answered
    committed: dict[TP, int | None] = {REVIEWS: None, CLICKS: 40, CHANGELOG: None, TP("p.purchases", 5): 0}
    consumer = (RewoundModel if fixed else AiokafkaModel)(committed)

    async def run() -> None:
        await consumer._getmany(None, 1.0)  # fetched, then dropped: Faust seeks back
        await consumer._getmany(None, 1.0)
        await consumer.seek_to_committed()

    asyncio.run(run())
    if fixed:
        assert consumer.position == {REVIEWS: 0, CLICKS: 40, CHANGELOG: 8, TP("p.purchases", 5): 0}
    else:
        assert consumer.position[REVIEWS] == 8 and consumer.position[TP("p.purchases", 5)] == 8  # 0-7 never read again


def test_a_revoked_partition_is_not_rewound_to_where_it_was_fetched_before() -> None:
    consumer = RewoundModel({REVIEWS: None})

    async def run() -> None:
        await consumer._getmany(None, 1.0)  # 0-3
        await consumer.on_partitions_revoked({REVIEWS})
        consumer.position[REVIEWS] = 100  # assigned again: its position reset elsewhere
        await consumer.seek_to_committed()

    asyncio.run(run())
    assert consumer.position[REVIEWS] == 100


def test_table_recovery_never_seeks_below_offset_0() -> None:
    # Faust's standby recovery asked for offset -2 (the earliest offset of a changelog created
    # moments before, -1, minus one): aiokafka refused it and the worker crashed
    sought: list[dict] = []

    class Driver:
        async def seek_wait(self, partitions: dict) -> None:
            if any(not isinstance(o, int) or o < 0 for o in partitions.values()):
                raise ValueError("Offset must be a positive integer")  # aiokafka's seek
            sought.append(dict(partitions))

    class Safe(SeekWithinRange, Driver):
        pass

    standby = {CHANGELOG: -2, TP("p.recstream-popularity-changelog", 1): None, REVIEWS: 17}
    with pytest.raises(ValueError):
        asyncio.run(Driver().seek_wait(standby))
    asyncio.run(Safe().seek_wait(standby))
    assert sought == [{CHANGELOG: 0, TP("p.recstream-popularity-changelog", 1): 0, REVIEWS: 17}]
