"""The worker's logs: JSON lines by option, never a secret, never a review text."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import orjson
import pytest

from recstream.streams.agents import apply_or_isolate
from recstream.streams.agents.events import handle_event_batch
from recstream.streams.app import Metrics
from recstream.streams.logs import JsonFormatter, Redactor, install, redact

PASSWORD = "hunter2-Pa55word"
REVIEW = "My grandmother loved this teapot, personal detail 7731"


@dataclass
class Settings:
    broker: str = "kafka:9096"
    sasl_username: str = "recstream"
    sasl_password: str = PASSWORD
    ssl_keyfile_password: str = PASSWORD
    ssl_cafile: str = "/etc/ssl/ca.pem"
    extra: dict = field(default_factory=lambda: {"sasl_plain_password": PASSWORD})


@pytest.fixture
def captured():
    """A logger whose one handler writes JSON lines through :func:`install`."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test-logs-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler(stream))
    install("json", logger)
    yield logger, stream
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_extra_fields(captured):
    logger, stream = captured
    logger.info("batch of %d events", 12, extra={"partition": 3, "topic": "clicks"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    first, second = lines(stream)
    assert first["level"] == "INFO" and first["logger"] == logger.name and first["message"] == "batch of 12 events"
    assert first["partition"] == 3 and first["topic"] == "clicks"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]


def test_secrets_never_reach_the_output(captured):
    logger, stream = captured
    s = Settings()
    logger.info("connecting with %r", s)
    logger.info("connecting with %s", s.__dict__)
    logger.warning("kafka %(sasl_password)s", {"sasl_password": PASSWORD})
    logger.info("auth", extra={"sasl_password": PASSWORD, "ssl_password": PASSWORD})
    logger.info('{"sasl_password": "%s"} and password=%s', PASSWORD, PASSWORD)
    try:
        raise ValueError(f"login failed for sasl_password='{PASSWORD}'")
    except ValueError:
        logger.exception("auth failed")
    out = stream.getvalue()
    assert PASSWORD not in out
    assert out.count("***") >= 8
    assert "/etc/ssl/ca.pem" in out and "recstream" in out  # not secrets: kept


def test_review_texts_and_raw_record_bytes_never_reach_the_output(captured):
    logger, stream = captured
    value = orjson.dumps({"user_id": "u", "item_id": "i", "rating": 5, "text": REVIEW, "ts": 1})
    # aiokafka's debug line for every record it produces (a dead letter carries the original value)
    logger.debug("Sending (key=%s value=%s) to %s", b"u", value, "TopicPartition(topic='dlq', partition=0)")
    logger.info("record %s", value.decode())
    logger.info("record %r", SimpleNamespace(user_id="u", text=REVIEW))
    letter = orjson.dumps({"topic": "reviews", "value": value.decode(), "error": "rating: must be between 1 and 5"}).decode()
    logger.info("dead letter %s", letter)
    logger.info("event", extra={"text": REVIEW})
    out = stream.getvalue()
    assert "personal detail" not in out
    assert f"<{len(value)} bytes>" in out


def test_text_logs_through_fausts_own_formatter_are_unchanged():
    """In text mode the handlers keep the formatter Faust (mode) installs, which re-formats
    the arguments of every record: redacted records must still come out whole."""
    from mode.utils.logging import ExtensionFormatter

    stream = io.StringIO()
    logger = logging.getLogger("test-logs-mode")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExtensionFormatter(stream=stream, fmt="%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        install("text", logger)
        logger.info("[^Worker]: Ready")
        logger.info("batch of %d events, %s", 12, "ok")
        logger.warning("100%% of %(what)s", {"what": "partitions"})
        logger.info("password=%s", PASSWORD)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "INFO [^Worker]: Ready",
        "INFO batch of 12 events, ok",
        "WARNING 100% of partitions",
        "INFO password=***",
    ]


def test_redaction_keeps_ordinary_messages_intact():
    text = "events 12 (applied 12, duplicates 0), batches 3; 50 items, 2 partitions held; context: texts encoded 4"
    assert redact(text) == text


def test_install_is_idempotent_and_text_mode_keeps_the_formatter():
    logger = logging.getLogger("test-logs-install")
    handler = logging.StreamHandler(io.StringIO())
    formatter = logging.Formatter("%(message)s")
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    try:
        install("text", logger)
        install("text", logger)
        assert [type(f) for f in handler.filters] == [Redactor] and handler.formatter is formatter
        install("json", logger)
        assert isinstance(handler.formatter, JsonFormatter) and len(handler.filters) == 1
        with pytest.raises(ValueError, match="log format"):
            install("xml", logger)
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- recstream's own paths


class FakeTopic:
    def __init__(self):
        self.sent = []


class FakePipeline(SimpleNamespace):
    async def publish(self, topic, key, value, *, source_topic, source_partition, partition=None):
        topic.sent.append((key, value))


def _event(offset: int, value: bytes, topic: str = "p.reviews"):
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"u", value=value))


def test_dead_lettering_and_failing_batches_log_no_review_text(caplog):
    """Invalid reviews (whose errors quote the text) and a batch that fails in the encoder:
    the reasons go to the dead-letter topic, and nothing of the text to the log."""
    pipeline = FakePipeline(metrics=Metrics(), dlq_topic=FakeTopic(), event_topic_names={"p.reviews": "reviews"})
    bad = [
        orjson.dumps({"user_id": "u", "item_id": "i", "rating": 9, "text": REVIEW, "ts": 1}),
        orjson.dumps({"user_id": "u", "item_id": "i", "rating": 4, "text": REVIEW * 400, "ts": 1}),  # too long
        orjson.dumps({"user_id": "u", "item_id": "i", "rating": 4, "text": REVIEW, "ts": 1, REVIEW: 1}),  # unknown field
        orjson.dumps({"user_id": "u", "item_id": "i", "rating": 4, "text": 42, "comment": REVIEW, "ts": 1}),
    ]
    with caplog.at_level(logging.DEBUG):
        asyncio.run(handle_event_batch(pipeline, [_event(i, v) for i, v in enumerate(bad)]))

        async def apply(batch):
            raise RuntimeError("encoder exploded")

        entries = [(_event(10 + i, orjson.dumps({"text": REVIEW})), None) for i in range(2)]
        asyncio.run(apply_or_isolate(pipeline, entries, apply))
    assert len(pipeline.dlq_topic.sent) == len(bad) + 2
    assert any(REVIEW in v.decode() for _, v in pipeline.dlq_topic.sent)  # the letters keep the original
    assert "micro-batch of 2 records failed" in caplog.text
    assert "personal detail" not in caplog.text
    for record in caplog.records:
        assert "personal detail" not in record.getMessage()
        assert "personal detail" not in (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
    assert dict(pipeline.metrics.dead_letters) == {"rating": 1, "text": 1, "unknown_field": 2, "processing": 2}
