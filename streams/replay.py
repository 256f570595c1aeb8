"""``recstream replay``: a time range of the event topics through an isolated pipeline.

The catalog (as it stands) and the events of ``[start, end)`` are copied from the live
topics into a separate namespace (its own topic prefix, hence its own application id,
state tables and recommendations topic): each event keeps its partition, key, value and
timestamp, and the start offsets are found by timestamp (``offsets_for_times``). A worker
on that namespace embeds the catalog first; once every event is copied it runs again,
with per-event emission, until every copied event has its recommendation (or dead
letter), taking the events in event-time order as the offline engine does. The live
topics, their consumer group and their state are only read, never written.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from . import topics as T
from .client import AnswerLog, WorkerProcess, producer, reader, wait_catalog
from .config import KafkaSettings
from .records import Item, ValidationError, parse_item


@dataclass(slots=True)
class ReplayStats:
    target_prefix: str
    items: int = 0
    events: dict[str, int] = field(default_factory=dict)
    recommendations: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    #: catalog keys copied → whether the worker will hold them (a valid item, not a tombstone)
    item_ids: dict[bytes, bool] = field(default_factory=dict)

    @property
    def events_total(self) -> int:
        return sum(self.events.values())


def _ranges(consumer: KafkaConsumer, topic: str, start_ms: int | None) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition of ``topic``: the offsets to scan, [first record at or after start_ms, log end).

    Kafka's ``offsets_for_times`` gives the earliest offset whose timestamp is at or after
    the start, so nothing before it is in the range. The end is not cut by offset: a record
    appended late with an in-range timestamp sits after later records in the log, so the
    scan runs to the log end and the copy keeps records by timestamp.
    """
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    if start_ms is None:
        first = begin
    else:
        found = consumer.offsets_for_times({tp: start_ms for tp in tps})
        first = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
    return {tp: (first[tp], end[tp]) for tp in tps if first[tp] < end[tp]}


def _embeddable(key: bytes | None, value: bytes | None) -> bool:
    """Will the worker embed this catalog record (a valid item, not a tombstone)?"""
    try:
        return isinstance(parse_item(key, value), Item)
    except ValidationError:
        return False


def _in_range(ts: int, start_ms: int | None, end_ms: int | None) -> bool:
    return (start_ms is None or ts >= start_ms) and (end_ms is None or ts < end_ms)


