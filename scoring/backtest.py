"""The backtest protocol: replay an event log, rank each target event against what the user held.

Pure code, no Kafka I/O.  The same protocol runs on two sources of recommendations:

* **offline** (:func:`run_offline`): the events go through :class:`scoring.engine.Engine`
  in per-event mode, in micro-batches, exactly as a worker would apply them;
* **from a topic** (:func:`evaluate_records`): the events were replayed through a real
  worker (``--emit per-event``) and its ``recommendations`` records were read back; each
  record names its trigger event by ``trigger.event_id``.

Both feed one :class:`Backtest`, which is method-agnostic: it is told, event by event, the
list recstream emitted right after that event, and asks its baselines itself.

The protocol
============

Events (clicks, purchases, reviews) are taken in time order; ties are broken by user, item,
kind (click, purchase, review: the order :mod:`streams.sources` produces them in) and
event id, so the order does not depend on how the events were read.
Events with ``ts < split_ms`` only warm up the state.  Every later event is a *test event*;
a test event is a *target* when its kind is one of :attr:`BacktestConfig.targets`:
``"click"``, ``"purchase"``, or ``"positive"`` (a review rated at least
``positive_threshold``).  Test events that are not targets are *skipped* (counted, and
still applied to every method's state).

One user's events at one time on one item are one *interaction* (a MovieLens rating is a
click and, when positive, also a purchase; a verified Amazon review is also a purchase).
The interaction is tested once, at its first event, as a target of the first target kind
among its events (:func:`interaction_kinds`); the other events are *companions*, skipped.
So no method is ever scored on a state that has already seen part of the interaction.

For a target event of user ``u`` on item ``i`` at time ``t``:

* **recstream** is scored on the list ``u`` *held* when the event was processed: the
  per-event recommendation emitted after the event of ``u`` processed just before it,
  warm-up or test, however long ago.  Offline, the engine takes the events in time order
  (or in a given order); a worker consumes the three event topics independently and may
  take one user's events out of time order across topics, so the records read back are
  paired in the order the worker emitted them (:func:`held_before`), never with a list
  that already reflects the event itself;
* each **baseline** (default: :class:`~scoring.baselines.PopularityBaseline` and
  :class:`~scoring.baselines.ItemKNNBaseline`) is asked for ``u``'s top ``max(ks)`` at
  ``now_ms=t``, after it has observed every earlier event and before it observes this one;
* every method's list excludes the same items: the *exclusion set in force just before the
  event* (``u``'s purchased items, plus the items of ``u``'s last ``history_len`` events
  when the engine's ``exclude_seen`` is on); recstream's lists already do, the baselines
  are given the set.  :class:`ExclusionTracker` derives it from the events alone, exactly
  as the engine does (see its tests);
* the case adds ``relevant = {i}`` to each method's :class:`~scoring.metrics.RankingMetrics`
  (hit rate, recall, precision, NDCG, MRR at every ``k`` of ``ks``), to its
  :class:`~scoring.metrics.Coverage` (catalog coverage of the case lists, counting
  catalog items only) and to its
  calendar-month :class:`~scoring.metrics.SlicedMetrics` (for plots).

A target whose user has no previously processed event is **cold**: counted, not a case,
for every method.  A target whose held list is unavailable is **missing** (offline: the
previous event has no recommendation, ``rec_after=None``; read back from Kafka: the event
has no record of its own, so when it was processed is unknown): counted, not a case, for
every method.  So all
methods are scored on exactly the same cases.  A target item that is excluded for the user
(a repeat interaction under ``exclude_seen``) or not in the catalog stays a case that no
method can hit; such cases are counted (``excluded_targets``, ``unknown_targets``).

Note the asymmetry this protocol keeps on purpose: recstream's list is the one it actually
pushed after the user's previous event, while the baselines are asked at the event itself
(they have also seen other users' events since).  It can only favour the baselines.

Ratios and their intervals
==========================

Since every method is scored on the same cases, in the same order, each method keeps its
NDCG@k (hence hit@k) case by case (:class:`~scoring.metrics.CaseMetrics`), and
:meth:`BacktestResult.ratios` compares every method with every other one: the ratio of
their mean NDCG@k (and hit rate@k) with a 95% *paired* bootstrap confidence interval,
resampling the cases jointly for both methods (:func:`~scoring.metrics.paired_bootstrap_ratios`).
On a small dataset a gain whose interval contains 1 cannot be told from noise.
:meth:`BacktestResult.to_dict` reports them under ``"ratios"``; :func:`format_table`
prints each method's NDCG@10 ratios to item-kNN and popularity under the table.

Agreement of the two paths
==========================

:func:`run_offline` and a replay through a worker give the same lists when the worker runs
with ``--emit per-event``, ``k = max(ks)``, the same ``exclude_seen``, history length and
half-lives, the same catalog, and takes each user's events in the same order: pass the
worker's order (the ``trigger.event_id`` of its records) as ``run_offline(order=...)``.
Popularity fallbacks (users without a usable profile) depend on the interleaving of *all*
users' events, so they agree exactly on a one-partition replay, whose recommendations
topic gives the whole processing order.
Keep the per-event lists with ``keep_lists=True`` and compare
:meth:`BacktestResult.lists_by_event_id`.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, cast

from recstream.scoring.baselines import (
    DEFAULT_POPULARITY_HALF_LIFE_MS,
    ItemKNNBaseline,
    PopularityBaseline,
    Recommender,
    observe_event,
)
from recstream.scoring.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CASE_METRICS,
    CaseMetrics,
    Coverage,
    RankingMetrics,
    SlicedMetrics,
    calendar_month_start,
    latency_histogram,
    latency_summary,
    paired_bootstrap_ratios,
)
from recstream.scoring.records import KIND_RANK, KIND_TOPICS, Click, Event, Item, Purchase, Recommendation, Review

if TYPE_CHECKING:  # the engine side imports torch; only run_offline needs it
    from recstream.encoders.profile import ProfileConfig
    from recstream.encoders.text import TextEncoder
    from recstream.scoring.engine import EngineConfig

__all__ = [
    "COLD",
    "FOLLOW",
    "POPULARITY_MODEL",
    "RECSTREAM",
    "TARGET_KINDS",
    "Backtest",
    "BacktestConfig",
    "BacktestResult",
    "ExclusionTracker",
    "MethodResult",
    "KIND_RANK",
    "default_baselines",
    "evaluate_records",
    "event_order_key",
    "format_table",
    "held_before",
    "interaction_kinds",
    "record_latency_ms",
    "recommendations_by_event_id",
    "run_offline",
    "target_kind",
]

#: The method name recstream's own lists are reported under.
RECSTREAM: Final = "recstream"
#: ``Recommendation.model`` of a popularity fallback (= :data:`scoring.engine.POPULARITY_MODEL`,
#: repeated here so that this module does not import torch).
POPULARITY_MODEL: Final = "popularity"


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``held`` of a target whose user had no recommendation before it (a *cold* target).
COLD: Final = _Marker("COLD")
#: ``held`` default of :meth:`Backtest.observe`: follow the events in time order.
FOLLOW: Final = _Marker("FOLLOW")
#: The values :attr:`BacktestConfig.targets` may hold.
TARGET_KINDS: Final = frozenset({"click", "purchase", "positive"})
_COUNT_NAMES: Final = (
    "events",
    "warm",
    "test",
    "targets",
    "skipped",
    "companions",
    "cold",
    "missing",
    "cases",
    "excluded_targets",
    "unknown_targets",
    "fallback_cases",
)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BacktestConfig:
    """What is evaluated and how.

    Attributes:
        split_ms: events with ``ts < split_ms`` warm up the state; later ones are tested.
        targets: the test events that are cases: any of ``"click"``, ``"purchase"`` and
            ``"positive"`` (a review rated ``>= positive_threshold``).
        positive_threshold: the lowest rating of a positive review (also the item-kNN
            baseline's threshold for a positive event).
        ks: the cut-offs (distinct, >= 1; stored sorted).  recstream must emit at least
            ``max(ks)`` items for the larger cut-offs to be meaningful.
        knn_history_len: positive items the item-kNN baseline remembers per user.
        popularity_half_life_ms: half-life of the baselines' popularity counts; ``None``
            means the engine's (:func:`run_offline`) or the engine default of 7 days.
        ease: also run the recency-weighted EASE baseline (:mod:`scoring.ease`), fit once
            at the split on the interactions before it, as a team would retrain nightly
            (off by default: its fit inverts an items x items matrix, about 30 s and 3 GB
            at 8,000 items).
    """

    split_ms: int
    targets: frozenset[str] = frozenset({"click", "purchase", "positive"})
    positive_threshold: float = 4.0
    ks: tuple[int, ...] = (5, 10, 20)
    knn_history_len: int = 20
    popularity_half_life_ms: int | None = None
    ease: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.split_ms, bool) or not isinstance(self.split_ms, int):
            raise ValueError(f"split_ms: must be an integer (epoch ms), got {self.split_ms!r}")
        targets = frozenset((self.targets,) if isinstance(self.targets, str) else self.targets)
        unknown = targets - TARGET_KINDS
        if unknown or not targets:
            raise ValueError(f"targets: must be a non-empty subset of {', '.join(sorted(TARGET_KINDS))}, got {sorted(targets)}")
        object.__setattr__(self, "targets", targets)
        if not math.isfinite(self.positive_threshold):
            raise ValueError(f"positive_threshold: must be finite, got {self.positive_threshold}")
        ks = tuple(sorted(set(self.ks)))
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks: must be integers >= 1, got {self.ks!r}")
        object.__setattr__(self, "ks", ks)
        if self.knn_history_len < 1:
            raise ValueError(f"knn_history_len: must be at least 1, got {self.knn_history_len}")
        hl = self.popularity_half_life_ms
        if hl is not None and not (hl > 0 and math.isfinite(hl)):
            raise ValueError(f"popularity_half_life_ms: must be positive, got {hl}")

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "split_ms": self.split_ms,
            "targets": sorted(self.targets),
            "positive_threshold": self.positive_threshold,
            "ks": list(self.ks),
            "knn_history_len": self.knn_history_len,
            "popularity_half_life_ms": self.popularity_half_life_ms,
        }


def target_kind(event: Event, config: BacktestConfig) -> str | None:
    """The target kind of ``event`` under ``config`` (``"click"``, ``"purchase"``,
    ``"positive"``), or ``None`` when it is not a target (whatever its time)."""
    if isinstance(event, Review):
        kind = "positive" if event.rating >= config.positive_threshold else None
    elif isinstance(event, (Click, Purchase)):
        kind = event.kind
    else:
        raise TypeError(f"expected a Click, Purchase or Review, got {type(event).__name__}")
    return kind if kind in config.targets else None


def default_baselines(config: BacktestConfig, catalog_ids: Collection[str]) -> list[Recommender]:
    """Decayed popularity and item-kNN (and EASE, with ``config.ease``), restricted to the
    catalog, as configured."""
    half_life = config.popularity_half_life_ms or DEFAULT_POPULARITY_HALF_LIFE_MS
    catalog = frozenset(catalog_ids)
    out: list[Recommender] = [
        PopularityBaseline(half_life, catalog=catalog),
        ItemKNNBaseline(
            history_len=config.knn_history_len,
            positive_threshold=config.positive_threshold,
            catalog=catalog,
            popularity_half_life_ms=half_life,
        ),
    ]
    if config.ease:
        from recstream.scoring.ease import EASEBaseline

        out.append(EASEBaseline(fit_at_ms=config.split_ms, positive_threshold=config.positive_threshold, catalog=catalog, popularity_half_life_ms=half_life))
    return out


# --------------------------------------------------------------------------- exclusions


class ExclusionTracker:
    """The engine's exclusion set per user, derived from the events alone.

    Mirrors :meth:`scoring.engine.Engine` + :class:`encoders.profile.DecayedProfileModel`:
    every purchased item, plus (``exclude_seen``) the items of the user's last
    ``history_len`` events by event time (ties: arrival order; a late event is inserted at
    its time and may fall out at once), whatever their kind or rating.

    Call :meth:`exclusion` *before* :meth:`observe` for the set in force just before an
    event.  Redeliveries are not detected: feed each event once.
    """

    __slots__ = ("exclude_seen", "history_len", "_history", "_purchased")

    def __init__(self, exclude_seen: bool = True, history_len: int = 50) -> None:
        if history_len < 0:
            raise ValueError(f"history_len must be >= 0, got {history_len}")
        self.exclude_seen = exclude_seen
        self.history_len = history_len
        self._history: dict[str, list[tuple[int, str]]] = {}
        self._purchased: dict[str, set[str]] = {}

    @classmethod
    def for_engine(cls, engine: Any) -> ExclusionTracker:
        """A tracker with ``engine``'s ``exclude_seen`` and its profile model's history length."""
        return cls(engine.config.exclude_seen, engine.model.config.history_len)

    def observe(self, event: Event) -> None:
        user, ts = event.user_id, int(event.ts)
        history = self._history.get(user)
        if history is None:
            history = self._history[user] = []
        entry = (ts, event.item_id)
        if not history or ts >= history[-1][0]:
            history.append(entry)
        else:
            history.insert(bisect.bisect_right(history, ts, key=lambda h: h[0]), entry)
        if len(history) > self.history_len:
            del history[: len(history) - self.history_len]
        if isinstance(event, Purchase):
            self._purchased.setdefault(user, set()).add(event.item_id)

    def exclusion(self, user_id: str) -> frozenset[str]:
        """The items excluded from ``user_id``'s recommendations now."""
        purchased = self._purchased.get(user_id, ())
        if self.exclude_seen:
            return frozenset(purchased).union(item for _, item in self._history.get(user_id, ()))
        return frozenset(purchased)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._history


# --------------------------------------------------------------------------- results


def _month_label(start_ms: int) -> str:
    return datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).strftime("%Y-%m")


