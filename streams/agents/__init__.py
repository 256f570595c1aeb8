"""Faust agents of the pipeline: the catalog (:mod:`.catalog`) and the events (:mod:`.events`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from ..metrics import reason_code
from ..records import ValidationError, dead_letter, encode

log = logging.getLogger("recstream.agents")

if TYPE_CHECKING:
    from faust.types import EventT, Message

    from ..app import Pipeline


def error_reason(exc: ValidationError) -> str:
    """A short label for metrics: the contract field that failed, or a code for the whole
    record (a bounded set, :data:`streams.metrics.REASON_CODES`, never text from the input)."""
    return reason_code(exc)


async def send_dead_letter(pipeline: "Pipeline", message: "Message", error: str, reason: str) -> None:
    """Publish a record that cannot be processed, with ``error`` and its original bytes.

    ``reason`` is a short label for the worker's dead-letter counts (:func:`error_reason`,
    or ``processing``).
    """
    letter = dead_letter(message.topic, message.partition, message.offset, error, message.key, message.value)
    await pipeline.publish(pipeline.dlq_topic, message.key, encode(letter), source_topic=message.topic, source_partition=message.partition, partition=0)
    pipeline.metrics.dead_letters[reason] += 1


async def reject(pipeline: "Pipeline", message: "Message", exc: ValidationError) -> None:
    """Dead-letter a record that failed validation."""
    await send_dead_letter(pipeline, message, str(exc), error_reason(exc))


async def apply_or_isolate(
    pipeline: "Pipeline",
    entries: Sequence[tuple["EventT", Any]],
    apply: Callable[[Sequence[tuple["EventT", Any]]], Awaitable[None]],
) -> None:
    """Apply a micro-batch; if it fails, retry its records one by one and dead-letter the
    records that fail on their own, so one poison record never loses the rest.

    Profiles remember the offsets they applied, so a retried event is not applied twice.
    """
    try:
        await apply(entries)
    except Exception:
        log.exception("a micro-batch of %d records failed; retrying them one by one", len(entries))
        pipeline.metrics.counts["batch_failures"] += 1
        for entry in entries:
            try:
                await apply([entry])
            except Exception as exc:
                message = entry[0].message
                log.exception("record %s@%d:%d failed on its own; dead-lettered", message.topic, message.partition, message.offset)
                await send_dead_letter(pipeline, message, f"processing failed: {type(exc).__name__}: {exc}", "processing")
