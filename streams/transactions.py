"""Exactly-once processing: one Kafka transaction per input partition per micro-batch.

Under ``--processing-guarantee exactly_once`` recstream runs its own transactions instead
of Faust's (Faust 0.15 commits its transactions on a timer, in the middle of a micro-batch,
and sends table changelog records through a buffer it does not flush before a transactional
commit; see docs/pipeline.md, Guarantees).  The design is Kafka Streams' original one:

* one transactional producer per input partition number ``p`` (transactional id
  ``<app id>-events-<p>``), started when the worker is assigned ``p`` and *before* Faust
  recovers the tables or seeks to the committed offsets: its ``InitProducerId`` fences any
  earlier holder of ``p`` (a crashed or stalled worker) and aborts its open transaction;
* the events agent buffers what a micro-batch produces for partition ``p`` (the changelog
  records of ``profiles`` and ``popularity``, the recommendations, the dead letters)
  in :class:`PartitionTransactions` and, when the batch is done, commits it in one
  transaction together with the batch's input offsets of ``p`` (``send_offsets_to_transaction``);
* the worker's consumer reads ``read_committed``, so table recovery never restores a write
  of an aborted attempt, and Faust does not commit the event topics' offsets itself
  (:class:`streams.worker.ExactlyOnceConsumer`).

The event topics (clicks, purchases, reviews) are co-partitioned with the tables and the
recommendations: partition ``p`` of each goes to one worker, and one transaction covers
them all.  The catalog agent stays at-least-once (its table writes are idempotent upserts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from aiokafka.structs import TopicPartition

log = logging.getLogger("recstream.transactions")

#: Called after the commit with (partition, offset of the last record of the chunk).
Delivered = Callable[[int, int], None]
#: A record to send: ``(key, value)`` (timestamped when sent) or ``(key, value, timestamp_ms)``.
Record = tuple[bytes | None, bytes] | tuple[bytes | None, bytes, int]


class TransactionFailed(RuntimeError):
    """A micro-batch's transaction could not be committed (fenced, broker error)."""


@dataclass
class _Pending:
    """Records of one output topic partition for one input partition's transaction."""

    records: list[Record] = field(default_factory=list)
    # (index of the chunk's last record, callback): persisted changelog offsets
    callbacks: list[tuple[int, Delivered]] = field(default_factory=list)


def batch_offsets(messages: Iterable[Any], topics: Collection[str]) -> dict[int, dict[TopicPartition, int]]:
    """The offsets to commit for a micro-batch, by input partition number: for each topic
    partition of ``topics`` in the batch, one past its highest offset (Kafka's "next record
    to read")."""
    out: dict[int, dict[TopicPartition, int]] = {}
    for message in messages:
        if message.topic not in topics:
            continue
        tp = TopicPartition(message.topic, message.partition)
        per = out.setdefault(message.partition, {})
        per[tp] = max(per.get(tp, 0), message.offset + 1)
    return out


def transactional_id(app_id: str, partition: int) -> str:
    """The transactional id of input partition ``partition``'s producer (ACLs: prefix ``<app id>-``)."""
    return f"{app_id}-events-{partition}"


