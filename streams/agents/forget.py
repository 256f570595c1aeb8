"""Forget requests: a user's profile and latest recommendations deleted, everywhere.

A :class:`streams.records.Forget` record arrives on an event topic keyed by the user (so
the worker holding the user's partition applies it, in order with the user's events, in
the micro-batch's transaction under exactly-once).  Applying it:

* deletes the user's ``profiles`` row (the profile vector, the recent history, the
  purchased items, the applied offsets) and ``latest-recommendations`` row (the last list
  sent) from the local stores, and writes a tombstone for each to their changelogs, so a
  restarted or rebalanced worker does not restore them and compaction removes the old
  values from the changelog topics;
* drops what the engine holds about the user in memory (:func:`scoring.forget.forget_user`).

What remains is aggregate (docs/api.md, "Forgetting a user"): popularity counts,
co-occurrence rows, adaptive weights and live-quality totals, which the user's past events
contributed to; and the input and ``recommendations`` topics, which are append-only streams
that age out with their retention.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from recstream.scoring.forget import forget_user

if TYPE_CHECKING:
    from faust.types import EventT

    from ..app import Pipeline
    from ..records import Forget

log = logging.getLogger("recstream.events")


async def apply_forget(pipeline: "Pipeline", batch: Sequence[tuple["EventT", "Forget"]]) -> None:
    deletes: dict[int, list[bytes]] = {}
    events: dict[int, "EventT"] = {}
    for event, forget in batch:
        partition = event.message.partition
        deletes.setdefault(partition, []).append(forget.user_id.encode())
        events[partition] = event
    await pipeline.delete_table_keys(pipeline.profiles, deletes, events)
    await pipeline.delete_table_keys(pipeline.latest_table, deletes, events)
    for _, forget in batch:
        await pipeline.compute(forget_user, pipeline.engine, forget.user_id)
    for event, forget in batch:
        pipeline.metrics.counts["forgotten"] += 1
        # the user id is not logged: the log would keep what the request removes
        log.info("forgot a user: request %s at %s[%d]@%d", forget.request_id or "(no id)", event.message.topic, event.message.partition, event.message.offset)
