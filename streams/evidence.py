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
from collections.abc import Iterable, Mapping

from kafka import TopicPartition

from .client import reader
from .config import KafkaSettings

log = logging.getLogger("recstream.evidence")

#: a followed record: (table, partition, key) -> value (``None``: a tombstone)
Updates = dict[tuple[str, int, bytes], "bytes | None"]


class EvidenceFollower:
    """Follows some partitions of some changelog topics; :meth:`drain` returns what changed.

    Args:
        settings: how to reach the cluster.
        changelogs: table name -> its changelog topic.
        poll_ms: how long one poll waits for records.
    """

    def __init__(self, settings: KafkaSettings, changelogs: Mapping[str, str], poll_ms: int = 200) -> None:
        self.settings = settings
        self.changelogs = dict(changelogs)
        self._table_of = {topic: table for table, topic in self.changelogs.items()}
        self.poll_ms = poll_ms
        self._lock = threading.Lock()
        self._pending: Updates = {}
        self._wanted: frozenset[int] = frozenset()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: records read since start (for logs and tests)
        self.records = 0

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
        self._wake.set()

    def drain(self) -> Updates:
        """The latest value of every key changed since the last call."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        consumer = None
        assigned: frozenset[int] = frozenset()
        while not self._stop.is_set():
            try:
                wanted = self._wanted
                if not wanted:
                    if assigned and consumer is not None:
                        consumer.assign([])
                        assigned = frozenset()
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                if consumer is None:
                    consumer = reader(self.settings)
                    assigned = frozenset()
                if wanted != assigned:
                    tps = [TopicPartition(topic, p) for topic in self.changelogs.values() for p in sorted(wanted)]
                    consumer.assign(tps)
                    new = [tp for tp in tps if tp.partition not in assigned]
                    if new:
                        consumer.seek_to_beginning(*new)
                    assigned = wanted
                    log.info("following the evidence of partitions %s (the partitions other workers hold)", sorted(wanted))
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=10_000)
                if not batch:
                    continue
                with self._lock:
                    if self._wanted != assigned:
                        continue  # re-assigned meanwhile: these may be partitions no longer followed
                    for tp, records in batch.items():
                        table = self._table_of[tp.topic]
                        for r in records:
                            if r.key is not None:
                                self._pending[(table, tp.partition, r.key)] = r.value
                        self.records += len(records)
            except Exception as exc:  # the broker went away, a topic is not there yet...: retry
                log.warning("following the other partitions' evidence failed (%s: %s); retrying in 5 s", type(exc).__name__, exc)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # noqa: BLE001 - closing a broken consumer
                        pass
                consumer = None
                self._stop.wait(5.0)
        if consumer is not None:
            consumer.close()
