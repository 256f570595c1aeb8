"""The worker's Prometheus metrics, its health verdict and the HTTP endpoint serving both.

Three layers, the first two pure and tested without a broker:

* :class:`WorkerMetrics`: every ``recstream_*`` metric in a per-worker
  :class:`~prometheus_client.CollectorRegistry` (never the global one, so several
  pipelines or tests in one process do not collide). The agents report once per
  micro-batch (:meth:`~WorkerMetrics.on_batch`, :meth:`~WorkerMetrics.on_event_batch`,
  :meth:`~WorkerMetrics.on_encoded`); counters the pipeline already keeps (dead letters,
  recommendations) and state it already holds (items, lag) are read when scraped, from a
  :class:`WorkerState` snapshot, so the hot path does no extra work for them.
* :class:`HealthMonitor`: healthy, or unhealthy with the reasons: the broker unreachable
  for longer than a grace period, or input waiting (lag) while no micro-batch completed
  for longer than the stall timeout. It is fed states and times; it reads no clock.
* :func:`pipeline_metrics` and :class:`MonitoringService`: the bindings to a running
  Faust worker (consumer lag from the consumer's offsets, a broker probe through the
  app's own producer connection) and a tiny aiohttp server for ``/metrics``, ``/health``
  and ``/ready`` (and the HTTP API, :mod:`streams.api`), on its own thread and event loop
  (:class:`HttpThread`): a request is read while the worker's loop runs a micro-batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import operator
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import orjson
from mode import Service
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import topics as T
from .records import ValidationError

if TYPE_CHECKING:
    from recstream.scoring.engine import BatchResult

    from .app import Pipeline

log = logging.getLogger("recstream.metrics")

# no ``*_created`` series next to every counter and histogram (process-wide; nothing else
# in a recstream process uses prometheus_client)
disable_created_metrics()

DEFAULT_METRICS_PORT = 9108
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_STALL_TIMEOUT_S = 60.0
DEFAULT_BROKER_GRACE_S = 30.0

#: Fields of the input contract (``streams/schemas``): a dead letter naming one of them is
#: counted under that field's name; any other field name comes from the input and is not
#: a label value (``unknown_field``).
CONTRACT_FIELDS = frozenset({"schema", "item_id", "user_id", "title", "description", "categories", "ts", "event_id", "quantity", "price", "rating", "text"})
#: Every value the ``reason`` label of ``recstream_dead_letters_total`` can take.
REASON_CODES = CONTRACT_FIELDS | {
    "key",  # null, not UTF-8 or not the record's id
    "unknown_field",
    "not_json",
    "not_utf8",
    "not_object",
    "null_value",  # a tombstone on an event topic
    "too_large",
    "value",  # anything else about the value as a whole
    "processing",  # valid, but failed in the encoder or scoring on its own
}
_LEADING_NAME = re.compile(r"[A-Za-z_]+")
_VALUE_REASONS = (
    ("not valid UTF-8", "not_utf8"),
    ("not valid JSON", "not_json"),
    ("bytes; the limit is", "too_large"),
    ("value is null", "null_value"),
    ("be a JSON object", "not_object"),
)

# Bucket bounds. Batches: records per micro-batch (--batch-max defaults to 512). Times: a
# forward pass or a top-k takes milliseconds on a GPU and up to seconds on a CPU; the
# latency, fetch to publish, includes the wait in the fetch buffer under load.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
AGENTS = ("events", "catalog")
_message_topic = operator.attrgetter("message.topic")


def reason_code(exc: ValidationError) -> str:
    """The dead-letter reason of a validation error, one of :data:`REASON_CODES`.

    The failing field when it is a contract field, ``key``, or a short code for what was
    wrong with the value as a whole; never text taken from the record.
    """
    reason = exc.reason or ""
    if reason.startswith("unknown field"):
        return "unknown_field"
    path = exc.field or ""
    if path == "key":
        return "key"
    if path:
        name = _LEADING_NAME.match(path)
        return name.group() if name and name.group() in CONTRACT_FIELDS else "unknown_field"
    for fragment, code in _VALUE_REASONS:
        if fragment in reason:
            return code
    return "value"


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the worker holds at scrape time (read, never computed, when scraped)."""

    #: dead letters so far, by reason code
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    #: the pipeline's counters (``streams.app.Metrics.counts``)
    counts: Mapping[str, int] = field(default_factory=dict)
    items_held: int = 0
    #: records waiting, by (logical topic, partition), for the input partitions held
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    #: 1/0 after the first broker probe, None before
    broker_up: bool | None = None
    healthy: bool | None = None
    #: live quality (scoring/prequential.py): figures by ranker, and the cold target events
    prequential: Mapping[str, Any] = field(default_factory=dict)
    prequential_cold: int = 0
    #: the adaptive blend's weights and epochs by input partition held (scoring/adapt.py)
    blend_weights: Mapping[int, tuple[tuple[float, float, float], int]] = field(default_factory=dict)


