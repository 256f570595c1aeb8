"""Shared fixtures: the real Kafka broker and an isolated topic namespace per test.

Integration tests talk to a real Apache Kafka broker. When one answers at
``RECSTREAM_TEST_BROKER`` (default 127.0.0.1:9092, where ``.ci/run`` and
``recstream kafka start`` put it) the tests use it; otherwise the session starts the
local broker with ``deploy/kafka/kafka.sh`` and stops it at the end. Each test gets its own
topic prefix and application id, so tests never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recstream.streams import localkafka, topics  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """Bootstrap address of a running broker (started here when none answers)."""
    explicit = os.environ.get("RECSTREAM_TEST_BROKER")
    broker = explicit or "127.0.0.1:9092"
    if localkafka.answers(broker):
        yield broker
        return
    if explicit:
        pytest.fail(f"RECSTREAM_TEST_BROKER={explicit} does not answer")
    if localkafka.run("start") != 0:
        pytest.fail("the local Kafka broker did not start (see deploy/kafka/kafka.sh logs)")
    try:
        yield broker
    finally:
        localkafka.run("stop")


@pytest.fixture
def kafka_settings(kafka_broker: str) -> Iterator[KafkaSettings]:
    """A private namespace on the broker: unique topic prefix and app id; topics deleted after."""
    settings = KafkaSettings(broker=kafka_broker, topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    yield settings
    leftovers = list(topics.list_topics(settings))
    if leftovers:
        topics.delete_topics(settings, leftovers)
