"""The agents' failure handling, without a broker: a poison record never loses its batch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from streams.agents import apply_or_isolate
from streams.app import Metrics
from streams.records import decode_dead_letter


class FakeTopic:
    def __init__(self):
        self.sent = []

    async def send(self, key, value):
        self.sent.append((key, value))


def _entry(offset: int, value: bytes):
    message = SimpleNamespace(topic="clicks", partition=0, offset=offset, key=b"u1", value=value)
    return SimpleNamespace(message=message), offset


def test_a_failing_batch_is_retried_record_by_record_and_only_the_poison_is_dead_lettered():
    pipeline = SimpleNamespace(metrics=Metrics(), dlq_topic=FakeTopic())
    entries = [_entry(i, orjson.dumps({"n": i})) for i in range(5)]
    applied: list[int] = []

    async def apply(batch):
        if any(offset == 3 for _, offset in batch):
            raise RuntimeError("encoder exploded")
        applied.extend(offset for _, offset in batch)

    asyncio.run(apply_or_isolate(pipeline, entries, apply))
    assert applied == [0, 1, 2, 4]
    assert pipeline.metrics.counts["batch_failures"] == 1
    assert pipeline.metrics.dead_letters["processing"] == 1
    [(key, value)] = pipeline.dlq_topic.sent
    letter = decode_dead_letter(value)
    assert key == b"u1" and letter.offset == 3 and letter.original_value() == orjson.dumps({"n": 3})
    assert letter.error == "processing failed: RuntimeError: encoder exploded"


def test_a_healthy_batch_is_applied_once_as_a_whole():
    pipeline = SimpleNamespace(metrics=Metrics(), dlq_topic=FakeTopic())
    calls = []

    async def apply(batch):
        calls.append([offset for _, offset in batch])

    asyncio.run(apply_or_isolate(pipeline, [_entry(i, b"{}") for i in range(3)], apply))
    assert calls == [[0, 1, 2]]
    assert pipeline.dlq_topic.sent == [] and pipeline.metrics.counts["batch_failures"] == 0
