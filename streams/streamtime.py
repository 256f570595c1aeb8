"""Stream-time order across the event topics a worker consumes.

A worker reads the clicks, purchases and reviews topics independently: in a replay, or
any catch-up after downtime, one topic's partition can be fetched far ahead of another's,
and a user's purchase is then applied before the earlier clicks that the offline engine
(and the user) saw first; the lists those clicks are judged on already exclude the item.

Kafka Streams avoids this by always taking, among a task's input partitions, the record
with the lowest timestamp, and by waiting for a partition with no buffered record while
it still has data on the broker (``max.task.idle.ms``).  :class:`StreamTimeMerger` does
the same for the event partitions one worker holds, all of them together: records are
held per partition, in offset order, and released in the protocol's event order (time,
user, item, kind, event id: :func:`scoring.backtest.event_order_key`, taken from the
record's value, as a Kafka Streams timestamp extractor takes payload time), as long as
every partition either has a record buffered or is known to be caught up.  Taking every
partition of the worker together (not only one co-partitioned group) makes one worker
apply events in exactly the offline engine's order, whatever the partition count, so the
popularity and co-occurrence it holds move with event time as the offline engine's do.

:class:`StreamTimeConsumer` plugs the merger into Faust's consumer (``_getmany``) and
:class:`StreamTimeScheduler` delivers the released records in that order (Faust's
default scheduler interleaves topics round-robin).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping

import orjson
from faust.transport.utils import DefaultSchedulingStrategy

from . import topics as T
from .records import KIND_RANK

log = logging.getLogger("recstream.streamtime")

#: Longest a partition with data on the broker that is not fetched yet may hold back the
#: others; past it the records buffered elsewhere are released anyway (and a warning says
#: so).  A fetch takes milliseconds, or seconds on a loaded machine: this is a safety net
#: against a partition that cannot be fetched at all (its leader gone), not a tuning knob.
LAG_WAIT_S = 30.0
#: ... and at least this many fetches asked for it and brought nothing: time during which the
#: worker was busy processing (and fetched nothing at all) is no evidence that the partition
#: cannot be fetched.  On a loaded machine a worker can go minutes between two fetches, and a
#: wall-clock limit alone broke the order there (ml-latest-small replayed on 6 partitions
#: with the machine's load average near 10: 9 enforcements, NDCG@10 .0377 instead of .0459).
MIN_FETCH_ATTEMPTS = 10
#: Records held per partition before its fetching pauses (it resumes as they are released).
MAX_HELD_PER_PARTITION = 10_000
#: How often a merger held at the other workers' horizon looks at it again (seconds).
HORIZON_POLL_S = 0.05
#: Order key of a record whose value is not a JSON object: released first (the events
#: agent dead-letters it, so where it goes in time does not matter).
UNORDERED: tuple = (float("-inf"), "", "", -1, "")

Key = tuple
#: an event topic's (logical name's) place among events at one time, as the protocol's
TOPIC_RANK = {T.CLICKS: KIND_RANK["click"], T.PURCHASES: KIND_RANK["purchase"], T.REVIEWS: KIND_RANK["review"]}


def record_key(rank: int, value: bytes | None) -> Key:
    """The order key of an event record of the topic of :data:`TOPIC_RANK` ``rank``: as :func:`scoring.backtest.event_order_key`
    (time, user, item, kind, event id), read leniently from the JSON value; validation is
    the events agent's (:func:`streams.records.parse_event`)."""
    try:
        obj = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return UNORDERED
    if not isinstance(obj, dict):
        return UNORDERED
    ts = obj.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return UNORDERED

    def text(name: str) -> str:
        v = obj.get(name)
        return v if isinstance(v, str) else ""

    return (int(ts), text("user_id"), text("item_id"), rank, text("event_id"))


