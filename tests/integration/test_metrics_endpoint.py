"""The worker's monitoring endpoint during an end-to-end run, checked against what was produced.

A real ``recstream worker`` (per-event emission, two partitions, JSON logs) with its
metrics endpoint on a free port: a catalog, valid clicks and reviews from a few users and
invalid records on every input topic go in; once every event has its recommendation,
``/metrics`` must count exactly what went in and out (events by topic, dead letters by
reason, recommendations, latency observations, items and profiles held), the lag of every
input partition must reach zero, ``/health`` and ``/ready`` must answer 200, and the log
must be JSON lines without the review texts.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams import topics as T
from recstream.streams.client import RecommendationWatcher, WorkerProcess, producer, send_records, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click, Review

pytestmark = pytest.mark.integration

DEADLINE_S = 120
PARTITIONS = 2
REVIEW_MARK = "Metrics-test review text 5519"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _by(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def test_metrics_count_what_was_produced_and_health_is_ok(kafka_broker, tmp_path):
    settings = KafkaSettings(broker=kafka_broker, topic_prefix=f"met{uuid.uuid4().hex[:8]}.")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    port = _free_port()
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(
        settings,
        tmp_path / "state",
        "--partitions",
        str(PARTITIONS),
        "--emit",
        "per-event",
        "-k",
        "5",
        "--metrics-port",
        str(port),
        "--log-format",
        "json",
        log_path=log_path,
    )
    prod = producer(settings)
    try:
        worker.start()
        worker.wait_ready()
        now = int(time.time() * 1000)
        catalog = load_catalog(ts=now)
        send_records(prod, settings, catalog)
        prod.send(settings.topic(T.ITEMS), key=b"broken-item", value=b"{not json")
        prod.flush()
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=DEADLINE_S)

        users = [f"mu{uuid.uuid4().hex[:6]}-{n}" for n in range(3)]
        events = [Click(u, f"scifi-{n + 1:02d}", now + n, f"{u}-c{n}") for u in users for n in range(3)]
        events += [
            Review(users[0], "jazz-01", 5.0, f"{REVIEW_MARK}: warm and lovely.", now + 10, f"{users[0]}-r1"),
            Review(users[1], "jazz-02", 2.0, f"{REVIEW_MARK}: too loud.", now + 11, f"{users[1]}-r2"),
        ]
        invalid = [  # (logical topic, key, value, reason code)
            (T.CLICKS, users[0].encode(), b"{not json", "not_json"),
            (T.CLICKS, b"someone-else", orjson.dumps({"user_id": users[0], "item_id": "scifi-01", "ts": now}), "key"),
            (
                T.REVIEWS,
                users[1].encode(),
                orjson.dumps({"user_id": users[1], "item_id": "jazz-01", "rating": 7, "text": f"{REVIEW_MARK}: out of range", "ts": now}),
                "rating",
            ),
            (T.PURCHASES, users[2].encode(), orjson.dumps({"user_id": users[2], "item_id": "scifi-01", "ts": now, "colour": "red"}), "unknown_field"),
        ]
        watcher = RecommendationWatcher(settings)
        try:
            send_records(prod, settings, events)
            for topic, key, value, _ in invalid:
                prod.send(settings.topic(topic), key=key, value=value)
            prod.flush()
            for event in events:
                watcher.wait_event(event.event_id, DEADLINE_S)
        finally:
            watcher.close()

        expected_in = {T.ITEMS: len(catalog) + 1, T.CLICKS: 9 + 2, T.PURCHASES: 1, T.REVIEWS: 2 + 1}
        expected_letters = dict(Counter(reason for *_, reason in invalid)) | {"not_json": 2}  # the broken item too
        input_partitions = {(T.ITEMS, "0")} | {(t, str(p)) for t in T.EVENT_TOPICS for p in range(PARTITIONS)}

        def settled(s) -> bool:
            lag = {(dict(labels)["topic"], dict(labels)["partition"]): v for (n, labels), v in s.items() if n == "recstream_consumer_lag_records"}
            return (
                _by(s, "recstream_events_in_total", "topic") == expected_in
                and _by(s, "recstream_dead_letters_total", "reason") == expected_letters
                and set(lag) == input_partitions
                and not any(lag.values())
                # the broker probe runs every few seconds; its first may predate the producer's bootstrap
                and s.get(("recstream_broker_up", ())) == 1
            )

        deadline = time.monotonic() + DEADLINE_S
        samples = _scrape(port)
        while not settled(samples) and time.monotonic() < deadline:  # offsets are committed every few seconds
            time.sleep(0.5)
            samples = _scrape(port)

        assert _by(samples, "recstream_events_in_total", "topic") == expected_in
        assert _by(samples, "recstream_dead_letters_total", "reason") == expected_letters
        lag = {(dict(labels)["topic"], dict(labels)["partition"]): v for (n, labels), v in samples.items() if n == "recstream_consumer_lag_records"}
        assert lag == {tp: 0 for tp in input_partitions}
        assert samples[("recstream_recommendations_published_total", ())] == len(events)
        assert samples[("recstream_recommendation_latency_seconds_count", ())] == len(events)
        assert 0 < samples[("recstream_recommendation_latency_seconds_sum", ())] < len(events) * DEADLINE_S
        assert samples[("recstream_events_processed_total", (("outcome", "applied"),))] == len(events)
        assert samples[("recstream_items_held", ())] == len(catalog)
        assert samples[("recstream_profiles_held", ())] == len(users)
        assert samples[("recstream_catalog_updates_total", (("op", "upsert"),))] == len(catalog)
        events_consumed = sum(v for t, v in expected_in.items() if t != T.ITEMS)
        assert samples[("recstream_batch_size_records_sum", (("agent", "events"),))] == events_consumed
        assert samples[("recstream_batch_size_records_sum", (("agent", "catalog"),))] == expected_in[T.ITEMS]
        assert samples[("recstream_encoder_batch_seconds_count", (("agent", "catalog"),))] >= 1
        assert samples[("recstream_encoder_batch_seconds_count", (("agent", "events"),))] >= 1  # the reviews
        assert samples[("recstream_scoring_batch_seconds_count", ())] >= 1
        [device] = [dict(labels)["device"] for n, labels in samples if n == "recstream_device_info"]
        assert device == "cpu" or device.startswith("cuda")
        assert samples[("recstream_broker_up", ())] == 1 and samples[("recstream_healthy", ())] == 1
        assert samples[("recstream_last_batch_timestamp_seconds", ())] > now / 1000 - 1

        for path in ("/health", "/ready"):
            status, body = _get(port, path)
            doc = orjson.loads(body)
            assert (status, doc["status"], doc["reasons"], doc["lag"]) == (200, "ok", [], 0), body
            assert doc["broker"]["reachable"] is True
    finally:
        worker.stop()
        prod.close()
        leftover = list(T.list_topics(settings))
        if leftover:
            T.delete_topics(settings, leftover)

    log = log_path.read_text(errors="replace")
    records = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("Ready" in r["message"] for r in records), log[-3000:]
    assert any(r["message"] == f"metrics on http://127.0.0.1:{port}/metrics, health on /health and /ready" for r in records)
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    not_json = [line for line in log.splitlines() if line.strip() and not line.startswith("{")]
    assert not not_json, f"log lines that are not JSON: {not_json[:5]}"
    assert REVIEW_MARK not in log
