"""The local broker and the topic contract, against the real Apache Kafka broker.

Produces with kafka-python and with Kafka's own console producer, consumes with
kafka-python and aiokafka (the client under Faust), and checks keys, values, timestamps
and that every client puts one user's records in the same partition.
"""

from __future__ import annotations

import subprocess
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner.default import murmur2

from recstream.streams import localkafka, topics
from recstream.streams.config import KafkaSettings

pytestmark = pytest.mark.integration

USERS = [f"user-{i}" for i in range(40)]


def _expected_partition(key: str, partitions: int) -> int:
    # Kafka's default partitioner for keyed records (the Java client's, too)
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _clicks(n: int) -> list[tuple[str, dict]]:
    return [
        (user, {"user_id": user, "item_id": f"item-{i % 7}", "ts": 1_600_000_000_000 + i, "event_id": f"e{i}"})
        for i, user in enumerate(USERS[j % len(USERS)] for j in range(n))
    ]


def _consume_all(settings: KafkaSettings, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def test_status_reports_the_running_broker(kafka_broker):
    port = int(kafka_broker.rpartition(":")[2])
    assert localkafka.run("status", port=port) == 0
    # a port where nothing runs is reported as not running (LSB status code 3)
    assert localkafka.run("status", port=port + 100) == 3


def test_starting_twice_is_harmless(kafka_broker):
    port = int(kafka_broker.rpartition(":")[2])
    assert localkafka.run("start", port=port) == 0
    assert localkafka.run("status", port=port) == 0


def test_topic_creation_is_idempotent_and_reports_mismatches(kafka_settings):
    specs = topics.topic_specs(kafka_settings, partitions=3)
    first = topics.ensure_topics(kafka_settings, specs)
    assert {s.outcome for s in first} == {"created"}
    second = topics.ensure_topics(kafka_settings, specs)
    assert {s.outcome for s in second} == {"exists"}
    present = topics.list_topics(kafka_settings)
    assert {s.name for s in specs} <= set(present)
    assert present[kafka_settings.topic("clicks")] == 3
    other = topics.ensure_topics(kafka_settings, topics.topic_specs(kafka_settings, partitions=5))
    mismatched = {s.name for s in other if s.outcome == "mismatch"}
    assert kafka_settings.topic("clicks") in mismatched
    assert kafka_settings.topic(topics.DLQ) not in mismatched  # always one partition
    assert kafka_settings.topic(topics.ITEMS) not in mismatched


def test_prefixes_isolate_deployments(kafka_broker, kafka_settings):
    topics.ensure_topics(kafka_settings, topics.topic_specs(kafka_settings, partitions=1))
    other = KafkaSettings(broker=kafka_broker, topic_prefix=f"o{uuid.uuid4().hex[:8]}.")
    assert topics.list_topics(other) == {}


def test_kafka_python_round_trip_keeps_keys_values_timestamps_and_partitions(kafka_settings):
    partitions = 4
    topics.ensure_topics(kafka_settings, topics.topic_specs(kafka_settings, partitions=partitions))
    topic = kafka_settings.topic("clicks")
    sent = _clicks(200)
    producer = KafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers, acks="all")
    for user, value in sent:
        producer.send(topic, key=user.encode(), value=orjson.dumps(value), timestamp_ms=value["ts"])
    producer.flush()
    producer.close()

    got = _consume_all(kafka_settings, topic, len(sent))
    assert len(got) == len(sent)
    by_event = {orjson.loads(r.value)["event_id"]: r for r in got}
    for user, value in sent:
        record = by_event[value["event_id"]]
        assert record.key == user.encode()
        assert orjson.loads(record.value) == value
        assert record.timestamp == value["ts"]
        assert record.partition == _expected_partition(user, partitions)
    # per-partition order is the send order
    for p in range(partitions):
        ts = [r.timestamp for r in got if r.partition == p]
        assert ts == sorted(ts)


async def test_aiokafka_reads_what_kafka_python_wrote(kafka_settings):
    topics.ensure_topics(kafka_settings, topics.topic_specs(kafka_settings, partitions=2))
    topic = kafka_settings.topic("purchases")
    sent = _clicks(50)
    producer = KafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    for user, value in sent:
        producer.send(topic, key=user.encode(), value=orjson.dumps(value), timestamp_ms=value["ts"])
    producer.flush()
    producer.close()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=",".join(kafka_settings.bootstrap_servers),
        group_id=f"{kafka_settings.app_id}-probe",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got = []
    try:
        for _ in range(30):
            batch = await consumer.getmany(timeout_ms=1000)
            got += [r for records in batch.values() for r in records]
            if len(got) >= len(sent):
                break
    finally:
        await consumer.stop()
    assert sorted((r.key, r.value, r.timestamp) for r in got) == sorted((u.encode(), orjson.dumps(v), v["ts"]) for u, v in sent)
    assert all(r.partition == _expected_partition(r.key.decode(), 2) for r in got)


def test_kafka_console_producer_partitions_users_like_python_clients(kafka_settings):
    """Users can produce with Kafka's own tools: same partition per user as the Python clients."""
    topics.ensure_topics(kafka_settings, topics.topic_specs(kafka_settings, partitions=4))
    topic = kafka_settings.topic("clicks")
    sent = _clicks(20)
    lines = "".join(f"{user}\t{orjson.dumps(value).decode()}\n" for user, value in sent)
    classpath = subprocess.run(["bash", str(localkafka.script_path()), "classpath"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(
        [
            "java",
            "-Xmx256m",
            "-cp",
            classpath,
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            ",".join(kafka_settings.bootstrap_servers),
            "--topic",
            topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=\t",
        ],
        input=lines,
        text=True,
        check=True,
        timeout=120,
        capture_output=True,
    )
    got = _consume_all(kafka_settings, topic, len(sent))
    assert sorted(orjson.loads(r.value)["event_id"] for r in got) == sorted(v["event_id"] for _, v in sent)
    assert all(r.partition == _expected_partition(r.key.decode(), 4) for r in got)
