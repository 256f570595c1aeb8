"""Evidence from every partition: each worker follows the other partitions' counts.

Popularity and item co-occurrence are counted per input partition by the worker that holds
it, in the ``popularity`` and ``cooccurrence`` tables (keys ``"<partition>:<item>"``, one
writer per key, written in the micro-batch's own transaction under exactly-once, recovered
from their changelogs).  A worker holding some of the partitions would rank from only those
partitions' evidence: with N workers, about 1/N of it.  So every worker also *follows* the
changelogs of the partitions it does not hold (compacted topics, read with
``read_committed``: only what committed micro-batches wrote) and adds their rows to the
models it scores with, as partial rows (:meth:`scoring.cooccurrence.CooccurrenceModel.replace_partial`,
:meth:`scoring.popularity.DecayedPopularity.replace_partial`): the scored evidence is then
the whole stream's, whatever the number of workers, its own partitions' up to the last
event and the others' up to their last committed micro-batch (about a second behind).

**Never ahead of its own stream time.**  Each count row's changelog record carries, as its
timestamp, the latest event time the row includes (:attr:`scoring.engine.BatchResult.popularity_touched`,
:meth:`streams.app.Pipeline.write_table`),
and a worker takes another partition's record only once its own stream time (the latest
event time it applied) has reached it: until then the follower holds it and pauses that
partition.  In real time the workers' stream times are close to the clock and nothing
waits; in a replay or a catch-up, where one worker can run far ahead of another in event
time, a worker still never ranks with evidence from its own future (it may lag behind the
others' evidence instead).

**Workers in step (optional).**  In real time every worker's stream time is close to the
clock, so the others' evidence is about a second old.  In a replay or a catch-up after
downtime, where years of events go through in minutes, a worker that runs ahead of another
by a few seconds is weeks ahead in event time, and ranks with evidence that old from the
partitions of the slower one.  With ``max_skew_ms`` (``recstream worker --max-skew-ms``,
set by ``recstream backtest --workers``), :meth:`EvidenceFollower.horizon` tells the
stream-time merger how far it may go: no further than ``max_skew_ms`` past the slowest
followed partition whose input its worker has not all processed yet (the consumer group's
committed offset behind the end of an event topic's partition, read every
:data:`INPUT_CHECK_S`): a worker that is starting, recovering its tables or slow holds the
others back however long its changelogs stay quiet, and one that is done holds nobody
back.  When the offsets cannot be read, a partition whose changelog brought nothing for
``idle_s`` counts as done.  How far a partition has got is its worker's stream time, not
the partition's own latest event (which may be much older in a partition with few events):
every micro-batch writes, for each partition the worker holds, a progress row stamped with
the batch's latest event time (:meth:`streams.app.Pipeline.write_progress`).  A worker not
yet past the horizon still takes its next event (:class:`streams.streamtime.StreamTimeMerger`),
so the slowest worker never waits and the group cannot deadlock: were every worker at the
same time with its next event later, each would otherwise wait for the others.

A worker that holds every partition follows nothing (no cost).  After a rebalance the
worker rebuilds its own partitions from its tables and follows the rest: a partition it
just gave away is read again from the start of its changelog.

:class:`EvidenceFollower` is the Kafka side: a thread with its own consumer (no group) that
collects the latest value of every key of the followed partitions; the worker drains it on
its compute thread (:meth:`streams.app.Pipeline.apply_foreign_evidence`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import TopicPartition

from .client import reader
from .config import KafkaSettings
from .records import EVENT_TOPICS
from .topics import admin_client

log = logging.getLogger("recstream.evidence")

#: a followed partition whose changelog brought nothing for this long (seconds) no longer holds
#: the others back (``max_skew_ms``), when whether its input is all processed is not known
IDLE_S = 10.0
#: how often (seconds) the follower asks which followed partitions have input not yet processed
INPUT_CHECK_S = 1.0

#: a followed record: (table, partition, key) -> value (``None``: a tombstone)
Updates = dict[tuple[str, int, bytes], "bytes | None"]


def _due(record, stream_time_ms: int) -> bool:
    """May the worker take this record at this stream time?  Its timestamp is the event
    time its values include; a topic that stamps records with the broker's clock
    (``LogAppendTime``, timestamp type 1) says nothing about event time: taken at once."""
    return record.timestamp_type == 1 or record.timestamp <= stream_time_ms


class EvidenceFollower:
    """Follows some partitions of some changelog topics; :meth:`drain` returns what changed.

    Args:
        settings: how to reach the cluster.
        changelogs: table name -> its changelog topic.
        poll_ms: how long one poll waits for records.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        changelogs: Mapping[str, str],
        poll_ms: int = 200,
        max_skew_ms: int | None = None,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_skew_ms is not None and max_skew_ms < 0:
            raise ValueError(f"max_skew_ms must be >= 0 (or None: no bound), got {max_skew_ms}")
        self.max_skew_ms = max_skew_ms
        self.idle_s = idle_s
        self.clock = clock
        #: followed partition -> (latest event time its records include, when a record last arrived)
        self._progress: dict[int, tuple[int, float]] = {}
        self.settings = settings
        #: the event topics, whose consumer group offsets say how far each partition's worker is
        self.input_topics = [settings.topic(t) for t in EVENT_TOPICS]
        self.changelogs = dict(changelogs)
        self._table_of = {topic: table for table, topic in self.changelogs.items()}
        self.poll_ms = poll_ms
        self._lock = threading.Lock()
        self._pending: Updates = {}
        self._wanted: frozenset[int] = frozenset()
        #: the worker's stream time: no record with a later timestamp is handed out
        self._watermark = -1
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: records read since start (for logs and tests)
        self.records = 0
        #: the followed partitions with input their worker has not processed yet (``None``:
        #: unknown), by :meth:`_check_input` every :data:`INPUT_CHECK_S` with ``max_skew_ms``
        self.input_pending: frozenset[int] | None = None
        self._input_checked = float("-inf")
        self._admin: Any = None  # the thread's admin client, made at the first check

    @property
    def following(self) -> frozenset[int]:
        return self._wanted

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recstream-evidence", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def follow(self, partitions: Iterable[int]) -> None:
        """Follow exactly these partitions from now on (new ones from their beginning);
        what was collected for the others is dropped."""
        wanted = frozenset(partitions)
        with self._lock:
            self._wanted = wanted
            self._pending = {k: v for k, v in self._pending.items() if k[1] in wanted}
            self._progress = {p: v for p, v in self._progress.items() if p in wanted}
        self._wake.set()

    def advance(self, stream_time_ms: int) -> None:
        """The worker has applied events up to ``stream_time_ms``: records up to it may go."""
        if stream_time_ms > self._watermark:
            self._watermark = stream_time_ms
            self._wake.set()

    def horizon(self) -> float | None:
        """The latest event time this worker may apply now (``None``: no bound): ``max_skew_ms``
        past the slowest followed partition that is still progressing."""
        if self.max_skew_ms is None:
            return None
        now = self.clock()
        pending = self.input_pending
        with self._lock:
            if pending is None:  # not known: a partition that went quiet is taken as done
                active = [ts for p, (ts, seen) in self._progress.items() if p in self._wanted and now - seen <= self.idle_s]
            else:  # quiet or not, a partition holds back while it has input to process
                active = [ts for p, (ts, _) in self._progress.items() if p in self._wanted and p in pending]
        return min(active) + self.max_skew_ms if active else None

    def _check_input(self, consumer: Any) -> None:
        """(the thread) Which followed partitions still have input records their worker has
        not processed: the group's committed offset (the worker's progress, committed by
        every micro-batch under exactly-once, every few seconds otherwise) behind the end of
        an event topic's partition. A worker that is starting, recovering its tables or
        stopped has such partitions, and holds the others back however long its changelogs
        stay quiet; a worker that is done has none. ``None`` when it cannot be asked."""
        now = self.clock()
        if self.max_skew_ms is None or now - self._input_checked < INPUT_CHECK_S:
            return
        self._input_checked = now
        wanted = self._wanted
        try:
            if self._admin is None:
                self._admin = admin_client(self.settings)
            tps = [TopicPartition(topic, p) for topic in self.input_topics for p in sorted(wanted)]
            ends = consumer.end_offsets(tps)
            committed = self._admin.list_consumer_group_offsets(self.settings.app_id, partitions=tps)
            pending = set()
            for tp in tps:
                at = committed.get(tp)
                position = at.offset if at is not None and at.offset is not None and at.offset >= 0 else 0
                if ends.get(tp, 0) > position:
                    pending.add(tp.partition)
            self.input_pending = frozenset(pending)
        except Exception as exc:  # noqa: BLE001 - unknown: the quiet-changelog rule applies
            if self.input_pending is not None:
                log.warning(
                    "cannot read the group's committed offsets (%s: %s): a followed partition that goes quiet for %.0f s stops holding this worker back",
                    type(exc).__name__,
                    exc,
                    self.idle_s,
                )
            self.input_pending = None

    def _arrived(self, tp: TopicPartition, records: list) -> None:
        """(the thread) Note how far ``tp``'s partition has got, from its records' timestamps."""
        stamps = [r.timestamp for r in records if r.timestamp_type == 0]
        if stamps:
            with self._lock:
                ts, _ = self._progress.get(tp.partition, (-1, 0.0))
                self._progress[tp.partition] = (max(ts, max(stamps)), self.clock())

    def drain(self) -> Updates:
        """The latest value of every key changed since the last call."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    # ------------------------------------------------------------------ the thread
    def _take(self, tp: TopicPartition, records: Iterable) -> None:
        """(under the lock) Records become pending updates, in order."""
        table = self._table_of[tp.topic]
        n = 0
        for r in records:
            n += 1
            if r.key is not None:
                self._pending[(table, tp.partition, r.key)] = r.value
        self.records += n

    def _hold(self, consumer, tp: TopicPartition) -> None:
        """``tp`` has records ahead of the stream time: stop fetching it, unless the workers
        keep in step (:meth:`horizon` needs to see how far each partition has got; the
        others keep within ``max_skew_ms`` of this worker, so what is held stays small)."""
        if self.max_skew_ms is None:
            consumer.pause(tp)

    def _release(self, consumer, held: dict[TopicPartition, deque]) -> None:
        """Hand out the held records the stream time has reached; resume their partitions."""
        mark = self._watermark
        for tp, queue in list(held.items()):
            ready = []
            while queue and _due(queue[0], mark):
                ready.append(queue.popleft())
            if ready:
                with self._lock:
                    self._take(tp, ready)
            if not queue:
                del held[tp]
                consumer.resume(tp)

    def _run(self) -> None:
        consumer = None
        assigned: frozenset[int] = frozenset()
        held: dict[TopicPartition, deque] = {}  # records ahead of the stream time, by partition (paused)
        while not self._stop.is_set():
            try:
                wanted = self._wanted
                if not wanted:
                    if assigned and consumer is not None:
                        consumer.assign([])
                        assigned, held = frozenset(), {}
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                if consumer is None:
                    consumer = reader(self.settings)
                    assigned, held = frozenset(), {}
                if wanted != assigned:
                    tps = [TopicPartition(topic, p) for topic in self.changelogs.values() for p in sorted(wanted)]
                    consumer.assign(tps)  # also resumes every partition
                    new = [tp for tp in tps if tp.partition not in assigned]
                    if new:
                        consumer.seek_to_beginning(*new)
                    held = {tp: q for tp, q in held.items() if tp.partition in wanted}
                    for tp in held:
                        self._hold(consumer, tp)
                    assigned = wanted
                    log.info("following the evidence of partitions %s (the partitions other workers hold)", sorted(wanted))
                self._release(consumer, held)
                self._check_input(consumer)
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=10_000)
                if not batch:
                    if held:  # everything fetched is ahead of the stream time: wait for it to move
                        self._wake.wait(self.poll_ms / 1000)
                        self._wake.clear()
                    continue
                # re-assigned meanwhile: a partition still followed keeps its records (its
                # position has moved past them); one no longer followed is read again from the
                # start of its changelog if it is followed again
                followed = self._wanted
                mark = self._watermark
                for tp, records in batch.items():
                    if tp.partition not in followed:
                        continue
                    self._arrived(tp, records)
                    queue = held.get(tp)
                    if queue is None:
                        cut = next((i for i, r in enumerate(records) if not _due(r, mark)), len(records))
                        with self._lock:
                            self._take(tp, records[:cut])
                        if cut < len(records):
                            held[tp] = deque(records[cut:])
                            self._hold(consumer, tp)
                    else:
                        queue.extend(records)
            except Exception as exc:  # the broker went away, a topic is not there yet...: retry
                log.warning("following the other partitions' evidence failed (%s: %s); retrying in 5 s", type(exc).__name__, exc)
                for client in (consumer, self._admin):
                    try:
                        if client is not None:
                            client.close()
                    except Exception:  # noqa: BLE001 - closing a broken client
                        pass
                consumer = self._admin = None
                self._stop.wait(5.0)
        for client in (consumer, self._admin):
            if client is not None:
                client.close()
