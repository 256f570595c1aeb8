"""The reference protocol of issue 8, as pure code: temporal, full-catalog ranking.

Pure code, no Kafka.  Quoting the issue: "all ratings of ml-latest-small in (timestamp,
user, item) order; the first 80% warm the state; every later rating >= 4 is a test case
whose target is its item; the user's state is every event before it; candidates are the
whole catalog minus items the user already rated."

Data
====

:func:`protocol_data` takes a dataset read by :func:`streams.sources.load_dataset`
(:func:`streams.tune.load_protocol_data` does both) and turns its events into :class:`Interaction` s (:func:`interactions_from_events`): the events
of one user on one item at one time are one interaction (a MovieLens rating is a click,
plus a purchase when it is at least the positive threshold), positive when it holds a
purchase or a review rated at least the threshold.  By default only clicks and purchases
make interactions, so on MovieLens the interactions are exactly the ratings (the tags,
read as reviews, are left out).  The order is the dataset's: ``(ts, user id, item id)``
with the ids compared as text (``load_dataset``'s order; for ml-latest-small it gives the
same split and the same 9,248 cases as a numeric order, and differs only in the order of
one user's ratings within one second).  Item text is ``"<title>. Genres: <g1>, <g2>..."``
(:func:`movie_text`); the embeddings are cached on disk (:func:`embed_texts`).

Windows and cases
=================

With ``n`` interactions, the test window is ``[floor(0.8 n), n)`` and the validation window
``[floor(0.7 n), floor(0.8 n))`` (:func:`protocol_windows`).  In a window, every positive
interaction is a case whose target is its item, unless its user has no earlier interaction
at all (a *cold* case: counted, not scored; ml-latest-small has 78 of 9,326, which leaves
the issue's 9,248).  Every method is asked for the user's top ``k`` over the whole catalog
minus the items the user interacted with before (which never include the target on
MovieLens), with every earlier interaction applied to its state and none later.

Methods
=======

* ``popularity``: :class:`~scoring.baselines.PopularityBaseline`, 30-day half-life, every
  *positive* interaction counts 1 (``popularity_counts="positive"``, which reproduces the
  issue's figures; ``"all"`` counts every rating);
* ``item-knn``: :class:`~scoring.baselines.ItemKNNBaseline` (cosine, last 20 positives,
  100 neighbours, no decay; popularity fallback with the same 30-day half-life);
* ``text-only``: :class:`encoders.profile.DecayedProfileModel` (30-day half-life) fed the
  dataset's events of each interaction (a click, plus a purchase for a positive rating),
  ranked by cosine against the item embeddings, as the engine does (a user without a
  usable profile gets the popularity list);
* blends (:mod:`scoring.blend`): the profile's cosines, :class:`CooccurrenceModel`'s
  item-kNN scores and ``log1p`` of the popularity baseline's decayed counts, normalised per
  user over the candidates and weighted.  The co-occurrence model is fed the positive
  interactions (default), all of them (``cooc_events="all"``), or the engine's positives
  (``"engine"``: the positive ones and those holding a click; on MovieLens, where a rating
  is a click, that is all of them), with its ``pair_decay`` and ``recency`` weights
  (default 1: the item-kNN baseline's neighbourhood, bounded the same way).

The baselines are fed one event per interaction: a ``purchase`` when it is positive, else
a review rated 1 (they only need to know which interactions are positive).

Tuning
======

:func:`tune` replays the first 70%, scores every case of the validation window under every
weight vector of a grid (:func:`weight_grid`, one pass: the signals of a batch of cases are
normalised once and every blend of the grid is ranked from them) and returns the best
:class:`~scoring.blend.BlendWeights` by NDCG@k (then HR@k).  :func:`run_reference` does
the whole protocol in one replay: warm to 70%, tune on the validation window, go on to 80%
(the validation interactions are then part of the test's warm-up, as the protocol says),
and evaluate every method on the test window with the weights chosen on validation.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import torch
from tqdm import tqdm

from recstream.encoders.profile import DecayedProfileModel, ProfileConfig, UserProfile
from recstream.encoders.text import item_text
from recstream.scoring.baselines import ItemKNNBaseline, PopularityBaseline
from recstream.scoring.blend import EQUAL_WEIGHTS, NORMALIZATIONS, BlendWeights, blend_topk, candidate_mask, normalize_scores
from recstream.scoring.cooccurrence import CooccurrenceModel, CooccurrenceScorer, RecentItems, is_positive, weight_problem
from recstream.scoring.metrics import RankingMetrics
from recstream.scoring.records import DAY_MS, Item

__all__ = [
    "DAY_MS",
    "ISSUE_TABLE",
    "GridPoint",
    "Interaction",
    "ProtocolConfig",
    "ProtocolData",
    "Replay",
    "WindowResult",
    "embed_texts",
    "grid_ranks",
    "interactions_from_events",
    "movie_text",
    "protocol_data",
    "protocol_windows",
    "run_reference",
    "tune",
    "weight_grid",
]

#: The issue's figures (HR@10, NDCG@10) on ml-latest-small, for comparison.
ISSUE_TABLE: Final = {
    "popularity": (0.047, 0.023),
    "item-knn": (0.077, 0.041),
    "text-only": (0.016, 0.009),
    "blend-equal-zscore": (0.089, 0.046),
}
_EVENT_KINDS: Final = ("click", "purchase", "review")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user's events on one item at one time (e.g. one MovieLens rating)."""

    ts: int
    user_id: str
    item_id: str
    positive: bool
    kinds: tuple[str, ...] = ("click",)
    rating: float | None = None  # the (highest) review rating among the events, if any


