"""Recency-weighted EASE, a strong offline baseline refit once at the split.

Steck (2019), "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW '19): an
item-item weight matrix ``B`` with a zero diagonal that minimises
``||X - X B||^2 + lambda ||B||^2``, in closed form

    P = (X^T X + lambda I)^-1,    B_ij = -P_ij / P_jj  (i != j),   B_jj = 0,

and a user's scores are their history row times ``B``.  :class:`EASEBaseline` implements
the :class:`scoring.baselines.Recommender` protocol, so :class:`scoring.backtest.Backtest`
scores it beside popularity and item-kNN on the same cases, with the same exclusions.

How it runs in a backtest (what a team that retrains nightly would have in production):

* **Events.**  Every observed event counts for the popularity fallback (as
  :class:`~scoring.baselines.ItemKNNBaseline`); *positive* events are kept per user with
  their times.  Positives are decided exactly as item-kNN does
  (:func:`scoring.cooccurrence.is_positive`): clicks and purchases, and reviews rated at
  least ``positive_threshold``.
* **Fit, once.**  ``B`` is fit on the positives observed *before* ``fit_at_ms`` (the
  backtest's split): when an event at or after ``fit_at_ms`` is first observed, or when
  the model is first asked to recommend at or after it, whichever comes first; or
  explicitly with :meth:`EASEBaseline.fit`.  The model is then fixed.  ``X`` has one row
  per user and one column per item, ``X_ui = exp(-ln 2 * (t_fit - t_ui) / half_life_ms)``
  where ``t_ui`` is the user's latest positive on the item before ``t_fit`` (so a repeated
  positive counts once, at its latest time); ``half_life_ms=None`` gives plain binary
  ``X``.  Note that ``lambda`` acts on this weighted Gram matrix: with a short half-life
  the old rows shrink, so the same ``lambda`` regularises relatively more.
  The items are those of the training positives, at most ``max_items`` of them (the
  ones with the most users, ties by id).  ``X^T X + lambda I`` is inverted in float64;
  ``B`` is kept in float32 (``n^2 * 4`` bytes: 400 MB at 10,000 items).
* **Scores.**  At query time the user's *whole* positive history up to now (events after
  the fit included: the model is fixed, the user's history moves) is one row ``x`` with
  ``x_i = exp(-ln 2 * (t_last - t_i) / query_half_life_ms)`` (``t_i`` the user's latest
  positive on ``i``, ``t_last`` their latest positive; the common factor to ``now`` does
  not change the ranking), and the scores are ``x B``.  The query half-life is its own
  parameter (``"fit"``: the fit's).  A user's row ``x B`` is cached and updated with the
  rows of ``B`` of their new positives only (``cache_users`` rows kept).  Items of the model outside ``exclude`` (and
  outside ``catalog``, and outside the user's history with ``exclude_history``) are
  ranked by score, ties by item id.
* **Fallback.**  As item-kNN: a user with no positive on a model item (a cold user, or
  one asked before the fit) gets the most popular items (decayed counts of all events,
  ``popularity_half_life_ms``); a list shorter than ``k`` is filled up the same way.

The defaults were chosen on the *validation* windows only (the last eighth of the
interactions before each split, as ``recstream tune`` defines it) of ml-latest-small
(split 2016-03-22) and amazon-2018-gift-cards (split 2017-10-29), as the setting with the
best worst-case ratio of NDCG@10 to each dataset's own best; the test periods were not
looked at (``bench/ease_baseline.py --validate``):

* ``lambda`` in {50, 200, 500, 1000, 2000} x fit half-life in {90 days, 365 days, none}
  (query row decayed alike): ``lambda = 200`` without decay won (worst-case ratio 0.995;
  90 days lost ~30% on MovieLens, 365 days ~10%);
* then, at that point, the query row's half-life in {7, 30, 90, 180 days, none}: 30 days
  (worst-case ratio 0.986 against 0.932 for none, over all settings tried).

So by default the fit is plain EASE and recency only weighs the user's own history.

"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Container, Iterable
from typing import Final, Literal

import numpy as np

from recstream.scoring.baselines import DEFAULT_POPULARITY_HALF_LIFE_MS, EVENT_KINDS, observe_event
from recstream.scoring.cooccurrence import is_positive
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.records import DAY_MS, Click, Purchase, Review

__all__ = ["DAY_MS", "DEFAULT_HALF_LIFE_MS", "DEFAULT_LAMBDA", "DEFAULT_QUERY_HALF_LIFE_MS", "DEFAULT_MAX_ITEMS", "EASEBaseline", "ease_weights"]

#: L2 regularisation of the Gram matrix (chosen on the validation windows; see the module doc).
DEFAULT_LAMBDA: Final = 200.0
#: Recency half-life of an interaction's weight in the fit (chosen on the validation
#: windows: ``None``, no decay, beat 90 and 365 days on both datasets).
DEFAULT_HALF_LIFE_MS: Final[float | None] = None
#: Recency half-life of the query row's weights (chosen on the validation windows).
DEFAULT_QUERY_HALF_LIFE_MS: Final = 30 * DAY_MS
#: At most this many items enter the model (the most frequent ones).
DEFAULT_MAX_ITEMS: Final = 20_000

_LN2: Final = math.log(2.0)
# a cached score row is rebuilt when a new weight would pass 2 ** this (see _UserScores)
_MAX_EXPONENT: Final = 256.0
# a user with more model items than this adds to the Gram matrix block by block
_GRAM_BLOCK: Final = 4096


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's ``B`` (float64, zero diagonal) of a Gram matrix ``X^T X`` (not modified)."""
    n = gram.shape[0]
    a = np.array(gram, dtype=np.float64, copy=True)
    a[np.diag_indices(n)] += lam
    p = np.linalg.inv(a)
    del a
    d = np.diag(p).copy()
    p /= -d[None, :]
    p[np.diag_indices(n)] = 0.0
    return p


