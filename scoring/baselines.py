"""Streaming baselines to compare recstream against in backtests.

Pure code, no Kafka.  A baseline sees the events in time order through
:meth:`Recommender.observe` and can be asked at any moment for a user's top-k through
:meth:`Recommender.recommend`, so a backtest evaluates it exactly like recstream: the
list asked for just before a target event is the list the user "held".

* :class:`PopularityBaseline`: the most popular items by exponentially decayed event
  counts (:class:`scoring.popularity.DecayedPopularity`), the same for every user.
* :class:`ItemKNNBaseline`: item-to-item co-occurrence of positive events within each
  user's recent positive history, with a popularity fallback.

Both are deterministic: equal scores are ordered by item id (ascending).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Container, Iterable
from typing import Final, Literal, Protocol, runtime_checkable

from recstream.scoring.cooccurrence import RecentItems, bound_neighbours, is_positive
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.records import Click, Purchase, Review

__all__ = [
    "DEFAULT_POPULARITY_HALF_LIFE_MS",
    "EVENT_KINDS",
    "ItemKNNBaseline",
    "PopularityBaseline",
    "Recommender",
    "observe_event",
]

#: The event kinds :meth:`Recommender.observe` accepts (``Click.kind`` etc.).
EVENT_KINDS: Final = ("click", "purchase", "review")
#: The engine's default popularity half-life (one week).
DEFAULT_POPULARITY_HALF_LIFE_MS: Final = 7 * 24 * 3600 * 1000

# Decayed weights are stored as w * 2 ** ((ts - ref) / H) for a reference time ``ref``;
# when an exponent would pass this bound, everything is rescaled to a later ``ref``.
_MAX_EXPONENT: Final = 256.0


@runtime_checkable
class Recommender(Protocol):
    """What a backtest needs from a streaming recommender."""

    @property
    def name(self) -> str:
        """A short label for reports."""
        ...

    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        """Learn from one event (``kind`` in :data:`EVENT_KINDS`; ``rating`` for reviews)."""
        ...

    def recommend(self, user_id: str, k: int, exclude: Container[str] = (), now_ms: int | None = None) -> list[str]:
        """The user's top-``k`` item ids (best first), none of them in ``exclude``."""
        ...


def observe_event(recommender: Recommender, event: Click | Purchase | Review) -> None:
    """Feed a :mod:`streams.records` event to ``recommender``."""
    rating = event.rating if isinstance(event, Review) else None
    recommender.observe(event.user_id, event.item_id, event.ts, event.kind, rating)


def _check_kind(kind: str, rating: float | None) -> None:
    if kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    if kind == "review" and rating is None:
        raise ValueError("a review needs a rating")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")


class PopularityBaseline:
    """Most popular items by decayed event counts, as of the last observed event.

    Every observed event (click, purchase or review, whatever the rating) adds 1 to its
    item's decayed count, exactly as recstream's engine counts popularity for its own
    cold-start fallback.  The ranking is the same for every user.

    Args:
        half_life_ms: a count halves every ``half_life_ms`` milliseconds.
        catalog: when given, only items in it are recommended (e.g. the live catalog).
    """

    name = "popularity"

    def __init__(self, half_life_ms: float = DEFAULT_POPULARITY_HALF_LIFE_MS, catalog: Container[str] | None = None) -> None:
        self.popularity = DecayedPopularity(half_life_ms)
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"PopularityBaseline(half_life_ms={self.popularity.half_life_ms}, items={len(self.popularity)})"

    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        _check_kind(kind, rating)
        self.popularity.add(item_id, ts)

    def recommend(self, user_id: str, k: int, exclude: Container[str] = (), now_ms: int | None = None) -> list[str]:
        """The ``k`` most popular (catalog) items not in ``exclude``; ties by item id."""
        _check_k(k)
        return [item for item, _ in self.popularity.top(k, exclude=exclude, allowed=self.catalog, now_ms=now_ms)]


