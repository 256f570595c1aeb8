"""The events agent: clicks, purchases and reviews in, recommendations out.

One agent consumes the three event topics (keyed by user, co-partitioned with the
``profiles`` table). Each micro-batch (``stream.take_events``) is validated (invalid
records go to the dead-letter topic and never stop the stream), the profiles of the users
it touches are read from the table, :class:`scoring.engine.Engine` applies the events and
scores all snapshots in one batched pass, and the changed profiles, popularity counts and
the recommendations are written back.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from encoders.profile import UserProfile
from scoring.backtest import KIND_RANK
from scoring.engine import Incoming

from ..records import ValidationError, encode, parse_event
from ..state import as_event, encode_log2, popularity_key
from . import apply_or_isolate, reject

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
    parsed: list[tuple["EventT", Incoming]] = []
    for event in events:
        message = event.message
        kind = pipeline.event_topic_names[message.topic]
        try:
            record = parse_event(kind, message.key, message.value)
        except ValidationError as exc:
            await reject(pipeline, message, exc)
            continue
        parsed.append((event, Incoming(record, message.topic, message.partition, message.offset)))
    if not parsed:
        return
    await apply_or_isolate(pipeline, merge_by_time(parsed), lambda batch: apply_batch(pipeline, batch))


def merge_by_time(parsed: Sequence[tuple["EventT", Incoming]]) -> list[tuple["EventT", Incoming]]:
    """The batch's records of each topic partition, in offset order, merged by event time.

    The three event topics are fetched independently, so a batch may hold a user's
    purchase before a click with an earlier time; the merge applies them in time order.
    Each partition's own order is kept (profiles skip an offset at or before the last
    applied one, so reordering a partition would drop its events).  At one time, a click
    goes before a purchase before a review (:data:`scoring.backtest.KIND_RANK`), then the
    partition that came first in the batch.
    """
    by_source: dict[tuple[str, int], list[tuple["EventT", Incoming]]] = {}
    for pair in parsed:
        by_source.setdefault((pair[1].topic, pair[1].partition), []).append(pair)
    return list(heapq.merge(*by_source.values(), key=lambda pair: (pair[1].event.ts, KIND_RANK[pair[1].event.kind])))


async def apply_batch(pipeline: "Pipeline", batch: Sequence[tuple["EventT", Incoming]]) -> None:
    """Read the touched profiles, run the engine, write state back and publish."""
    user_event: dict[str, "EventT"] = {}
    partition_event: dict[int, "EventT"] = {}
    received: dict[tuple[str, int, int], int] = {}
    wall_s, mono_s = time.time(), time.monotonic()
    for event, inc in batch:
        user_event[inc.event.user_id] = event
        partition_event[inc.partition] = event
        received[(inc.topic, inc.partition, inc.offset)] = received_ms(event.message, wall_s, mono_s)

    profiles: dict[str, UserProfile] = {}
    for user_id, event in user_event.items():
        with as_event(event):
            raw = pipeline.profiles.get(user_id.encode())
        if raw is not None:
            profiles[user_id] = UserProfile.from_bytes(raw)

    result = await pipeline.compute(pipeline.engine.process, [inc for _, inc in batch], profiles)

    for user_id, profile in result.profiles.items():
        with as_event(user_event[user_id]):
            pipeline.profiles[user_id.encode()] = profile.to_bytes()
    for partition, item_id in result.popularity_touched:
        log2 = pipeline.partition_popularity[partition].log2_score(item_id)
        with as_event(partition_event[partition]):
            pipeline.popularity_table[popularity_key(partition, item_id)] = encode_log2(log2)
    emitted = int(time.time() * 1000)  # the moment the records go out, after the state writes
    for rec in result.recommendations:
        t = rec.trigger
        trigger = replace(t, received_ts=received.get((t.topic, t.partition, t.offset)))
        await pipeline.publish(pipeline.recs_topic, rec.user_id.encode(), encode(replace(rec, trigger=trigger, emitted_ts=emitted)),
                               source_topic=t.topic, source_partition=t.partition)

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


def register(pipeline: "Pipeline") -> None:
    config = pipeline.config

    @pipeline.app.agent(pipeline.events_topic, name="recstream.events")
    async def process_events(stream):  # pragma: no cover - exercised end to end
        async for events in stream.take_events(config.batch_max, within=config.batch_within_s):
            await handle_event_batch(pipeline, events)
