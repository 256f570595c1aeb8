"""Client-side helpers: produce contract records, read recommendations, run a worker process.

Used by ``recstream demo``, ``recstream profile``, the end-to-end tests and the benchmarks;
plain kafka-python clients, as any user of recstream would write them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from . import topics as T
from .config import KafkaSettings
from .security import check_connection, kafka_python_kwargs
from .records import Item, ItemDeleted, Recommendation, decode_recommendation, encode, record_key


class Timeout(RuntimeError):
    """A bounded wait ran out; the message says what was awaited."""


def connection_options(settings: KafkaSettings) -> dict:
    """``bootstrap_servers`` and the TLS/SASL arguments of a kafka-python client, after
    checking (once per process, TLS and SASL only) that the broker accepts the credentials:
    a refused password is a clear :class:`streams.security.AuthenticationFailed`, not a
    bootstrap timeout."""
    check_connection(settings.bootstrap_servers, settings.security)
    return {"bootstrap_servers": settings.bootstrap_servers, **kafka_python_kwargs(settings.security)}


def producer(settings: KafkaSettings, **overrides) -> KafkaProducer:
    options = {"acks": "all", "linger_ms": 5, **overrides}
    return KafkaProducer(**connection_options(settings), **options)


def send_records(prod: KafkaProducer, settings: KafkaSettings, records: Iterable) -> list:
    """Send contract records to their topics (items, clicks, purchases, reviews).

    Keys follow the contract (item id / user id); the Kafka timestamp is the event time.
    Returns the delivery futures, in order.
    """
    topic_of_kind = {"click": T.CLICKS, "purchase": T.PURCHASES, "review": T.REVIEWS}
    futures = []
    for record in records:
        if isinstance(record, ItemDeleted):
            future = prod.send(settings.topic(T.ITEMS), key=record.item_id.encode(), value=None)
        elif isinstance(record, Item):
            future = prod.send(settings.topic(T.ITEMS), key=record_key(record), value=encode(record), timestamp_ms=record.ts or None)
        else:
            future = prod.send(settings.topic(topic_of_kind[record.kind]), key=record_key(record), value=encode(record), timestamp_ms=record.ts)
        futures.append(future)
    return futures


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``, in every client."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def reader(settings: KafkaSettings) -> KafkaConsumer:
    """A consumer without a group that sees committed records only (``read_committed``):
    under exactly-once, a crashed attempt's records are aborted and stay invisible; under
    at-least-once there are no transactions and it sees everything."""
    return KafkaConsumer(**connection_options(settings), enable_auto_commit=False, group_id=None, isolation_level="read_committed")


def tail(
    settings: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    key: bytes | None = None,
) -> KafkaConsumer:
    """A consumer (no group) on every partition of ``topic``, or only on ``key``'s, at the start or the end."""
    consumer = reader(settings)
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        consumer.close()
        # Kafka does not tell a topic the user may not describe from a missing one
        who = f", or user {settings.security.sasl_username!r} may not see it (ACLs)" if settings.security.uses_sasl else ""
        raise ValueError(f"topic {topic!r} does not exist on {settings.broker}{who}")
    if key is not None:
        partitions = {partition_for(key, len(partitions))}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)
        for tp in tps:  # resolve "end" now, not lazily at the first poll
            consumer.position(tp)
    return consumer


