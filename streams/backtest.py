"""``recstream backtest``: replay a time range, then score what the pipeline recommended;
or, with ``--dataset``, run the engine's methods offline side by side.

The replay (:mod:`streams.replay`) runs an isolated worker with per-event emission; this
module reads the replayed catalog, events and recommendation records back from Kafka and
hands them to the pure protocol in :mod:`scoring.backtest`, which also runs the baselines
on exactly the same test cases. :func:`backtest_dataset` reads a dataset folder instead
(:func:`streams.tune.load_source`) and runs every method of :mod:`scoring.sidebyside` on it,
no broker involved.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence, cast

from recstream.scoring.backtest import BacktestConfig, BacktestResult, evaluate_records

from . import topics as T
from .client import read_topic, reader
from .config import KafkaSettings, worker_defaults
from .records import Item, ItemDeleted, Recommendation, ValidationError, decode_recommendation, parse_event, parse_item

if TYPE_CHECKING:
    from .app import WorkerConfig


@dataclass(frozen=True)
class BacktestSettings:
    """Everything ``recstream backtest`` can be told (made from its flags by
    :func:`streams.cli.backtest.backtest_settings`, which checks them).

    ``protocol`` is what is scored (the split, targets, cut-offs, EASE); ``worker`` the
    engine's settings the methods or the replay's worker rank with (item text, profile,
    popularity and co-occurrence, weight adaptation, the ``blend`` file's weights).
    Without ``dataset``, the events from ``from_ms`` to ``to_ms`` of the ``kafka``
    deployment are replayed through ``workers`` isolated workers (or the existing replay
    namespace ``replay_prefix`` is scored); with it, the engine's ``methods`` run offline
    over the dataset, users keyed to ``partitions`` input partitions.
    """

    protocol: BacktestConfig
    worker: WorkerConfig = field(default_factory=worker_defaults)
    kafka: KafkaSettings | None = None  # the deployment replayed (None with a dataset)
    from_ms: int | None = None
    to_ms: int | None = None
    replay_prefix: str | None = None
    workers: int = 1
    dataset: str | None = None
    dataset_options: dict[str, Any] | None = None  # a CSV column mapping (streams.sources.load_dataset)
    partitions: int = 1
    methods: tuple[str, ...] | None = None  # None: every method (learned with a user model)
    user_model: str | None = None
    blend: str | None = None  # the weights file; worker.blend holds its weights
    ranker: str | None = None  # the replay worker's ranker (None: the worker's default)
    json_file: str | None = None
    html_file: str | None = None


def run_backtest(settings: BacktestSettings) -> int:
    """``recstream backtest``: replay (or score an existing replay) and score it, or, with a
    dataset, run the engine's methods offline side by side; print the table and write the
    JSON and HTML files asked for. Returns the exit status."""
    if settings.dataset:
        return _run_dataset(settings)
    import collections

    from recstream.scoring.backtest import format_table

    from .replay import run_replay

    config = settings.protocol
    source = settings.kafka or KafkaSettings()
    started = time.monotonic()
    timings: dict[str, float] = {}
    if settings.replay_prefix:
        target = source.with_prefix(settings.replay_prefix)
    else:
        from .cli.options import engine_worker_args

        target = source.with_prefix(f"{source.topic_prefix}backtest-{int(time.time())}.")
        partitions = T.list_topics(source).get(source.topic(T.CLICKS))
        if not partitions:
            print(f"recstream backtest: no topic {source.topic(T.CLICKS)!r} on {source.broker}", file=sys.stderr)
            return 1
        worker_args = ["-k", str(config.max_k), *engine_worker_args(settings.worker)]
        if settings.blend:  # the replay's worker ranks with these weights: its column is theirs
            worker_args += ["--blend", settings.blend]
        if settings.user_model:
            worker_args += ["--user-model", settings.user_model]
        if settings.ranker:
            worker_args += ["--ranker", settings.ranker]
        stats = run_replay(
            source,
            target,
            start_ms=settings.from_ms,
            end_ms=settings.to_ms,
            partitions=partitions,
            worker_args=worker_args,
            workers=settings.workers,
        )
        print(
            f"replayed {stats.events_total} events into {target.topic_prefix!r} in {stats.seconds:.1f}s "
            f"({stats.events_total / max(stats.seconds, 1e-9):.0f} events/s)",
            file=sys.stderr,
        )
        timings.update(replay_s=round(stats.seconds, 3), replay_events_per_s=round(stats.events_total / max(stats.seconds, 1e-9), 1))
    scored = time.monotonic()
    result, contents = backtest_replay(target, config, history_len=settings.worker.history_len)
    timings.update(scoring_s=round(time.monotonic() - scored, 3), total_s=round(time.monotonic() - started, 3))
    print(format_table(result, ks=[k for k in config.ks if k >= 10] or config.ks))
    # which ranker made the records (the popularity fallback included), as their ``model`` says
    models = collections.Counter(rec.model for rec in contents.recommendations)
    doc = {
        "replay_prefix": target.topic_prefix,
        "invalid_records": contents.invalid,
        "timings": timings,
        "models": dict(models.most_common()),
        **result.to_dict(),
    }
    write_reports(doc, settings)
    return 0


def _run_dataset(settings: BacktestSettings) -> int:
    """``backtest --dataset``: the engine's methods run offline side by side (:func:`backtest_dataset`)."""
    from recstream.scoring.backtest import format_table

    run = backtest_dataset(
        cast(str, settings.dataset),
        settings.protocol,
        worker=settings.worker,
        methods=method_list(settings.methods, user_model=settings.user_model),
        user_model=settings.user_model,
        partitions=settings.partitions,
        start_ms=settings.from_ms,
        end_ms=settings.to_ms,
        dataset_options=settings.dataset_options,
    )
    print(format_table(run.result, ks=[k for k in run.config.ks if k >= 10] or run.config.ks))
    print(f"engine runs: {', '.join(f'{n} {s:.0f}s' for n, s in run.engine_s.items())}; {run.total_s:.0f}s in all", file=sys.stderr)
    write_reports(run.to_dict(), settings)
    return 0


def write_reports(doc: dict, settings: BacktestSettings) -> None:
    """The backtest's JSON and HTML files (``--json-file``, ``--html-file``), when asked for."""
    import orjson

    if settings.json_file:
        with open(settings.json_file, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        print(f"wrote {settings.json_file}", file=sys.stderr)
    if settings.html_file:
        from recstream.scoring.report import write_html

        write_html(doc, settings.html_file)
        print(f"wrote {settings.html_file}", file=sys.stderr)


@dataclass(slots=True)
class ReplayContents:
    catalog_ids: set[str]
    events: list
    recommendations: list[Recommendation]
    invalid: int


def read_replay(settings: KafkaSettings) -> ReplayContents:
    """The catalog ids, valid events and recommendation records of a (finished) replay namespace."""
    consumer = reader(settings)
    try:
        catalog: set[str] = set()
        invalid = 0
        for r in read_topic(consumer, settings.topic(T.ITEMS)):
            try:
                item = parse_item(r.key, r.value)
            except ValidationError:
                invalid += 1
                continue
            if isinstance(item, ItemDeleted):
                catalog.discard(item.item_id)
            elif isinstance(item, Item):
                catalog.add(item.item_id)
        events = []
        for logical in T.EVENT_TOPICS:
            for r in read_topic(consumer, settings.topic(logical)):
                try:
                    events.append(parse_event(logical, r.key, r.value))
                except ValidationError:
                    invalid += 1
        recs = [decode_recommendation(r.value) for r in read_topic(consumer, settings.topic(T.RECOMMENDATIONS))]
        return ReplayContents(catalog, events, recs, invalid)
    finally:
        consumer.close()


def backtest_replay(
    settings: KafkaSettings,
    config: BacktestConfig,
    *,
    exclude_seen: bool = True,
    history_len: int = 50,
) -> tuple[BacktestResult, ReplayContents]:
    contents = read_replay(settings)
    missing_ids = [e for e in contents.events if e.event_id is None]
    if missing_ids:
        raise ValueError(f"{len(missing_ids)} replayed events have no event_id: the backtest pairs events with recommendations by it")
    result = evaluate_records(contents.events, contents.recommendations, contents.catalog_ids, config, exclude_seen=exclude_seen, history_len=history_len)
    return result, contents


# --- backtest --dataset: the engine's methods offline, side by side ------------------------


def method_list(methods: str | Sequence[str] | None, *, user_model: str | None = None) -> list[str]:
    """The side-by-side methods to run, in table order: ``methods`` (names, or one
    comma-separated string), by default every registered method (``learned`` only with a
    ``user_model``). Unknown names are a ``ValueError`` naming them."""
    from recstream.scoring.sidebyside import METHODS

    if methods is None:
        methods = ",".join(m for m in METHODS if m != "learned" or user_model)
    if isinstance(methods, str):
        methods = methods.split(",")
    names = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    return names


def partition_function(partitions: int | None) -> Callable[[str], int] | None:
    """A user's partition among ``partitions``, as Kafka's default partitioner keys it
    (``None`` for one partition)."""
    if not partitions or partitions == 1:
        return None
    from .client import partition_for

    return lambda user_id: partition_for(user_id.encode(), partitions)


@dataclass
class DatasetBacktest:
    """What :func:`backtest_dataset` measured."""

    dataset: str
    result: BacktestResult
    config: BacktestConfig  # as scored (the engine's popularity half-life filled in)
    methods: list[str]
    blend: Any  # the BlendWeights of the blend method, None for the defaults
    embeddings: dict[str, Any]  # how the catalog was embedded (model, cache)
    engine_s: dict[str, float] = field(default_factory=dict)  # seconds per method
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json-file`` document (and the ``--html-file`` report's input)."""
        return {
            "dataset": self.dataset,
            "methods": self.methods,
            "blend": self.blend.to_dict() if self.blend else None,
            "embeddings": self.embeddings,
            "timings": {"engine_s": self.engine_s, "total_s": self.total_s},
            **self.result.to_dict(),
        }


def backtest(
    dataset: str | Path,
    split: int | str,
    *,
    worker: WorkerConfig | None = None,
    methods: str | Sequence[str] | None = None,
    user_model: str | None = None,
    ks: Sequence[int] = (5, 10, 20),
    targets: Collection[str] = ("click", "purchase", "positive"),
    positive_threshold: float = 4.0,
    ease: bool = False,
    partitions: int = 1,
    start: int | str | None = None,
    end: int | str | None = None,
    dataset_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> DatasetBacktest:
    """What ``recstream backtest --dataset`` runs, from Python: the engine's ``methods`` (by
    default all but ``learned``, which needs a ``user_model`` checkpoint) offline over the dataset
    at ``dataset`` and the baselines on the same cases, every event before ``split`` warming
    the state and every later one tested.

    ``split``, ``start`` and ``end`` are epoch milliseconds or times as the CLI takes them
    (``2016-03-22``, ISO 8601); ``worker`` holds the ranking settings (default: the
    worker's defaults, the ones ``recstream worker`` runs with); ``ks``, ``targets``,
    ``positive_threshold`` and ``ease`` are :class:`scoring.backtest.BacktestConfig`'s.
    ``str(result.result)`` is not the table: use :func:`scoring.backtest.format_table`.
    """
    from .app import WorkerConfig
    from .produce import parse_time

    def when(value: int | str | None) -> int | None:
        return value if value is None or isinstance(value, int) else parse_time(value)

    config = BacktestConfig(split_ms=cast(int, when(split)), targets=frozenset(targets), positive_threshold=positive_threshold, ks=tuple(ks), ease=ease)
    worker = worker or WorkerConfig()
    return backtest_dataset(
        str(dataset),
        config,
        worker=worker,
        methods=method_list(methods, user_model=user_model),
        user_model=user_model,
        partitions=partitions,
        start_ms=when(start),
        end_ms=when(end),
        dataset_options=dataset_options,
        progress=progress,
    )


def backtest_dataset(
    dataset: str,
    config: BacktestConfig,
    *,
    worker: WorkerConfig,
    methods: Sequence[str],
    user_model: str | None = None,
    partitions: int = 1,
    start_ms: int | None = None,
    end_ms: int | None = None,
    dataset_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> DatasetBacktest:
    """Run ``methods`` (names of :data:`scoring.sidebyside.METHODS`, see :func:`method_list`)
    over the dataset at ``dataset`` (events from ``start_ms`` to before ``end_ms``), each from
    an empty state, and score them and the baselines on the same cases.

    ``worker`` holds the worker's settings the methods run with: its engine and profile
    settings (emission per event), the item text fields, the blend method's weights
    (``worker.blend``; ``None``: the defaults) and their online adaptation; ``user_model``
    is the learned method's checkpoint; ``partitions`` keys each user's events to
    one of that many input partitions, as a worker's topics would (the adaptive weights are
    kept per partition).  ``dataset_options`` go to :func:`streams.sources.load_dataset` (a
    CSV column mapping).  Review texts are encoded on CUDA when present."""
    from tqdm import tqdm

    from recstream.encoders.text import TextEncoder
    from recstream.scoring.sidebyside import METHODS, SideBySideOptions, side_by_side
    from recstream.scoring.topk import ItemMatrix

    from .tune import catalog_embeddings, load_source

    started = time.monotonic()
    src = load_source(dataset, end_ms=end_ms, positive_threshold=config.positive_threshold, progress=progress, dataset_options=dataset_options)
    if start_ms is not None:
        src.events = [e for e in src.events if e.ts >= start_ms]
    engine_config = replace(worker.engine_config(), k=config.max_k, emit="per-event")
    blend, fields = worker.blend, tuple(worker.item_fields)
    emb, info = catalog_embeddings(src.catalog, fields=fields, progress=progress)
    encoder = TextEncoder()  # review texts: CUDA when present
    matrix = ItemMatrix(encoder.dim, "cpu")
    matrix.upsert([it.item_id for it in src.catalog], emb)
    opts = SideBySideOptions(
        encoder=encoder,
        engine_config=engine_config,
        profile_config=worker.profile_config(),
        blend=blend,
        adapt=worker.adapt_config,
        item_fields=fields,
        matrix=matrix,
        partition_of=partition_function(partitions),
        extra={"user_model": user_model},
    )
    runs = [METHODS[m](opts) for m in methods]
    config = replace(config, popularity_half_life_ms=engine_config.popularity_half_life_ms)
    bars: dict = {}

    def show(name: str, n: int) -> None:
        if name not in bars:
            for b in bars.values():
                b.close()
            bars[name] = tqdm(total=len(src.events), desc=name, unit=" ev", file=sys.stderr, mininterval=1.0, disable=not progress)
        bars[name].update(n)

    result, seconds = side_by_side(src.events, src.catalog, config, runs, progress=show)
    for b in bars.values():
        b.close()
    return DatasetBacktest(
        dataset=dataset,
        result=result,
        config=config,
        methods=list(methods),
        blend=blend,
        embeddings=info,
        engine_s=seconds,
        total_s=round(time.monotonic() - started, 1),
    )
