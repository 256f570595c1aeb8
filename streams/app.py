"""The Faust application: settings, topics, state tables and the shared pipeline state.

:func:`build_pipeline` makes one Faust app for one deployment (its app id and topic
prefix come from :class:`streams.config.KafkaSettings`) and wires the two agents:

* :mod:`streams.agents.catalog` embeds catalog updates into the ``item-embeddings``
  global table and the in-memory item matrix;
* :mod:`streams.agents.events` validates events, updates profiles (``profiles`` table),
  counts popularity (``popularity`` table) and publishes recommendations.

Every table lives in RocksDB (rocksdict) with a compacted changelog topic, so a restarted
or rebalanced worker recovers its state; after recovery the item matrix and popularity
counts are rebuilt from the tables.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, cast

import faust
import numpy as np
from faust.types import TP

from recstream.encoders.profile import DecayedProfileModel, ProfileConfig
from recstream.encoders.text import TextEncoder, resolve_device
from recstream.scoring.adapt import AdaptConfig, AdaptFormatError, WeightAdapter
from recstream.scoring.ann import DEFAULT_MIN_ITEMS, DEFAULT_NPROBE, INDEX_KINDS, make_item_matrix
from recstream.scoring.blend import DEFAULT_WEIGHTS, BlendWeights
from recstream.scoring.cooccurrence import DEFAULT_MAX_NEIGHBOURS, CooccurrenceModel, CooccurrenceRow, merge_rows, weight_problem
from recstream.scoring.engine import EMIT_MODES, Engine, EngineConfig
from recstream.scoring.popularity import DecayedPopularity

from . import topics as T
from .config import KafkaSettings
from .evidence import EvidenceFollower
from .lane import ComputeLane
from .metrics import pipeline_metrics
from .records import DAY_MS
from .security import faust_credentials
from .transactions import PartitionTransactions, Record, TransactionFailed, send_batches
from .streamtime import StreamTimeMerger, StreamTimeScheduler
from .state import PROGRESS_ITEM, ObservedGlobalTable, StoredItem, decode_item, decode_log2, progress_key, split_popularity_key, write_raw

log = logging.getLogger("recstream.worker")

#: Most bytes in one produce batch (one partition).  The producer sends at most one batch
#: per partition per round trip to the broker, and faust's default (16 KiB, about four
#: profiles) made the profiles changelog a bottleneck; the broker takes up to 1 MB.
PRODUCER_BATCH_BYTES = 512 * 1024
GUARANTEES = ("at_least_once", "exactly_once")
#: How the worker ranks (``--ranker``): the blend of text similarity, item co-occurrence and
#: popularity (the default), the text profile alone, or a learned user encoder.
RANKERS = ("blend", "text", "learned")
ITEM_FIELDS = ("title", "categories", "description")
ADAPT_DEFAULTS = AdaptConfig()
#: how often the other partitions' followed evidence is added to the scored models (seconds)
EVIDENCE_APPLY_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything ``recstream worker`` can be told (flags and ``RECSTREAM_*`` variables)."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    partitions: int = T.DEFAULT_PARTITIONS
    replication_factor: int = 1
    k: int = 10
    emit: str = "per-user"
    exclude_seen: bool = True
    device: str | None = None
    model: str | None = None
    max_length: int = 256
    encode_batch: int = 64
    batch_max: int = 512
    # how long an idle worker waits for company before a batch smaller than batch_max
    # (streams/agents/batching.py); 0: not at all, batches grow with the load by themselves
    batch_within_s: float = 0.0
    catalog_batch_max: int = 256
    item_fields: tuple[str, ...] = ITEM_FIELDS
    half_life_days: float = 30.0
    popularity_half_life_days: float = 7.0
    history_len: int = 50
    data_dir: Path = Path(".recstream")
    processing_guarantee: str = "at_least_once"
    # stream-time order of the event partitions (streams/streamtime.py): how long a caught-up
    # partition with nothing buffered holds the others back; 0: only while it has unfetched
    # records on the broker; -1: no ordering (records go to the agent as fetched)
    max_task_idle_ms: int = 0
    # workers in step (streams/evidence.py): hold events more than this many ms of event
    # time past the slowest other partition still progressing; None: no bound
    max_skew_ms: int | None = None
    create_topics: bool = True
    stats_interval_s: float = 10.0
    torch_threads: int | None = None
    # torch threads while an event batch is scored (scoring.engine.EngineConfig.score_threads;
    # None: torch_threads / torch's own)
    score_threads: int | None = 1
    # scoring index (scoring/ann.py): auto = IVF from index_min_items live items on the CPU
    index: str = "auto"
    index_min_items: int = DEFAULT_MIN_ITEMS
    ivf_nprobe: int = DEFAULT_NPROBE
    # monitoring (streams/metrics.py, streams/logs.py): metrics_port None is the default
    # port, skipped with a warning when taken; 0 turns the endpoint off
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    stall_timeout_s: float = 60.0
    broker_grace_s: float = 30.0
    # consumer group membership (faust's broker_session_timeout / broker_heartbeat_interval):
    # a worker that sends no heartbeat for session_timeout_s (killed, frozen, cut off) is
    # dropped from the group and its partitions go to the others
    session_timeout_s: float = 60.0
    heartbeat_interval_s: float = 3.0
    log_format: str = "text"
    # ranking: see RANKERS; the blend's weights (None: scoring.blend.DEFAULT_WEIGHTS) and
    # co-occurrence (scoring/blend.py, scoring/cooccurrence.py)
    ranker: str = "blend"
    blend: BlendWeights | None = None
    cooc_neighbours: int = DEFAULT_MAX_NEIGHBOURS
    cooc_history_len: int = 20
    cooc_half_life_days: float = 0.0  # 0: no decay
    cooc_pair_decay: float = 0.9  # 1: every pair of the history counts alike
    cooc_recency: float = 0.8  # 1: every history item's neighbours count alike
    # online weight adaptation (scoring/adapt.py): None = on for the blend ranker unless a
    # --blend file pins the weights; the grid step, the rate and the epoch (target events of
    # a partition between two moves)
    adapt: bool | None = None
    adapt_step: float = ADAPT_DEFAULTS.step
    adapt_rate: float = ADAPT_DEFAULTS.rate
    adapt_epoch: int = ADAPT_DEFAULTS.epoch
    # learned user encoder (scoring/learned.py): a checkpoint of 'recstream train', None = off
    user_model: str | None = None
    user_model_check_s: float = 5.0
    # the HTTP API (streams/api.py) on the metrics endpoint's server: on unless switched off
    # (--no-api) or the endpoint is off; the URL other workers reach this one at (None: the
    # endpoint's address, set by run_worker); a bearer token required by every endpoint but
    # /health, /ready and /metrics (None: none); lookups answered by a process of the
    # worker's own (streams/front.py), outside the stream's interpreter, unless switched off
    api: bool = True
    api_process: bool = True
    api_url: str | None = None
    api_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.partitions < 1:
            problems.append(f"partitions must be at least 1, got {self.partitions}")
        if self.emit not in EMIT_MODES:
            problems.append(f"emit must be one of {', '.join(EMIT_MODES)}, got {self.emit!r}")
        if self.batch_max < 1 or self.catalog_batch_max < 1:
            problems.append("batch sizes must be at least 1")
        if not (self.batch_within_s >= 0 and math.isfinite(self.batch_within_s)):
            problems.append(f"batch window must be 0 or more seconds, got {self.batch_within_s}s")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append(f"torch threads must be at least 1, got {self.torch_threads}")
        if self.score_threads is not None and self.score_threads < 1:
            problems.append(f"score threads must be at least 1, got {self.score_threads}")
        if self.index not in INDEX_KINDS:
            problems.append(f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}")
        if self.index_min_items < 1 or self.ivf_nprobe < 1:
            problems.append(f"index min items and IVF nprobe must be at least 1, got {self.index_min_items} and {self.ivf_nprobe}")
        if self.max_task_idle_ms < -1:
            problems.append(f"max task idle must be -1 (no stream-time order), 0 or a positive number of ms, got {self.max_task_idle_ms}")
        if self.max_skew_ms is not None and self.max_skew_ms < 0:
            problems.append(f"max skew must be a number of ms >= 0, got {self.max_skew_ms}")
        if self.processing_guarantee not in GUARANTEES:
            problems.append(f"processing guarantee must be one of {', '.join(GUARANTEES)}, got {self.processing_guarantee!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            problems.append(f"metrics port must be between 0 (off) and 65535, got {self.metrics_port}")
        if not self.stall_timeout_s > 0 or not self.broker_grace_s > 0:
            problems.append(f"stall timeout and broker grace must be positive, got {self.stall_timeout_s}s and {self.broker_grace_s}s")
        if not self.session_timeout_s > 0 or not self.heartbeat_interval_s > 0:
            problems.append(f"session timeout and heartbeat interval must be positive, got {self.session_timeout_s}s and {self.heartbeat_interval_s}s")
        elif not 6 <= self.session_timeout_s <= 1800:
            # outside the broker's default group.min/max.session.timeout.ms the group refuses the
            # worker (InvalidSessionTimeoutError), which then waits forever without joining
            problems.append(f"session timeout must be between 6 and 1800 seconds (what Kafka brokers accept by default), got {self.session_timeout_s}s")
        elif self.heartbeat_interval_s > self.session_timeout_s / 3:
            problems.append(
                f"heartbeat interval must be at most a third of the session timeout (Kafka's advice: a few heartbeats "
                f"can be lost before the worker is dropped), got {self.heartbeat_interval_s}s and {self.session_timeout_s}s"
            )
        if self.cooc_neighbours < 1 or self.cooc_history_len < 1:
            problems.append(f"co-occurrence neighbours and history length must be at least 1, got {self.cooc_neighbours} and {self.cooc_history_len}")
        if self.ranker not in RANKERS:
            problems.append(f"ranker must be one of {', '.join(RANKERS)}, got {self.ranker!r}")
        elif self.blend is not None and self.ranker != "blend":
            problems.append(f"blend weights are for the blend ranker, not --ranker {self.ranker}")
        elif (self.user_model is not None) != (self.ranker == "learned"):
            problems.append("the learned ranker needs a user model (--user-model CKPT), and a user model needs --ranker learned")
        if self.adapt and self.ranker != "blend":
            problems.append(f"weight adaptation (--adapt) is for the blend ranker, not --ranker {self.ranker}")
        elif self.adapt and self.blend is not None and self.blend.normalization != "zscore":
            problems.append("weight adaptation (--adapt) needs z-score blend weights")
        try:
            AdaptConfig(step=self.adapt_step, rate=self.adapt_rate, epoch=self.adapt_epoch)
        except ValueError as exc:
            problems.append(str(exc))
        if self.api_token is not None and (not self.api_token or any(c.isspace() or not c.isprintable() for c in self.api_token)):
            problems.append("API token must be non-empty printable text without spaces")
        if not self.user_model_check_s > 0:
            problems.append(f"user model check interval must be positive, got {self.user_model_check_s}s")
        if not self.cooc_half_life_days >= 0:
            problems.append(f"co-occurrence half-life must be 0 (no decay) or positive, got {self.cooc_half_life_days}")
        for name in ("cooc_pair_decay", "cooc_recency"):
            if problem := weight_problem(name.replace("_", "-"), getattr(self, name)):
                problems.append(problem)
        if self.log_format not in ("text", "json"):
            problems.append(f"log format must be text or json, got {self.log_format!r}")
        unknown = [f for f in self.item_fields if f not in ITEM_FIELDS]
        if unknown or not self.item_fields:
            problems.append(f"item fields must be a non-empty subset of {', '.join(ITEM_FIELDS)}, got {', '.join(self.item_fields)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def blend_weights(self) -> BlendWeights | None:
        """The weights the engine blends with (``None``: it does not blend)."""
        if self.ranker != "blend":
            return None
        return self.blend or DEFAULT_WEIGHTS

    @property
    def adapt_config(self) -> AdaptConfig | None:
        """How the blend's weights adapt online (``None``: they stay as given)."""
        weights = self.blend_weights
        on = self.adapt if self.adapt is not None else self.blend is None
        if weights is None or not on or weights.normalization != "zscore":
            return None
        return AdaptConfig(step=self.adapt_step, rate=self.adapt_rate, epoch=self.adapt_epoch)

    def engine_config(self) -> EngineConfig:
        """How this worker's engine recommends (:class:`scoring.engine.EngineConfig`)."""
        return EngineConfig(
            k=self.k,
            emit=self.emit,  # type: ignore[arg-type]
            exclude_seen=self.exclude_seen,
            popularity_half_life_ms=int(self.popularity_half_life_days * DAY_MS),
            score_threads=self.score_threads,
            blend=self.blend_weights,
            cooc_neighbours=self.cooc_neighbours,
            cooc_history_len=self.cooc_history_len,
            cooc_half_life_ms=int(self.cooc_half_life_days * DAY_MS) or None,
            cooc_pair_decay=self.cooc_pair_decay,
            cooc_recency=self.cooc_recency,
            adapt=self.adapt_config,
        )

    def profile_config(self) -> ProfileConfig:
        """How this worker's text profiles remember (:class:`encoders.profile.ProfileConfig`)."""
        return ProfileConfig(half_life_ms=int(self.half_life_days * DAY_MS), history_len=self.history_len)


