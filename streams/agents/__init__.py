"""Faust agents of the pipeline: the catalog (:mod:`.catalog`) and the events (:mod:`.events`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import ValidationError, dead_letter, encode

if TYPE_CHECKING:
    from faust.types import Message

    from ..app import Pipeline


def error_reason(exc: ValidationError) -> str:
    """A short label for metrics: the field that failed, or ``value`` for the whole record."""
    return exc.field or "value"


async def send_dead_letter(pipeline: "Pipeline", message: "Message", error: str, reason: str) -> None:
    """Publish a record that cannot be processed, with ``error`` and its original bytes.

    ``reason`` is a short label for the worker's dead-letter counts (the failing field,
    or ``processing``).
    """
    letter = dead_letter(message.topic, message.partition, message.offset, error, message.key, message.value)
    await pipeline.dlq_topic.send(key=message.key, value=encode(letter))
    pipeline.metrics.dead_letters[reason] += 1


async def reject(pipeline: "Pipeline", message: "Message", exc: ValidationError) -> None:
    """Dead-letter a record that failed validation."""
    await send_dead_letter(pipeline, message, str(exc), error_reason(exc))
