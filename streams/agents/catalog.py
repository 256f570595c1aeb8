"""The catalog agent: item records in, embeddings in the ``item-embeddings`` table out.

Micro-batches of ``items`` records (:func:`~.batching.take_batches`) are validated, reduced to the
latest record per item, and every upserted item's text is embedded in one batched forward
pass. Embeddings go to the global table (RocksDB + changelog, replicated to every worker)
and to the in-memory item matrix; tombstones remove the item from both.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence, cast

from recstream.encoders.text import item_text

from ..records import Item, ItemDeleted, ValidationError, parse_item
from ..state import StoredItem, as_event, encode_item
from . import apply_or_isolate, reject
from .batching import take_batches

if TYPE_CHECKING:
    import numpy as np
    from faust.types import EventT

    from ..app import Pipeline

log = logging.getLogger("recstream.catalog")


async def handle_catalog_batch(pipeline: "Pipeline", events: Sequence["EventT"]) -> None:
    latest: dict[str, tuple["EventT", Item | ItemDeleted]] = {}
    for event in events:
        message = event.message
        try:
            record = parse_item(message.key, message.value)
        except ValidationError as exc:
            await reject(pipeline, message, exc)
            continue
        latest.pop(record.item_id, None)  # keep arrival order of the last update
        latest[record.item_id] = (event, record)
    entries = list(latest.values())
    if not entries:
        return
    await apply_or_isolate(pipeline, entries, lambda batch: apply_catalog(pipeline, batch))


async def apply_catalog(pipeline: "Pipeline", entries: Sequence[tuple["EventT", Item | ItemDeleted]]) -> None:
    """Embed the upserted items in one forward pass; write table and matrix; apply deletes."""
    upserts = [(ev, rec) for ev, rec in entries if isinstance(rec, Item)]
    deletes = [(ev, rec) for ev, rec in entries if isinstance(rec, ItemDeleted)]
    fields = pipeline.config.item_fields
    texts = [item_text(rec.title, rec.categories, rec.description, fields=fields) for _, rec in upserts]
    started = time.perf_counter()
    vectors = await pipeline.compute(pipeline.encoder.encode_numpy, texts) if texts else None
    if texts:
        pipeline.telemetry.on_encoded("catalog", time.perf_counter() - started)
    table = pipeline.items_table
    stored = []
    for i, (event, rec) in enumerate(upserts):
        vector = cast("np.ndarray", vectors)[i]  # not None: there are upserts, so texts were encoded
        with as_event(event):
            table[rec.item_id.encode()] = encode_item(rec.title, rec.categories, vector)
        stored.append(StoredItem(rec.item_id, rec.title, rec.categories, vector))
    for event, gone in deletes:
        key = gone.item_id.encode()
        with as_event(event):
            if key in table:
                del table[key]
    await pipeline.compute(pipeline.apply_items, stored, [rec.item_id for _, rec in deletes])
    pipeline.metrics.counts["items_upserted"] += len(upserts)
    pipeline.metrics.counts["items_deleted"] += len(deletes)
    if upserts or deletes:
        log.debug("catalog batch: %d upserts, %d deletes, %d items held", len(upserts), len(deletes), len(pipeline.matrix))


def register(pipeline: "Pipeline") -> None:
    config = pipeline.config

    @pipeline.app.agent(pipeline.items_topic, name="recstream.catalog")
    async def catalog(stream):  # pragma: no cover - exercised end to end
        async for events in take_batches(stream, config.catalog_batch_max, linger_s=config.batch_within_s):
            await handle_catalog_batch(pipeline, events)
            pipeline.telemetry.on_batch("catalog", events)
