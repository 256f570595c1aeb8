"""`recstream replay`: a time range through an isolated pipeline, the live side untouched."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from recstream.streams import topics as T
from recstream.streams.client import producer, send_records, tail
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog
from recstream.streams.produce import parse_time
from recstream.streams.records import Click, Purchase, decode_dead_letter, decode_recommendation, parse_event
from recstream.streams.replay import copy_range, run_replay

pytestmark = pytest.mark.integration

JAN, FEB, MAR = parse_time("2024-01-10"), parse_time("2024-02-10"), parse_time("2024-03-10")


def _all(settings: KafkaSettings, logical: str):
    consumer = tail(settings, settings.topic(logical))
    end = consumer.end_offsets(list(consumer.assignment()))
    records = []
    try:
        while any(consumer.position(tp) < end[tp] for tp in end):
            for batch in consumer.poll(timeout_ms=1000).values():
                records += batch
    finally:
        consumer.close()
    return records


def _end_offsets(settings: KafkaSettings) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        tps = [TopicPartition(name, p) for name, n in T.list_topics(settings).items() for p in range(n)]
        return consumer.end_offsets(tps)
    finally:
        consumer.close()


@pytest.fixture
def live(kafka_settings):
    T.ensure_topics(kafka_settings, T.topic_specs(kafka_settings, partitions=2))
    users = [f"u{i}" for i in range(6)]
    events = []
    for month, base in (("jan", JAN), ("feb", FEB), ("mar", MAR)):
        for i, user in enumerate(users):
            events.append(Click(user, f"scifi-{i + 1:02d}", base + i, f"{month}-{user}-c"))
            events.append(Purchase(user, f"jazz-{i + 1:02d}", base + 100 + i, f"{month}-{user}-p"))
    prod = producer(kafka_settings)
    send_records(prod, kafka_settings, load_catalog(ts=JAN))
    send_records(prod, kafka_settings, events)
    # an invalid record inside the range: replayed as it is, dead-lettered by the replay worker
    prod.send(kafka_settings.topic(T.CLICKS), key=b"u0", value=b"{broken", timestamp_ms=FEB + 50)
    prod.flush()
    prod.close()
    return kafka_settings, events


def _target(live_settings: KafkaSettings) -> KafkaSettings:
    return KafkaSettings(broker=live_settings.broker, topic_prefix=f"{live_settings.topic_prefix}replay-{uuid.uuid4().hex[:6]}.")


def test_copy_takes_exactly_the_time_range_with_keys_partitions_and_timestamps(live):
    source, events = live
    target = _target(source)
    stats = copy_range(source, target, start_ms=parse_time("2024-02-01"), end_ms=parse_time("2024-03-01"), partitions=2, show_progress=False)
    try:
        feb = [e for e in events if e.event_id.startswith("feb")]
        assert stats.items == len(load_catalog())
        assert stats.events == {"clicks": 7, "purchases": 6, "reviews": 0}  # 6 clicks + the broken record
        originals = {(r.key, r.value): r for logical in T.EVENT_TOPICS for r in _all(source, logical)}
        copied = [r for logical in T.EVENT_TOPICS for r in _all(target, logical)]
        assert len(copied) == 13
        for r in copied:
            original = originals[(r.key, r.value)]
            assert (r.partition, r.timestamp) == (original.partition, original.timestamp)
        valid = {parse_event(r.topic.rsplit(".", 1)[1], r.key, r.value).event_id for r in copied if r.value != b"{broken"}
        assert valid == {e.event_id for e in feb}
    finally:
        T.delete_topics(target, list(T.list_topics(target)))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_replay_runs_an_isolated_worker_and_leaves_the_live_side_untouched(live, guarantee):
    # under exactly-once every transaction's commit markers take offsets on the output
    # topics: the replay must wait for the events answered, not for the topics' offsets
    source, events = live
    target = _target(source)
    before = _end_offsets(source)
    try:
        stats = run_replay(
            source,
            target,
            start_ms=parse_time("2024-02-01"),
            end_ms=parse_time("2024-03-01"),
            partitions=2,
            worker_args=["-k", "5", "--processing-guarantee", guarantee],
            timeout_s=300,
            show_progress=False,
        )
        feb = {e.event_id for e in events if e.event_id.startswith("feb")}
        recs = [decode_recommendation(r.value) for r in _all(target, T.RECOMMENDATIONS)]
        assert {r.trigger.event_id for r in recs} == feb and len(recs) == len(feb)
        assert all(r.trigger.topic.startswith(target.topic_prefix) for r in recs)
        letters = [decode_dead_letter(r.value) for r in _all(target, T.DLQ)]
        assert [letter.original_value() for letter in letters] == [b"{broken"]
        assert (stats.recommendations, stats.dead_letters) == (len(feb), 1)
        # the live side: not one record written, no state of the replay's app
        assert _end_offsets(source) == before
        assert not any(name.startswith(target.app_id) for name in T.list_topics(source))
        # a purchase made in the range is never recommended back to its buyer
        for rec in recs:
            bought = {e.item_id for e in events if isinstance(e, Purchase) and e.user_id == rec.user_id and e.event_id.startswith("feb")}
            if rec.trigger.event_id.endswith("-p"):
                assert not bought & {i.item_id for i in rec.items}
    finally:
        T.delete_topics(target, list(T.list_topics(target)))
