"""The agents' failure handling, without a broker: a poison record never loses its batch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from recstream.scoring.engine import Incoming
from recstream.streams.agents import apply_or_isolate
from recstream.streams.agents.events import merge_by_time, received_ms
from recstream.streams.app import Metrics
from recstream.streams.records import Click, Purchase, decode_dead_letter


class FakeTopic:
    def __init__(self):
        self.sent = []


class FakePipeline(SimpleNamespace):
    """What the agents use of a Pipeline: metrics and publish (records what is sent)."""

    async def publish(self, topic, key, value, *, source_topic, source_partition, partition=None):
        topic.sent.append((key, value))


def _entry(offset: int, value: bytes):
    message = SimpleNamespace(topic="clicks", partition=0, offset=offset, key=b"u1", value=value)
    return SimpleNamespace(message=message), offset


def test_a_failing_batch_is_retried_record_by_record_and_only_the_poison_is_dead_lettered():
    pipeline = FakePipeline(metrics=Metrics(), dlq_topic=FakeTopic())
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
    pipeline = FakePipeline(metrics=Metrics(), dlq_topic=FakeTopic())
    calls = []

    async def apply(batch):
        calls.append([offset for _, offset in batch])

    asyncio.run(apply_or_isolate(pipeline, [_entry(i, b"{}") for i in range(3)], apply))
    assert calls == [[0, 1, 2]]
    assert pipeline.dlq_topic.sent == [] and pipeline.metrics.counts["batch_failures"] == 0


def test_a_batch_is_merged_by_event_time_keeping_each_partitions_order():
    def pair(topic, partition, offset, event):
        return SimpleNamespace(name=event.event_id), Incoming(event, topic, partition, offset)

    batch = [
        pair("purchases", 0, 5, Purchase("u", "a", 90, "p5")),
        pair("clicks", 0, 10, Click("u", "a", 100, "c10")),
        pair("clicks", 0, 11, Click("u", "b", 50, "c11")),  # late in its partition: stays after c10
        pair("purchases", 0, 6, Purchase("u", "c", 300, "p6")),  # same time as c12: the click goes first
        pair("clicks", 0, 12, Click("u", "c", 300, "c12")),
        pair("clicks", 1, 7, Click("v", "a", 95, "d7")),
    ]
    merged = [inc.event.event_id for _, inc in merge_by_time(batch)]
    assert merged == ["p5", "d7", "c10", "c11", "c12", "p6"]
    assert sorted(merged) == sorted(inc.event.event_id for _, inc in batch)
    for source in (("clicks", 0), ("purchases", 0)):
        offsets = [inc.offset for _, inc in merge_by_time(batch) if (inc.topic, inc.partition) == source]
        assert offsets == sorted(offsets)


def test_reception_time_comes_from_the_consumers_stamp():
    wall, mono = 1_700_000_000.0, 500.0
    assert received_ms(SimpleNamespace(time_in=499.75), wall, mono) == 1_699_999_999_750
    assert received_ms(SimpleNamespace(time_in=None), wall, mono) == 1_700_000_000_000
    assert received_ms(SimpleNamespace(), wall, mono) == 1_700_000_000_000
