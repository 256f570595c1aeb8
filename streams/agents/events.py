"""The events agent: clicks, purchases and reviews in, recommendations out.

One agent consumes the three event topics (keyed by user, co-partitioned with the
``profiles`` table). Each micro-batch (``stream.take_events``) is validated (invalid
records go to the dead-letter topic and never stop the stream), the profiles of the users
it touches are read from the table, :class:`scoring.engine.Engine` applies the events and
scores all snapshots in one batched pass, and the changed profiles, popularity counts and
the recommendations are written back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from encoders.profile import UserProfile
from scoring.engine import Incoming

from ..records import ValidationError, encode, parse_event
from ..state import as_event, encode_log2, popularity_key
from . import apply_or_isolate, reject

if TYPE_CHECKING:
    from faust.types import EventT

    from ..app import Pipeline

log = logging.getLogger("recstream.events")


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
    await apply_or_isolate(pipeline, parsed, lambda batch: apply_batch(pipeline, batch))


async def apply_batch(pipeline: "Pipeline", batch: Sequence[tuple["EventT", Incoming]]) -> None:
    """Read the touched profiles, run the engine, write state back and publish."""
    user_event: dict[str, "EventT"] = {}
    partition_event: dict[int, "EventT"] = {}
    for event, inc in batch:
        user_event[inc.event.user_id] = event
        partition_event[inc.partition] = event

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
        await pipeline.recs_topic.send(key=rec.user_id.encode(), value=encode(replace(rec, emitted_ts=emitted)))

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