def interactions_from_events(
    events: Iterable[Any],
    *,
    kinds: Sequence[str] = ("click", "purchase"),
    positive_threshold: float = 4.0,
) -> list[Interaction]:
    """Group time-ordered events (``streams.records`` clicks, purchases, reviews) into
    interactions: consecutive events with the same ``(ts, user, item)`` are one, positive
    when one of them is a purchase or a review rated at least ``positive_threshold``.
    Events of other ``kinds`` are left out (an interaction made only of them does not
    exist).  Order is kept."""
    unknown = [k for k in kinds if k not in _EVENT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {_EVENT_KINDS}, got {list(kinds)}")
    wanted = frozenset(kinds)
    out: list[Interaction] = []
    key: tuple[int, str, str] | None = None
    group: list[str] = []
    rating: float | None = None
    positive = False

    def close() -> None:
        if key is not None and group:
            out.append(Interaction(key[0], key[1], key[2], positive, tuple(group), rating))

    for ev in events:
        if ev.kind not in wanted:
            continue
        k = (ev.ts, ev.user_id, ev.item_id)
        if k != key:
            close()
            key, group, rating, positive = k, [], None, False
        group.append(ev.kind)
        r = getattr(ev, "rating", None) if ev.kind == "review" else None
        if r is not None:
            rating = r if rating is None else max(rating, r)
        if ev.kind == "purchase" or (ev.kind == "review" and is_positive("review", r, positive_threshold)):
            positive = True
    close()
    return out


def movie_text(item: Item) -> str:
    """``"Toy Story (1995). Genres: Adventure, Animation"`` (just the title without genres)."""
    genres = ", ".join(c for c in item.categories if c)
    return item_text(item.title, (), f"Genres: {genres}" if genres else "", fields=("title", "description"))


@dataclass(slots=True)
class ProtocolData:
    """A catalog (its order is the row order of every score vector) and interactions."""

    name: str
    catalog: list[Item]
    interactions: list[Interaction]
    row_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of = {item.item_id: r for r, item in enumerate(self.catalog)}
        if len(self.row_of) != len(self.catalog):
            raise ValueError("catalog item ids must be unique")

    @property
    def ids(self) -> list[str]:
        return [item.item_id for item in self.catalog]

    def texts(self, text_of: Callable[[Item], str] = movie_text) -> list[str]:
        return [text_of(item) for item in self.catalog]


def protocol_data(ds: Any, *, positive_threshold: float = 4.0, kinds: Sequence[str] = ("click", "purchase")) -> ProtocolData:
    """A dataset that was read (``name``, ``catalog``, ``events`` in time order: a
    :class:`streams.sources.Dataset`) as :class:`ProtocolData`; interactions on items
    outside the catalog are dropped.  ``streams.tune.load_protocol_data`` reads one."""
    catalog = list({item.item_id: item for item in ds.catalog}.values())  # the latest entry of an id
    known = {item.item_id for item in catalog}
    interactions = [it for it in interactions_from_events(ds.events, kinds=kinds, positive_threshold=positive_threshold) if it.item_id in known]
    return ProtocolData(ds.name, catalog, interactions)


def protocol_windows(n: int, test_fraction: float = 0.2, validation_fraction: float = 0.1) -> tuple[int, int]:
    """``(validation_start, test_start)`` for ``n`` interactions: the test window is
    ``[floor((1 - test_fraction) n), n)``, validation the ``validation_fraction`` before it."""
    if not 0 < test_fraction < 1 or not 0 <= validation_fraction < 1 - test_fraction:
        raise ValueError(f"bad fractions: test {test_fraction}, validation {validation_fraction}")
    test_start = int(math.floor(n * (1.0 - test_fraction)))
    val_start = int(math.floor(n * (1.0 - test_fraction - validation_fraction)))
    return val_start, test_start


# --------------------------------------------------------------------------- embeddings


def _model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256()
    h.update(model_dir.name.encode())
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(model_dir)}:{p.stat().st_size}".encode())
    cfg = model_dir / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    return h.hexdigest()


