"""``recstream tune`` and ``recstream backtest --dataset``: the data they read, and the runs.

``tune`` picks the blend weights (:class:`scoring.blend.BlendWeights`) that rank best on a
validation window *before* the test period, with the pure protocol code
(:func:`scoring.protocol.tune`: every earlier interaction warms the state, every positive
interaction of the window is a case, a grid of weights on the simplex for each
normalisation, the best by NDCG@k then HR@k), and writes the weights file the worker reads
(``recstream worker --blend PATH``).  It reads a dataset folder (``--dataset``, any format of
:mod:`streams.sources`) or the deployment's catalog and event topics; nothing at or after
``--split`` is read.

The signals are set up as the worker computes them: item embeddings of the worker's item
text (``--item-fields``), the profile half-life, the popularity half-life (every event
counts), the co-occurrence neighbours, history length and half-life.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from recstream.scoring.backtest import event_order_key
from recstream.scoring.blend import NORMALIZATIONS
from recstream.scoring.records import KIND_RANK
from recstream.streams.config import worker_defaults
from recstream.streams.records import DAY_MS, Item, ItemDeleted, ValidationError, parse_event, parse_item

if TYPE_CHECKING:
    from .app import WorkerConfig
    from .config import KafkaSettings


@dataclass(frozen=True)
class TuneSettings:
    """Everything ``recstream tune`` can be told (made from its flags by
    :func:`streams.cli.tune.tune_settings`, which checks them).

    ``engine`` holds the worker's settings the signals are computed with (item text and text
    model, profile and popularity half-lives, history length, co-occurrence); the weights
    are tuned on the ``kinds`` of interactions of the validation window, from
    ``validation_from_ms`` to ``split_ms`` (defaults: see :func:`tune_weights`), of the dataset
    at ``dataset`` or, without one, of the ``kafka`` deployment's topics; ``grid_step`` and
    ``normalizations`` make the grid of weights tried; the best, by NDCG@k then HR@k, is
    written to ``output``.
    """

    engine: WorkerConfig = field(default_factory=worker_defaults)
    kafka: KafkaSettings | None = None  # the deployment read (None with a dataset)
    dataset: str | None = None
    dataset_options: dict[str, Any] | None = None  # a CSV column mapping (streams.sources.load_dataset)
    split_ms: int | None = None
    validation_from_ms: int | None = None
    output: str = "blend.json"
    k: int = 10
    grid_step: float = 0.1
    normalizations: tuple[str, ...] = NORMALIZATIONS
    kinds: tuple[str, ...] = tuple(KIND_RANK)  # click, purchase, review
    positive_threshold: float = 4.0

    def protocol_config(self) -> Any:
        """The protocol's methods set up as the worker's engine (:func:`protocol_config`)."""
        e = self.engine
        return protocol_config(
            k=self.k,
            positive_threshold=self.positive_threshold,
            popularity_half_life_days=e.popularity_half_life_days,
            half_life_days=e.half_life_days,
            history_len=e.history_len,
            cooc_neighbours=e.cooc_neighbours,
            cooc_history_len=e.cooc_history_len,
            cooc_half_life_days=e.cooc_half_life_days,
            cooc_pair_decay=e.cooc_pair_decay,
            cooc_recency=e.cooc_recency,
        )

    def grid(self) -> list:
        """The weights tried (:func:`scoring.protocol.weight_grid`)."""
        from recstream.scoring.protocol import weight_grid

        return weight_grid(self.grid_step, self.normalizations)


def run_tune(settings: TuneSettings) -> int:
    """``recstream tune``: tune the weights, write them to ``settings.output`` and print the
    result. Returns the exit status."""
    from recstream.scoring.blend import BlendWeights

    src = load_source(
        settings.dataset,
        settings.kafka,
        end_ms=settings.split_ms,
        positive_threshold=settings.positive_threshold,
        dataset_options=settings.dataset_options,
    )
    fields = settings.engine.item_fields
    emb, info = catalog_embeddings(src.catalog, fields=fields, model=settings.engine.model)
    weights, meta = tune_weights(
        src,
        emb,
        split_ms=settings.split_ms,
        validation_from_ms=settings.validation_from_ms,
        kinds=settings.kinds,
        config=settings.protocol_config(),
        grid=settings.grid(),
    )
    meta["embeddings"] = {"model": info["model"], "item_fields": list(fields)}
    BlendWeights.save(weights, settings.output, meta=meta)
    v = meta["validation"]
    k = settings.k
    print(
        f"{weights.label()}: HR@{k} {v[f'best_hr@{k}']:.4f}, NDCG@{k} {v[f'best_ndcg@{k}']:.4f} on {v['cases']} validation "
        f"cases (interactions {v['interactions'][0]}-{v['interactions'][1]}); wrote {settings.output}"
    )
    return 0


@dataclass
class Source:
    """A catalog and a time-ordered event log, from a dataset or from the topics."""

    name: str
    catalog: list[Item]
    events: list  # Click | Purchase | Review, in the protocol's order


def load_protocol_data(path: str | Path, *, positive_threshold: float = 4.0, kinds: Sequence[str] = ("click", "purchase"), progress: bool = True) -> Any:
    """Read a dataset (:func:`streams.sources.load_dataset`) into
    :class:`scoring.protocol.ProtocolData` (:func:`scoring.protocol.protocol_data`)."""
    from tqdm import tqdm

    from recstream.scoring.protocol import protocol_data

    from .sources import load_dataset

    with tqdm(desc="read dataset", unit=" rows", file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
        ds = load_dataset(path, positive_threshold=positive_threshold, progress=bar.update)
    return protocol_data(ds, positive_threshold=positive_threshold, kinds=kinds)


def load_source(
    dataset: str | None,
    settings: Any = None,
    *,
    end_ms: int | None = None,
    positive_threshold: float = 4.0,
    progress: bool = True,
    dataset_options: dict[str, Any] | None = None,
) -> Source:
    """The dataset at ``dataset`` (events before ``end_ms``; ``dataset_options``, such as a
    CSV column mapping, go to :func:`streams.sources.load_dataset`), or, without one, the
    catalog and event topics of ``settings``' deployment."""
    from tqdm import tqdm

    if dataset:
        from .sources import load_dataset

        with tqdm(desc=f"reading {dataset}", unit=" rows", file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
            ds = load_dataset(dataset, positive_threshold=positive_threshold, end_ms=end_ms, progress=bar.update, **(dataset_options or {}))
        catalog = list({item.item_id: item for item in ds.catalog}.values())
        return Source(ds.name, catalog, sorted(ds.events, key=event_order_key))
    from . import topics as T
    from .client import read_topic, reader

    consumer = reader(settings)
    try:
        items: dict[str, Item] = {}
        for r in read_topic(consumer, settings.topic(T.ITEMS)):
            try:
                item = parse_item(r.key, r.value)
            except ValidationError:
                continue
            if isinstance(item, ItemDeleted):
                items.pop(item.item_id, None)
            elif isinstance(item, Item):
                items[item.item_id] = item
        events = []
        for logical in T.EVENT_TOPICS:
            for r in tqdm(
                read_topic(consumer, settings.topic(logical)),
                desc=f"reading {logical}",
                unit=" records",
                file=sys.stderr,
                disable=not progress,
                mininterval=1.0,
            ):
                try:
                    ev = parse_event(logical, r.key, r.value)
                except ValidationError:
                    continue
                if end_ms is None or ev.ts < end_ms:
                    events.append(ev)
    finally:
        consumer.close()
    return Source(settings.topic_prefix or "topics", list(items.values()), sorted(events, key=event_order_key))


def catalog_embeddings(
    catalog: Sequence[Item],
    *,
    fields: Sequence[str],
    model: str | None = None,
    cache_dir: str | Path | None = ".recstream/cache",
    device: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Unit embeddings of the worker's item text of each catalog item (cached on disk)."""
    from recstream.encoders.text import item_text
    from recstream.scoring.protocol import embed_texts

    texts = [item_text(it.title, it.categories, it.description, fields=tuple(fields)) for it in catalog]
    return embed_texts(texts, model=model, cache_dir=cache_dir, device=device, progress=progress)


def tune_weights(
    source: Source,
    embeddings: np.ndarray,
    *,
    split_ms: int | None,
    validation_from_ms: int | None,
    kinds: Sequence[str],
    config: Any,
    grid: Sequence[Any],
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The best weights on the validation window and a JSON-ready account of the run.

    Windows, in interactions: the test period starts at ``split_ms`` (default: the
    protocol's 80% point); the validation window at ``validation_from_ms`` (default: the
    protocol's 70% point without a split, else the last eighth of the interactions before
    the split, the protocol's proportion).  Nothing at or after the split is used."""
    from recstream.scoring.protocol import ProtocolData, Replay, interactions_from_events, protocol_windows

    interactions = interactions_from_events(source.events, kinds=kinds, positive_threshold=config.positive_threshold)
    known = {it.item_id for it in source.catalog}
    interactions = [it for it in interactions if it.item_id in known]
    n = len(interactions)
    if n == 0:
        raise ValueError("no interaction on a catalog item to tune on")
    val_default, test_default = protocol_windows(n)
    if split_ms is None:
        end = test_default
    else:
        end = next((i for i, it in enumerate(interactions) if it.ts >= split_ms), n)
    if validation_from_ms is None:
        start = val_default if split_ms is None else int(end * (1 - 0.1 / 0.8))
    else:
        start = next((i for i, it in enumerate(interactions) if it.ts >= validation_from_ms), n)
    if not 0 < start < end:
        raise ValueError(
            f"empty warm-up or validation window: interactions [0, {start}) warm, [{start}, {end}) validate (of {n}); choose --validation-from before --split"
        )
    data = ProtocolData(source.name, list(source.catalog), interactions[:end])
    t0 = time.perf_counter()
    replay = Replay(data, embeddings, config)
    replay.advance(start, progress=progress)
    res = replay.evaluate(end, grid=grid, blends=None, baselines=True, text_only=True, progress=progress)
    if res.cases == 0:
        raise ValueError(f"the validation window [{start}, {end}) has no case to tune on")
    best = res.best()
    k = config.k
    ranked = sorted(res.grid, key=lambda p: (-p.ndcg, -p.hit_rate))
    meta = {
        "tuned_on": source.name,
        "validation": {
            "interactions": [start, end],
            "from_ms": interactions[start].ts,
            "to_ms": interactions[end - 1].ts,
            "cases": res.cases,
            f"best_hr@{k}": best.hit_rate,
            f"best_ndcg@{k}": best.ndcg,
            "baselines": res.table(k),
            "top5": [{"weights": p.weights.normalized().to_dict(), f"hr@{k}": p.hit_rate, f"ndcg@{k}": p.ndcg} for p in ranked[:5]],
            "grid_points": len(grid),
        },
        "test_period_from_ms": interactions[end].ts if end < n else split_ms,
        "config": config.to_dict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return best.weights.normalized(), meta


def protocol_config(
    *,
    k: int,
    positive_threshold: float,
    popularity_half_life_days: float,
    half_life_days: float,
    history_len: int,
    cooc_neighbours: int,
    cooc_history_len: int,
    cooc_half_life_days: float,
    cooc_pair_decay: float = 1.0,
    cooc_recency: float = 1.0,
):
    """The protocol's methods set up as the worker's engine."""
    from recstream.encoders.profile import ProfileConfig
    from recstream.scoring.protocol import ProtocolConfig

    return ProtocolConfig(
        k=k,
        positive_threshold=positive_threshold,
        popularity_half_life_ms=popularity_half_life_days * DAY_MS,
        popularity_counts="all",
        cooc_history_len=cooc_history_len,
        cooc_max_neighbours=cooc_neighbours,
        cooc_half_life_ms=cooc_half_life_days * DAY_MS if cooc_half_life_days > 0 else None,
        cooc_events="engine",
        cooc_pair_decay=cooc_pair_decay,
        cooc_recency=cooc_recency,
        profile=ProfileConfig(half_life_ms=int(half_life_days * DAY_MS), history_len=history_len),
    )
