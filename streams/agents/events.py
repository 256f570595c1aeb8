"""The events agent: clicks, purchases and reviews in, recommendations out.

One agent consumes the three event topics (keyed by user, co-partitioned with the
``profiles`` table). Each micro-batch (:func:`~.batching.take_batches`: as many events as
arrived while the previous one was processed) is validated (invalid
records go to the dead-letter topic and never stop the stream), the profiles of the users
it touches are read from the table, :class:`scoring.engine.Engine` applies the events and
scores all snapshots in one batched pass, and the changed profiles, popularity counts and
the recommendations are written back; with blend weights, so are the co-occurrence
rows the batch changed (``cooccurrence`` table, key ``"<partition>:<item>"``).
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import TYPE_CHECKING, Sequence, cast

from recstream.encoders.profile import UserProfile
from recstream.scoring.backtest import event_order_key
from recstream.scoring.engine import Incoming

from ..records import Forget, ValidationError, encode_emitted, parse_input
from ..state import encode_log2, popularity_key, read_raw
from . import apply_or_isolate, reject
from .batching import take_batches

if TYPE_CHECKING:
    from faust.types import EventT

    from ..app import Pipeline

log = logging.getLogger("recstream.events")


def received_ms(message: object, wall_s: float, mono_s: float) -> int:
    """When the consumer received ``message``, in epoch ms: Faust's monitor stamps
    ``time_in`` (monotonic) at fetch; without it, ``wall_s`` (now)."""
    time_in = getattr(message, "time_in", None)
    if time_in is None:
        return int(wall_s * 1000)
    return int((wall_s - max(0.0, mono_s - time_in)) * 1000)


async def handle_event_batch(pipeline: "Pipeline", events: Sequence["EventT"]) -> None:
    """Validate a micro-batch and apply it.  Forget requests (:class:`streams.records.Forget`)
    cut the batch: the events before one are applied first, then the user is forgotten,
    then the events after it are applied (each part in the protocol's event order)."""
    parsed: list[tuple["EventT", Incoming]] = []
    for event in events:
        message = event.message
        kind = pipeline.event_topic_names[message.topic]
        try:
            record = parse_input(kind, message.key, message.value)
        except ValidationError as exc:
            await reject(pipeline, message, exc)
            continue
        if isinstance(record, Forget):
            if parsed:
                await apply_or_isolate(pipeline, merge_by_time(parsed), lambda batch: apply_batch(pipeline, batch))
                parsed = []
            from .forget import apply_forget

            await apply_or_isolate(pipeline, [(event, record)], lambda batch: apply_forget(pipeline, batch))
            continue
        parsed.append((event, Incoming(record, message.topic, message.partition, message.offset)))
    if not parsed:
        return
    await apply_or_isolate(pipeline, merge_by_time(parsed), lambda batch: apply_batch(pipeline, batch))


def merge_by_time(parsed: Sequence[tuple["EventT", Incoming]]) -> list[tuple["EventT", Incoming]]:
    """The batch's records of each topic partition, in offset order, merged in the
    protocol's event order (:func:`scoring.backtest.event_order_key`: time, user, item,
    kind, event id).

    The consumer already delivers the event topics in that order
    (:mod:`streams.streamtime`) unless told not to (``--max-task-idle-ms -1``); then a
    batch may hold a user's purchase before a click with an earlier time, and the merge
    applies them in time order.  Each partition's own order is kept (profiles skip an
    offset at or before the last applied one, so reordering a partition would drop its
    events).
    """
    by_source: dict[tuple[str, int], list[tuple["EventT", Incoming]]] = {}
    for pair in parsed:
        by_source.setdefault((pair[1].topic, pair[1].partition), []).append(pair)
    if len(by_source) == 1:
        return list(parsed)
    return list(heapq.merge(*by_source.values(), key=lambda pair: event_order_key(pair[1].event)))


async def apply_batch(pipeline: "Pipeline", batch: Sequence[tuple["EventT", Incoming]]) -> None:
    """Read the touched profiles, run the engine, write state back and publish.

    A user's profile lives in the partition of the user's (last) event of the batch; table
    reads and writes are routed by an event of that partition (:func:`streams.state.as_event`),
    and the writes and recommendations of the batch go out as one produce batch per
    partition (:meth:`streams.app.Pipeline.write_table`, :meth:`~streams.app.Pipeline.publish_many`).
    """
    user_partition: dict[str, int] = {}
    partition_event: dict[int, "EventT"] = {}
    received: dict[tuple[str, int, int], int] = {}
    wall_s, mono_s = time.time(), time.monotonic()
    for event, inc in batch:
        user_partition[inc.event.user_id] = inc.partition
        partition_event[inc.partition] = event
        received[(inc.topic, inc.partition, inc.offset)] = received_ms(event.message, wall_s, mono_s)

    users_by_partition: dict[int, list[str]] = {}
    for user_id, partition in user_partition.items():
        users_by_partition.setdefault(partition, []).append(user_id)
    profiles: dict[str, UserProfile] = {}
    # the table's store, one multi-get per partition (``profiles.get`` looks a
    # missing-or-present key up twice: faust's Table has a ``__missing__``)
    for partition, users in users_by_partition.items():
        values = read_raw(pipeline.profiles.data, partition_event[partition], [u.encode() for u in users])
        for user_id, raw in zip(users, values):
            if raw is not None:
                profiles[user_id] = UserProfile.from_bytes(raw)

    result = await pipeline.compute(pipeline.engine.process, [inc for _, inc in batch], profiles)

    profile_writes: dict[int, list[tuple[bytes, bytes]]] = {}
    for user_id, profile in result.profiles.items():
        profile_writes.setdefault(user_partition[user_id], []).append((user_id.encode(), profile.to_bytes()))
    # the counts' changelog records carry, each, the latest event time their value includes
    # (streams/evidence.py: another worker takes a row once its stream time has reached it)
    popularity_writes: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for (partition, item_id), ts in result.popularity_touched.items():
        log2 = pipeline.partition_popularity[partition].log2_score(item_id)
        popularity_writes.setdefault(partition, []).append((popularity_key(partition, item_id), encode_log2(cast(float, log2)), ts))  # counted: not None
    batch_ms = max(inc.event.ts for _, inc in batch)
    await pipeline.write_table(pipeline.profiles, profile_writes, partition_event)
    await pipeline.write_table(pipeline.popularity_table, popularity_writes, partition_event)
    await pipeline.write_progress(batch_ms)
    if result.cooccurrence_touched:  # with blend weights: the partition's co-occurrence rows
        cooc_writes: dict[int, list[tuple[bytes, bytes, int]]] = {}
        for (partition, item_id), ts in result.cooccurrence_touched.items():
            row = pipeline.partition_cooccurrence[partition].row(item_id)
            if row is not None:
                cooc_writes.setdefault(partition, []).append((popularity_key(partition, item_id), row.to_bytes(), ts))
        await pipeline.write_table(pipeline.cooccurrence_table, cooc_writes, partition_event)
    pipeline.evidence.advance(batch_ms)
    adaptive = pipeline.engine.adaptive
    if result.adaptive_touched and adaptive is not None:  # the adaptive blend's weights, one key per partition
        await pipeline.write_table(
            pipeline.weights_table,
            {p: [(str(p).encode(), adaptive.adapters[p].to_bytes())] for p in result.adaptive_touched if p in partition_event},
            partition_event,
        )
    emitted = int(time.time() * 1000)  # the moment the records go out, after the state writes
    answers = []
    latest: dict[str, tuple[int, bytes]] = {}  # each user's last record of the batch
    for rec in result.recommendations:
        t = rec.trigger
        value = encode_emitted(rec, emitted_ts=emitted, received_ts=received.get((t.topic, t.partition, t.offset)))
        answers.append((rec.user_id.encode(), value, t.topic, t.partition))
        latest[rec.user_id] = (t.partition, value)
    # the latest list per user (served by the API), the same bytes as the record published,
    # in the batch's own writes (and transaction, under exactly-once)
    latest_writes: dict[int, list[tuple[bytes, bytes]]] = {}
    for user_id, (partition, value) in latest.items():
        latest_writes.setdefault(partition, []).append((user_id.encode(), value))
    await pipeline.write_table(pipeline.latest_table, latest_writes, partition_event)
    await pipeline.publish_many(pipeline.recs_topic, answers)

    stats, counts = result.stats, pipeline.metrics.counts
    counts["batches"] += 1
    counts["events"] += stats.events
    counts["applied"] += stats.applied
    counts["duplicates"] += stats.duplicates
    counts["unknown_items"] += stats.unknown_items
    counts["fallbacks"] += stats.fallbacks
    counts["recommendations"] += len(result.recommendations)
    pipeline.metrics.encode_s += stats.encode_s
    pipeline.metrics.score_s += stats.score_s
    pipeline.telemetry.on_event_batch(result, profiles, received, emitted)


def register(pipeline: "Pipeline") -> None:
    config = pipeline.config

    @pipeline.app.agent(pipeline.events_topic, name="recstream.events")
    async def process_events(stream):  # pragma: no cover - exercised end to end
        async for events in take_batches(stream, config.batch_max, linger_s=config.batch_within_s):
            pipeline.freeze_startup_heap()
            await handle_event_batch(pipeline, events)
            await pipeline.commit_batch(events)  # exactly-once: the batch's transactions
            pipeline.telemetry.on_batch("events", events)