def _model_label(model_dir: Path) -> str:
    """The first folder name, from the model folder up, that is not a generic one."""
    for part in (model_dir, *model_dir.parents):
        if part.name and part.name.lower() not in ("model", "models", "snapshots", "main", "weights"):
            return part.name
    return "model"


def embed_texts(
    texts: Sequence[str],
    *,
    model: str | Path | None = None,
    cache_dir: str | Path | None = ".recstream/cache",
    device: str | None = None,
    batch_size: int = 64,
    chunk: int = 512,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Unit float32 embeddings of ``texts`` with :class:`encoders.text.TextEncoder`, cached
    in ``cache_dir`` (a ``.npy`` file named after the model and a hash of the model files'
    names and sizes, its config and the texts; ``None``: no cache).  Returns the
    embeddings and ``{"model", "cached", "seconds", "file"}``."""
    from recstream.encoders.text import TextEncoder, default_model_path, model_name

    model_dir = (Path(model) if model is not None else default_model_path()).expanduser()
    h = hashlib.sha256(_model_fingerprint(model_dir).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    file = None
    if cache_dir is not None:
        file = Path(cache_dir) / f"embeddings-{_model_label(model_dir)}-{h.hexdigest()[:20]}.npy"
        if file.is_file():
            try:
                emb = np.load(file, allow_pickle=False)
            except (OSError, ValueError):
                emb = None
            if emb is not None and emb.ndim == 2 and emb.shape[0] == len(texts) and emb.dtype == np.float32:
                return emb, {"model": model_name(model_dir), "cached": True, "seconds": 0.0, "file": str(file)}
    t0 = time.perf_counter()
    encoder = TextEncoder(model_dir, device=device, batch_size=batch_size)
    parts = []
    with tqdm(total=len(texts), desc="embed items", unit=" texts", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            parts.append(encoder.encode_numpy(part))
            bar.update(len(part))
    emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.dim), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npy")
        np.save(tmp, emb, allow_pickle=False)
        tmp.replace(file)
    return emb, {"model": encoder.name, "cached": False, "seconds": round(seconds, 1), "file": str(file) if file else None}


# --------------------------------------------------------------------------- configuration

#: What feeds the blend's co-occurrence: positive interactions, every interaction, or the
#: engine's positive events (a click, a purchase, a review rated at least the threshold).
COOC_EVENTS: Final = ("positive", "all", "engine")


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """Parameters of the protocol's methods (defaults: the issue's reference settings)."""

    k: int = 10
    positive_threshold: float = 4.0
    popularity_half_life_ms: float = 30 * DAY_MS
    popularity_counts: str = "positive"
    knn_history_len: int = 20
    knn_max_neighbours: int = 100
    cooc_history_len: int = 20
    cooc_max_neighbours: int = 100
    cooc_half_life_ms: float | None = None
    cooc_events: str = "positive"
    cooc_pair_decay: float = 1.0
    cooc_recency: float = 1.0
    profile: ProfileConfig = ProfileConfig()
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.popularity_counts not in ("positive", "all"):
            raise ValueError(f"popularity_counts must be 'positive' or 'all', got {self.popularity_counts!r}")
        if self.cooc_events not in COOC_EVENTS:
            raise ValueError(f"cooc_events must be one of {', '.join(COOC_EVENTS)}, got {self.cooc_events!r}")
        for name in ("cooc_pair_decay", "cooc_recency"):
            if problem := weight_problem(name, getattr(self, name)):
                raise ValueError(problem)
        if not (self.popularity_half_life_ms > 0 and math.isfinite(self.popularity_half_life_ms)):
            raise ValueError(f"popularity_half_life_ms must be positive, got {self.popularity_half_life_ms}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "positive_threshold": self.positive_threshold,
            "popularity_half_life_days": self.popularity_half_life_ms / DAY_MS,
            "popularity_counts": self.popularity_counts,
            "knn": {"history_len": self.knn_history_len, "max_neighbours": self.knn_max_neighbours, "normalize": "cosine"},
            "cooccurrence": {
                "history_len": self.cooc_history_len,
                "max_neighbours": self.cooc_max_neighbours,
                "half_life_days": None if self.cooc_half_life_ms is None else self.cooc_half_life_ms / DAY_MS,
                "events": self.cooc_events,
                "pair_decay": self.cooc_pair_decay,
                "recency": self.cooc_recency,
            },
            "profile": {
                "half_life_days": self.profile.half_life_ms / DAY_MS,
                "click_weight": self.profile.click_weight,
                "purchase_weight": self.profile.purchase_weight,
            },
            "batch_size": self.batch_size,
        }


def weight_grid(step: float = 0.1, normalizations: Sequence[str] = NORMALIZATIONS) -> list[BlendWeights]:
    """Every ``(text, co-occurrence, popularity)`` on the simplex with the given step (the
    ranking only depends on the weights' ratios), for each normalisation."""
    n = round(1.0 / step)
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1, got {step}")
    out = []
    for norm in normalizations:
        for a in range(n + 1):
            for b in range(n + 1 - a):
                c = n - a - b
                out.append(BlendWeights(round(a / n, 12), round(b / n, 12), round(c / n, 12), norm))
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class GridPoint:
    weights: BlendWeights
    hit_rate: float
    ndcg: float


@dataclass(slots=True)
class WindowResult:
    """What one evaluated window gave."""

    start: int
    end: int
    start_ts: int | None
    end_ts: int | None
    cases: int = 0
    cold: int = 0
    metrics: dict[str, RankingMetrics] = field(default_factory=dict)
    grid: list[GridPoint] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self, k: int) -> dict[str, dict[str, float | None]]:
        """``{method: {"hr@k", "ndcg@k"}}``."""
        out = {}
        for name, m in self.metrics.items():
            flat = m.flat()
            out[name] = {f"hr@{k}": flat[f"hit_rate@{k}"], f"ndcg@{k}": flat[f"ndcg@{k}"]}
        return out

    def best(self) -> GridPoint:
        """The grid point with the highest NDCG (then hit rate; then the earliest)."""
        if not self.grid:
            raise ValueError("no grid was evaluated on this window")
        return max(enumerate(self.grid), key=lambda e: (e[1].ndcg, e[1].hit_rate, -e[0]))[1]