class _UserScores:
    """A user's cached ``x B``: ``x_i = 2 ** ((t_i - ref) / H)`` in units of ``ref`` (the
    user's latest positive when the row was built), ``applied`` the ``x_i`` already in
    ``vec``, ``pending`` the items whose latest positive changed since."""

    __slots__ = ("ref", "vec", "applied", "pending")

    def __init__(self, ref: int, vec: np.ndarray, applied: dict[int, float]) -> None:
        self.ref = ref
        self.vec = vec
        self.applied = applied
        self.pending: set[str] = set()


class EASEBaseline:
    """Recency-weighted EASE, fit once at ``fit_at_ms`` (see the module doc).

    Args:
        lam: ``lambda``, the L2 regularisation added to the diagonal of ``X^T X``.
        half_life_ms: the recency half-life of an interaction's weight in the fit;
            ``None``: no decay (binary ``X``).
        fit_at_ms: fit on the positives before this time, as soon as anything at or after
            it is observed or asked for; ``None``: fit at the first :meth:`recommend`, on
            everything observed before its ``now_ms`` (or call :meth:`fit`).
        max_items: the most items the model holds (the most frequent; ties by id).
        positive_threshold: the lowest positive review rating (as item-kNN).
        exclude_history: also exclude the user's positive history items.
        catalog: when given, only items in it are recommended.
        popularity_half_life_ms: half-life of the popularity fallback.
        name: the label in reports (distinct names let several settings run in one backtest).
        cache_users: score rows kept (least recently asked dropped first): a cached user's
            row ``x B`` is updated by the rows of ``B`` of their new positives only
            (``n_items * 8`` bytes per user).
        query_half_life_ms: the half-life of the query row's weights (``"fit"``: the same
            as ``half_life_ms``; ``None``: no decay).
    """

    def __init__(
        self,
        lam: float = DEFAULT_LAMBDA,
        half_life_ms: float | None = DEFAULT_HALF_LIFE_MS,
        *,
        fit_at_ms: int | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
        positive_threshold: float = 4.0,
        exclude_history: bool = False,
        catalog: Container[str] | None = None,
        popularity_half_life_ms: float = DEFAULT_POPULARITY_HALF_LIFE_MS,
        name: str = "ease",
        cache_users: int = 1024,
        query_half_life_ms: float | None | Literal["fit"] = DEFAULT_QUERY_HALF_LIFE_MS,
    ) -> None:
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be non-negative and finite, got {lam}")
        if half_life_ms is not None and not (half_life_ms > 0 and math.isfinite(half_life_ms)):
            raise ValueError(f"half_life_ms must be positive and finite (or None), got {half_life_ms}")
        if query_half_life_ms != "fit" and query_half_life_ms is not None and not (query_half_life_ms > 0 and math.isfinite(query_half_life_ms)):
            raise ValueError(f"query_half_life_ms must be positive and finite, None or 'fit', got {query_half_life_ms}")
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.name = name
        self.lam = float(lam)
        self.half_life_ms = half_life_ms
        self.query_half_life_ms = half_life_ms if query_half_life_ms == "fit" else query_half_life_ms
        self.fit_at_ms = fit_at_ms
        self.max_items = max_items
        self.positive_threshold = positive_threshold
        self.exclude_history = exclude_history
        self.catalog = catalog
        self.popularity = DecayedPopularity(popularity_half_life_ms)
        #: user -> [(ts, item)] of every positive, in arrival order
        self._events: dict[str, list[tuple[int, str]]] = {}
        #: user -> {item: latest positive ts}
        self._latest: dict[str, dict[str, int]] = {}
        self._last_ts: int | None = None
        #: the fitted model: item ids (ascending), their index, B (float32), fit time
        self.items: list[str] = []
        self._index: dict[str, int] = {}
        self.B: np.ndarray | None = None
        self._allowed: np.ndarray | None = None  # model items in the catalog
        self.fitted_at_ms: int | None = None
        self.fit_info: dict[str, float | int] = {}
        self.cache_users = cache_users
        self._cache: OrderedDict[str, _UserScores] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"EASEBaseline(lam={self.lam}, half_life_ms={self.half_life_ms}, fit_at_ms={self.fit_at_ms}, "
            f"items={len(self.items)}, users={len(self._latest)}, fitted_at_ms={self.fitted_at_ms})"
        )

    # ------------------------------------------------------------------ inspection
    @property
    def fitted(self) -> bool:
        return self.B is not None

    def history(self, user_id: str) -> dict[str, int]:
        """``{item: latest positive ts}`` of the user, as observed."""
        return dict(self._latest.get(user_id, {}))

    def weight(self, i: str, j: str) -> float:
        """``B[i, j]`` (0.0 when either item is outside the model or before the fit)."""
        if self.B is None or i not in self._index or j not in self._index:
            return 0.0
        return float(self.B[self._index[i], self._index[j]])

    # ------------------------------------------------------------------ updates
    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
        if kind == "review" and rating is None:
            raise ValueError("a review needs a rating")
        ts = int(ts)
        if self.B is None and self.fit_at_ms is not None and ts >= self.fit_at_ms:
            self.fit(self.fit_at_ms)  # before this event joins: the fit never sees it
        self.popularity.add(item_id, ts)
        self._last_ts = ts if self._last_ts is None else max(self._last_ts, ts)
        if not is_positive(kind, rating, self.positive_threshold):
            return
        self._events.setdefault(user_id, []).append((ts, item_id))
        latest = self._latest.setdefault(user_id, {})
        if ts >= latest.get(item_id, ts):
            latest[item_id] = ts
            cached = self._cache.get(user_id)
            if cached is not None:
                cached.pending.add(item_id)

    def observe_many(self, events: Iterable[Click | Purchase | Review]) -> None:
        """Observe :mod:`streams.records` events in the given order."""
        for event in events:
            observe_event(self, event)

    @staticmethod
    def _decay(dt_ms: np.ndarray, half_life_ms: float | None) -> np.ndarray:
        if half_life_ms is None:
            return np.ones_like(dt_ms, dtype=np.float64)
        return np.exp(-_LN2 * dt_ms / half_life_ms)

    def fit(self, now_ms: int) -> None:
        """Fit ``B`` on the positives observed with ``ts < now_ms``, weighted by recency to
        ``now_ms`` (see the module doc).  Refits when called again."""
        import time

        t0 = time.perf_counter()
        now_ms = int(now_ms)
        # each user's latest positive time per item, before now_ms
        rows: list[dict[str, int]] = []
        users_of: dict[str, int] = {}
        for user in sorted(self._events):
            latest: dict[str, int] = {}
            for ts, item in self._events[user]:
                if ts < now_ms and ts >= latest.get(item, ts):
                    latest[item] = ts
            if latest:
                rows.append(latest)
                for item in latest:
                    users_of[item] = users_of.get(item, 0) + 1
        ranked = sorted(users_of, key=lambda i: (-users_of[i], i))[: self.max_items]
        items = sorted(ranked)
        index = {item: n for n, item in enumerate(items)}
        n = len(items)
        gram = np.zeros((n, n), dtype=np.float64)
        pairs = 0
        for latest in rows:
            idx_t = [(index[i], t) for i, t in latest.items() if i in index]
            if not idx_t:
                continue
            idx = np.fromiter((i for i, _ in idx_t), dtype=np.int64, count=len(idx_t))
            w = self._decay(now_ms - np.fromiter((t for _, t in idx_t), dtype=np.float64, count=len(idx_t)), self.half_life_ms)
            pairs += len(idx) ** 2
            for a in range(0, len(idx), _GRAM_BLOCK):
                for b in range(0, len(idx), _GRAM_BLOCK):
                    ia, ib = idx[a : a + _GRAM_BLOCK], idx[b : b + _GRAM_BLOCK]
                    gram[np.ix_(ia, ib)] += np.outer(w[a : a + _GRAM_BLOCK], w[b : b + _GRAM_BLOCK])
        t1 = time.perf_counter()
        B = ease_weights(gram, self.lam).astype(np.float32) if n else np.zeros((0, 0), dtype=np.float32)
        del gram
        self.items, self._index, self.B = items, index, B
        self._cache.clear()
        if self.catalog is None:
            self._allowed = None
        else:
            self._allowed = np.fromiter((i in self.catalog for i in items), dtype=bool, count=n)
        self.fitted_at_ms = now_ms
        self.fit_info = {
            "users": len(rows),
            "items": n,
            "items_seen": len(users_of),
            "gram_pairs": pairs,
            "gram_s": round(t1 - t0, 3),
            "inverse_s": round(time.perf_counter() - t1, 3),
        }

    # ------------------------------------------------------------------ queries
    def scores(self, user_id: str) -> dict[str, float]:
        """``x B`` over the model's items, up to a positive factor (empty before the fit or
        without history)."""
        s = self._score_vector(user_id)
        if s is None:
            return {}
        return {item: float(v) for item, v in zip(self.items, s)}

    def _x(self, t: int, ref: int) -> float:
        """The history weight of a positive at ``t`` in units of ``ref``."""
        H = self.query_half_life_ms
        return 1.0 if H is None else 2.0 ** ((t - ref) / H)

    def _score_vector(self, user_id: str) -> np.ndarray | None:
        """``x B`` up to a positive factor (float64), or ``None`` without a model item in
        the user's history (or before the fit)."""
        if self.B is None:
            return None
        cached = self._cache.get(user_id)
        if cached is not None:
            self._cache.move_to_end(user_id)
            if not cached.pending:
                return cached.vec
            # both names are reused below: latest from .get() (optional), x as an array
            latest: dict[str, int] | None
            x: float | np.ndarray
            latest = self._latest[user_id]
            H = self.query_half_life_ms
            for item in cached.pending:
                j = self._index.get(item)
                if j is None:
                    continue
                t = latest[item]
                if H is not None and (t - cached.ref) / H > _MAX_EXPONENT:
                    cached = None  # weights grow too large: rebuild at a later reference
                    break
                x = self._x(t, cached.ref)
                old = cached.applied.get(j, 0.0)
                if x != old:
                    cached.vec += (x - old) * self.B[j].astype(np.float64)
                    cached.applied[j] = x
            if cached is not None:
                cached.pending.clear()
                return cached.vec
            del self._cache[user_id]
        latest = self._latest.get(user_id)
        if not latest:
            return None
        idx_t = [(self._index[i], t) for i, t in latest.items() if i in self._index]
        if not idx_t:
            return None
        idx = np.fromiter((i for i, _ in idx_t), dtype=np.int64, count=len(idx_t))
        ts = np.fromiter((t for _, t in idx_t), dtype=np.float64, count=len(idx_t))
        ref = int(ts.max())
        x = self._decay(ref - ts, self.query_half_life_ms)
        vec = (x.astype(np.float32) @ self.B[idx]).astype(np.float64)
        if self.cache_users > 0:
            self._cache[user_id] = _UserScores(ref, vec, dict(zip(idx.tolist(), x.tolist())))
            if len(self._cache) > self.cache_users:
                self._cache.popitem(last=False)
        return vec

    def recommend(self, user_id: str, k: int, exclude: Container[str] = (), now_ms: int | None = None) -> list[str]:
        """Top-``k`` by EASE score, filled up with popular items (see the module doc)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        if k == 0:
            return []
        if self.B is None:
            t = now_ms if now_ms is not None else self._last_ts
            if self.fit_at_ms is None:
                if t is not None:
                    self.fit(t if now_ms is not None else t + 1)
            elif t is not None and t >= self.fit_at_ms:
                self.fit(self.fit_at_ms)
        hist = self._latest.get(user_id, {})
        skip_hist = self.exclude_history
        catalog = self.catalog

        def ok(item: str) -> bool:
            return item not in exclude and not (skip_hist and item in hist) and (catalog is None or item in catalog)

        out: list[str] = []
        s = self._score_vector(user_id)
        if s is not None:
            s = s.copy()
            if self._allowed is not None:
                s[~self._allowed] = -np.inf
            masked: Iterable[str] = exclude if isinstance(exclude, Iterable) else ()
            for item in masked:
                j = self._index.get(item)
                if j is not None:
                    s[j] = -np.inf
            if skip_hist:
                for item in hist:
                    j = self._index.get(item)
                    if j is not None:
                        s[j] = -np.inf
            n_ok = int(np.isfinite(s).sum())
            if n_ok:
                # every item scoring at least the m-th best, sorted by (-score, id); the
                # filter re-checks them (a container that could not be iterated above)
                m = min(n_ok, k + 16)
                while True:
                    cut = np.partition(s, len(s) - m)[len(s) - m]
                    cand = np.flatnonzero(s >= cut)
                    order = cand[np.lexsort((cand, -s[cand]))]
                    out = [self.items[j] for j in order.tolist() if ok(self.items[j])][:k]
                    if len(out) >= k or m >= n_ok:
                        break
                    m = min(n_ok, 4 * m)
        if len(out) < k:
            chosen = set(out)
            fill = self.popularity.top(k - len(out), exclude=chosen, allowed=ok, now_ms=now_ms)
            out.extend(item for item, _ in fill)
        return out
