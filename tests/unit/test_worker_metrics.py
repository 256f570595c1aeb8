"""The worker's Prometheus metrics, health verdict and monitoring endpoint, without a broker."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from faust.types import TP
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from recstream.scoring.engine import BatchResult, BatchStats
from recstream.streams import metrics as M
from recstream.streams.app import WorkerConfig
from recstream.streams.cli import build_parser, worker_config
from recstream.streams.records import Recommendation, Trigger, ValidationError, parse_event, parse_item

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_760_000_000_000
TOPICS = {"p.items": "items", "p.clicks": "clicks", "p.purchases": "purchases", "p.reviews": "reviews"}


def samples(metrics: M.WorkerMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def reason_of(kind: str, key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(ValidationError) as info:
        if kind == "items":
            parse_item(key, value, now_ms=NOW)
        else:
            parse_event(kind, key, value, now_ms=NOW)
    return M.reason_code(info.value)


# --------------------------------------------------------------------------- dead-letter reasons


@pytest.mark.parametrize(
    "kind, key, value, code",
    [
        ("clicks", b"u", b"{not json", "not_json"),
        ("clicks", b"u", b"\xff\xfe binary", "not_utf8"),
        ("clicks", b"u", b"[1, 2]", "not_object"),
        ("clicks", b"u", None, "null_value"),
        ("clicks", b"u", b"{" + b" " * 1_000_001 + b"}", "too_large"),
        ("clicks", None, orjson.dumps({"user_id": "u", "item_id": "i", "ts": NOW}), "key"),
        ("clicks", b"someone-else", orjson.dumps({"user_id": "u", "item_id": "i", "ts": NOW}), "key"),
        ("clicks", b"u", orjson.dumps({"user_id": "u", "item_id": 42, "ts": NOW}), "item_id"),
        ("clicks", b"u", orjson.dumps({"user_id": "u", "item_id": "i"}), "ts"),
        ("reviews", b"u", orjson.dumps({"user_id": "u", "item_id": "i", "rating": 7, "text": "ok", "ts": NOW}), "rating"),
        ("reviews", b"u", orjson.dumps({"user_id": "u", "item_id": "i", "rating": 4, "text": "x" * 20_001, "ts": NOW}), "text"),
        ("purchases", b"u", orjson.dumps({"user_id": "u", "item_id": "i", "ts": NOW, "quantity": -1}), "quantity"),
        ("items", b"i", orjson.dumps({"item_id": "i", "title": "T", "description": "", "categories": ["a", 3], "ts": NOW}), "categories"),
    ],
)
def test_dead_letter_reasons_are_short_codes_naming_the_field(kind, key, value, code):
    assert reason_of(kind, key, value) == code
    assert code in M.REASON_CODES


def test_a_field_name_chosen_by_the_sender_never_becomes_a_label_value():
    codes = {
        reason_of("clicks", b"u", orjson.dumps({"user_id": "u", "item_id": "i", "ts": NOW, name: 1})) for name in ("colour", "x" * 200, "user_id_2", "ts\u00e9")
    }
    assert codes == {"unknown_field"}


def test_contract_fields_are_the_fields_of_the_input_schemas():
    fields = set()
    for topic in ("items", "clicks", "purchases", "reviews"):
        fields |= set(json.loads((ROOT / "streams" / "schemas" / f"{topic}.schema.json").read_text())["properties"])
    assert M.CONTRACT_FIELDS == fields


# --------------------------------------------------------------------------- metrics


def _events(*topics: str):
    return [SimpleNamespace(message=SimpleNamespace(topic=t)) for t in topics]


def _rec(user: str, topic: str, partition: int, offset: int) -> Recommendation:
    return Recommendation(user_id=user, items=(), trigger=Trigger(topic, partition, offset, f"e{offset}"), event_ts=NOW, emitted_ts=0, model="m/decayed-sum")


def test_batches_count_events_in_by_logical_topic_and_batch_sizes():
    m = M.WorkerMetrics(topics=TOPICS)
    m.on_batch("events", _events("p.clicks", "p.clicks", "p.reviews"))
    m.on_batch("events", _events("p.clicks"))
    m.on_batch("catalog", _events(*["p.items"] * 50))
    s = samples(m)
    assert s[("recstream_events_in_total", (("topic", "clicks"),))] == 3
    assert s[("recstream_events_in_total", (("topic", "reviews"),))] == 1
    assert s[("recstream_events_in_total", (("topic", "purchases"),))] == 0  # present from the start
    assert s[("recstream_events_in_total", (("topic", "items"),))] == 50
    assert s[("recstream_batch_size_records_count", (("agent", "events"),))] == 2
    assert s[("recstream_batch_size_records_sum", (("agent", "events"),))] == 4
    assert s[("recstream_batch_size_records_bucket", (("agent", "catalog"), ("le", "50.0")))] == 1
    assert s[("recstream_batch_size_records_bucket", (("agent", "catalog"), ("le", "20.0")))] == 0
    assert m.last_batch_wall > 0 and m.last_progress is not None


def test_an_events_batch_records_latency_per_recommendation_times_and_new_profiles():
    m = M.WorkerMetrics(topics=TOPICS)
    emitted = NOW + 1000
    recs = [_rec("a", "p.clicks", 0, 1), _rec("b", "p.clicks", 0, 2), _rec("c", "p.reviews", 1, 7)]
    received = {("p.clicks", 0, 1): NOW, ("p.clicks", 0, 2): NOW + 990, ("p.reviews", 1, 7): NOW + 1000}
    result = BatchResult(
        recommendations=recs, profiles={"a": object(), "b": object(), "c": object()}, stats=BatchStats(events=3, texts_encoded=1, encode_s=0.2, score_s=0.004)
    )
    m.on_event_batch(result, {"a": object()}, received, emitted)  # a had a profile: b and c are new
    m.on_event_batch(BatchResult(recommendations=[], profiles={}, stats=BatchStats(score_s=0.001)), {}, {}, emitted)
    s = samples(m)
    latency = "recstream_recommendation_latency_seconds"
    assert s[(latency + "_count", ())] == 3
    assert s[(latency + "_sum", ())] == pytest.approx(1.0 + 0.01 + 0.0)
    assert s[(latency + "_bucket", (("le", "0.005"),))] == 1  # the 0 ms one
    assert s[(latency + "_bucket", (("le", "0.01"),))] == 2  # a bound is inclusive
    assert s[(latency + "_bucket", (("le", "1.0"),))] == 3
    assert s[("recstream_scoring_batch_seconds_count", ())] == 2
    # encoder time only for batches that encoded texts
    assert s[("recstream_encoder_batch_seconds_count", (("agent", "events"),))] == 1
    assert s[("recstream_encoder_batch_seconds_sum", (("agent", "events"),))] == pytest.approx(0.2)
    assert s[("recstream_profiles_held", ())] == 2


def test_a_batch_histogram_matches_prometheus_clients_histogram():
    values = [0.0, 0.005, 0.0051, 0.3, 2.5, 7, 299.9, 300, 301, 1e6]
    ours = M.BatchHistogram("x_seconds", "x", M.LATENCY_BUCKETS)
    ours.observe_many(values[:4])
    ours.observe_many(values[4:])
    ours.observe_many([])
    reference = Histogram("x_seconds", "x", buckets=M.LATENCY_BUCKETS, registry=None)
    for v in values:
        reference.observe(v)
    expected = {(s.name, s.labels.get("le")): s.value for s in next(iter(reference.collect())).samples if not s.name.endswith("_created")}
    got = {(s.name, s.labels.get("le")): s.value for s in next(iter(ours.collect())).samples}
    assert got == expected


def test_state_read_when_scraped():
    state = M.WorkerState(
        dead_letters={"rating": 2, "not_json": 1},
        counts={"recommendations": 12, "applied": 11, "duplicates": 1},
        items_held=50,
        lag={("clicks", 0): 0, ("clicks", 1): 4},
        broker_up=True,
        healthy=False,
    )
    m = M.WorkerMetrics(
        topics=TOPICS, state=lambda: state, device="cuda:0", device_name="NVIDIA H200", info={"version": "0.1.0", "model": "all-MiniLM-L6-v2/decayed-sum"}
    )
    s = samples(m)
    assert s[("recstream_dead_letters_total", (("reason", "rating"),))] == 2
    assert s[("recstream_dead_letters_total", (("reason", "not_json"),))] == 1
    assert s[("recstream_recommendations_published_total", ())] == 12
    assert s[("recstream_events_processed_total", (("outcome", "duplicate"),))] == 1
    assert s[("recstream_items_held", ())] == 50
    assert s[("recstream_consumer_lag_records", (("partition", "1"), ("topic", "clicks")))] == 4
    assert s[("recstream_broker_up", ())] == 1 and s[("recstream_healthy", ())] == 0
    assert s[("recstream_device_info", (("device", "cuda:0"), ("name", "NVIDIA H200")))] == 1
    assert s[("recstream_worker_info", (("model", "all-MiniLM-L6-v2/decayed-sum"), ("version", "0.1.0")))] == 1


def test_two_workers_in_one_process_keep_separate_registries():
    a, b = M.WorkerMetrics(topics=TOPICS), M.WorkerMetrics(topics=TOPICS)
    a.on_batch("events", _events("p.clicks"))
    assert samples(a)[("recstream_events_in_total", (("topic", "clicks"),))] == 1
    assert samples(b)[("recstream_events_in_total", (("topic", "clicks"),))] == 0


def test_every_metric_name_the_dashboard_uses_exists():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "recstream-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    used: set[str] = set()

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", ()):
                assert target["datasource"]["uid"] == "${datasource}"
                used.update(re.findall(r"\brecstream_[a-z0-9_]+", target["expr"]))
            walk(panel.get("panels", ()))

    walk(dashboard["panels"])
    state = M.WorkerState(
        dead_letters={"rating": 1}, lag={("clicks", 0): 0}, broker_up=True, healthy=True, blend_weights={0: ((0.4, 0.5, 0.1), 0)}
    )  # exported while the blend adapts its weights
    known = M.WorkerMetrics(topics=TOPICS, state=lambda: state).metric_names()
    assert used, "the dashboard queries no recstream metric"
    assert used <= known, f"not exported: {sorted(used - known)}"
    for needed in (
        "recstream_events_in_total",
        "recstream_dead_letters_total",
        "recstream_batch_size_records_bucket",
        "recstream_encoder_batch_seconds_bucket",
        "recstream_scoring_batch_seconds_bucket",
        "recstream_recommendation_latency_seconds_bucket",
        "recstream_consumer_lag_records",
        "recstream_items_held",
        "recstream_profiles_held",
        "recstream_device_info",
    ):
        assert needed in used, f"no panel on {needed}"


# --------------------------------------------------------------------------- health


POLICY = M.HealthPolicy(stall_timeout_s=60, broker_grace_s=30)


def test_a_starting_worker_is_healthy_until_the_broker_grace_runs_out():
    h = M.HealthMonitor(POLICY, now=100)
    verdict = h.evaluate(110, lag=500, last_progress=None)
    assert (verdict.healthy, verdict.status) == (True, "starting")
    h.broker_probed(125, "KafkaConnectionError: Connection refused")
    verdict = h.evaluate(131, lag=0, last_progress=None)
    assert not verdict.healthy and verdict.status == "unhealthy"
    [reason] = verdict.reasons
    assert "broker unreachable for 31s (never reached)" in reason and "Connection refused" in reason


def test_the_broker_lost_for_longer_than_the_grace_is_unhealthy_and_recovers():
    h = M.HealthMonitor(POLICY, now=0)
    h.mark_started(5)
    h.broker_probed(10, None)
    assert h.evaluate(39, lag=0, last_progress=None).healthy  # 29 s without an answer: within the grace
    h.broker_probed(20, "no metadata answer within 10s")
    verdict = h.evaluate(41, lag=0, last_progress=None)
    assert not verdict.healthy and "broker unreachable for 31s" in verdict.reasons[0]
    assert verdict.details["broker"] == {"reachable": False, "seconds_since_contact": 31, "last_error": "no metadata answer within 10s"}
    h.broker_probed(42, None)
    verdict = h.evaluate(43, lag=0, last_progress=None)
    assert verdict.healthy and verdict.status == "ok" and verdict.details["broker"]["reachable"] is True


def test_input_waiting_without_progress_for_longer_than_the_stall_timeout_is_unhealthy():
    h = M.HealthMonitor(POLICY, now=0)
    h.mark_started(10)
    h.broker_probed(10, None)
    for t in (20, 40, 60):
        h.broker_probed(t, None)
    assert h.evaluate(65, lag=5, last_progress=None).healthy  # 55 s since start-up
    verdict = h.evaluate(71, lag=5, last_progress=None)
    assert not verdict.healthy
    assert verdict.reasons == ("stalled: 5 records waiting and no micro-batch completed for 61s (stall timeout 60s)",)
    # a micro-batch completes: healthy again
    assert h.evaluate(71, lag=5, last_progress=70).healthy


def test_idle_without_lag_is_healthy_however_long():
    h = M.HealthMonitor(POLICY, now=0)
    h.mark_started(0)
    h.broker_probed(10_000, None)
    verdict = h.evaluate(10_001, lag=0, last_progress=5)
    assert verdict.healthy and verdict.details["seconds_since_progress"] == 9996


def test_a_rebalance_or_recovery_counts_as_progress():
    h = M.HealthMonitor(POLICY, now=0)
    h.mark_started(0)
    h.broker_probed(150, None)
    h.mark_busy(90)  # recovering tables until 90: no batches by design
    assert h.evaluate(150, lag=1000, last_progress=10).healthy
    verdict = h.evaluate(151, lag=1000, last_progress=10)
    assert verdict.reasons == ("stalled: 1000 records waiting and no micro-batch completed for 61s (stall timeout 60s)",)


def test_bad_health_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        M.HealthPolicy(stall_timeout_s=0)


# --------------------------------------------------------------------------- a running worker, faked


class FakeConsumer:
    def __init__(self, highwaters, committed, read=None):
        self.highwaters = highwaters
        self._committed_offset = committed
        self._read_offset = read or {}

    def highwater(self, tp):
        value = self.highwaters[tp]
        if isinstance(value, Exception):
            raise value
        return value


def _fake_app(consumer, assigned):
    return SimpleNamespace(
        consumer=consumer,
        assignor=SimpleNamespace(assigned_actives=lambda: assigned),
        tasks=[],
        task=lambda fun: fun,
        rebalancing=False,
        in_recovery=False,
        producer=SimpleNamespace(_ensure_producer=lambda: SimpleNamespace(client=FakeClient())),
    )


class FakeClient:
    def __init__(self, brokers=(1,), answer=None):
        self.cluster = SimpleNamespace(brokers=lambda: list(brokers))
        self.answer = answer

    async def fetch_all_metadata(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer == "hang":
            await asyncio.Event().wait()
        return object()


@pytest.mark.parametrize(
    "client, expected",
    [
        (FakeClient(), None),
        (FakeClient(brokers=()), "not connected yet"),
        (FakeClient(answer=ConnectionError("refused")), "ConnectionError: refused"),
        (FakeClient(answer="hang"), "no metadata answer within 0.05s"),
    ],
)
async def test_the_broker_probe_reports_what_went_wrong(client, expected):
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: SimpleNamespace(client=client)))
    assert await M.probe_broker(app, 0.05) == expected


async def test_the_broker_probe_before_the_producer_started():
    def not_ready():
        raise RuntimeError("Producer service not yet started")

    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=not_ready))
    assert await M.probe_broker(app, 1) == "producer not started (RuntimeError)"


def test_consumer_lag_is_highwater_minus_committed_for_the_input_partitions_held():
    tps = [
        TP("p.clicks", 0),
        TP("p.clicks", 1),
        TP("p.reviews", 0),
        TP("p.items", 0),
        TP("app-profiles-changelog", 0),
        TP("p.purchases", 0),
        TP("p.purchases", 1),
    ]
    consumer = FakeConsumer(
        highwaters={tps[0]: 10, tps[1]: 0, tps[2]: 7, tps[3]: 50, tps[4]: 999, tps[5]: None, tps[6]: AssertionError("revoked")},
        committed={tps[0]: 4, tps[3]: 50},
        read={tps[2]: 2},
    )
    lag = M.consumer_lag(_fake_app(consumer, set(tps)), TOPICS)
    # reviews/0 was read up to offset 2 and never committed: 7 - 3; purchases not fetched yet
    assert lag == {("clicks", 0): 6, ("clicks", 1): 0, ("reviews", 0): 4, ("items", 0): 0}


def test_metrics_socket_default_port_busy_is_skipped_but_an_explicit_one_is_an_error(monkeypatch, caplog):
    busy = M.bind("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        assert M.metrics_socket(0) is None
        with pytest.raises(OSError):
            M.metrics_socket(port)
        monkeypatch.setattr(M, "DEFAULT_METRICS_PORT", port)
        with caplog.at_level("WARNING", logger="recstream.metrics"):
            assert M.metrics_socket(None) is None
        assert f"default port 127.0.0.1:{port} is not available" in caplog.text
    finally:
        busy.close()


async def test_the_endpoint_serves_metrics_health_and_readiness():
    consumer = FakeConsumer(highwaters={TP("p.clicks", 0): 3}, committed={})
    tp = next(iter(consumer.highwaters))
    app = _fake_app(consumer, {tp})
    telemetry = M.WorkerMetrics(topics=TOPICS)
    pipeline = SimpleNamespace(app=app, telemetry=telemetry)
    telemetry.state = lambda: M.WorkerState(lag=M.consumer_lag(app, TOPICS), broker_up=telemetry.health.broker_up(), healthy=telemetry.health.current().healthy)
    sock = M.bind("127.0.0.1", 0)
    service = M.MonitoringService(pipeline, sock, M.HealthPolicy(stall_timeout_s=60, broker_grace_s=30))
    host, port = service.address
    await service.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path):
                async with http.get(f"http://{host}:{port}{path}") as response:
                    return response.status, await response.read()

            deadline = time.monotonic() + 30
            while service.broker_up() is None:  # the first probe
                assert time.monotonic() < deadline, "no broker probe"
                await asyncio.sleep(0.01)
            status, body = await get("/health")
            assert status == 200 and orjson.loads(body)["status"] == "starting"
            assert (await get("/ready"))[0] == 503  # start-up not finished
            service.mark_started()
            status, body = await get("/ready")
            doc = orjson.loads(body)
            assert status == 200 and doc["status"] == "ok" and doc["lag"] == 3 and doc["broker"]["reachable"] is True
            status, body = await get("/metrics")
            s = {(x.name, tuple(sorted(x.labels.items()))): x.value for f in text_string_to_metric_families(body.decode()) for x in f.samples}
            assert status == 200
            assert s[("recstream_consumer_lag_records", (("partition", "0"), ("topic", "clicks")))] == 3
            assert s[("recstream_broker_up", ())] == 1 and s[("recstream_healthy", ())] == 1
            # the stall clock, pushed past the timeout: 503 with the reason
            service.monitor.started_at -= 61
            status, body = await get("/health")
            assert status == 503 and orjson.loads(body)["reasons"][0].startswith("stalled: 3 records waiting")
    finally:
        await service.stop()
        sock.close()


# --------------------------------------------------------------------------- flags


def test_monitoring_flags_and_environment(monkeypatch):
    cfg = worker_config(build_parser().parse_args(["worker"]))
    assert (cfg.metrics_port, cfg.metrics_host, cfg.stall_timeout_s, cfg.broker_grace_s, cfg.log_format) == (None, "127.0.0.1", 60, 30, "text")
    monkeypatch.setenv("RECSTREAM_METRICS_PORT", "0")
    monkeypatch.setenv("RECSTREAM_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("RECSTREAM_STALL_TIMEOUT", "120")
    monkeypatch.setenv("RECSTREAM_BROKER_GRACE", "10")
    monkeypatch.setenv("RECSTREAM_LOG_FORMAT", "json")
    cfg = worker_config(build_parser().parse_args(["worker"]))
    assert (cfg.metrics_port, cfg.metrics_host, cfg.stall_timeout_s, cfg.broker_grace_s, cfg.log_format) == (0, "0.0.0.0", 120, 10, "json")
    cfg = worker_config(build_parser().parse_args(["worker", "--metrics-port", "9200", "--log-format", "text"]))
    assert (cfg.metrics_port, cfg.log_format) == (9200, "text")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"metrics_port": 70000}, "metrics port"), ({"stall_timeout_s": 0}, "stall timeout"), ({"log_format": "xml"}, "log format")],
)
def test_bad_monitoring_settings_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        WorkerConfig(**kwargs)


def test_a_bound_socket_listens():
    sock = M.bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass
    finally:
        sock.close()


def test_live_quality_by_ranker_is_exported():
    from recstream.scoring.prequential import Prequential

    pq = Prequential(k=10)
    pq.hold("u", "blend", ["a", "b"])
    pq.test("u", "b", 1, "click")
    pq.test("u", "z", 2, "click")
    pq.test("w", "a", 3, "click")  # cold
    pq.publish()
    state = M.WorkerState(prequential=pq.figures, prequential_cold=pq.cold)
    s = samples(M.WorkerMetrics(topics=TOPICS, state=lambda: state))
    blend = (("ranker", "blend"),)
    assert s[("recstream_prequential_cases_total", blend)] == 2
    assert s[("recstream_prequential_hits_at_10_total", blend)] == 1
    assert s[("recstream_prequential_ndcg_at_10_total", blend)] == pytest.approx(1 / 1.584962500721156)
    assert s[("recstream_prequential_window_hit_rate_at_10", blend)] == 0.5
    assert s[("recstream_prequential_cold_total", ())] == 1


def test_the_adaptive_weights_in_use_are_exported_per_partition():
    import numpy as np

    from recstream.scoring.adapt import AdaptConfig, AdaptiveWeights
    from recstream.scoring.blend import BlendWeights

    aw = AdaptiveWeights(BlendWeights(0.4, 0.5, 0.1), AdaptConfig(step=0.1, rate=5.0, epoch=1))
    aw.credit(3, np.array([0, 0, 0, 0, 0, 1.0, 0]))  # one grid point earned a gain
    aw.end_epoch(3)
    aw.grid(1)  # partition 1: no epoch yet
    aw.publish()
    state = M.WorkerState(blend_weights=aw.published)
    s = samples(M.WorkerMetrics(topics=TOPICS, state=lambda: state))
    got = {sig: s[("recstream_blend_weight", (("partition", "3"), ("signal", sig)))] for sig in ("text", "cooccurrence", "popularity")}
    assert sum(got.values()) == pytest.approx(1.0)
    assert got != pytest.approx({"text": 0.4, "cooccurrence": 0.5, "popularity": 0.1})
    assert s[("recstream_blend_weight", (("partition", "1"), ("signal", "text")))] == pytest.approx(0.4)
    assert s[("recstream_blend_weight_epochs_total", (("partition", "3"),))] == 1
    assert s[("recstream_blend_weight_epochs_total", (("partition", "1"),))] == 0
