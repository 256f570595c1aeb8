"""`recstream backtest` end to end: produce -> isolated replay worker -> metrics, equal to
the offline computation of the same protocol on the same events."""

from __future__ import annotations

import random

import pytest

from recstream.encoders.text import TextEncoder
from recstream.scoring.backtest import BacktestConfig, run_offline
from recstream.scoring.blend import DEFAULT_WEIGHTS
from recstream.scoring.engine import EngineConfig
from recstream.streams import topics as T
from recstream.streams.app import WorkerConfig  # the worker's defaults: the blend adapts its weights
from recstream.streams.backtest import backtest_replay
from recstream.streams.client import partition_for, producer, read_topic, reader, send_records
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog, topic_of
from recstream.streams.produce import parse_time
from recstream.streams.records import Click
from recstream.streams.replay import run_replay

pytestmark = pytest.mark.integration

START = parse_time("2024-01-01")


def _stream(catalog, seed: int = 3) -> list[Click]:
    """Users who mostly stick to one topic, clicking over ~30 days (one topic: one ordered log per user)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for item in catalog:
        by_topic.setdefault(topic_of(item.item_id), []).append(item.item_id)
    topics = sorted(by_topic)
    events = []
    for u in range(20):
        taste = topics[u % len(topics)]
        ts = START + u * 1000
        for n in range(10):
            pool = by_topic[taste] if rng.random() < 0.85 else by_topic[rng.choice(topics)]
            ts += rng.randint(1, 5) * 86_400_000
            events.append(Click(f"u{u}", rng.choice(pool), ts, f"u{u}-{n}"))
    return sorted(events, key=lambda e: (e.ts, e.user_id))


def test_backtest_through_kafka_equals_the_offline_protocol(kafka_settings):
    catalog = load_catalog(ts=START)
    events = _stream(catalog)
    T.ensure_topics(kafka_settings, T.topic_specs(kafka_settings, partitions=2))
    prod = producer(kafka_settings)
    send_records(prod, kafka_settings, catalog)
    send_records(prod, kafka_settings, events)
    prod.flush()
    prod.close()

    config = BacktestConfig(split_ms=START + 18 * 86_400_000, targets=frozenset({"click"}), ks=(5, 10, 20))
    target = KafkaSettings(broker=kafka_settings.broker, topic_prefix=f"{kafka_settings.topic_prefix}bt.")
    try:
        run_replay(kafka_settings, target, start_ms=None, end_ms=None, partitions=2, worker_args=["-k", "20"], timeout_s=300, show_progress=False)
        via_kafka, contents = backtest_replay(target, config)
    finally:
        T.delete_topics(target, list(T.list_topics(target)))
    assert len(contents.events) == len(events) and len(contents.recommendations) == len(events)

    # the worker's default ranker, the blend, in event-time order over both partitions (its
    # weights adapted per partition: the users keyed as the topics key them)
    offline = run_offline(
        events,
        catalog,
        config,
        encoder=TextEncoder(),
        engine_config=EngineConfig(k=20, emit="per-event", blend=DEFAULT_WEIGHTS, adapt=WorkerConfig().adapt_config),
        partition_of=lambda user: partition_for(user.encode(), 2),
    )
    assert via_kafka.counts == offline.counts
    assert via_kafka.counts["cases"] > 20
    for method in ("recstream", "popularity", "item-knn"):
        kafka_metrics, offline_metrics = via_kafka.metrics(method), offline.metrics(method)
        assert kafka_metrics.keys() == offline_metrics.keys()
        for key, value in offline_metrics.items():
            assert kafka_metrics[key] == pytest.approx(value, abs=1e-9), (method, key)
    # users stick to a topic: the default ranker beats popularity on this stream
    assert via_kafka.metrics("recstream")["hit_rate@5"] > via_kafka.metrics("popularity")["hit_rate@5"]


@pytest.mark.slow
def test_a_replay_through_two_workers_in_step_answers_every_event(kafka_settings):
    # `backtest --workers 2`: the workers keep in step (--max-skew-ms 0, each holding its
    # events until the other's partition has caught up or gone quiet), and neither waits
    # forever: at the end of the range, or while the other starts, nothing holds them back
    catalog = load_catalog(ts=START)
    events = _stream(catalog, seed=5)
    T.ensure_topics(kafka_settings, T.topic_specs(kafka_settings, partitions=2))
    prod = producer(kafka_settings)
    send_records(prod, kafka_settings, catalog)
    send_records(prod, kafka_settings, events)
    prod.flush()
    prod.close()

    config = BacktestConfig(split_ms=START + 18 * 86_400_000, targets=frozenset({"click"}), ks=(10,))
    target = KafkaSettings(broker=kafka_settings.broker, topic_prefix=f"{kafka_settings.topic_prefix}bt2.")
    try:
        stats = run_replay(
            kafka_settings, target, start_ms=None, end_ms=None, partitions=2, workers=2, worker_args=["-k", "20"], timeout_s=300, show_progress=False
        )
        via_kafka, contents = backtest_replay(target, config)
        consumer = reader(target)
        try:  # the last progress row of each partition (its key "<partition>:") and its timestamp
            progress = {r.key.decode(): r.timestamp for r in read_topic(consumer, target.changelog(T.POPULARITY_TABLE)) if r.key.endswith(b":")}
        finally:
            consumer.close()
    finally:
        T.delete_topics(target, list(T.list_topics(target)))
    assert stats.recommendations == len(events) and stats.dead_letters == 0
    # each partition's progress row says how far its worker got: past the partition's last event
    assert progress.keys() == {"0:", "1:"}
    for p in (0, 1):
        assert progress[f"{p}:"] >= max(e.ts for e in events if partition_for(e.user_id.encode(), 2) == p)
    assert len(contents.recommendations) == len(events)
    assert {rec.model.split("/")[0] for rec in contents.recommendations} <= {"blend", "popularity"}
    assert via_kafka.metrics("recstream")["hit_rate@10"] > via_kafka.metrics("popularity")["hit_rate@10"]