class ItemKNNBaseline:
    """Item-to-item co-occurrence ("people who liked i also liked j"), updated per event.

    **Positive events.**  Clicks and purchases are positive; a review is positive when
    its ``rating >= positive_threshold``; other reviews are ignored by the model (they
    still count for the popularity fallback).

    **History.**  Each user keeps their last ``history_len`` *distinct* positive items,
    oldest first; a repeated positive on an item moves it to the most recent position.

    **Co-occurrence.**  On a positive event of a user on item ``j`` (at time ``ts``), for
    every other item ``i`` in that user's history (before the event),
    ``co(i, j)`` and ``co(j, i)`` grow by the event weight ``w``, and ``n_j`` (the item's
    positive count) grows by ``w``.  Then ``j`` joins the history.  ``w`` is 1, or with
    ``half_life_ms`` set, ``2 ** ((ts - t0) / half_life_ms)`` for a fixed reference
    ``t0``: every co-occurrence and count decays with that half-life, and since the
    decay factor at query time is common to all of them, rankings need no re-decaying.
    Repeated positives do count again (a user alternating between two items
    strengthens their link each time).

    **Recommendation.**  The candidate ``j``'s score is the sum, over the items ``i`` of
    the user's history, of ``sim(i, j)``, where ``sim(i, j) = co(i, j) / sqrt(n_i * n_j)``
    (``normalize="cosine"``, default; cosine-style, as repeated positives can push it above
    1) or ``co(i, j)`` (``normalize=None``).  Candidates are the items with a positive
    score, the user's own history items included; those in ``exclude`` (and in the
    user's history when ``exclude_history``) or outside ``catalog`` are skipped; the best
    ``k`` by score, ties by item id, are returned.

    **Fallback.**  When that gives fewer than ``k`` items (a user with no positive history,
    or items with too few neighbours), the list is filled with the most popular items
    (decayed counts of *all* events with ``popularity_half_life_ms``, as in
    :class:`PopularityBaseline`) that are not already listed, excluded or outside the
    catalog.

    **Memory.**  An item's neighbour list is cut back to its ``max_neighbours`` largest
    co-occurrences (ties by item id) as soon as it holds more than
    ``2 * max_neighbours``, so it never holds more than ``2 * max_neighbours`` entries
    and pruning runs at most once per ``max_neighbours`` new neighbours.  Pruning ``i -> j`` does not remove ``j -> i``; a pruned pair that
    co-occurs again restarts from that occurrence.

    Args:
        history_len: positive items remembered per user.
        max_neighbours: neighbours kept per item (see Memory).
        positive_threshold: the lowest positive review rating.
        half_life_ms: decay of co-occurrences and counts; ``None`` for plain counts.
        normalize: ``"cosine"`` or ``None``.
        exclude_history: also exclude the user's history items from recommendations.
        catalog: when given, only items in it are recommended.
        popularity_half_life_ms: half-life of the popularity fallback.
    """

    name = "item-knn"

    def __init__(
        self,
        history_len: int = 20,
        max_neighbours: int = 100,
        positive_threshold: float = 4.0,
        half_life_ms: float | None = None,
        *,
        normalize: Literal["cosine"] | None = "cosine",
        exclude_history: bool = False,
        catalog: Container[str] | None = None,
        popularity_half_life_ms: float = DEFAULT_POPULARITY_HALF_LIFE_MS,
    ) -> None:
        if history_len < 1:
            raise ValueError(f"history_len must be at least 1, got {history_len}")
        if max_neighbours < 1:
            raise ValueError(f"max_neighbours must be at least 1, got {max_neighbours}")
        if half_life_ms is not None and not (half_life_ms > 0 and math.isfinite(half_life_ms)):
            raise ValueError(f"half_life_ms must be positive and finite, got {half_life_ms}")
        if normalize not in ("cosine", None):
            raise ValueError(f"normalize must be 'cosine' or None, got {normalize!r}")
        self.history_len = history_len
        self.max_neighbours = max_neighbours
        self.positive_threshold = positive_threshold
        self.half_life_ms = half_life_ms
        self.normalize = normalize
        self.exclude_history = exclude_history
        self.catalog = catalog
        self.popularity = DecayedPopularity(popularity_half_life_ms)
        #: item -> {neighbour: co-occurrence weight (in units of the reference time)}
        self._co: dict[str, dict[str, float]] = {}
        #: item -> positive count (same units)
        self._count: dict[str, float] = {}
        #: item -> 1 / sqrt(count), for the cosine normalisation
        self._inv_sqrt: dict[str, float] = {}
        #: user -> distinct positive items, oldest first
        self._history = RecentItems(history_len)
        self._ref_ts: int | None = None

    def __repr__(self) -> str:
        return f"ItemKNNBaseline(history_len={self.history_len}, max_neighbours={self.max_neighbours}, items={len(self._count)}, users={len(self._history)})"

    # ------------------------------------------------------------------ inspection
    def history(self, user_id: str) -> list[str]:
        """The user's remembered positive items, oldest first."""
        return self._history.get(user_id)

    def neighbours(self, item_id: str) -> dict[str, float]:
        """``{j: co(item, j)}`` as stored (decayed weights in reference-time units)."""
        return dict(self._co.get(item_id, {}))

    def cooccurrence(self, i: str, j: str) -> float:
        """``co(i, j)`` as stored (0.0 when absent or pruned)."""
        return self._co.get(i, {}).get(j, 0.0)

    def count(self, item_id: str) -> float:
        """The item's positive count ``n`` as stored."""
        return self._count.get(item_id, 0.0)

    def similarity(self, i: str, j: str) -> float:
        """``sim(i, j)`` as used for scoring."""
        c = self.cooccurrence(i, j)
        if c == 0.0 or self.normalize is None:
            return c
        return c / math.sqrt(self._count[i] * self._count[j])

    # ------------------------------------------------------------------ updates
    def _is_positive(self, kind: str, rating: float | None) -> bool:
        return is_positive(kind, rating, self.positive_threshold)

    def _weight(self, ts: int) -> float:
        if self.half_life_ms is None:
            return 1.0
        if self._ref_ts is None:
            self._ref_ts = int(ts)
        exponent = (ts - self._ref_ts) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            self._rescale(int(ts))
            exponent = 0.0
        return 2.0**exponent

    def _rescale(self, new_ref: int) -> None:
        """Move the reference time to ``new_ref``: multiply every stored weight by
        ``2 ** (-(new_ref - ref) / H)`` (weights far in the past underflow to 0 and go)."""
        assert self._ref_ts is not None and self.half_life_ms is not None
        factor = 2.0 ** (-(new_ref - self._ref_ts) / self.half_life_ms)
        self._ref_ts = new_ref
        for item in list(self._count):
            v = self._count[item] * factor
            if v > 0.0:
                self._count[item] = v
                self._inv_sqrt[item] = 1.0 / math.sqrt(v)
            else:
                del self._count[item]
                del self._inv_sqrt[item]
        for item in list(self._co):
            row = {j: v * factor for j, v in self._co[item].items()}
            row = {j: v for j, v in row.items() if v > 0.0}
            if row:
                self._co[item] = row
            else:
                del self._co[item]

    def _bump(self, i: str, j: str, w: float) -> None:
        row = self._co.get(i)
        if row is None:
            row = self._co[i] = {}
        row[j] = row.get(j, 0.0) + w
        if len(row) > 2 * self.max_neighbours:
            self._co[i] = bound_neighbours(row, self.max_neighbours)

    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        _check_kind(kind, rating)
        self.popularity.add(item_id, ts)
        if not self._is_positive(kind, rating):
            return
        w = self._weight(ts)
        for i in self._history.view(user_id):
            if i != item_id:
                self._bump(i, item_id, w)
                self._bump(item_id, i, w)
        n = self._count[item_id] = self._count.get(item_id, 0.0) + w
        self._inv_sqrt[item_id] = 1.0 / math.sqrt(n)
        self._history.push(user_id, item_id)

    def observe_many(self, events: Iterable[Click | Purchase | Review]) -> None:
        """Observe :mod:`streams.records` events in the given order."""
        for event in events:
            observe_event(self, event)

    # ------------------------------------------------------------------ queries
    def scores(self, user_id: str) -> dict[str, float]:
        """Neighbourhood score of every candidate of the user (no exclusions applied)."""
        out: defaultdict[str, float] = defaultdict(float)
        co = self._co
        if self.normalize == "cosine":
            inv = self._inv_sqrt
            for i in self._history.view(user_id):
                row = co.get(i)
                inv_i = inv.get(i, 0.0)
                if not row or inv_i == 0.0:
                    continue
                for j, c in row.items():
                    # c / sqrt(n_i * n_j); a neighbour whose count underflowed to 0 scores 0
                    out[j] += c * inv_i * inv.get(j, 0.0)
        else:
            for i in self._history.view(user_id):
                row = co.get(i)
                if row:
                    for j, c in row.items():
                        out[j] += c
        return dict(out)

    def recommend(self, user_id: str, k: int, exclude: Container[str] = (), now_ms: int | None = None) -> list[str]:
        """Top-``k`` by neighbourhood score, filled up with popular items (see the class doc).

        ``now_ms`` is accepted for the :class:`Recommender` interface; rankings do not
        depend on it.
        """
        _check_k(k)
        if k == 0:
            return []
        hist = self._history.view(user_id)
        skip_hist = self.exclude_history
        catalog = self.catalog

        def ok(item: str) -> bool:
            return item not in exclude and not (skip_hist and item in hist) and (catalog is None or item in catalog)

        # (-score, id) tuples in a heap: popped best first, ties by id; the filter runs
        # only on the popped candidates (exclusions are usually few)
        heap = [(-s, j) for j, s in self.scores(user_id).items() if s > 0.0]
        heapq.heapify(heap)
        out: list[str] = []
        while heap and len(out) < k:
            j = heapq.heappop(heap)[1]
            if ok(j):
                out.append(j)
        if len(out) < k:
            chosen = set(out)
            fill = self.popularity.top(k - len(out), exclude=chosen, allowed=ok, now_ms=now_ms)
            out.extend(item for item, _ in fill)
        return out