class PartitionTransactions:
    """Transactional producers by input partition, and the records a micro-batch buffers."""

    def __init__(self, *, app_id: str, input_topics: Collection[str], make_producer: Callable[[str], Any]) -> None:
        self.app_id = app_id  # also the consumer group whose offsets the transactions commit
        self.input_topics = frozenset(input_topics)
        self.make_producer = make_producer
        self.producers: dict[int, Any] = {}
        self.pending: dict[int, dict[tuple[str, int], _Pending]] = {}
        self.committed = 0  # transactions committed (metrics, tests)
        self.commit_s = 0.0

    def transactional_id(self, partition: int) -> str:
        return transactional_id(self.app_id, partition)

    def input_partitions(self, tps: Iterable[Any]) -> set[int]:
        return {tp.partition for tp in tps if tp.topic in self.input_topics}

    # ------------------------------------------------------------------ assignment
    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Start a producer for every input partition assigned (call before Faust recovers
        the tables and seeks): ``begin_transaction`` waits for the producer id, so when this
        returns every earlier producer of these partitions is fenced and its open transaction
        aborted, and its committed offsets are visible to the group."""
        for partition in sorted(self.input_partitions(assigned) - self.producers.keys()):
            producer = self.make_producer(self.transactional_id(partition))
            await producer.start()
            await producer.begin_transaction()
            self.producers[partition] = producer
        if self.producers:
            log.info("transactional producers ready for partitions %s", sorted(self.producers))

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        """Stop the producers of revoked partitions (their last batch is committed: the
        consumer waits for the batch in flight before a rebalance)."""
        for partition in sorted(self.input_partitions(revoked)):
            await self._stop(partition)

    async def close(self) -> None:
        for partition in list(self.producers):
            await self._stop(partition)

    async def _stop(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        self.pending.pop(partition, None)
        if producer is not None:
            await producer.stop()

    # ------------------------------------------------------------------ a micro-batch
    def add(self, source_partition: int, topic: str, partition: int, records: Sequence[Record], on_delivered: Delivered | None = None) -> None:
        """Buffer ``records`` for ``topic``/``partition`` in the transaction of input partition
        ``source_partition``; ``on_delivered(partition, offset)`` runs after the commit with the
        offset of the last of them."""
        if not records:
            return
        pending = self.pending.setdefault(source_partition, {}).setdefault((topic, partition), _Pending())
        pending.records.extend(records)
        if on_delivered is not None:
            pending.callbacks.append((len(pending.records) - 1, on_delivered))

    def discard(self) -> None:
        self.pending.clear()

    async def commit(self, messages: Iterable[Any]) -> None:
        """Commit the buffered records and the input offsets of ``messages`` (the micro-batch),
        one transaction per input partition, the partitions concurrently (each transaction
        takes a few round trips to the broker).  Raises :class:`TransactionFailed`."""
        offsets = batch_offsets(messages, self.input_topics)
        pending, self.pending = self.pending, {}
        started = time.perf_counter()
        partitions = sorted(offsets.keys() | pending.keys())
        missing = [p for p in partitions if p not in self.producers]
        if missing:
            raise TransactionFailed(f"no transactional producer for input partition(s) {missing} (not assigned to this worker)")
        await asyncio.gather(*(self._commit_partition(p, offsets.get(p, {}), pending.get(p, {})) for p in partitions))
        self.commit_s += time.perf_counter() - started

    async def _commit_partition(self, partition: int, offsets: dict[TopicPartition, int], pending: dict[tuple[str, int], _Pending]) -> None:
        producer = self.producers[partition]
        try:
            deliveries = []
            for (topic, out_partition), chunk in pending.items():
                deliveries.append((out_partition, chunk, await send_batches(producer, topic, out_partition, chunk.records)))
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.app_id)
            await producer.commit_transaction()
            self.committed += 1
            for out_partition, chunk, futures in deliveries:
                _report_delivered(out_partition, chunk, futures)
            await producer.begin_transaction()
        except Exception as exc:
            raise TransactionFailed(f"transaction {self.transactional_id(partition)}: {type(exc).__name__}: {exc}") from exc


async def send_batches(
    producer: Any, topic: str, partition: int, records: Sequence[Record], on_sent: Callable[[int, asyncio.Future], None] | None = None
) -> list[tuple[int, asyncio.Future]]:
    """Queue ``records`` on ``producer`` (an aiokafka producer) as record batches, in order;
    returns (index of each batch's first record, its delivery future).  A record is
    ``(key, value)`` (timestamped when sent) or ``(key, value, timestamp_ms)``.
    ``on_sent(number of records, delivery future)`` is called as each batch is queued."""
    out = []
    start, total = 0, len(records)
    while start < total:
        batch = producer.create_batch()
        n = 0
        while start + n < total:
            key, value, *ts = records[start + n]
            if batch.append(key=key, value=value, timestamp=ts[0] if ts else None) is None:
                break  # full: the rest goes in the next batch
            n += 1
        if n == 0:
            raise ValueError(f"a record of {len(records[start][1])} bytes does not fit a produce batch for {topic}")
        batch.close()
        delivery = await producer.send_batch(batch, topic, partition=partition)
        if on_sent is not None:
            on_sent(n, delivery)
        out.append((start, delivery))
        start += n
    return out


def _report_delivered(partition: int, chunk: _Pending, futures: list[tuple[int, asyncio.Future]]) -> None:
    """Run the chunk's callbacks with the offset of their last record (the batches are
    delivered: the commit flushed them)."""
    if not chunk.callbacks:
        return
    bases = [(first, future.result().offset) for first, future in futures]
    for index, callback in chunk.callbacks:
        first, base = max((b for b in bases if b[0] <= index), key=lambda b: b[0])
        callback(partition, base + index - first)


# ------------------------------------------------------------------ changelog ends
async def data_ends(consumer: Any, ends: Mapping[Any, int], begins: Mapping[Any, int], timeout_s: float = 60.0) -> dict[Any, int]:
    """For each partition, one past the offset of its last *data* record below ``ends[tp]``
    (a ``read_committed`` end offset), or ``begins[tp]`` when it holds none.

    A partition written by transactions ends with a commit or abort marker, which a
    consumer never receives; Faust's table recovery waits until it has received the record
    just below the end offset, so it needs this end instead.  ``consumer`` is an assigned-
    nothing ``read_committed`` aiokafka consumer; the tail of each partition is read, from
    256 offsets before the end, widening until a data record is found.
    """
    out: dict[Any, int] = {}
    todo = {tp: end for tp, end in ends.items() if end > begins.get(tp, 0)}
    out.update({tp: end for tp, end in ends.items() if tp not in todo})
    window = 256
    deadline = time.monotonic() + timeout_s
    while todo:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in todo]
        consumer.assign(tps)
        starts = {}
        for tp, atp in zip(todo, tps):
            starts[tp] = max(begins.get(tp, 0), todo[tp] - window)
            consumer.seek(atp, starts[tp])
        last: dict[Any, int] = {}
        reading = dict(zip(todo, tps))
        while reading:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the ends of {sorted(map(str, reading))} took more than {timeout_s:.0f}s")
            batches = await consumer.getmany(*reading.values(), timeout_ms=200)
            for atp, records in batches.items():
                for record in records:
                    tp = next(t for t, a in reading.items() if a == atp)
                    if record.offset < todo[tp]:
                        last[tp] = max(last.get(tp, -1), record.offset)
            for tp, atp in list(reading.items()):
                if await consumer.position(atp) >= todo[tp]:
                    del reading[tp]
        for tp in list(todo):
            if tp in last:
                out[tp] = last[tp] + 1
                del todo[tp]
            elif starts[tp] <= begins.get(tp, 0):
                out[tp] = begins.get(tp, 0)
                del todo[tp]
        window *= 8
    return out