# --------------------------------------------------------------------------- the replay


class Replay:
    """Every method's state, advanced interaction by interaction (see the module doc).

    ``embeddings`` are the catalog's unit vectors, in catalog order.  Call :meth:`advance`
    to apply interactions without scoring and :meth:`evaluate` to score the cases of the
    next window; both continue from where the previous call stopped.
    """

    def __init__(self, data: ProtocolData, embeddings: np.ndarray, config: ProtocolConfig | None = None) -> None:
        cfg = config or ProtocolConfig()
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(data.catalog):
            raise ValueError(f"embeddings have shape {emb.shape}, expected ({len(data.catalog)}, dim)")
        self.data = data
        self.config = cfg
        self.ids = data.ids
        self.row_of = data.row_of
        self.emb = emb
        self._emb_t = torch.from_numpy(emb)
        n = len(self.ids)
        catalog = frozenset(self.ids)
        h = cfg.popularity_half_life_ms
        self.popularity = PopularityBaseline(h, catalog=catalog)
        self.knn = ItemKNNBaseline(
            history_len=cfg.knn_history_len,
            max_neighbours=cfg.knn_max_neighbours,
            positive_threshold=cfg.positive_threshold,
            catalog=catalog,
            popularity_half_life_ms=h,
        )
        self.model = DecayedProfileModel(cfg.profile, dim=emb.shape[1])
        self.profiles: dict[str, UserProfile] = {}
        self.cooc = CooccurrenceModel(
            cfg.cooc_max_neighbours, cfg.cooc_half_life_ms, cfg.cooc_history_len, cfg.positive_threshold,
            pair_decay=cfg.cooc_pair_decay, recency=cfg.cooc_recency,
        )  # fmt: skip
        self.positives = RecentItems(cfg.cooc_history_len)
        self.cooc_scorer = CooccurrenceScorer(self.cooc, self.row_of.get, n)
        #: log2 of each row's decayed interaction count at the epoch (DecayedPopularity's key)
        self.pop_log2 = np.full(n, -math.inf, dtype=np.float64)
        self.rated_rows: dict[str, list[int]] = {}
        self.rated_ids: dict[str, set[str]] = {}
        self.position = 0

    # ------------------------------------------------------------------ state
    def apply(self, it: Interaction) -> None:
        """Apply one interaction to every method's state."""
        row = self.row_of.get(it.item_id)
        # baselines: one event each; only positivity matters to them (a non-positive one
        # only counts for popularity, and only with popularity_counts="all")
        counted = it.positive or self.config.popularity_counts == "all"
        if it.positive:
            self.popularity.observe(it.user_id, it.item_id, it.ts, "purchase")
            self.knn.observe(it.user_id, it.item_id, it.ts, "purchase")
        elif counted:
            self.popularity.observe(it.user_id, it.item_id, it.ts, "review", 1.0)
            self.knn.observe(it.user_id, it.item_id, it.ts, "review", 1.0)
        # the text profile: the dataset's own events
        profile = self.profiles.get(it.user_id)
        if profile is None:
            profile = self.profiles[it.user_id] = self.model.new_profile(it.user_id)
        item_vec = None if row is None else self.emb[row]
        for kind in it.kinds:
            self.model.apply(
                profile, kind=kind, item_id=it.item_id, ts=it.ts, item_vec=item_vec, text_vec=None,
                rating=it.rating if kind == "review" else None,
            )  # fmt: skip
        # the blend's co-occurrence (see COOC_EVENTS) and popularity
        events = self.config.cooc_events
        if it.positive or events == "all" or (events == "engine" and "click" in it.kinds):
            self.cooc.observe(self.positives.view(it.user_id), it.item_id, it.ts)
            self.positives.push(it.user_id, it.item_id)
        if row is not None:
            if counted:
                self.pop_log2[row] = np.logaddexp2(self.pop_log2[row], it.ts / self.config.popularity_half_life_ms)
            self.rated_rows.setdefault(it.user_id, []).append(row)
        self.rated_ids.setdefault(it.user_id, set()).add(it.item_id)

    def popularity_signal(self, now_ms: int) -> np.ndarray:
        """``log1p`` of every row's decayed count at ``now_ms`` (float32)."""
        with np.errstate(over="ignore"):
            return np.log1p(np.exp2(self.pop_log2 - now_ms / self.config.popularity_half_life_ms)).astype(np.float32)

    def advance(self, end: int, progress: bool = True) -> None:
        """Apply interactions up to index ``end`` (exclusive) without scoring anything."""
        items = self.data.interactions
        end = min(end, len(items))
        with tqdm(total=max(0, end - self.position), desc="warm", unit=" ev", file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
            while self.position < end:
                self.apply(items[self.position])
                self.position += 1
                bar.update(1)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        end: int,
        *,
        blends: Mapping[str, BlendWeights] | None = None,
        grid: Sequence[BlendWeights] = (),
        baselines: bool = True,
        text_only: bool = True,
        progress: bool = True,
    ) -> WindowResult:
        """Score every case of the interactions ``[position, end)`` under the baselines
        (``popularity``, ``item-knn``), ``text-only``, each named blend and each grid point,
        applying the interactions as it goes."""
        cfg = self.config
        items = self.data.interactions
        end = min(end, len(items))
        start = self.position
        res = WindowResult(start, end, items[start].ts if start < end else None, items[end - 1].ts if start < end else None)
        names = (["popularity", "item-knn"] if baselines else []) + (["text-only"] if text_only else []) + list(blends or {})
        res.metrics = {name: RankingMetrics((cfg.k,)) for name in names}
        grid_sums = np.zeros((len(grid), 2), dtype=np.float64)
        batch = _Batch(cfg.batch_size, len(self.ids), self.emb.shape[1])
        t_base = t_flush = 0.0
        t0 = time.perf_counter()
        with tqdm(total=end - start, desc="evaluate", unit=" ev", file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
            while self.position < end:
                it = items[self.position]
                if it.positive and it.item_id in self.row_of:
                    if it.user_id not in self.rated_ids:
                        res.cold += 1
                    else:
                        res.cases += 1
                        if baselines:
                            tb = time.perf_counter()
                            excl = self.rated_ids[it.user_id]
                            target = {it.item_id}
                            res.metrics["popularity"].add(self.popularity.recommend(it.user_id, cfg.k, excl, now_ms=it.ts), target)
                            res.metrics["item-knn"].add(self.knn.recommend(it.user_id, cfg.k, excl, now_ms=it.ts), target)
                            t_base += time.perf_counter() - tb
                        self._snapshot(batch, it)
                        if batch.full:
                            tf = time.perf_counter()
                            self._flush(batch, res, blends or {}, grid, grid_sums, text_only)
                            t_flush += time.perf_counter() - tf
                self.apply(it)
                self.position += 1
                bar.update(1)
            tf = time.perf_counter()
            self._flush(batch, res, blends or {}, grid, grid_sums, text_only)
            t_flush += time.perf_counter() - tf
        if len(grid):
            n = max(res.cases, 1)
            res.grid = [GridPoint(w, float(s[0] / n), float(s[1] / n)) for w, s in zip(grid, grid_sums)]
        total = time.perf_counter() - t0
        res.seconds = {"total": round(total, 2), "baselines": round(t_base, 2), "batched_scoring": round(t_flush, 2)}
        return res

    def _snapshot(self, batch: _Batch, it: Interaction) -> None:
        b = batch.size
        profile = self.profiles.get(it.user_id)
        q = None if profile is None else self.model.query(profile)
        if q is None:
            batch.queries[b] = 0.0
            batch.has_query[b] = False
        else:
            batch.queries[b] = q
            batch.has_query[b] = True
        self.cooc_scorer.dense(self.positives.view(it.user_id), out=batch.cooc[b])
        batch.pop[b] = self.popularity_signal(it.ts)
        batch.exclude.append(tuple(self.rated_rows.get(it.user_id, ())))
        batch.target[b] = self.row_of[it.item_id]
        batch.size += 1

    def _flush(
        self,
        batch: _Batch,
        res: WindowResult,
        blends: Mapping[str, BlendWeights],
        grid: Sequence[BlendWeights],
        grid_sums: np.ndarray,
        text_only: bool,
    ) -> None:
        n = batch.size
        if n == 0:
            return
        k = self.config.k
        with torch.inference_mode():
            q = torch.from_numpy(batch.queries[:n])
            text = q @ self._emb_t.T
            cooc = torch.from_numpy(batch.cooc[:n])
            pop = torch.from_numpy(batch.pop[:n])
            cand = candidate_mask(torch.ones(len(self.ids), dtype=torch.bool), batch.exclude)
            target = batch.target[:n]
            if text_only:
                has_q = torch.from_numpy(batch.has_query[:n]).unsqueeze(1)
                scores = torch.where(has_q, text, pop).masked_fill(~cand, -math.inf)
                vals, rows = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                self._add(res.metrics["text-only"], vals, rows, target)
            for name, w in blends.items():
                vals, rows = blend_topk(cand, w, k, text, cooc, pop)
                self._add(res.metrics[name], vals, rows, target)
            if len(grid):
                self._grid(cand, text, cooc, pop, target, grid, grid_sums)
        batch.clear()

    def _add(self, metrics: RankingMetrics, vals: torch.Tensor, rows: torch.Tensor, target: np.ndarray) -> None:
        ids = self.ids
        for v_row, r_row, t in zip(vals.tolist(), rows.tolist(), target.tolist()):
            metrics.add([ids[r] for v, r in zip(v_row, r_row) if v != -math.inf], {ids[t]})

    def _grid(
        self,
        cand: torch.Tensor,
        text: torch.Tensor,
        cooc: torch.Tensor,
        pop: torch.Tensor,
        target: np.ndarray,
        grid: Sequence[BlendWeights],
        sums: np.ndarray,
    ) -> None:
        """Every grid point on one batch, from the target's rank (see :func:`grid_ranks`)."""
        k = self.config.k
        discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        tgt = torch.from_numpy(target)
        by_norm: dict[str, list[int]] = {}
        for g, w in enumerate(grid):
            by_norm.setdefault(w.normalization, []).append(g)
        for norm, idx in by_norm.items():
            z = torch.stack([normalize_scores(s, cand, norm) for s in (text, cooc, pop)])
            weights = torch.tensor([grid[g].as_tuple() for g in idx], dtype=torch.float32)
            ranks = grid_ranks(z, cand, tgt, weights, k).numpy()  # (B, G), k = not in the top k
            hit = ranks < k
            gain = np.where(hit, discount[np.minimum(ranks, k - 1)], 0.0)
            sums[idx, 0] += hit.sum(axis=0)
            sums[idx, 1] += gain.sum(axis=0)


def grid_ranks(z: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """The 0-based rank of each user's target under each weight vector, capped at ``k``.

    ``z`` is ``(3, B, N)`` normalised signals, ``weights`` ``(G, 3)`` (non-negative, none all
    zero).  The rank is the number of *other* candidates whose blended score is at least the
    target's: ties count against the target (a blend that cannot tell items apart earns no
    hit; ``torch.topk`` would order the ties arbitrarily).  Computed without ranking the
    catalog: an item at least as good as the target in all three signals outranks it under
    every weight vector, so a user with ``k`` such items misses everywhere (so does a target
    that is not a candidate); otherwise only the
    items at least as good in some signal can outrank the target, and their blended
    differences are one small matrix product with all the weight vectors.
    """
    n_sig, batch, _ = z.shape
    out = torch.full((batch, weights.shape[0]), k, dtype=torch.long)
    ar = torch.arange(batch)
    diff = z - z[:, ar, target].unsqueeze(2)  # (3, B, N)
    others = candidates.clone()
    others[ar, target] = False
    at_least = (diff >= 0) & others  # (3, B, N)
    dominating = at_least.all(dim=0).sum(dim=1)  # (B,)
    wt = weights.T.contiguous()  # (3, G)
    active = (dominating < k) & candidates[ar, target]  # an excluded target is a miss
    for b in torch.nonzero(active).flatten().tolist():
        items = torch.nonzero(at_least[:, b].any(dim=0)).flatten()
        if items.numel() == 0:
            out[b] = 0
            continue
        s = diff[:, b, items].T @ wt  # (m, G): blended score minus the target's
        out[b] = (s >= 0).sum(dim=0).clamp(max=k)
    return out


class _Batch:
    """Per-case inputs of the batched methods, filled by :meth:`Replay._snapshot`."""

    def __init__(self, capacity: int, n_items: int, dim: int) -> None:
        self.capacity = capacity
        self.queries = np.zeros((capacity, dim), dtype=np.float32)
        self.has_query = np.zeros(capacity, dtype=bool)
        self.cooc = np.zeros((capacity, n_items), dtype=np.float32)
        self.pop = np.zeros((capacity, n_items), dtype=np.float32)
        self.target = np.zeros(capacity, dtype=np.int64)
        self.exclude: list[tuple[int, ...]] = []
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def clear(self) -> None:
        self.size = 0
        self.exclude = []


# --------------------------------------------------------------------------- entry points


def tune(
    data: ProtocolData,
    embeddings: np.ndarray,
    start: int,
    end: int,
    *,
    config: ProtocolConfig | None = None,
    grid: Sequence[BlendWeights] | None = None,
    progress: bool = True,
) -> BlendWeights:
    """The grid's best blend weights (NDCG@k, then HR@k) on the cases of the interactions
    ``[start, end)``, every earlier interaction warming the state.  ``grid`` defaults to
    :func:`weight_grid` with step 0.1 over both normalisations.  Never look at the test
    window here: pass a validation window before it."""
    if not 0 <= start < end <= len(data.interactions):
        raise ValueError(f"bad window [{start}, {end}) for {len(data.interactions)} interactions")
    replay = Replay(data, embeddings, config)
    replay.advance(start, progress=progress)
    res = replay.evaluate(end, grid=grid if grid is not None else weight_grid(), baselines=False, text_only=False, progress=progress)
    if res.cases == 0:
        raise ValueError(f"the window [{start}, {end}) has no case to tune on")
    return res.best().weights


def run_reference(
    data: ProtocolData,
    embeddings: np.ndarray,
    *,
    config: ProtocolConfig | None = None,
    grid: Sequence[BlendWeights] | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole protocol in one replay (see the module doc): tune on the validation
    window, then evaluate popularity, item-kNN, text-only, the tuned blend and the issue's
    equal-weight z-score blend on the test window.  Returns a JSON-ready document."""
    cfg = config or ProtocolConfig()
    grid = list(grid) if grid is not None else weight_grid()
    n = len(data.interactions)
    val_start, test_start = protocol_windows(n, test_fraction, validation_fraction)
    replay = Replay(data, embeddings, cfg)
    t0 = time.perf_counter()
    replay.advance(val_start, progress=progress)
    t_warm = time.perf_counter() - t0
    val = replay.evaluate(test_start, grid=grid, blends={"blend-equal-zscore": EQUAL_WEIGHTS}, progress=progress)
    best = val.best()
    test = replay.evaluate(n, blends={"blend-tuned": best.weights, "blend-equal-zscore": EQUAL_WEIGHTS}, progress=progress)
    k = cfg.k
    per_norm = {}
    for norm in dict.fromkeys(w.normalization for w in grid):
        pts = [p for p in val.grid if p.weights.normalization == norm]
        top = max(pts, key=lambda p: (p.ndcg, p.hit_rate))
        per_norm[norm] = {"weights": top.weights.normalized().to_dict()["weights"], f"hr@{k}": top.hit_rate, f"ndcg@{k}": top.ndcg}
    ranked = sorted(val.grid, key=lambda p: (-p.ndcg, -p.hit_rate))

    def window(res: WindowResult) -> dict[str, Any]:
        return {
            "interactions": [res.start, res.end],
            "ts_ms": [res.start_ts, res.end_ts],
            "cases": res.cases,
            "cold_cases_skipped": res.cold,
            "table": res.table(k),
            "seconds": res.seconds,
        }

    test_table = test.table(k)
    knn_ndcg = test_table["item-knn"][f"ndcg@{k}"] or 0.0
    return {
        "dataset": data.name,
        "interactions": n,
        "positives": sum(1 for it in data.interactions if it.positive),
        "catalog": len(data.catalog),
        "config": cfg.to_dict(),
        "validation": {
            **window(val),
            "grid_points": len(grid),
            "best_per_normalization": per_norm,
            "top5": [{"weights": p.weights.normalized().to_dict(), f"hr@{k}": p.hit_rate, f"ndcg@{k}": p.ndcg} for p in ranked[:5]],
        },
        "tuned_weights": best.weights.normalized().to_dict(),
        "test": window(test),
        "ratios_ndcg_vs_item_knn": {
            name: (cast(float, row[f"ndcg@{k}"]) / knn_ndcg if knn_ndcg and row[f"ndcg@{k}"] is not None else None) for name, row in test_table.items()
        },
        "issue_table": {name: {f"hr@{k}": hr, f"ndcg@{k}": nd} for name, (hr, nd) in ISSUE_TABLE.items()},
        "seconds": {"warm_to_validation": round(t_warm, 2), "validation": val.seconds, "test": test.seconds},
    }
