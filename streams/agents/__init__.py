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


async def send_dead_letter(pipeline: "Pipeline", message: "Message", exc: ValidationError) -> None:
    """Publish a record that failed validation, with the reason and its original bytes."""
    letter = dead_letter(message.topic, message.partition, message.offset, str(exc), message.key, message.value)
    await pipeline.dlq_topic.send(key=message.key, value=encode(letter))
    pipeline.metrics.dead_letters[error_reason(exc)] += 1