def read_to_end(
    consumer: KafkaConsumer,
    tps: Sequence[TopicPartition],
    *,
    start: int | None = None,
    timeout_s: float = 600.0,
) -> Iterator:
    """Every record of ``tps`` from ``start`` (default: the beginning) up to each partition's
    end as it stands now; raises :class:`Timeout` when that takes longer than ``timeout_s``."""
    if not tps:
        return
    consumer.assign(list(tps))
    begin, end = consumer.beginning_offsets(list(tps)), consumer.end_offsets(list(tps))
    for tp in tps:
        consumer.seek(tp, max(begin[tp], start if start is not None else begin[tp]))
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < end[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise Timeout(f"reading {', '.join(sorted({tp.topic for tp in tps}))} took more than {timeout_s:.0f}s")
        for tp, records in consumer.poll(timeout_ms=500).items():
            yield from (r for r in records if r.offset < end[tp])


def read_topic(consumer: KafkaConsumer, topic: str) -> Iterator:
    """Every record of every partition of ``topic``, up to its end as it stands now
    (:func:`read_to_end`; partitions in order, each by offset)."""
    return read_to_end(consumer, [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])


def topic_size(settings: KafkaSettings, logical: str) -> int:
    """The sum of the ``logical`` topic's end offsets (its last stable offsets for this
    ``read_committed`` reader): a progress mark, not a count of records. Under exactly-once
    the transaction markers and aborted records take offsets too; :class:`AnswerLog`
    counts the answered events themselves."""
    consumer = reader(settings)
    try:
        topic = settings.topic(logical)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


class AnswerLog:
    """The input events a namespace's workers have answered so far.

    Each recommendation names the event it answers (``trigger``: topic, partition, offset)
    and so does each dead letter; this reads both topics as their records are committed
    (``read_committed``) and keeps the distinct events answered, so a transaction marker,
    an aborted attempt or a record written twice (at-least-once after a crash) is not
    counted as one more answer. Dead letters of the catalog are not answers to events.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._events = {settings.topic(t) for t in T.EVENT_TOPICS}
        self._kinds = {settings.topic(T.RECOMMENDATIONS): T.RECOMMENDATIONS, settings.topic(T.DLQ): T.DLQ}
        self._consumer = reader(settings)
        tps = [TopicPartition(topic, p) for topic in self._kinds for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self.answered: set[tuple[str, int, int]] = set()
        #: committed records read per logical topic (``recommendations``, ``recstream-dlq``)
        self.records: dict[str, int] = dict.fromkeys(self._kinds.values(), 0)
        self.unreadable = 0

    def update(self, timeout_ms: int = 500) -> int:
        """Read what has been committed since the last call (waiting up to ``timeout_ms`` for
        the first of it); the number of distinct events answered."""
        wait = timeout_ms
        while batches := self._consumer.poll(timeout_ms=wait, max_records=5000):
            wait = 0
            for tp, records in batches.items():
                kind = self._kinds[tp.topic]
                self.records[kind] += len(records)
                for r in records:
                    try:
                        doc = orjson.loads(r.value)
                        where = doc["trigger"] if kind == T.RECOMMENDATIONS else doc
                        key = (where["topic"], int(where["partition"]), int(where["offset"]))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        self.unreadable += 1
                        continue
                    if key[0] in self._events:
                        self.answered.add(key)
        return len(self.answered)

    def close(self) -> None:
        self._consumer.close()


def poll_records(consumer: KafkaConsumer, timeout_s: float) -> Iterator:
    """Records from ``consumer`` until ``timeout_s`` passes without the caller stopping."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for records in batch.values():
            yield from records


class RecommendationWatcher:
    """Reads the recommendations topic and indexes records by user and trigger event id."""

    def __init__(self, settings: KafkaSettings, *, from_beginning: bool = True) -> None:
        self.consumer = tail(settings, settings.topic(T.RECOMMENDATIONS), from_beginning=from_beginning)
        self.by_event: dict[str, Recommendation] = {}
        self.by_user: dict[str, list[Recommendation]] = {}
        self.received_at: dict[str, float] = {}

    def poll(self, timeout_ms: int = 200) -> list[Recommendation]:
        got = []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                rec = decode_recommendation(record.value)
                got.append(rec)
                self.by_user.setdefault(rec.user_id, []).append(rec)
                if rec.trigger.event_id is not None:
                    self.by_event[rec.trigger.event_id] = rec
                    self.received_at[rec.trigger.event_id] = time.time()
        return got

    def wait_for(self, condition: Callable[["RecommendationWatcher"], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            if time.monotonic() > deadline:
                raise Timeout(f"no {what} within {timeout_s:.0f}s")
            self.poll()

    def wait_event(self, event_id: str, timeout_s: float = 60.0) -> Recommendation:
        self.wait_for(lambda w: event_id in w.by_event, timeout_s, f"recommendation for event {event_id}")
        return self.by_event[event_id]

    def latest(self, user_id: str) -> Recommendation | None:
        recs = self.by_user.get(user_id)
        return recs[-1] if recs else None

    def close(self) -> None:
        self.consumer.close()


def wait_catalog(settings: KafkaSettings, item_ids: Sequence[str], timeout_s: float = 120.0, progress=None) -> None:
    """Wait until the worker has embedded every item (read from the catalog table's changelog)."""
    consumer = tail(settings, settings.changelog(T.ITEMS_TABLE))
    wanted: set[str] = set(item_ids)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while not wanted <= seen:
            if time.monotonic() > deadline:
                raise Timeout(f"the worker embedded {len(seen & wanted)} of {len(wanted)} items within {timeout_s:.0f}s")
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    key = record.key.decode()
                    if key in wanted and key not in seen and record.value is not None:
                        seen.add(key)
                        if progress is not None:
                            progress.update(1)
    finally:
        consumer.close()


class WorkerProcess:
    """``recstream worker`` as a child process, with its log in a file."""

    READY_MARK = "[^Worker]: Ready"

    def __init__(self, settings: KafkaSettings, data_dir: Path, *args: str, log_path: Path | None = None, env: dict | None = None) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.log_path = log_path or self.data_dir / "worker.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log_start = 0

    def start(self) -> "WorkerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "recstream",
            "worker",
            "--broker",
            self.settings.broker,
            "--topic-prefix",
            self.settings.topic_prefix,
            "--app-id",
            self.settings.app_id,
            "--data-dir",
            str(self.data_dir),
            "--loglevel",
            "info",
            *self.args,
        ]
        # TLS/SASL settings (the password included) reach the worker through its environment,
        # never its command line
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.settings.security.to_env(), **(self.env or {})}
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        return self

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.READY_MARK not in self.log_text():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited during start-up:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise Timeout(f"the worker was not ready within {timeout_s:.0f}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