class BatchHistogram(Collector):
    """A histogram fed a whole micro-batch of observations at once (one numpy call).

    prometheus_client's :class:`~prometheus_client.Histogram` takes one value per call,
    under a lock; the latency of every recommendation of a batch comes in one list.
    Observe and collect on one thread (the worker's event loop).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.array(sorted(float(b) for b in buckets) + [math.inf])
        self.counts = np.zeros(len(self.bounds), dtype=np.int64)
        self.sum = 0.0

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        if len(values) == 0:
            return
        a = np.asarray(values, dtype=np.float64)
        # le semantics: a value equal to a bound falls in that bound's bucket
        self.counts += np.bincount(np.searchsorted(self.bounds, a, side="left"), minlength=len(self.bounds))
        self.sum += float(a.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def collect(self) -> Iterator[Metric]:
        cumulative = np.cumsum(self.counts)
        buckets = [(floatToGoString(b), int(c)) for b, c in zip(self.bounds, cumulative)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, buckets=[("+Inf", 0)], sum_value=0)


class _StateCollector(Collector):
    """Counters and gauges read from a :class:`WorkerState` when scraped."""

    def __init__(self, metrics: "WorkerMetrics") -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(WorkerState())

    def collect(self) -> Iterator[Metric]:
        return self._families(self.metrics.state())

    def _families(self, s: WorkerState) -> Iterator[Metric]:
        m = self.metrics
        letters = CounterMetricFamily(
            "recstream_dead_letters",
            "Records sent to the dead-letter topic, by reason code "
            "(the failing contract field, key, unknown_field, not_json, not_utf8, not_object, "
            "null_value, too_large, value, processing).",
            labels=["reason"],
        )
        for reason, n in sorted(s.dead_letters.items()):
            letters.add_metric([reason], n)
        yield letters
        c = s.counts
        yield CounterMetricFamily("recstream_recommendations_published", "Recommendation records published.", value=c.get("recommendations", 0))
        outcome = CounterMetricFamily(
            "recstream_events_processed",
            "Valid events processed by the engine: applied to a profile, or recognised as a redelivery and skipped.",
            labels=["outcome"],
        )
        outcome.add_metric(["applied"], c.get("applied", 0))
        outcome.add_metric(["duplicate"], c.get("duplicates", 0))
        yield outcome
        yield CounterMetricFamily(
            "recstream_unknown_item_events",
            "Events naming an item missing from the catalog (counted in history and popularity, no embedding).",
            value=c.get("unknown_items", 0),
        )
        yield CounterMetricFamily(
            "recstream_popularity_fallbacks", "Recommendations from popularity (users without a usable profile).", value=c.get("fallbacks", 0)
        )
        yield CounterMetricFamily(
            "recstream_batch_failures", "Micro-batches that failed as a whole and were retried record by record.", value=c.get("batch_failures", 0)
        )
        catalog = CounterMetricFamily("recstream_catalog_updates", "Catalog records applied.", labels=["op"])
        catalog.add_metric(["upsert"], c.get("items_upserted", 0))
        catalog.add_metric(["delete"], c.get("items_deleted", 0))
        yield catalog
        yield from _prequential_families(s)
        if s.blend_weights:
            weight = GaugeMetricFamily(
                "recstream_blend_weight",
                "The blend's weight of each signal in use for an input partition held, as adapted online (the weights sum to 1).",
                labels=["partition", "signal"],
            )
            epochs = CounterMetricFamily(
                "recstream_blend_weight_epochs", "Epochs of online adaptation the partition's weights went through.", labels=["partition"]
            )
            for partition, (ws, n) in sorted(s.blend_weights.items()):
                for signal, w in zip(("text", "cooccurrence", "popularity"), ws):
                    weight.add_metric([str(partition), signal], w)
                epochs.add_metric([str(partition)], n)
            yield from (weight, epochs)
        yield GaugeMetricFamily("recstream_items_held", "Catalog items in the scoring matrix.", value=s.items_held)
        yield GaugeMetricFamily(
            "recstream_profiles_held",
            "User profiles in this worker's partitions of the profiles table (counted at recovery, then kept up to date).",
            value=m.profiles_held,
        )
        lag = GaugeMetricFamily(
            "recstream_consumer_lag_records",
            "Records waiting in an input partition held by this worker: the partition's high watermark minus the committed offset.",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(s.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield GaugeMetricFamily(
            "recstream_last_batch_timestamp_seconds", "When the last micro-batch completed (Unix time; 0 before the first).", value=m.last_batch_wall
        )
        if s.broker_up is not None:
            yield GaugeMetricFamily("recstream_broker_up", "1 when the last broker probe got an answer.", value=int(s.broker_up))
        if s.healthy is not None:
            yield GaugeMetricFamily("recstream_healthy", "1 while /health answers 200.", value=int(s.healthy))
        device = InfoMetricFamily("recstream_device", "The torch device the encoder and scoring run on.")
        device.add_metric([], {"device": m.device, "name": m.device_name})
        yield device
        info = InfoMetricFamily("recstream_worker", "The worker: recstream version, model, ranker, emission mode, guarantee.")
        info.add_metric([], dict(m.info))
        yield info


def _prequential_families(s: WorkerState) -> Iterator[Metric]:
    """Live quality: each target event (a click, a purchase, a review rated 4 or more) tests
    the list its user held, by the ranker that made that list (scoring/prequential.py)."""
    cases = CounterMetricFamily(
        "recstream_prequential_cases",
        "Target events that tested the list their user held, by the ranker of that list (blend, text, learned, popularity).",
        labels=["ranker"],
    )
    hits = CounterMetricFamily("recstream_prequential_hits_at_10", "Of those, the events whose item was in the top 10 of the list.", labels=["ranker"])
    ndcg = CounterMetricFamily(
        "recstream_prequential_ndcg_at_10",
        "Sum of the cases' NDCG@10 (1/log2(rank + 2) for a hit, else 0): over recstream_prequential_cases, the mean NDCG@10.",
        labels=["ranker"],
    )
    window_hr = GaugeMetricFamily("recstream_prequential_window_hit_rate_at_10", "HR@10 of the ranker's last 1,000 cases.", labels=["ranker"])
    window_ndcg = GaugeMetricFamily("recstream_prequential_window_ndcg_at_10", "NDCG@10 of the ranker's last 1,000 cases.", labels=["ranker"])
    for ranker, f in sorted(s.prequential.items()):
        cases.add_metric([ranker], f.cases)
        hits.add_metric([ranker], f.hits)
        ndcg.add_metric([ranker], f.ndcg)
        if f.window_cases:
            window_hr.add_metric([ranker], f.window_hit_rate)
            window_ndcg.add_metric([ranker], f.window_ndcg)
    yield from (cases, hits, ndcg, window_hr, window_ndcg)
    yield CounterMetricFamily(
        "recstream_prequential_cold", "Target events of users who held no list yet (or whose list the worker no longer remembers).", value=s.prequential_cold
    )


class WorkerMetrics:
    """Every metric of one worker, in its own registry.

    ``topics`` maps real topic names to logical ones (``shop.clicks`` → ``clicks``): the
    ``topic`` labels are logical, so dashboards work for any ``--topic-prefix``. ``state``
    returns what the worker holds when scraped. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        *,
        topics: Mapping[str, str],
        state: Callable[[], WorkerState] = WorkerState,
        device: str = "cpu",
        device_name: str = "",
        info: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.topics = dict(topics)
        self.state = state
        self.device = device
        self.device_name = device_name
        self.info = dict(info or {})
        self.clock = clock
        self.profiles_held = 0
        self.last_progress: float | None = None  # monotonic
        self.last_batch_wall = 0.0
        #: the :class:`MonitoringService` serving these metrics, if any (broker probe, health)
        self.health: Any = None
        r = self.registry
        self.events_in = Counter("recstream_events_in", "Records consumed from an input topic (valid or not), by logical topic.", ["topic"], registry=r)
        self.batch_size = Histogram("recstream_batch_size_records", "Records per micro-batch, by agent.", ["agent"], buckets=BATCH_BUCKETS, registry=r)
        self.encoder_seconds = Histogram(
            "recstream_encoder_batch_seconds",
            "Text encoder time per micro-batch that encoded texts (review texts; item texts for the catalog), by agent.",
            ["agent"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "recstream_scoring_batch_seconds",
            "Scoring time (matrix product and top-k of every snapshot) per events micro-batch.",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.latency = BatchHistogram(
            "recstream_recommendation_latency_seconds",
            "Per recommendation published: from "
            "when the worker's consumer received the triggering event to when the "
            "recommendation went out (emitted_ts - trigger.received_ts).",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        r.register(_StateCollector(self))
        # every series exists from the start (rate() and absent() behave)
        self._topic_counters = {name: self.events_in.labels(logical) for name, logical in self.topics.items()}
        self._batch_sizes = {agent: self.batch_size.labels(agent) for agent in AGENTS}
        self._encoders = {agent: self.encoder_seconds.labels(agent) for agent in AGENTS}

    # ------------------------------------------------------------------ per micro-batch
    def on_batch(self, agent: str, events: Sequence[Any]) -> None:
        """A micro-batch of ``events`` (faust events) was handled by ``agent``: progress."""
        self.last_progress = self.clock()
        self.last_batch_wall = time.time()
        self._batch_sizes[agent].observe(len(events))
        for topic, n in collections.Counter(map(_message_topic, events)).items():
            counter = self._topic_counters.get(topic)
            if counter is None:
                counter = self._topic_counters[topic] = self.events_in.labels(self.topics.get(topic, topic))
            counter.inc(n)

    def on_encoded(self, agent: str, seconds: float) -> None:
        self._encoders[agent].observe(seconds)

    def on_event_batch(
        self, result: "BatchResult", read_profiles: Mapping[str, Any], received_ms: Mapping[tuple[str, int, int], int | None], emitted_ms: int
    ) -> None:
        """The engine processed a batch and its recommendations went out at ``emitted_ms``.

        ``read_profiles`` are the profiles the batch found in the table (a changed profile
        not among them is a new one); ``received_ms`` the reception time of each input
        record by (topic, partition, offset).
        """
        stats = result.stats
        if stats.texts_encoded:
            self._encoders["events"].observe(stats.encode_s)
        self.scoring_seconds.observe(stats.score_s)
        recs = result.recommendations
        if len(recs) == len(received_ms):
            # every record of the batch was answered once (per-event emission, or one event
            # per user): the triggers are exactly the batch's records, no lookups needed
            received: Sequence[int | None] = list(received_ms.values())
        else:
            received = [received_ms.get((t.topic, t.partition, t.offset)) for t in [rec.trigger for rec in recs]]
        times = np.fromiter(received, dtype=np.float64, count=len(received))  # an unknown time (None) is NaN
        times = times[~np.isnan(times)]
        self.latency.observe_many(np.maximum(emitted_ms - times, 0.0) / 1000.0)
        self.profiles_held += len(result.profiles.keys() - read_profiles.keys())

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def metric_names(self) -> set[str]:
        """Every sample name the registry can expose (``_total``, ``_bucket``, ... included)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(sample.name for sample in family.samples)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        return names


# --------------------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    broker_grace_s: float = DEFAULT_BROKER_GRACE_S

    def __post_init__(self) -> None:
        if not self.stall_timeout_s > 0 or not self.broker_grace_s > 0:
            raise ValueError(f"stall timeout and broker grace must be positive, got {self.stall_timeout_s}s and {self.broker_grace_s}s")


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    status: str  # "ok", "starting" (healthy, start-up not finished) or "unhealthy"
    reasons: tuple[str, ...]
    details: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps({"status": self.status, "healthy": self.healthy, "reasons": list(self.reasons), **self.details})


class HealthMonitor:
    """The health verdict from what the worker reports; every method takes ``now``
    (monotonic seconds) from the caller, so it is tested without waiting.

    * the broker: unhealthy once no probe succeeded for longer than the grace period
      (counted from :meth:`__init__`'s ``now`` until the first success);
    * progress: unhealthy when input is waiting (lag > 0) and no micro-batch completed
      for longer than the stall timeout. Idle with no lag is healthy. The clock starts
      when start-up finishes, and time spent rebalancing or recovering tables counts
      as progress.
    """

    def __init__(self, policy: HealthPolicy, now: float) -> None:
        self.policy = policy
        self.created = now
        self.started_at: float | None = None
        self.broker_ok_at: float | None = None
        self.broker_error: str | None = None
        self.busy_at: float | None = None

    def mark_started(self, now: float) -> None:
        self.started_at = now

    def broker_probed(self, now: float, error: str | None) -> None:
        if error is None:
            self.broker_ok_at = now
        self.broker_error = error

    def mark_busy(self, now: float) -> None:
        """A rebalance or table recovery is in progress (no batches, by design)."""
        self.busy_at = now

    def evaluate(self, now: float, *, lag: int, last_progress: float | None) -> Health:
        p = self.policy
        reasons = []
        since_contact = now - (self.broker_ok_at if self.broker_ok_at is not None else self.created)
        broker_down = since_contact > p.broker_grace_s
        if broker_down:
            never = " (never reached)" if self.broker_ok_at is None else ""
            error = f"; last error: {self.broker_error}" if self.broker_error else ""
            reasons.append(f"broker unreachable for {since_contact:.0f}s{never}, longer than the {p.broker_grace_s:g}s grace{error}")
        idle_for = None
        if self.started_at is not None:
            marks = [t for t in (last_progress, self.started_at, self.busy_at) if t is not None]
            idle_for = now - max(marks)
            if lag > 0 and idle_for > p.stall_timeout_s:
                reasons.append(f"stalled: {lag} records waiting and no micro-batch completed for {idle_for:.0f}s (stall timeout {p.stall_timeout_s:g}s)")
        healthy = not reasons
        status = "unhealthy" if not healthy else ("ok" if self.started_at is not None else "starting")
        details = {
            "started": self.started_at is not None,
            "lag": lag,
            "seconds_since_progress": None if idle_for is None else round(idle_for, 3),
            "broker": {
                "reachable": None if self.broker_ok_at is None and self.broker_error is None else not broker_down and self.broker_error is None,
                "seconds_since_contact": None if self.broker_ok_at is None else round(now - self.broker_ok_at, 3),
                "last_error": self.broker_error,
            },
        }
        return Health(healthy, status, tuple(reasons), details)


# --------------------------------------------------------------------------- a running worker


def consumer_lag(app: Any, topics: Mapping[str, str]) -> dict[tuple[str, int], int]:
    """Records waiting per input partition this worker holds, by (logical topic, partition).

    The high watermark is the consumer's, from its last fetch response (it refreshes even
    when nothing new arrives); the committed offset is Faust's (the group's offset after
    start, then every commit). A partition not committed yet counts from its read
    position, or from zero; one not fetched yet is left out.
    """
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})  # faust 0.15: the offsets it committed, next-to-read
    read = getattr(consumer, "_read_offset", {})
    lag: dict[Any, int] = {}
    try:
        assigned = list(app.assignor.assigned_actives())
    except Exception:  # not started, or mid-rebalance
        return lag
    for tp in assigned:
        logical = topics.get(tp.topic)
        if logical is None:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # consumer not started, or the partition was just revoked
            continue
        if highwater is None:
            continue
        position = committed.get(tp)
        if position is None:
            last_read = read.get(tp)
            position = last_read + 1 if last_read is not None else 0
        lag[(logical, tp.partition)] = max(0, int(highwater) - int(position))
    return lag


async def probe_broker(app: Any, timeout_s: float) -> str | None:
    """One metadata round trip over the app's own producer connection (its servers, TLS and
    SASL settings); None when it answered, else what went wrong."""
    try:
        client = app.producer._ensure_producer().client  # faust's aiokafka producer
    except Exception as exc:
        return f"producer not started ({type(exc).__name__})"
    if not client.cluster.brokers():  # not bootstrapped yet: aiokafka would log an error per probe
        return "not connected yet"
    try:
        await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
    except asyncio.TimeoutError:
        return f"no metadata answer within {timeout_s:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def pipeline_metrics(pipeline: "Pipeline") -> WorkerMetrics:
    """The metrics of ``pipeline``: state read from it when scraped; profiles counted after
    every recovery (a rebalance changes the partitions held)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        recstream_version = version("recstream")
    except PackageNotFoundError:
        recstream_version = "0+unknown"
    s, config = pipeline.settings, pipeline.config
    topics = {s.topic(t): t for t in (T.ITEMS, *T.EVENT_TOPICS)}
    device = pipeline.device
    device_name = ""
    if device.type == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(device)
    metrics = WorkerMetrics(
        topics=topics,
        device=str(device),
        device_name=device_name,
        info={
            "version": recstream_version,
            "model": pipeline.engine.model_name,
            "ranker": pipeline.engine.ranker,
            "app_id": s.app_id,
            "emit": config.emit,
            "processing_guarantee": config.processing_guarantee,
        },
    )

    def state() -> WorkerState:
        health = metrics.health
        return WorkerState(
            dead_letters=dict(pipeline.metrics.dead_letters),
            counts=dict(pipeline.metrics.counts),
            items_held=len(pipeline.matrix),
            lag=consumer_lag(pipeline.app, topics),
            broker_up=health.broker_up() if health is not None else None,
            healthy=health.current().healthy if health is not None else None,
            prequential=pipeline.engine.prequential.figures,
            prequential_cold=pipeline.engine.prequential.cold,
            blend_weights=pipeline.engine.adaptive.published if pipeline.engine.adaptive is not None else {},
        )

    async def count_profiles() -> None:
        metrics.profiles_held = sum(1 for _ in pipeline.profiles.keys())

    metrics.state = state
    pipeline.profiles.on_recover(count_profiles)
    return metrics


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the endpoint (bound before the worker starts, so a busy port
    is reported at once). Raises :class:`OSError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def metrics_socket(port: int | None, host: str = DEFAULT_METRICS_HOST) -> socket.socket | None:
    """The endpoint's socket: None when ``port`` is 0 (off), or when it is None (the
    default port, :data:`DEFAULT_METRICS_PORT`) and another process holds that port (a
    warning says so: several workers on one machine, a replay beside a live worker). A
    port given explicitly must be free: :class:`OSError` otherwise."""
    if port == 0:
        return None
    try:
        return bind(host, DEFAULT_METRICS_PORT if port is None else port)
    except OSError as exc:
        if port is not None:
            raise
        log.warning(
            "metrics endpoint off: default port %s:%d is not available (%s); give --metrics-port (0 turns the endpoint off)",
            host,
            DEFAULT_METRICS_PORT,
            exc.strerror or exc,
        )
        return None


class HttpThread:
    """An event loop on its own thread, serving the monitoring endpoint and the API.

    The worker's event loop runs the stream: a micro-batch holds it for tens to hundreds of
    milliseconds, so a request answered there waits for it.  This loop answers on its own
    thread instead (a lookup reads RocksDB from here: rocksdict reads are thread-safe); what
    must run on the worker's loop (faust state, the producer) is handed over with
    :func:`call_on_loop` and awaited here without blocking this loop."""

    def __init__(self, name: str = "recstream-http") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    async def run(self, coro: Any) -> Any:
        """Run ``coro`` on this thread's loop; await its result from the calling loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)


async def call_on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a function, or one returning a coroutine, which is awaited there) run on
    ``loop`` (None or the running loop: here, at once), awaited from the running loop."""
    here = asyncio.get_running_loop()
    if loop is None or loop is here:
        result = fn()
        return await result if asyncio.iscoroutine(result) else result

    async def call() -> Any:
        result = fn()
        return await result if asyncio.iscoroutine(result) else result

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


class MonitoringService(Service):
    """``/metrics``, ``/health`` and ``/ready`` over HTTP, and the broker probe. Started with
    the Faust worker, before the app (so it answers while tables recover);
    :meth:`mark_started` is called when start-up finishes.

    The HTTP server runs on its own thread and event loop (:class:`HttpThread`, with the
    API when there is one): ``/metrics``, ``/health`` and ``/ready`` read the worker's state
    on the worker's loop (handed over with :func:`call_on_loop`, as they read faust's
    consumer and tables); the API's lookups are answered on the HTTP thread itself. With the
    API's front process (``front``), that process serves ``sock`` and answers most lookups
    itself, and this server listens on the front's loopback socket for the rest."""

    def __init__(self, pipeline: "Pipeline", sock: socket.socket, policy: HealthPolicy, *, api: Any = None, front: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.sock = sock
        #: the HTTP API (:class:`streams.api.Api`) served on the same port, or None
        self.api = api
        #: the API's front process (:class:`streams.front.FrontProcess`), which then serves
        #: ``sock`` while this server listens on its loopback socket; or None
        self.front = front
        self.metrics: WorkerMetrics = pipeline.telemetry
        self.monitor = HealthMonitor(policy, time.monotonic())
        self.probe_interval_s = min(10.0, max(0.5, policy.broker_grace_s / 3))
        self.probe_timeout_s = min(10.0, max(0.5, policy.broker_grace_s / 2))
        self._runner: Any = None
        self._http: HttpThread | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self.metrics.health = self

        async def started() -> None:  # a Faust app task: runs once start-up (recovery) is done
            self.mark_started()

        pipeline.app.task(started)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def mark_started(self) -> None:
        self.monitor.mark_started(time.monotonic())

    def broker_up(self) -> bool | None:
        m = self.monitor
        if m.broker_ok_at is None and m.broker_error is None:
            return None
        return m.broker_error is None

    def _note_busy(self, now: float) -> None:
        app = self.pipeline.app
        if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
            self.monitor.mark_busy(now)

    def current(self) -> Health:
        now = time.monotonic()
        self._note_busy(now)
        lag = sum(consumer_lag(self.pipeline.app, self.metrics.topics).values())
        return self.monitor.evaluate(now, lag=lag, last_progress=self.metrics.last_progress)

    async def _on_worker_loop(self, fn: Callable[[], Any]) -> Any:
        return await call_on_loop(self._main_loop, fn)

    async def on_start(self) -> None:
        from aiohttp import web

        self._main_loop = asyncio.get_running_loop()

        def unavailable() -> web.Response:  # the worker's loop is gone (shutting down) or failed the call
            return web.Response(body=b'{"status": "unavailable"}', status=503, content_type="application/json")

        async def metrics(request: web.Request) -> web.Response:
            try:
                body = await self._on_worker_loop(self.metrics.exposition)
            except RuntimeError:
                return unavailable()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

        async def health(request: web.Request) -> web.Response:
            try:
                h = await self._on_worker_loop(self.current)
            except RuntimeError:
                return unavailable()
            return web.Response(body=h.to_json(), status=200 if h.healthy else 503, content_type="application/json")

        async def ready(request: web.Request) -> web.Response:
            try:
                h = await self._on_worker_loop(self.current)
            except RuntimeError:
                return unavailable()
            ok = h.healthy and h.status == "ok"
            return web.Response(body=h.to_json(), status=200 if ok else 503, content_type="application/json")

        web_app = web.Application()
        web_app.router.add_get("/metrics", metrics)
        web_app.router.add_get("/health", health)
        web_app.router.add_get("/ready", ready)
        if self.api is not None:
            bind = getattr(self.api.backend, "bind_loops", None)
            if bind is not None:
                bind(self._main_loop)
            self.api.install(web_app)
        front = self.front
        if front is not None:
            from .front import STATE_PATH

            async def front_state(request: web.Request) -> web.Response:
                if not front.is_internal(request):
                    raise web.HTTPNotFound()
                return web.Response(body=orjson.dumps(self.api.backend.front_state()), content_type="application/json")

            web_app.router.add_get(STATE_PATH, front_state, allow_head=False)

        async def serve() -> Any:
            runner = web.AppRunner(web_app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, front.internal if front is not None else self.sock).start()
            return runner

        self._http = HttpThread()
        try:
            self._runner = await self._http.run(serve())
        except BaseException:
            self._http.stop()
            self._http = None
            raise
        if front is not None:
            front.start()
        host, port = self.address
        log.info("metrics on http://%s:%d/metrics, health on /health and /ready", host, port)
        if self.api is not None:
            log.info(
                "API on http://%s:%d/v1/ (advertised to the group as %s; %s)",
                host,
                port,
                self.api.backend.own_url,
                "bearer token required" if self.api.token else "no token",
            )

    async def on_stop(self) -> None:
        if self.front is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.front.stop)
        http, self._http = self._http, None
        if http is None:
            return
        runner, self._runner = self._runner, None

        async def cleanup() -> None:
            if runner is not None:
                await runner.cleanup()
            if self.api is not None:
                await self.api.backend.close()

        try:
            await http.run(cleanup())
        finally:
            await asyncio.get_running_loop().run_in_executor(None, http.stop)

    @Service.task
    async def _watch_front(self) -> None:
        """Start the API's front process again if it exits."""
        while self.front is not None and not self.should_stop:
            if self._http is not None:
                self.front.check()
            await self.sleep(1.0)

    @Service.task
    async def _probe(self) -> None:
        while not self.should_stop:
            error = await probe_broker(self.pipeline.app, self.probe_timeout_s)
            was_up = self.broker_up()
            if error is not None and was_up:
                log.warning("broker probe failed: %s", error)
            elif error is None and was_up is False and self.monitor.broker_ok_at is not None:
                log.info("broker answers again")
            self.monitor.broker_probed(time.monotonic(), error)
            self._note_busy(time.monotonic())  # between scrapes too: a long recovery is not a stall
            await self.sleep(self.probe_interval_s)