class Metrics:
    """Counters the agents keep; logged periodically (and exported by later work)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.encode_s = 0.0
        self.score_s = 0.0

    def summary(self) -> str:
        c = self.counts
        return (
            f"events {c['events']} (applied {c['applied']}, duplicates {c['duplicates']}, "
            f"unknown items {c['unknown_items']}), batches {c['batches']}, recommendations {c['recommendations']}, "
            f"popularity fallbacks {c['fallbacks']}, catalog upserts {c['items_upserted']}, "
            f"deletes {c['items_deleted']}, dead letters {sum(self.dead_letters.values())}, "
            f"batch failures {c['batch_failures']}; time encoding reviews {self.encode_s:.1f}s, scoring {self.score_s:.1f}s"
        )


def _raw(table):
    """Store and changelog a table's keys and values as the bytes recstream encodes.

    faust derives a table's serializers from its key/value types and falls back to JSON
    for ``bytes``; the store and changelog topic are created lazily, so setting them here,
    before the app starts, is enough.
    """
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    return table


def _changelog_stamp(event_time_ms: int, now_ms: int) -> int:
    """A changelog record's timestamp for values that include events up to ``event_time_ms``:
    never ahead of the clock, as brokers refuse records too far in the future
    (``log.message.timestamp.after.max.ms``); a worker then takes such a value once its
    stream time passes the moment it was written."""
    return max(0, min(event_time_ms, now_ms))


class Pipeline:
    """One worker's app, topics, tables and in-memory scoring state."""

    def __init__(self, config: WorkerConfig, *, encoder: TextEncoder | None = None) -> None:
        self.config = config
        s = config.kafka
        self.settings = s
        self.metrics = Metrics()
        # Model forward passes, matrix updates and scoring run on one compute thread: the
        # event loop keeps fetching, committing and heartbeating meanwhile (torch releases
        # the GIL), and the single thread orders every access to the matrix and popularity.
        self.compute_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-compute")
        #: read-only jobs (the API's queries) run inside a micro-batch, at the engine's
        #: consistent points, once the API installs the engine's hook (streams/lane.py)
        self.lane = ComputeLane(self.compute_executor)
        self._startup_heap_frozen = False
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.device = resolve_device(config.device)
        if config.torch_threads is not None:
            import torch

            torch.set_num_threads(config.torch_threads)
        self.encoder = encoder or TextEncoder(config.model, device=str(self.device), max_length=config.max_length, batch_size=config.encode_batch)
        self.matrix = make_item_matrix(self.encoder.dim, self.device, config.index, min_items=config.index_min_items, nprobe=config.ivf_nprobe)
        engine_config = config.engine_config()
        self.popularity = DecayedPopularity(engine_config.popularity_half_life_ms)
        self.partition_popularity: dict[int, DecayedPopularity] = {}
        # co-occurrence (only with blend weights): one model per input partition held, whose
        # rows are the table's "<partition>:<item>" values, and their sum, which is scored
        self.partition_cooccurrence: dict[int, CooccurrenceModel] = {}
        self.profile_model = DecayedProfileModel(config.profile_config(), dim=self.encoder.dim)
        self.user_encoder = None
        if config.user_model:
            from recstream.scoring.learned import LearnedUserEncoder

            self.user_encoder = LearnedUserEncoder(config.user_model, self.device, check_every_s=config.user_model_check_s)
            max_len = self.user_encoder.current().max_len
            log.info("user model %s (reads the last %d interactions; checked every %gs)", self.user_encoder.current().name, max_len, config.user_model_check_s)
            if config.history_len < 2 * max_len:
                log.warning(
                    "profiles keep %d events (--history-len) and the user model reads up to %d interactions, "
                    "which can be %d events (a click and a purchase each): pass --history-len %d to feed it whole",
                    config.history_len,
                    max_len,
                    2 * max_len,
                    2 * max_len,
                )
            self.user_encoder.start()
        self.engine = Engine(
            user_encoder=self.user_encoder,
            model=self.profile_model,
            matrix=self.matrix,
            popularity=self.popularity,
            texts=self.encoder,
            config=engine_config,
            partition_popularity=self.partition_popularity,
            partition_cooccurrence=self.partition_cooccurrence,
        )

        (config.data_dir / s.app_id).mkdir(parents=True, exist_ok=True)
        # where the other workers of the group send the API requests for this worker's users:
        # faust shares each member's canonical URL in the group's assignment metadata
        # (streams/api.py routes by it); faust's default is the same for every worker of a host
        extra_conf: dict[str, Any] = {"canonical_url": config.api_url} if config.api_url else {}
        self.app = faust.App(
            s.app_id,
            broker=[f"kafka://{server}" for server in s.bootstrap_servers],
            broker_credentials=faust_credentials(s.security),  # TLS/SASL; None: PLAINTEXT
            store="rocksdb://",
            datadir=str(config.data_dir / s.app_id),
            topic_partitions=config.partitions,
            topic_replication_factor=config.replication_factor,
            # exactly-once is recstream's own (streams/transactions.py): Faust's commits its
            # transactions on a timer, in the middle of a micro-batch
            processing_guarantee="at_least_once",
            broker_session_timeout=config.session_timeout_s,
            broker_heartbeat_interval=config.heartbeat_interval_s,
            # faust refuses a session timeout above its request timeout (default 90 s)
            broker_request_timeout=max(90.0, config.session_timeout_s),
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            producer_acks=-1,
            producer_linger_ms=2,
            producer_max_request_size=T.DLQ_MAX_MESSAGE_BYTES,
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            # a rebalance or a stop waits for the micro-batch in flight and commits it before
            # the partitions go: no table writes to partitions another worker now owns, and no
            # event answered by both (at-least-once otherwise redelivers the batch)
            stream_wait_empty=True,
            # the event records released by the stream-time merger go out in its order
            ConsumerScheduler=StreamTimeScheduler,
            **extra_conf,
        )
        # recstream reads and writes bytes and does its own (de)serialization: never pickle.
        # Topics get the serializers as arguments, not as a faust.Schema: with tables in
        # the app, faust 0.15 decodes a topic declared with schema= using JSON keys, and
        # silently drops what fails to decode.
        raw_args: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        raw: dict[str, Any] = {"schema": faust.Schema(**raw_args)}
        self.event_topic_names = {s.topic(t): t for t in T.EVENT_TOPICS}
        # the consumer holds the event records and releases them in stream-time order
        self.stream_time = None if config.max_task_idle_ms < 0 else StreamTimeMerger(self.event_topic_names, max_idle_s=config.max_task_idle_ms / 1000.0)
        self.items_topic = self.app.topic(s.topic(T.ITEMS), partitions=T.CATALOG_PARTITIONS, **raw_args)
        self.events_topic = self.app.topic(*self.event_topic_names, partitions=config.partitions, **raw_args)
        self.recs_topic = self.app.topic(s.topic(T.RECOMMENDATIONS), partitions=config.partitions, **raw_args)
        self.dlq_topic = self.app.topic(s.topic(T.DLQ), partitions=1, **raw_args)
        # exactly-once: what a micro-batch produces waits here until its transactions commit
        self.eos = config.processing_guarantee == "exactly_once"
        self.transactions = (
            PartitionTransactions(
                app_id=s.app_id,
                input_topics=self.event_topic_names,
                make_producer=lambda tid: self.app.producer._new_producer(transactional_id=tid),  # type: ignore[attr-defined]  # faust internals
            )
            if self.eos
            else None
        )
        self.uncommitted_writes = False  # local table writes whose transaction has not committed yet

        self.profiles = _raw(self.app.Table(T.PROFILES_TABLE, partitions=config.partitions, **raw))
        self.popularity_table = _raw(self.app.Table(T.POPULARITY_TABLE, partitions=config.partitions, **raw))
        # always declared (a fixed topic layout); written only with blend weights
        self.cooccurrence_table = _raw(self.app.Table(T.COOCCURRENCE_TABLE, partitions=config.partitions, **raw))
        # the adaptive blend's weights (scoring/adapt.py), one key per input partition
        self.weights_table = _raw(self.app.Table(T.WEIGHTS_TABLE, partitions=config.partitions, **raw))
        # each user's latest recommendation record, as published (the API's lookups)
        self.latest_table = _raw(self.app.Table(T.LATEST_TABLE, partitions=config.partitions, **raw))
        # faust's advice for global tables shared by several workers: one partition and a
        # recovery buffer of one
        self.items_table = cast(
            ObservedGlobalTable,
            self.app.tables.add(_raw(ObservedGlobalTable(self.app, name=T.ITEMS_TABLE, partitions=T.CATALOG_PARTITIONS, recovery_buffer_size=1, **raw))),
        )
        self.items_table.on_changes = self.apply_item_changes
        self.items_table.on_recover(self.rebuild_items)
        # one callback for the steps that depend on each other: faust keeps a table's recovery
        # callbacks in a set, and calls them in no set order
        self.profiles.on_recover(self.on_profiles_recovered)
        # the other partitions' popularity and co-occurrence, followed from their changelogs
        # (streams/evidence.py) and added to the scored models as partial rows
        self.foreign_popularity: dict[int, dict[str, float]] = {}
        self.foreign_cooccurrence: dict[int, dict[str, CooccurrenceRow]] = {}
        self.own_partitions: frozenset[int] = frozenset()
        followed = {T.POPULARITY_TABLE: s.changelog(T.POPULARITY_TABLE)}
        if self.engine.cooccurrence is not None:
            followed[T.COOCCURRENCE_TABLE] = s.changelog(T.COOCCURRENCE_TABLE)
        self.evidence = EvidenceFollower(s, followed, max_skew_ms=config.max_skew_ms)
        if self.stream_time is not None and config.max_skew_ms is not None:
            self.stream_time.horizon = self.evidence.horizon
        self.app.timer(EVIDENCE_APPLY_S)(self.apply_foreign_evidence)
        # table writes of one micro-batch (profiles, popularity) go through faust's producer
        # buffer; let it hold a few batches before the conductor waits for it to drain
        self.app.producer.buffer.max_messages = max(1000, 4 * config.batch_max)

        from .agents import catalog, events

        catalog.register(self)
        events.register(self)
        self.app.timer(config.stats_interval_s)(self.log_stats)
        # Prometheus metrics (per worker registry); served by run_worker when enabled
        self.telemetry = pipeline_metrics(self)

    async def publish(self, topic: Any, key: bytes | None, value: bytes, *, source_topic: str, source_partition: int, partition: int | None = None) -> None:
        """Send a record that answers the input record at ``source_topic``/``source_partition``.

        Under exactly-once, when the input is an event, it joins the transaction of that
        input partition, the one that commits the partition's offsets and its table writes
        when the micro-batch is done (:meth:`commit_batch`).  The recommendations topic is
        co-partitioned with the events: ``partition`` defaults to the input partition.
        """
        if self.transactions is None or source_topic not in self.event_topic_names:
            await topic.send(key=key, value=value, partition=partition)
            return
        self.transactions.add(source_partition, topic.get_topic_name(), partition if partition is not None else source_partition, [(key, value)])

    async def publish_many(self, topic: Any, records: Sequence[tuple[bytes | None, bytes, str, int]]) -> None:
        """Send records that answer input records, in order: ``(key, value, source_topic,
        source_partition)`` each, to the source partition (``topic`` is co-partitioned with
        the events, as in :meth:`publish`).

        At least once: one produce batch per partition instead of one faust send per
        record (faust's per-record path cost more than the rest of an event's processing).
        The batches go to faust's own producer, and faust flushes that producer before it
        commits input offsets, so an input offset is committed only after its answer was
        delivered, as with ``topic.send``.  Under exactly-once every record joins its input
        partition's transaction (:meth:`publish`).
        """
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for key, value, _, source_partition in records:
            by_partition.setdefault(source_partition, []).append((key, value))
        if self.transactions is not None:
            for partition, kvs in by_partition.items():
                self.transactions.add(partition, topic.get_topic_name(), partition, kvs)
            return
        await self._send_batches(topic.get_topic_name(), by_partition)

    async def write_table(self, table: Any, writes: Mapping[int, Sequence[tuple[bytes, bytes] | tuple[bytes, bytes, int]]], events: Mapping[int, Any]) -> None:
        """Set keys of a raw-bytes table: ``writes`` by partition, in order; ``events[p]`` is
        an input event of partition ``p`` (faust routes a table write by the current event).

        The same as ``table[key] = value`` for each (the local store, then a changelog record
        on the partition, and the changelog offset persisted in the store once delivered),
        with one changelog batch per partition instead of one faust send per key.  faust
        flushes the producer before it commits input offsets, so state reaches the changelog
        first, as before.  Under exactly-once the changelog records join the transaction of
        partition ``p`` (:meth:`commit_batch`), and the offset is persisted after the commit.
        A write ``(key, value, event_time)`` (ms) gives its changelog record that timestamp:
        the latest event time the value includes (streams/evidence.py reads no value before
        its own stream time has reached it); a ``(key, value)`` record is stamped by the producer.
        """
        if not writes:
            return
        store = table.data
        now = int(time.time() * 1000)
        records: dict[int, Sequence[Record]] = {}
        for partition, kvs in writes.items():
            write_raw(store, events[partition], kvs)  # one RocksDB write batch per partition
            stamped = bool(kvs) and len(kvs[0]) == 3
            records[partition] = [(k, v, _changelog_stamp(ts, now)) for k, v, ts in kvs] if stamped else kvs  # type: ignore[misc]
        changelog = table.changelog_topic.get_topic_name()

        def persisted(partition: int, offset: int) -> None:
            store.set_persisted_offset(TP(changelog, partition), offset)

        await self._to_changelog(changelog, records, on_delivered=persisted)

    async def _to_changelog(self, changelog: str, records: Mapping[int, Sequence[Record]], on_delivered: Callable[[int, int], None] | None = None) -> None:
        """Send a table's changelog records, by partition: under exactly-once into the
        transaction of the input partition of the same number (:meth:`commit_batch`),
        otherwise through faust's producer at once; ``on_delivered(partition, offset)`` as
        :meth:`_send_batches`'."""
        if self.transactions is not None:
            self.uncommitted_writes = True
            for partition, rs in records.items():
                self.transactions.add(partition, changelog, partition, rs, on_delivered=on_delivered)
            return
        await self._send_batches(changelog, records, on_delivered=on_delivered)

    async def write_progress(self, stream_time_ms: int) -> None:
        """With workers in step (``max_skew_ms``): a progress row on the popularity changelog
        for every partition this worker holds, stamped ``stream_time_ms`` (the micro-batch's
        latest event time). The worker applies its partitions' events in event-time order,
        so each partition's events up to that time are in its rows, however old the
        partition's own latest event or whether the batch had any of it: the other workers'
        horizon reads how far each partition has got from these timestamps
        (streams/evidence.py). Changelog only: the local store never reads it back."""
        if self.config.max_skew_ms is None or not self.own_partitions:
            return
        stamp = _changelog_stamp(stream_time_ms, int(time.time() * 1000))
        partitions = sorted(self.own_partitions)
        if self.transactions is not None:  # only partitions assigned (not in a rebalance's midst)
            partitions = [p for p in partitions if p in self.transactions.producers]
        records: dict[int, Sequence[Record]] = {p: [(progress_key(p), b"", stamp)] for p in partitions}
        await self._to_changelog(self.popularity_table.changelog_topic.get_topic_name(), records)

    async def delete_table_keys(self, table: Any, deletes: Mapping[int, Sequence[bytes]], events: Mapping[int, Any]) -> None:
        """Delete keys of a raw-bytes table: ``deletes`` by partition; ``events[p]`` is an
        input event of partition ``p``.  The same as ``del table[key]`` for each: the key
        leaves the local store, and a tombstone (null value) goes to the changelog
        partition, so compaction removes the key from the changelog and a restored worker
        does not bring it back.  Under exactly-once the tombstones join the transaction of
        partition ``p``, as :meth:`write_table`'s records do."""
        if not deletes:
            return
        from .state import as_event, state_write

        store = table.data
        for partition, keys in deletes.items():
            with as_event(events[partition]), state_write(f"table {table.name}, partition {partition}"):
                for key in keys:
                    store._del(key)  # faust's own delete: every database that may hold the key
                    store._key_index.pop(key, None)
        changelog = table.changelog_topic.get_topic_name()
        tombstones = {p: [(key, None) for key in keys] for p, keys in deletes.items() if keys}

        def persisted(partition: int, offset: int) -> None:
            store.set_persisted_offset(TP(changelog, partition), offset)

        await self._to_changelog(changelog, tombstones, on_delivered=persisted)  # type: ignore[arg-type]

    async def commit_batch(self, events: Sequence[Any]) -> None:
        """Exactly-once: commit what the micro-batch ``events`` produced, with its input
        offsets, one transaction per input partition (at-least-once: nothing to do, faust
        commits the offsets).

        A transaction that fails (this worker was fenced by another holder of the partition,
        or the broker refused) leaves the local tables ahead of the changelogs: the worker
        then exits at once (status 70) without a clean stop, so its next start discards the
        local state and restores it from the changelogs (:func:`streams.worker.claim_state`),
        as after a crash; the batch is processed again from the committed offsets.
        """
        if self.transactions is None:
            return
        try:
            await self.transactions.commit([event.message for event in events])
        except TransactionFailed as exc:
            log.critical("exiting: the micro-batch's transaction failed, local state is ahead of the changelogs: %s", exc)
            logging.shutdown()
            os._exit(70)
        self.uncommitted_writes = False
        self.metrics.counts["transactions"] = self.transactions.committed

    async def _send_batches(
        self, topic_name: str, by_partition: Mapping[int, Sequence[Record]], on_delivered: Callable[[int, int], None] | None = None
    ) -> None:
        """Queue records on faust's producer as record batches, in order within each partition
        (:func:`streams.transactions.send_batches`); each batch's delivery is reported by
        :meth:`_batch_delivered`."""
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]  # faust's aiokafka producer; faust has no batch API
        for partition, records in by_partition.items():

            def sent(n: int, delivery: asyncio.Future, partition: int = partition) -> None:
                delivery.add_done_callback(partial(self._batch_delivered, topic_name, partition, n, on_delivered))

            await send_batches(producer, topic_name, partition, records, on_sent=sent)

    def _batch_delivered(self, topic_name: str, partition: int, n: int, on_delivered: Callable[[int, int], None] | None, delivery: asyncio.Future) -> None:
        if delivery.cancelled() or delivery.exception() is not None:
            error = "cancelled" if delivery.cancelled() else repr(delivery.exception())
            log.error("%d records for %s[%d] were not delivered: %s", n, topic_name, partition, error)
            self.metrics.counts["send_failures"] += n
            return
        if on_delivered is not None:
            on_delivered(partition, delivery.result().offset + n - 1)

    def freeze_startup_heap(self) -> None:
        """Once, at the first event batch: hand every object allocated so far (torch, the
        transformer, faust, the catalog, about half a million) to the garbage collector's
        permanent generation (:func:`gc.freeze`).  Each full collection walked all of them,
        every few thousand events, holding the GIL for 0.1-2 s (measured on the 2-core
        development machine); reference counting still frees them, only cycles among them
        are no longer collected.  The youngest generation is also collected every 10,000
        allocations instead of 700: a micro-batch allocates far more than 700 short-lived
        objects, and each collection found them alive.  Later calls do nothing.
        """
        if not self._startup_heap_frozen:
            self._startup_heap_frozen = True
            gc.freeze()
            young, middle, old = gc.get_threshold()
            gc.set_threshold(max(young, 10_000), middle, old)
            log.info("garbage collector: %d startup objects frozen", gc.get_freeze_count())

    async def compute(self, fn, *args):
        """Run ``fn(*args)`` on the compute thread and wait for it without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.compute_executor, fn, *args)

    # ------------------------------------------------------------------ start-up and recovery
    def create_topics(self) -> bool:
        """Create missing topics; False when an existing one does not match the layout."""
        specs = T.topic_specs(self.settings, partitions=self.config.partitions, replication_factor=self.config.replication_factor)
        ok = True
        for status in T.ensure_topics(self.settings, specs):
            if status.outcome == "mismatch":
                log.error("topic %s does not match recstream's layout: %s", status.name, status.detail)
                ok = False
        return ok

    def apply_item_changes(self, changes: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Keep the matrix in step with the catalog changelog (other writers, recovery).

        Called by faust inside the event loop; the matrix update is queued on the compute
        thread, behind any scoring in progress.
        """
        upserts: dict[str, StoredItem] = {}
        deletes: list[str] = []
        for key, value in changes:
            item_id = key.decode()
            if value is None:
                deletes.append(item_id)
                upserts.pop(item_id, None)
            else:
                upserts[item_id] = decode_item(item_id, value)
        self.compute_executor.submit(self.apply_items, list(upserts.values()), deletes)

    def apply_items(self, stored, deletes: Sequence[str]) -> None:
        """Matrix updates (call on the compute thread)."""
        stored = list(stored)
        if deletes:
            self.matrix.remove([d for d in deletes if d in self.matrix])
        if stored:  # the vectors as a list: the matrix stacks them a slice at a time (no full-size copy)
            self.matrix.upsert([s.item_id for s in stored], [s.vector for s in stored])

    async def rebuild_items(self) -> None:
        """After recovery: the item matrix is exactly the catalog table."""
        # Free the matrix (and its index) that the changelog records of the recovery filled
        # before the catalog is decoded: otherwise both, and the decoded catalog, are held at
        # once. Streams are paused until the recovery callbacks return, so nothing scores the
        # empty matrix; the snapshot below and its submission are not interleaved with changes.
        await self.compute(self.matrix.clear)
        stored = [decode_item(k.decode(), v) for k, v in self.items_table.items()]

        def rebuild() -> None:
            self.matrix.clear()
            self.matrix.reserve(len(stored))  # one allocation of the final size, no doubling and copying
            self.apply_items(stored, [])

        await self.compute(rebuild)
        log.info("item matrix rebuilt from the catalog table: %d items on %s", len(self.matrix), self.device)

    def active_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in self.event_topic_names}

    async def rebuild_popularity(self) -> None:
        """After recovery or a rebalance: popularity = the sum over the partitions held,
        and the other partitions' as far as they were followed (streams/evidence.py)."""
        active = self.own_partitions = frozenset(self.active_partitions())
        per_partition: dict[int, list[tuple[str, float]]] = {}
        for key, value in self.popularity_table.items():
            partition, item_id = split_popularity_key(key)
            if partition in active and item_id != PROGRESS_ITEM:
                per_partition.setdefault(partition, []).append((item_id, decode_log2(value)))
        half_life = self.engine.config.popularity_half_life_ms

        def rebuild() -> None:
            merged: dict[str, float] = {}
            self.partition_popularity.clear()
            for partition, entries in per_partition.items():
                self.partition_popularity[partition] = DecayedPopularity.from_items(half_life, entries)
                for item_id, lg in entries:
                    merged[item_id] = float(np.logaddexp2(merged[item_id], lg)) if item_id in merged else lg
            self.popularity.clear()  # the engine holds this object: refill it in place
            for item_id, lg in merged.items():
                self.popularity.set_log2(item_id, lg)
            for partition in list(self.foreign_popularity):
                if partition in active:  # now held: its table is the truth
                    del self.foreign_popularity[partition]
                else:
                    for item_id, lg in self.foreign_popularity[partition].items():
                        self.popularity.replace_partial(item_id, None, lg)

        await self.compute(rebuild)
        log.info("popularity rebuilt: %d items from partitions %s", len(self.popularity), sorted(active))

    async def rebuild_cooccurrence(self) -> None:
        """After recovery or a rebalance (with blend weights): one co-occurrence model per
        partition held, from its ``"<partition>:<item>"`` rows, and the scored model = their
        sum (:func:`scoring.cooccurrence.merge_rows`, bounded to the top neighbours)."""
        engine = self.engine
        if engine.cooccurrence is None:
            return
        active = self.active_partitions()
        per_partition: dict[int, list[tuple[str, CooccurrenceRow]]] = {}
        for key, value in self.cooccurrence_table.items():
            partition, item_id = split_popularity_key(key)
            if partition in active:
                per_partition.setdefault(partition, []).append((item_id, CooccurrenceRow.from_bytes(value)))

        def rebuild() -> None:
            merged: dict[str, list[CooccurrenceRow]] = {}
            self.partition_cooccurrence.clear()
            for partition, entries in per_partition.items():
                model = self.partition_cooccurrence[partition] = engine.config.new_cooccurrence()
                for item_id, row in entries:
                    model.set_row(item_id, row)
                    merged.setdefault(item_id, []).append(row)
            total = engine.cooccurrence
            assert total is not None
            total.clear()  # the engine holds this object: refill it in place
            for item_id, rows in merged.items():
                # a copy: the partition's model updates its own rows in place
                total.set_row(item_id, merge_rows(rows, total.max_neighbours if len(rows) > 1 else None))
            for partition in list(self.foreign_cooccurrence):
                if partition in active:  # now held: its table is the truth
                    del self.foreign_cooccurrence[partition]
                else:
                    for item_id, row in self.foreign_cooccurrence[partition].items():
                        total.replace_partial(item_id, None, row)

        await self.compute(rebuild)
        log.info("co-occurrence rebuilt: %d items from partitions %s", len(engine.cooccurrence), sorted(active))

    async def on_profiles_recovered(self) -> None:
        """After recovery or a rebalance, in this order: the models of the partitions now
        held (which sets :attr:`own_partitions`), then following the others' evidence."""
        await self.rebuild_popularity()
        await self.rebuild_cooccurrence()
        await self.rebuild_weights()
        await self.follow_evidence()

    async def follow_evidence(self) -> None:
        """After recovery or a rebalance: follow the partitions this worker does not hold."""
        others = set(range(self.config.partitions)) - self.own_partitions
        self.evidence.follow(others)
        self.evidence.start()

    async def apply_foreign_evidence(self) -> None:
        """Add what the followed partitions' changelogs brought to the scored models."""
        updates = self.evidence.drain()
        if updates:
            await self.compute(self._apply_foreign, updates)

    def _apply_foreign(self, updates: Mapping[tuple[str, int, bytes], bytes | None]) -> None:
        """(compute thread) Replace each followed row's old part of the scored models by its new one."""
        own = self.own_partitions
        cooc = self.engine.cooccurrence
        bad = 0
        for (table, partition, key), value in updates.items():
            if partition in own:  # held here since: its own table counts it
                continue
            try:
                _, item_id = split_popularity_key(key)
                if item_id == PROGRESS_ITEM:  # how far the partition has got: for the horizon only
                    continue
                if table == T.POPULARITY_TABLE:
                    part = self.foreign_popularity.setdefault(partition, {})
                    new = None if value is None else decode_log2(value)
                    if new is not None and not math.isfinite(new):
                        raise ValueError(f"popularity {new} is not finite")
                    old = part.pop(item_id, None)
                    if new is not None:
                        part[item_id] = new
                    self.popularity.replace_partial(item_id, old, new)
                elif cooc is not None:
                    rows = self.foreign_cooccurrence.setdefault(partition, {})
                    new_row = None if value is None else CooccurrenceRow.from_bytes(value)
                    old_row = rows.pop(item_id, None)
                    if new_row is not None:
                        rows[item_id] = new_row
                    cooc.replace_partial(item_id, old_row, new_row)
            except (ValueError, struct.error) as exc:
                bad += 1
                if bad == 1:
                    log.warning("skipped an unreadable %s record of partition %d (%s)", table, partition, exc)
        if bad > 1:
            log.warning("skipped %d unreadable records of other partitions' evidence", bad)

    async def rebuild_weights(self) -> None:
        """After recovery or a rebalance: the adaptive weights of the partitions held, as
        their last micro-batch left them (a partition without a stored state starts from
        the configured weights)."""
        adaptive = self.engine.adaptive
        if adaptive is None:
            return
        active = self.active_partitions()
        stored: dict[int, WeightAdapter] = {}
        for key, value in self.weights_table.items():
            partition = int(key)
            if partition in active:
                try:
                    stored[partition] = WeightAdapter.from_bytes(value)
                except AdaptFormatError as exc:
                    log.warning("blend weights of partition %d not restored (%s): they start again from %s", partition, exc, adaptive.initial.label())

        def rebuild() -> None:
            adaptive.adapters = stored
            adaptive.publish()

        await self.compute(rebuild)
        if stored:
            log.info("blend weights restored: %s", adaptive.describe())

    async def log_stats(self) -> None:
        live = "; ".join(
            f"{ranker} HR@10 {f.hits / f.cases:.4f} NDCG@10 {f.ndcg / f.cases:.4f} over {f.cases} cases"
            for ranker, f in sorted(self.engine.prequential.figures.items())
            if f.cases
        )
        adaptive = self.engine.adaptive
        weights = f"; blend weights {adaptive.describe()}" if adaptive is not None and adaptive.published else ""
        log.info(
            "%s; %d items, %d partitions held%s%s",
            self.metrics.summary(),
            len(self.matrix),
            len(self.active_partitions()),
            f"; live quality: {live}" if live else "",
            weights,
        )