def copy_range(
    source: KafkaSettings,
    target: KafkaSettings,
    *,
    start_ms: int | None,
    end_ms: int | None,
    partitions: int,
    catalog: bool = True,
    events: bool = True,
    show_progress: bool = True,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Copy the catalog and/or the events of [start_ms, end_ms) from ``source`` to ``target``."""
    stats = stats or ReplayStats(target.topic_prefix)
    T.ensure_topics(target, T.topic_specs(target, partitions=partitions))
    consumer = reader(source)
    prod = producer(target, linger_ms=20, batch_size=256 * 1024)
    failures: list[BaseException] = []
    try:
        jobs = [(T.ITEMS, _ranges(consumer, source.topic(T.ITEMS), None))] if catalog else []
        if events:
            jobs += [(t, _ranges(consumer, source.topic(t), start_ms)) for t in T.EVENT_TOPICS]
        total = sum(last - first for _, ranges in jobs for first, last in ranges.values())
        with tqdm(total=total, desc="scanning", unit="rec", file=sys.stderr, disable=not show_progress) as bar:
            for logical, ranges in jobs:
                copied = 0
                item_ids: dict[bytes, bool] = {}
                for tp, (first, last) in ranges.items():
                    consumer.assign([tp])
                    consumer.seek(tp, first)
                    while consumer.position(tp) < last:
                        for records in consumer.poll(timeout_ms=1000).values():
                            for r in records:
                                if r.offset >= last:
                                    break
                                bar.update(1)
                                if logical != T.ITEMS and not _in_range(r.timestamp, start_ms, end_ms):
                                    continue
                                # same partition number: one user's events stay in order, together
                                future = prod.send(
                                    target.topic(logical),
                                    key=r.key,
                                    value=r.value,
                                    partition=tp.partition if logical != T.ITEMS else None,
                                    timestamp_ms=r.timestamp,
                                )
                                future.add_errback(failures.append)
                                copied += 1
                                if logical == T.ITEMS:
                                    item_ids[r.key] = _embeddable(r.key, r.value)
                if logical == T.ITEMS:
                    stats.items = copied
                    stats.item_ids = item_ids
                else:
                    stats.events[logical] = copied
        prod.flush()
    finally:
        prod.close()
        consumer.close()
    if failures:
        raise RuntimeError(f"Kafka refused {len(failures)} copied records, the first: {failures[0]}")
    return stats


def run_replay(
    source: KafkaSettings,
    target: KafkaSettings,
    *,
    start_ms: int | None,
    end_ms: int | None,
    partitions: int,
    worker_args: list[str] | None = None,
    timeout_s: float = 3600.0,
    show_progress: bool = True,
    workers: int = 1,
) -> ReplayStats:
    """Copy the catalog and let an isolated worker (per-event emission) embed it; stop it,
    copy the events of the range, and run the worker again (with ``workers`` > 1, that many
    workers of one group sharing the partitions) until every event is answered."""
    if workers < 1 or workers > partitions:
        raise ValueError(f"workers: 1 to the {partitions} partitions, got {workers}")
    if target.topic_prefix == source.topic_prefix or target.app_id == source.app_id:
        raise ValueError("the replay needs its own topic prefix and application id, not the live ones")
    t0 = time.monotonic()
    # the catalog first, embedded before any event is read: otherwise early events would
    # find their items missing and the replay would depend on the machine's speed
    stats = copy_range(source, target, start_ms=start_ms, end_ms=end_ms, partitions=partitions, events=False, show_progress=show_progress)
    data_dir = Path(tempfile.mkdtemp(prefix="recstream-replay-"))
    args = ["--partitions", str(partitions), "--emit", "per-event", *(worker_args or [])]
    if workers > 1 and "--max-skew-ms" not in args:
        # years of events in minutes: unless they keep in step, a worker a few seconds ahead
        # of another would rank with the other's evidence from weeks before (streams/evidence.py),
        # which live workers, all close to the clock, never do
        args += ["--max-skew-ms", "0"]
    worker = WorkerProcess(target, data_dir, *args)
    try:
        worker.start()
        worker.wait_ready()
        present = [key.decode() for key, alive in stats.item_ids.items() if alive]
        with tqdm(total=len(present), desc="embedding the catalog", unit="item", file=sys.stderr, disable=not show_progress) as bar:
            wait_catalog(target, present, timeout_s=timeout_s, progress=bar)
    finally:
        worker.stop()
    # Then every event, with no worker reading: the next one finds the whole range on the
    # broker, so it applies the events in the offline engine's order (streams/streamtime.py:
    # a partition with unfetched records holds the others back). Copied while a worker
    # reads, a topic would look caught up before its records were copied, and the worker
    # would take one topic's events ahead of another's.
    copy_range(source, target, start_ms=start_ms, end_ms=end_ms, partitions=partitions, catalog=False, show_progress=show_progress, stats=stats)
    answered = 0
    answers = AnswerLog(target)
    # the others recover the catalog table (the embeddings) from its changelog
    group = [worker] + [WorkerProcess(target, Path(tempfile.mkdtemp(prefix="recstream-replay-")), *args) for _ in range(workers - 1)]
    try:
        for w in group:
            w.start()  # the first on the same state folder: the catalog table and matrix come back
        deadline = time.monotonic() + timeout_s
        with tqdm(total=stats.events_total, desc="replaying", unit="ev", file=sys.stderr, disable=not show_progress) as bar:
            while answered < stats.events_total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the replay worker answered {answered} of {stats.events_total} events in {timeout_s:.0f}s")
                for w in group:
                    if w.proc is not None and w.proc.poll() is not None:
                        raise RuntimeError(f"a replay worker exited:\n{w.log_text()[-2000:]}")
                # the events answered, not the topics' offsets: under exactly-once every
                # transaction's markers take offsets too, and the replay would stop short
                now = answers.update(timeout_ms=500)
                bar.update(now - answered)
                answered = now
    finally:
        for w in group:
            w.stop()
        answers.close()
    stats.recommendations = answers.records[T.RECOMMENDATIONS]
    stats.dead_letters = answers.records[T.DLQ]
    stats.seconds = time.monotonic() - t0
    return stats