@dataclass
class MethodResult:
    """One method's accumulated cases.

    ``cases`` holds NDCG@k and hit@k of every case, in case order (the same cases and order
    for every method of a backtest), for :meth:`BacktestResult.ratios`; ``None`` when not
    kept (such a method has no ratios).
    """

    name: str
    metrics: RankingMetrics
    coverage: Coverage
    slices: SlicedMetrics
    cases: CaseMetrics | None = None

    def coverage_summary(self, catalog_size: int, ks: Iterable[int]) -> dict[str, dict[str, float | int | None]]:
        """``{str(k): {"items": distinct items in some top-k, "coverage": items / catalog_size}}``."""
        out: dict[str, dict[str, float | int | None]] = {}
        for k in ks:
            n = self.coverage.distinct(k)
            out[str(k)] = {"items": n, "coverage": n / catalog_size if catalog_size else None}
        return out

    def to_dict(self, catalog_size: int) -> dict[str, Any]:
        ks = self.metrics.ks
        return {
            "metrics": self.metrics.flat(),
            "coverage": self.coverage_summary(catalog_size, ks),
            "slices": [{"month": _month_label(int(row["start_ms"] or 0)), **row} for row in self.slices.summary()],
        }


@dataclass
class BacktestResult:
    """What a backtest measured.

    Attributes:
        config: the protocol's settings.
        catalog_size: items in the catalog (the coverage denominator).
        counts: ``events`` (all observed), ``warm`` (before the split), ``test`` (the
            rest), ``targets`` (test interactions of a target kind), ``skipped`` (test
            events that are not targets, companions included), ``companions`` (test
            events sharing user, time and item with the previous one), ``cold`` (targets of users without a previous event),
            ``missing`` (targets whose held recommendation was unavailable), ``cases``
            (``targets - cold - missing``, the same for every method),
            ``excluded_targets`` / ``unknown_targets`` (cases whose item was excluded for
            the user / is not in the catalog: no method can hit them),
            ``fallback_cases`` (cases where recstream held a popularity fallback, when
            known).
        methods: per method, recstream first, then the baselines in the given order.
        latency: :func:`~scoring.metrics.latency_summary` of the latencies given
            (:func:`run_offline`: engine time of the batch each event was in;
            :func:`evaluate_records`: :func:`record_latency_ms`), with their
            :func:`~scoring.metrics.latency_histogram` under ``"histogram"``.
        per_event: with ``keep_lists``, ``(event, recstream's list after it)`` for every
            event in processing order (``None`` list: none available).
    """

    config: BacktestConfig
    catalog_size: int
    counts: dict[str, int]
    methods: dict[str, MethodResult]
    latency: dict[str, Any]
    per_event: list[tuple[Event, tuple[str, ...] | None]] | None = None

    def metrics(self, method: str = RECSTREAM) -> dict[str, float | int | None]:
        """``RankingMetrics.flat()`` of one method."""
        return self.methods[method].metrics.flat()

    def coverage(self, method: str = RECSTREAM) -> dict[str, dict[str, float | int | None]]:
        return self.methods[method].coverage_summary(self.catalog_size, self.config.ks)

    def lists_by_event_id(self) -> dict[str, tuple[str, ...] | None]:
        """recstream's list after each event, keyed by event id (needs ``keep_lists``;
        events without an id are left out)."""
        if self.per_event is None:
            raise ValueError("the per-event lists were not kept (pass keep_lists=True)")
        return {ev.event_id: items for ev, items in self.per_event if ev.event_id is not None}

    def ratios(
        self,
        ks: Iterable[int] | None = None,
        metrics: Sequence[str] = CASE_METRICS,
        *,
        resamples: int = BOOTSTRAP_RESAMPLES,
        seed: int = BOOTSTRAP_SEED,
    ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """Every method's mean NDCG@k and hit@k relative to every other method's, with 95%
        paired bootstrap confidence intervals over the cases.

        Returns ``{"ndcg@10": {"recstream": {"item-knn": {"ratio": 1.23, "ci95": [1.10, 1.37]},
        "popularity": {...}}, "item-knn": {"recstream": ..., ...}, ...}, "hit_rate@10": ...}``:
        for each metric of ``metrics`` (``"ndcg"``, ``"hit_rate"``) at each ``k`` of ``ks``
        (default: every cut-off of the backtest), for each method (numerator) and each
        *other* method (denominator), in :attr:`methods` order, ``ratio`` = the method's
        mean over the cases / the other's, and ``ci95`` = ``[low, high]``, the 2.5th and
        97.5th percentiles of that ratio over ``resamples`` resamples of the cases with
        replacement, each resample drawing the same cases for every method (see
        :func:`~scoring.metrics.paired_bootstrap_ratios`).  An interval that excludes 1
        tells a gain (or a loss) from noise.

        ``ratio`` and ``ci95`` are ``None`` when the other method's mean is 0 (no case, or
        no hit); a bound is ``None`` when not finite.  A method compared with one that
        ranked identically on every case gets exactly 1 and ``[1, 1]``.  The resamples
        depend only on the number of cases and ``seed``: the same backtest gives the same
        intervals, and every metric and pair shares them.  Methods without per-case values
        (:attr:`MethodResult.cases` ``None``) are left out.
        """
        ks = tuple(self.config.ks if ks is None else ks)
        missing = [k for k in ks if k not in self.config.ks]
        if missing:
            raise ValueError(f"k {missing} not among the backtest's cut-offs {self.config.ks}")
        unknown = [m for m in metrics if m not in CASE_METRICS]
        if unknown:
            raise ValueError(f"metrics: {unknown} not among {CASE_METRICS}")
        kept = {name: m.cases for name, m in self.methods.items() if m.cases is not None}
        counts = {name: c.cases for name, c in kept.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"the methods were not scored on the same cases: {counts}")
        values: dict[tuple[str, str], Any] = {}
        pairs: list[tuple[tuple[str, str], tuple[str, str]]] = []
        for metric in metrics:
            for k in ks:
                key = f"{metric}@{k}"
                for name, cases in kept.items():
                    values[(key, name)] = cases.values(metric, k)
                pairs += [((key, a), (key, b)) for a in kept for b in kept if a != b]
        found = paired_bootstrap_ratios(values, pairs, resamples=resamples, seed=seed)
        out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        for ((key, a), (_, b)), interval in found.items():
            out.setdefault(key, {}).setdefault(a, {})[b] = interval
        for metric in metrics:  # every metric@k, even with fewer than two methods
            for k in ks:
                out.setdefault(f"{metric}@{k}", {})
        return {key: out[key] for key in (f"{metric}@{k}" for metric in metrics for k in ks)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able document (string keys only).

        ``config``, ``catalog_size``, ``counts``, ``latency_ms`` and, per method,
        ``methods[name]`` = ``{"metrics", "coverage", "slices"}``; then ``ratios``: each
        method's NDCG@k and hit rate@k relative to every other method, with a 95% paired
        bootstrap confidence interval, at every cut-off (:meth:`ratios`)::

            "ratios": {"ndcg@10": {"recstream": {"item-knn": {"ratio": 1.23, "ci95": [1.10, 1.37]},
                                                 "popularity": {"ratio": 2.01, "ci95": [1.72, 2.33]}},
                                   "item-knn": {"recstream": {...}, "popularity": {...}}, ...},
                       "hit_rate@10": {...}, ...}

        (``None`` ratio and interval where the other method's mean is 0); and
        ``ratios_bootstrap``: ``{"resamples", "seed", "cases", "confidence": 0.95}``, how
        the intervals were made.
        """
        return {
            "config": self.config.to_dict(),
            "catalog_size": self.catalog_size,
            "counts": dict(self.counts),
            "latency_ms": dict(self.latency),
            "methods": {name: m.to_dict(self.catalog_size) for name, m in self.methods.items()},
            "ratios": self.ratios(),
            "ratios_bootstrap": {
                "resamples": BOOTSTRAP_RESAMPLES,
                "seed": BOOTSTRAP_SEED,
                "cases": self._case_count(),
                "confidence": 0.95,
            },
        }

    def _case_count(self) -> int:
        """The cases the ratios are over (those of the methods' per-case values)."""
        return next((m.cases.cases for m in self.methods.values() if m.cases is not None), 0)


# --------------------------------------------------------------------------- the protocol


class Backtest:
    """Accumulates the cases of a stream of ``(event, recommendation after it)`` pairs.

    Args:
        config: the protocol's settings.
        catalog_ids: the catalog (coverage denominator; the default baselines recommend
            only from it).
        baselines: recommenders to evaluate on the same cases; ``None``: decayed
            popularity and item-kNN (:func:`default_baselines`), ``[]``: none.  Each must
            have a distinct ``name`` other than ``"recstream"``.
        keep_lists: keep recstream's per-event lists (:attr:`BacktestResult.per_event`).
    """

    def __init__(
        self,
        config: BacktestConfig,
        catalog_ids: Collection[str],
        baselines: Sequence[Recommender] | None = None,
        *,
        keep_lists: bool = False,
    ) -> None:
        self.config = config
        self.catalog = frozenset(catalog_ids)
        self.baselines: list[Recommender] = default_baselines(config, self.catalog) if baselines is None else list(baselines)
        names = [RECSTREAM, *(b.name for b in self.baselines)]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be distinct, got {names}")
        ks = config.ks
        self._methods = {
            name: MethodResult(
                name,
                RankingMetrics(ks),
                Coverage(max_k=ks[-1]),
                SlicedMetrics(ks=ks, slice_of=calendar_month_start),
                CaseMetrics(ks),
            )
            for name in names
        }
        self._counts = dict.fromkeys(_COUNT_NAMES, 0)
        #: user -> recstream's list after the user's latest event (None: unavailable)
        self._held: dict[str, tuple[str, ...] | None] = {}
        self._held_fallback: dict[str, bool] = {}
        #: user -> (ts, item) of the user's latest event (companions share it)
        self._interaction: dict[str, tuple[int, str]] = {}
        self._latencies: list[float] = []
        self._last_ts: int | None = None
        self._per_event: list[tuple[Event, tuple[str, ...] | None]] | None = [] if keep_lists else None

    def _add_case(self, name: str, ts: int, ranked: Sequence[str], item_id: str) -> None:
        m = self._methods[name]
        m.metrics.add(ranked, (item_id,))
        m.slices.add(ts, ranked, (item_id,))
        assert m.cases is not None
        m.cases.add(ranked, (item_id,))
        m.coverage.add([i for i in ranked if i in self.catalog])

    def observe(
        self,
        event: Event,
        rec_after: Sequence[str] | Recommendation | None,
        *,
        exclude_before: Collection[str],
        latency_ms: float | None = None,
        held: Sequence[str] | Recommendation | None | object = FOLLOW,
        kind: str | None | object = FOLLOW,
    ) -> None:
        """Account for one event; call once per event, in time order.

        Args:
            event: the event.
            rec_after: recstream's list emitted right after this event (item ids best
                first, or the :class:`~streams.records.Recommendation` record); ``None``
                when not available (the user's next target is then *missing*).
            exclude_before: the user's exclusion set in force just before this event
                (:meth:`ExclusionTracker.exclusion`); given to the baselines.
            latency_ms: recstream's latency for this event, if measured.
            held: the list the user held when this event was processed, when the caller
                knows it (a worker may process one user's events out of time order: see
                :func:`held_before`): a list or record, ``None`` (*missing*) or
                :data:`COLD`.  The default, :data:`FOLLOW`, takes the list emitted after
                the user's previous event in time order (``rec_after`` of earlier calls).
            kind: the target kind of the interaction this event starts (see
                :func:`interaction_kinds`); default :data:`FOLLOW`: the event's own
                :func:`target_kind`.

        An event with the same user, time and item as the user's previous event is a
        *companion* of it (one interaction: MovieLens' rating is a click and, when
        positive, a purchase; a verified Amazon review is also a purchase): counted under
        ``companions`` and ``skipped``, never a case, since the interaction was already
        tested at its first event, before any state had seen it.
        """
        cfg = self.config
        own_kind = target_kind(event, cfg)  # also rejects non-events
        if kind is FOLLOW:
            kind = own_kind
        elif kind is not None and kind not in TARGET_KINDS:
            raise ValueError(f"kind: one of {sorted(TARGET_KINDS)} or None, got {kind!r}")
        if isinstance(rec_after, str):
            raise TypeError("rec_after: a sequence of item ids (or a Recommendation), not a single string")
        ts = int(event.ts)
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"events must be given in time order: ts {ts} of event {event.event_id!r} is before {self._last_ts}")
        self._last_ts = ts
        c = self._counts
        c["events"] += 1
        user, item = event.user_id, event.item_id
        companion = self._interaction.get(user) == (ts, item)
        self._interaction[user] = (ts, item)
        if ts < cfg.split_ms:
            c["warm"] += 1
        else:
            c["test"] += 1
            if companion:
                c["companions"] += 1
                c["skipped"] += 1
            elif kind is None:
                c["skipped"] += 1
            else:
                c["targets"] += 1
                if held is FOLLOW:
                    held, fallback = self._held.get(user, COLD), self._held_fallback.get(user, False)
                elif isinstance(held, Recommendation):
                    held_rec = held  # mypy reads the tuple assignment left to right
                    held, fallback = tuple(r.item_id for r in held_rec.items), held_rec.model == POPULARITY_MODEL
                else:
                    fallback = False
                if held is COLD:
                    c["cold"] += 1
                elif held is None:
                    c["missing"] += 1
                else:
                    if isinstance(held, str) or not isinstance(held, Sequence):
                        raise TypeError(f"held: a sequence of item ids, a Recommendation, None or COLD, got {held!r}")
                    c["cases"] += 1
                    if item in exclude_before:
                        c["excluded_targets"] += 1
                    if item not in self.catalog:
                        c["unknown_targets"] += 1
                    if fallback:
                        c["fallback_cases"] += 1
                    self._add_case(RECSTREAM, ts, held, item)
                    for b in self.baselines:
                        ranked = b.recommend(user, cfg.max_k, exclude=exclude_before, now_ms=ts)
                        self._add_case(b.name, ts, ranked, item)
        for b in self.baselines:
            observe_event(b, event)
        if isinstance(rec_after, Recommendation):
            self._held_fallback[user] = rec_after.model == POPULARITY_MODEL
            items: tuple[str, ...] | None = tuple(r.item_id for r in rec_after.items)
        else:
            self._held_fallback.pop(user, None)
            items = None if rec_after is None else tuple(rec_after)
        self._held[user] = items
        if latency_ms is not None:
            self._latencies.append(float(latency_ms))
        if self._per_event is not None:
            self._per_event.append((event, items))

    def result(self) -> BacktestResult:
        """A snapshot of what has been accumulated (observing more does not change it)."""
        ks = self.config.ks
        methods = {}
        for name, m in self._methods.items():
            methods[name] = MethodResult(
                name,
                RankingMetrics(ks).merge(m.metrics),
                Coverage(max_k=ks[-1]).merge(m.coverage),
                SlicedMetrics(ks=ks, slice_of=calendar_month_start).merge(m.slices),
                None if m.cases is None else CaseMetrics(ks).merge(m.cases),
            )
        return BacktestResult(
            config=self.config,
            catalog_size=len(self.catalog),
            counts=dict(self._counts),
            methods=methods,
            latency={**latency_summary(self._latencies), "histogram": latency_histogram(self._latencies)},
            per_event=None if self._per_event is None else list(self._per_event),
        )


# --------------------------------------------------------------------------- the two sources


def event_order_key(event: Event) -> tuple[int, str, str, int, str]:
    """The protocol's order: time, then user, item, kind (click, purchase, review), event id."""
    return (int(event.ts), event.user_id, event.item_id, KIND_RANK[event.kind], event.event_id or "")


def _time_ordered(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=event_order_key)


def interaction_kinds(ordered: Sequence[Event], config: BacktestConfig) -> list[str | None]:
    """The ``kind`` to pass to :meth:`Backtest.observe` for each event of ``ordered`` (in
    :func:`event_order_key` order, where one user's events at one time on one item are
    adjacent): for the first event of an interaction, the first target kind among all its
    events (a MovieLens rating of 5 is a click and a purchase: a purchase target when
    only purchases are targets); ``None`` for its companions (never cases)."""
    kinds: list[str | None] = [None] * len(ordered)
    first = 0
    for i, ev in enumerate(ordered):
        head = ordered[first]
        if i == 0 or (ev.user_id, int(ev.ts), ev.item_id) != (head.user_id, int(head.ts), head.item_id):
            first = i
        if kinds[first] is None:
            kinds[first] = target_kind(ev, config)
    return kinds


def recommendations_by_event_id(records: Iterable[Recommendation]) -> dict[str, Recommendation]:
    """Index ``recommendations`` records by ``trigger.event_id`` (records without one are
    dropped).  The first record of an event wins: a redelivered event is emitted again
    from a state that may already include later events."""
    out: dict[str, Recommendation] = {}
    for rec in records:
        eid = rec.trigger.event_id
        if eid is not None and eid not in out:
            out[eid] = rec
    return out


class _Holdings:
    """What each user holds as their events are processed, one by one.

    Events of one user at the same time on the same item are one interaction (MovieLens'
    rating is a click and, when positive, a purchase; an Amazon review is also a purchase
    when verified): each of them is scored on the list held before the first of them, not
    on a list that already excludes the item because its companion was applied.
    """

    __slots__ = ("_last", "_start")

    def __init__(self) -> None:
        self._last: dict[str, Recommendation] = {}
        self._start: dict[str, tuple[tuple[int, str], Recommendation | _Marker]] = {}

    def before(self, event: Event) -> Recommendation | _Marker:
        """The list ``event``'s user holds when it is processed (:data:`COLD`: none)."""
        user, key = event.user_id, (int(event.ts), event.item_id)
        start = self._start.get(user)
        if start is not None and start[0] == key:
            return start[1]
        held = self._last.get(user, COLD)
        self._start[user] = (key, held)
        return held

    def after(self, user_id: str, rec: Recommendation) -> None:
        """``rec`` was emitted for ``user_id``."""
        self._last[user_id] = rec


def held_before(records: Iterable[Recommendation], events: Mapping[str, Event]) -> dict[str, Recommendation | _Marker]:
    """For each event of ``events`` (by event id) answered in ``records``, the record its
    user held when the worker processed it: the user's previous record, or :data:`COLD`
    before the user's first.

    ``records`` must come in the order the worker emitted them, which is the order of the
    ``recommendations`` topic within each partition (a user's records share a key, hence
    a partition): read each partition by offset.  This is the processing order, which
    can differ from event-time order: the worker consumes the clicks, purchases and
    reviews topics independently, so a user's purchase may be processed before a click
    with an earlier time.  Pairing by processing order never shows a list computed from
    the event itself (or from later events of the user on the same topic).  Events of a
    user at one time on one item are one interaction, scored on the list held before the
    first of them (see :class:`_Holdings`).  The first record of an event wins, as in
    :func:`recommendations_by_event_id`; a redelivery's record is still what the user held
    afterwards.  Records of events not in ``events`` only count as held lists.
    """
    holdings = _Holdings()
    out: dict[str, Recommendation | _Marker] = {}
    for rec in records:
        eid = rec.trigger.event_id
        event = events.get(eid) if eid is not None else None
        if event is not None and eid not in out:
            out[cast(str, eid)] = holdings.before(event)  # not None: it found an event
        holdings.after(rec.user_id, rec)
    return out


def record_latency_ms(rec: Recommendation | None) -> float | None:
    """The worker's latency for the event ``rec`` answers: ``emitted_ts`` minus
    ``trigger.received_ts`` (``None`` when the record does not carry the reception time;
    0 if a step of the worker's wall clock made it negative)."""
    if rec is None or rec.trigger.received_ts is None:
        return None
    return float(max(0, rec.emitted_ts - rec.trigger.received_ts))


def evaluate_records(
    events: Iterable[Event],
    recommendations: Iterable[Recommendation],
    catalog_ids: Collection[str],
    config: BacktestConfig,
    *,
    exclude_seen: bool = True,
    history_len: int = 50,
    baselines: Sequence[Recommender] | None = None,
    keep_lists: bool = False,
) -> BacktestResult:
    """The backtest of recommendations produced elsewhere (read back from Kafka).

    Args:
        events: the replayed events (each with an ``event_id``; taken in time order).
        recommendations: the records read back, in the order the worker emitted them
            (see :func:`held_before`): each target is scored on the record its user held
            when the worker processed it.  A target without a record of its own is
            *missing*; one whose record is its user's first is *cold*.
        catalog_ids: the catalog the worker held.
        config: the protocol.
        exclude_seen, history_len: the worker's settings (for the baselines' exclusion sets).
        baselines: as for :class:`Backtest`.
        keep_lists: as for :class:`Backtest`.

    The latency of an event is :func:`record_latency_ms` of its record.
    """
    ordered = _time_ordered(events)
    records = list(recommendations)
    held = held_before(records, {ev.event_id: ev for ev in ordered if ev.event_id is not None})
    own = recommendations_by_event_id(records)
    bt = Backtest(config, catalog_ids, baselines, keep_lists=keep_lists)
    tracker = ExclusionTracker(exclude_seen, history_len)
    for ev, kind in zip(ordered, interaction_kinds(ordered, config)):
        eid = ev.event_id
        rec = own.get(eid) if eid is not None else None
        bt.observe(
            ev,
            rec,
            exclude_before=tracker.exclusion(ev.user_id),
            latency_ms=record_latency_ms(rec),
            held=held.get(eid) if eid is not None else None,
            kind=kind,
        )
        tracker.observe(ev)
    return bt.result()


def _processing_order(ordered: Sequence[Event], order: Sequence[str] | None) -> list[int]:
    """Indices into ``ordered`` in processing order: time order, or the given event ids."""
    if order is None:
        return list(range(len(ordered)))
    index: dict[str, int] = {}
    for i, ev in enumerate(ordered):
        if ev.event_id is None or ev.event_id in index:
            raise ValueError(f"order: needs events with distinct event ids, got {ev.event_id!r} twice or none")
        index[ev.event_id] = i
    if len(order) != len(ordered) or set(order) != index.keys():
        raise ValueError(f"order: must name every event exactly once ({len(order)} ids for {len(ordered)} events)")
    return [index[eid] for eid in order]


def run_offline(
    events: Iterable[Event],
    catalog: Sequence[Item],
    config: BacktestConfig,
    *,
    encoder: TextEncoder,
    engine_config: EngineConfig | None = None,
    profile_config: ProfileConfig | None = None,
    batch_size: int = 512,
    item_fields: Sequence[str] | None = None,
    device: Any = None,
    baselines: Sequence[Recommender] | None = None,
    keep_lists: bool = False,
    order: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    matrix: Any = None,
    user_encoder: Any = None,
    partition_of: Callable[[str], int] | None = None,
) -> BacktestResult:
    """The backtest of recstream's engine run here.

    The catalog (last entry per item id wins) is embedded with ``encoder`` from
    :func:`~encoders.text.item_text` of ``item_fields`` (default: title, categories,
    description, as the worker) into an :class:`~scoring.topk.ItemMatrix` on ``device``
    (default: the encoder's).  :class:`~scoring.engine.Engine` then applies the events in
    batches of ``batch_size`` with ``engine_config`` forced to ``emit="per-event"`` and
    ``k = max(ks)`` (per-event emission from a batch equals one-at-a-time processing), and
    a :class:`~encoders.profile.DecayedProfileModel` with ``profile_config``.

    The engine takes the events in time order, or in ``order`` (every event id once: the
    order a worker processed them, to reproduce its lists); each target is scored on the
    list its user held when the engine took it, as :func:`held_before` does for a worker.
    The evaluation itself, the baselines and the exclusion sets
    (:class:`ExclusionTracker`, with the engine's settings) follow time order.

    ``progress`` is called with the number of events done after each engine batch.  The
    latency recorded per event is the engine time of its batch.  ``matrix``: an
    :class:`~scoring.topk.ItemMatrix` of the catalog already embedded (it is only read),
    instead of embedding it here.  ``partition_of``: the input partition of a user's
    events, as a worker's topics would have it (default: all on partition 0); it matters
    only for state kept per partition (the adaptive blend's weights).
    """
    from recstream.scoring.engine import Engine, EngineConfig, Incoming

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ecfg = replace(engine_config or EngineConfig(), emit="per-event", k=config.max_k)
    if config.popularity_half_life_ms is None:
        config = replace(config, popularity_half_life_ms=ecfg.popularity_half_life_ms)
    ordered = _time_ordered(events)
    processing = _processing_order(ordered, order)

    items = list({item.item_id: item for item in catalog}.values())
    # user_encoder: a scoring.learned.LearnedUserEncoder (the learned model ranks)
    engine = Engine.for_catalog(
        items, config=ecfg, profile_config=profile_config, encoder=encoder, item_fields=item_fields, device=device, matrix=matrix, user_encoder=user_encoder
    )
    n = len(ordered)
    after: list[Recommendation | None] = [None] * n
    held: list[Recommendation | _Marker] = [COLD] * n
    latency = [0.0] * n
    holdings = _Holdings()
    offsets: dict[tuple[str, int], int] = {}
    profiles: dict = {}
    for start in range(0, n, batch_size):
        chunk_idx = processing[start : start + batch_size]
        batch = []
        for i in chunk_idx:
            topic = KIND_TOPICS[ordered[i].kind]
            partition = partition_of(ordered[i].user_id) if partition_of is not None else 0
            offset = offsets.get((topic, partition), 0)
            batch.append(Incoming(ordered[i], topic, partition, offset))
            offsets[(topic, partition)] = offset + 1
        t0 = time.perf_counter()
        res = engine.process(batch, profiles, now_ms=max(inc.event.ts for inc in batch))
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        profiles.update(res.profiles)
        if len(res.recommendations) != len(batch):  # per-event emission: one per event
            raise RuntimeError(f"engine emitted {len(res.recommendations)} records for {len(batch)} events")
        for i, rec in zip(chunk_idx, res.recommendations):
            held[i] = holdings.before(ordered[i])
            holdings.after(ordered[i].user_id, rec)
            after[i] = rec
            latency[i] = elapsed_ms
        if progress is not None:
            progress(len(batch))

    bt = Backtest(config, [it.item_id for it in items], baselines, keep_lists=keep_lists)
    tracker = ExclusionTracker.for_engine(engine)
    for i, kind in enumerate(interaction_kinds(ordered, config)):
        ev = ordered[i]
        bt.observe(ev, after[i], exclude_before=tracker.exclusion(ev.user_id), latency_ms=latency[i], held=held[i], kind=kind)
        tracker.observe(ev)
    return bt.result()


# --------------------------------------------------------------------------- report


def format_table(
    result: BacktestResult,
    ks: Sequence[int] | None = None,
    metrics: Sequence[str] = ("hit_rate", "ndcg", "mrr"),
) -> str:
    """A terminal table: one row per method, ``metric@k`` columns for each ``k`` of ``ks``
    (default: every cut-off of the backtest), then catalog coverage at each ``k``."""
    ks = tuple(result.config.ks if ks is None else ks)
    missing = [k for k in ks if k not in result.config.ks]
    if missing:
        raise ValueError(f"k {missing} not among the backtest's cut-offs {result.config.ks}")
    short = {"hit_rate": "HR", "recall": "Recall", "precision": "Prec", "ndcg": "NDCG", "mrr": "MRR"}
    header = ["method", "cases"]
    header += [f"{short.get(m, m)}@{k}" for k in ks for m in metrics]
    header += [f"cov@{k}" for k in ks]
    rows = [header]
    for name, m in result.methods.items():
        flat = m.metrics.flat()
        cov = m.coverage_summary(result.catalog_size, ks)
        row = [name, str(flat["cases"])]
        for k in ks:
            for metric in metrics:
                v = flat[f"{metric}@{k}"]
                row.append("-" if v is None else f"{v:.4f}")
        for k in ks:
            v = cov[str(k)]["coverage"]
            row.append("-" if v is None else f"{v:.3f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    c = result.counts
    summary = (
        f"{c['cases']} cases of {c['targets']} targets ({c['cold']} cold, {c['missing']} missing); "
        f"{c['skipped']} test events skipped (not targets, or companions of one); {c['warm']} warm-up events; "
        f"catalog {result.catalog_size} items"
    )
    notes = []
    if c["excluded_targets"]:
        notes.append(f"{c['excluded_targets']} cases target an excluded item")
    if c["unknown_targets"]:
        notes.append(f"{c['unknown_targets']} cases target an item outside the catalog")
    if c["fallback_cases"]:
        notes.append(f"recstream held a popularity fallback in {c['fallback_cases']} cases")
    lat = result.latency
    if lat.get("count"):
        notes.append(f"latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms")
    out = [summary, *lines, *_ratio_lines(result, ks)]
    if notes:
        out.append("; ".join(notes))
    return "\n".join(out)


#: The baselines :func:`format_table` gives every method's ratio to.
_TABLE_BASELINES: Final = ("item-knn", "popularity")


def _ratio_text(interval: Mapping[str, Any] | None) -> str:
    """``"1.234 [1.101, 1.372]"``; ``"-"`` for what is undefined."""
    ratio = None if interval is None else interval.get("ratio")
    if ratio is None:
        return "-"
    ci = interval.get("ci95") if interval is not None else None
    lo, hi = ci if ci is not None else (None, None)
    return f"{ratio:.3f} [{'-' if lo is None else f'{lo:.3f}'}, {'inf' if hi is None else f'{hi:.3f}'}]"


def _ratio_lines(result: BacktestResult, ks: Sequence[int]) -> list[str]:
    """Under the table: each method's NDCG@10 (else NDCG at the first ``k`` shown) relative
    to item-kNN and popularity, with its 95% paired bootstrap interval; nothing when
    neither baseline is there or there is no case."""
    n = result._case_count()
    if not ks or n == 0:
        return []
    k = 10 if 10 in ks else ks[0]
    names = [name for name, m in result.methods.items() if m.cases is not None]
    baselines = [b for b in _TABLE_BASELINES if b in names]
    if not baselines:
        return []
    ratios = result.ratios(ks=(k,), metrics=("ndcg",))[f"ndcg@{k}"]
    rows = []
    for name in names:
        cells = [f"vs {b} {_ratio_text(ratios.get(name, {}).get(b))}" for b in baselines if b != name]
        if cells:
            rows.append((name, cells))
    if not rows:
        return []
    width = max(len(name) for name, _ in rows)
    head = f"NDCG@{k} ratio to the baselines [95% paired bootstrap interval over the {n} cases, {BOOTSTRAP_RESAMPLES} resamples]:"
    return [head, *(f"  {name.ljust(width)}  " + "   ".join(cells) for name, cells in rows)]