class StreamTimeMerger:
    """Holds event records per partition and releases them in stream-time order.

    Args:
        topics: real event topic name -> its logical name (``clicks``, ``purchases``, ``reviews``).
        max_idle_s: how long a caught-up partition with nothing buffered holds back the
            others, waiting for its producers (0: not at all: only data already on the
            broker is waited for).
        lag_wait_s: how long a partition that has data on the broker, not yet fetched,
            may hold back the others.
        max_held: records held per partition before :meth:`full` says to stop fetching it.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        topics: Mapping[str, str],
        *,
        max_idle_s: float = 0.0,
        lag_wait_s: float = LAG_WAIT_S,
        max_held: int = MAX_HELD_PER_PARTITION,
        clock: Callable[[], float] = time.monotonic,
        min_fetch_attempts: int = MIN_FETCH_ATTEMPTS,
    ) -> None:
        if max_idle_s < 0 or lag_wait_s < 0 or max_held < 1 or min_fetch_attempts < 0:
            raise ValueError(
                f"max_idle_s, lag_wait_s and min_fetch_attempts must be >= 0 and max_held >= 1, got {max_idle_s}, "
                f"{lag_wait_s}, {min_fetch_attempts}, {max_held}"
            )
        self.min_fetch_attempts = min_fetch_attempts
        #: fetches that asked for a lagging, empty partition and brought none of its records
        self._attempts: dict[Any, int] = {}
        self.ranks = {name: TOPIC_RANK[logical] for name, logical in topics.items()}
        self.max_idle_s = max_idle_s
        self.lag_wait_s = lag_wait_s
        self.max_held = max_held
        self.clock = clock
        self._queues: dict[Any, deque[tuple[Key, Any]]] = {}
        #: since when each partition with nothing held has been empty (caught up) or lagging
        self._empty_since: dict[Any, float] = {}
        self._lagging_since: dict[Any, float] = {}
        #: times a lagging partition stopped holding back the others after lag_wait_s
        self.enforced = 0
        #: the latest event time that may be released now (``None``: no bound): the other
        #: workers' progress, when the workers keep in step (:meth:`streams.evidence.EvidenceFollower.horizon`)
        self.horizon: Callable[[], float | None] | None = None
        #: the last release stopped at the horizon
        self.at_horizon = False
        #: the latest event time released so far (this worker's stream time, as far as the
        #: horizon is concerned)
        self.released_ms: float = float("-inf")

    def participates(self, tp: Any) -> bool:
        return tp.topic in self.ranks

    def held(self, tp: Any = None) -> int:
        """Records held (for ``tp``, or in all)."""
        if tp is not None:
            q = self._queues.get(tp)
            return len(q) if q else 0
        return sum(len(q) for q in self._queues.values())

    def full(self, tp: Any) -> bool:
        return self.held(tp) >= self.max_held

    def to_fetch(self, partitions: Iterable[Any], lagging: Callable[[Any], bool]) -> set:
        """Which of ``partitions`` to take fetched records from now: while an event partition
        with nothing held has unfetched records (it holds the others back), only such
        partitions and the other topics'; otherwise every partition not held full.

        Kafka Streams pauses the partitions that have records buffered for the same
        reason: the consumer returns a bounded number of records per poll, always first from
        the same partitions, and a partition behind them would wait for the others' whole
        backlog."""
        partitions = list(partitions)
        blocking = {tp for tp in partitions if self.participates(tp) and not self.held(tp) and lagging(tp)}
        if blocking:
            return blocking | {tp for tp in partitions if not self.participates(tp)}
        return {tp for tp in partitions if not self.full(tp)}

    def add(self, tp: Any, records: Iterable[Any]) -> None:
        """Buffer ``records`` (fetched from ``tp``, in offset order; each with ``.value``)."""
        rank = self.ranks[tp.topic]
        q = self._queues.setdefault(tp, deque())
        before = len(q)
        q.extend((record_key(rank, r.value), r) for r in records)
        if len(q) > before:
            self._empty_since.pop(tp, None)
            self._lagging_since.pop(tp, None)
            self._attempts.pop(tp, None)

    def fetched(self, asked: Iterable[Any], got: Mapping[Any, Any]) -> None:
        """A fetch asked for ``asked`` and brought ``got`` (records by partition): count it
        against each event partition it asked for in vain."""
        for tp in asked:
            if self.participates(tp) and not got.get(tp):
                self._attempts[tp] = self._attempts.get(tp, 0) + 1

    def clear(self, tps: Iterable[Any] | None = None) -> None:
        """Forget what is held (for ``tps``, or all): the consumer sought back, or the
        partitions were revoked; those records are fetched again."""
        for tp in list(self._queues) if tps is None else tps:
            self._queues.pop(tp, None)
            self._empty_since.pop(tp, None)
            self._lagging_since.pop(tp, None)
            self._attempts.pop(tp, None)

    def _holds_back(self, tp: Any, lagging: Callable[[Any], bool], now: float) -> bool:
        """May the empty partition ``tp`` hold back the others now?"""
        if lagging(tp):
            since = self._lagging_since.setdefault(tp, now)
            attempts = self._attempts.get(tp, 0)
            if now - since < self.lag_wait_s or attempts < self.min_fetch_attempts:
                return True
            self.enforced += 1
            log.warning(
                "event partition %s[%d] has had unfetched records for %.1fs (%d fetches brought none): processing "
                "the other partitions without it (stream-time order may be broken)",
                tp.topic,
                tp.partition,
                now - since,
                attempts,
            )
            self._lagging_since[tp] = now  # wait again, in full, before the next enforcement
            self._attempts[tp] = 0
            return False
        self._lagging_since.pop(tp, None)
        self._attempts.pop(tp, None)
        return now - self._empty_since.setdefault(tp, now) < self.max_idle_s

    def release(self, partitions: Iterable[Any], lagging: Callable[[Any], bool]) -> list[tuple[Any, Any]]:
        """Take the held records of ``partitions`` (every event partition the worker holds)
        in order for as long as no partition without a buffered record holds the others
        back; returns ``(tp, record)`` pairs.  ``lagging(tp)``: does ``tp`` have records on
        the broker that were not fetched yet (unknown counts as yes)?"""
        now = self.clock()
        heap: list[tuple[Key, int, Any]] = []
        blocked = False
        for i, tp in enumerate(partitions):
            q = self._queues.get(tp)
            if q:
                heap.append((q[0][0], i, tp))
            elif self._holds_back(tp, lagging, now):
                blocked = True
        heapq.heapify(heap)
        out: list[tuple[Any, Any]] = []
        horizon = self.horizon() if self.horizon is not None and heap and not blocked else None
        self.at_horizon = False
        while heap and not blocked:
            if horizon is not None and heap[0][0][0] > horizon and self.released_ms > horizon:
                # another worker's partitions are behind: wait for them. A worker not yet
                # past the horizon still takes its next event: were every worker at the
                # same time with its next event later, each would wait for the others
                self.at_horizon = True
                break
            key, i, tp = heapq.heappop(heap)
            if key[0] > self.released_ms:
                self.released_ms = key[0]
            q = self._queues[tp]
            out.append((tp, q.popleft()[1]))
            if q:
                heapq.heappush(heap, (q[0][0], i, tp))
            else:
                blocked = self._holds_back(tp, lagging, now)
        return out

    def wait_hint(self) -> float | None:
        """Seconds until a partition that holds the others back stops doing so (``None``:
        nothing waits on a timer)."""
        if not any(self._queues.values()):
            return None
        if self.at_horizon:
            return HORIZON_POLL_S
        now = self.clock()
        deadlines = [since + self.lag_wait_s for since in self._lagging_since.values()]
        if self.max_idle_s:
            deadlines += [since + self.max_idle_s for since in self._empty_since.values()]
        return max(0.0, min(deadlines) - now) if deadlines else None


class ReleasedRecords(dict):
    """A Faust record map (the records of the other topics, by partition) with the event
    records released by the merger, in order, in :attr:`released`."""

    released: list[tuple[Any, Any]]

    def __init__(self, other: Mapping[Any, list], released: list[tuple[Any, Any]]) -> None:
        super().__init__(other)
        self.released = released


class StreamTimeScheduler(DefaultSchedulingStrategy):
    """Faust's consumer scheduler (setting ``ConsumerScheduler``): the other topics'
    records round-robin as Faust's default does, then the released event records in their
    stream-time order."""

    def iterate(self, records: Mapping[Any, list]) -> Iterator[tuple[Any, Any]]:
        yield from super().iterate(records)
        yield from getattr(records, "released", ())


class StreamTimeConsumer:
    """Consumer mixin: the event topics' records reach the streams in stream-time order
    (:class:`StreamTimeMerger`; ``merger`` is set by :func:`streams.worker.install_consumer_fixes`).

    Records are held between Faust's fetch (``_getmany``) and delivery, so Faust neither
    tracks nor acknowledges them until they are released: no offset is committed past a
    held record.  Whenever the consumer seeks back to the committed offsets (every
    rebalance ends so) the held records are dropped, and fetched again after the seek.
    """

    merger: StreamTimeMerger | None = None
    _fetching: asyncio.Future | None = None

    async def _getmany(self, active_partitions: set | None, timeout: float) -> Any:
        merger = self.merger
        if merger is None or not active_partitions:
            return await super()._getmany(active_partitions, timeout)  # type: ignore[misc]
        fetch = merger.to_fetch(active_partitions, self._lagging)
        records: Mapping[Any, list] = {}
        if fetch:
            hint = merger.wait_hint()
            self._fetching = asyncio.get_running_loop().create_future()
            try:
                records = await super()._getmany(fetch, timeout if hint is None else min(timeout, max(hint, 0.01)))  # type: ignore[misc]
            finally:
                self._fetching.set_result(None)
                self._fetching = None
            merger.fetched(fetch, records)
        else:
            await asyncio.sleep(0.01)  # every partition is held full: release, then fetch again
        other = {tp: recs for tp, recs in records.items() if not merger.participates(tp)}
        if not self.flow_active:  # type: ignore[attr-defined]
            # a seek to the committed offsets follows (Faust seeks whenever the flow stopped):
            # these records are fetched again after it, and Faust drops the others
            return other
        for tp, recs in records.items():
            if merger.participates(tp):
                merger.add(tp, recs)
        ours = [tp for tp in self.assignment() if merger.participates(tp)]  # type: ignore[attr-defined]
        if any(tp not in active_partitions for tp in ours):
            return ReleasedRecords(other, [])  # an event partition is paused: wait for it
        return ReleasedRecords(other, merger.release(ours, self._lagging))

    def _lagging(self, tp: Any) -> bool:
        """Has ``tp`` records on the broker that were not fetched yet? (aiokafka's position
        against the high watermark, or the last stable offset when reading committed;
        unknown counts as yes)."""
        try:
            consumer = self._thread._ensure_consumer()  # type: ignore[attr-defined]
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # noqa: BLE001 - rebalancing: no assignment to read
            return True
        if state is None or not state.has_valid_position or state.highwater is None:
            return True
        end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
        return state.position < end

    async def perform_seek(self) -> None:
        if self.merger is not None:
            self.stop_flow()  # type: ignore[attr-defined]
            if self._fetching is not None:  # a fetch in flight adds nothing once the flow stopped
                await asyncio.shield(self._fetching)
            self.merger.clear()
        await super().perform_seek()  # type: ignore[misc]

    async def on_partitions_revoked(self, revoked: set) -> None:
        await super().on_partitions_revoked(revoked)  # type: ignore[misc]
        if self.merger is not None:
            self.merger.clear(revoked)
