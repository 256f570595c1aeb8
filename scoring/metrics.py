"""Offline ranking metrics for backtests: per-case functions, accumulators, latency.

Pure code, no Kafka.  A backtest *case* is one target event: the ranked list of item ids
the user held just before it (possibly shorter than ``k``, possibly empty) and the set
of relevant item ids (in recstream's backtest, the one item of the target event).

Conventions shared by every function here:

* **Duplicates.**  The ranked list is first de-duplicated, keeping each item's first
  occurrence, and then cut to its first ``k`` entries ("the top-k").  An item listed
  twice is therefore counted once and takes one rank.  Ranks are 1-based positions in
  the de-duplicated list.
* **Short lists.**  A list with fewer than ``k`` distinct items is scored as is; the
  missing positions count as misses (precision still divides by ``k``).
* ``relevant`` is a non-empty collection of item ids (a bare ``str`` is taken as one
  item id, not as a collection of characters); ``k`` is at least 1.  Anything else
  raises :class:`ValueError`.

With ``R`` the relevant set, ``T_k`` the top-k and ``rank(i)`` the rank of item ``i``:

* ``hit_rate@k   = 1 if |T_k ∩ R| > 0 else 0``
* ``recall@k     = |T_k ∩ R| / |R|``
* ``precision@k  = |T_k ∩ R| / k``
* ``DCG@k        = sum over i in T_k ∩ R of 1 / log2(rank(i) + 1)`` (binary relevance)
* ``IDCG@k       = sum over r = 1 .. min(k, |R|) of 1 / log2(r + 1)``
* ``NDCG@k       = DCG@k / IDCG@k``
* ``MRR@k        = 1 / min rank(i) over i in T_k ∩ R, or 0 when T_k ∩ R is empty``

Accumulated metrics (:class:`RankingMetrics`, :class:`SlicedMetrics`) are the means of
the per-case values over the cases added (macro average over cases).

:class:`CaseMetrics` keeps NDCG@k (hence hit@k) of every case, in order, so that methods
scored on the same cases can be compared by :func:`paired_bootstrap_ratios`: the ratio of
their means with a percentile confidence interval from resampling the cases jointly.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Final, TypeVar

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CASE_METRICS",
    "DEFAULT_LATENCY_EDGES_MS",
    "METRIC_NAMES",
    "CaseMetrics",
    "Coverage",
    "RankingMetrics",
    "SlicedMetrics",
    "calendar_month_start",
    "hit_rate_at_k",
    "latency_histogram",
    "latency_summary",
    "mrr_at_k",
    "ndcg_at_k",
    "paired_bootstrap_ratios",
    "precision_at_k",
    "recall_at_k",
]

#: The per-k metrics of :meth:`RankingMetrics.summary`, in report order.
METRIC_NAMES: Final = ("hit_rate", "recall", "precision", "ndcg", "mrr")
#: The metrics :class:`CaseMetrics` keeps per case.
CASE_METRICS: Final = ("ndcg", "hit_rate")
#: Defaults of :func:`paired_bootstrap_ratios`.
BOOTSTRAP_RESAMPLES: Final = 1000
BOOTSTRAP_SEED: Final = 0


# --------------------------------------------------------------------------- helpers


def _check_k(k: int) -> int:
    try:
        value = operator.index(k)  # ints and numpy integers, not floats
    except TypeError:
        value = 0
    if isinstance(k, bool) or value < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return value


def _relevant_set(relevant: Collection[str]) -> frozenset[str]:
    rel = frozenset((relevant,)) if isinstance(relevant, str) else frozenset(relevant)
    if not rel:
        raise ValueError("relevant must contain at least one item id")
    return rel


def _top_k(ranked: Iterable[str], k: int) -> list[str]:
    """The first ``k`` distinct items of ``ranked`` (first occurrence wins)."""
    seen: set[str] = set()
    out: list[str] = []
    if k <= 0:
        return out
    for item in ranked:
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == k:
                break
    return out


def _hit_ranks(ranked: Iterable[str], relevant: frozenset[str], k: int) -> list[int]:
    """Ascending 1-based ranks (within the de-duplicated top-k) of the relevant items."""
    return [r for r, item in enumerate(_top_k(ranked, k), start=1) if item in relevant]


def _discount(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


def _idcg(k: int, n_relevant: int) -> float:
    return math.fsum(_discount(r) for r in range(1, min(k, n_relevant) + 1))


# --------------------------------------------------------------------------- one case


def hit_rate_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``1.0`` when any relevant item is in the top-k, else ``0.0``."""
    return 1.0 if _hit_ranks(ranked, _relevant_set(relevant), _check_k(k)) else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``|top-k ∩ relevant| / |relevant|``."""
    rel = _relevant_set(relevant)
    return len(_hit_ranks(ranked, rel, _check_k(k))) / len(rel)


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``|top-k ∩ relevant| / k`` (``k``, not the list length, even for short lists)."""
    k = _check_k(k)
    return len(_hit_ranks(ranked, _relevant_set(relevant), k)) / k


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``DCG@k / IDCG@k`` with binary relevance and a ``1 / log2(rank + 1)`` discount.

    ``DCG@k`` sums the discount over the ranks of the relevant items in the top-k;
    ``IDCG@k`` is the DCG of a perfect list, ``sum_{r=1}^{min(k, |relevant|)} 1 / log2(r + 1)``.
    """
    k = _check_k(k)
    rel = _relevant_set(relevant)
    dcg = math.fsum(_discount(r) for r in _hit_ranks(ranked, rel, k))
    return dcg / _idcg(k, len(rel))


def mrr_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """``1 / rank`` of the first relevant item within the top-k, ``0.0`` when there is none."""
    ranks = _hit_ranks(ranked, _relevant_set(relevant), _check_k(k))
    return 1.0 / ranks[0] if ranks else 0.0


# --------------------------------------------------------------------------- accumulators


class RankingMetrics:
    """Mean hit rate, recall, precision, NDCG and MRR at several cut-offs over many cases.

    Args:
        ks: the cut-offs (distinct integers >= 1; stored sorted ascending).

    Each :meth:`add` de-duplicates and cuts the list once (at the largest ``k``) and
    derives every cut-off from it, so it costs O(len(ranked) up to max(ks) distinct items).
    """

    __slots__ = ("_ks", "_cases", "_sums")

    def __init__(self, ks: Iterable[int] = (5, 10, 20)) -> None:
        ks_t = tuple(sorted({_check_k(k) for k in ks}))
        if not ks_t:
            raise ValueError("ks must contain at least one cut-off")
        self._ks: tuple[int, ...] = ks_t
        self._cases = 0
        # per k: [hit_rate, recall, precision, ndcg, mrr] sums, in METRIC_NAMES order
        self._sums: dict[int, list[float]] = {k: [0.0] * len(METRIC_NAMES) for k in ks_t}

    @property
    def ks(self) -> tuple[int, ...]:
        return self._ks

    @property
    def cases(self) -> int:
        return self._cases

    def __len__(self) -> int:
        return self._cases

    def __repr__(self) -> str:
        return f"RankingMetrics(ks={self._ks}, cases={self._cases})"

    def add(self, ranked: Sequence[str], relevant: Collection[str]) -> None:
        """Add one case: the ranked list the user held and the relevant item ids."""
        rel = _relevant_set(relevant)
        ranks = _hit_ranks(ranked, rel, self._ks[-1])
        n_rel = len(rel)
        for k in self._ks:
            in_k = [r for r in ranks if r <= k]
            hits = len(in_k)
            sums = self._sums[k]
            if hits:
                sums[0] += 1.0
                sums[1] += hits / n_rel
                sums[2] += hits / k
                sums[3] += math.fsum(_discount(r) for r in in_k) / _idcg(k, n_rel)
                sums[4] += 1.0 / in_k[0]
        self._cases += 1

    def merge(self, other: RankingMetrics) -> RankingMetrics:
        """Add ``other``'s cases to this accumulator (same ``ks`` required); returns ``self``."""
        if other._ks != self._ks:
            raise ValueError(f"cannot merge metrics with ks={other._ks} into ks={self._ks}")
        for k in self._ks:
            mine, theirs = self._sums[k], other._sums[k]
            for i, v in enumerate(theirs):
                mine[i] += v
        self._cases += other._cases
        return self

    def summary(self) -> dict[int, dict[str, float | int | None]]:
        """Per cut-off ``k``: ``{"hit_rate", "recall", "precision", "ndcg", "mrr", "cases"}``.

        The metrics are means over the cases (``None`` when no case was added); ``cases``
        is the number of cases (the same for every ``k``).  Keys are the integer ``k``s,
        ascending; see :meth:`flat` for string keys.
        """
        out: dict[int, dict[str, float | int | None]] = {}
        for k in self._ks:
            row: dict[str, float | int | None] = {name: (s / self._cases if self._cases else None) for name, s in zip(METRIC_NAMES, self._sums[k])}
            row["cases"] = self._cases
            out[k] = row
        return out

    def flat(self) -> dict[str, float | int | None]:
        """``{"cases": n, "hit_rate@5": ..., "ndcg@10": ..., ...}``: JSON/CSV friendly."""
        out: dict[str, float | int | None] = {"cases": self._cases}
        for k, row in self.summary().items():
            for name in METRIC_NAMES:
                out[f"{name}@{k}"] = row[name]
        return out


class CaseMetrics:
    """NDCG@k and hit@k of every case, in the order the cases were added.

    What :class:`RankingMetrics` averages, kept case by case so that several methods scored
    on the same cases, in the same order, can be resampled jointly
    (:func:`paired_bootstrap_ratios`).  Only NDCG@k is stored, as float32 (4 bytes per case
    per cut-off); hit@k is ``NDCG@k > 0`` (a case hits at ``k`` exactly when a relevant
    item is in its top-k, and its DCG is then positive).

    Args:
        ks: the cut-offs, as for :class:`RankingMetrics`.
    """

    __slots__ = ("_ks", "_ndcg")

    def __init__(self, ks: Iterable[int] = (5, 10, 20)) -> None:
        self._ks: tuple[int, ...] = RankingMetrics(ks).ks
        self._ndcg: dict[int, array] = {k: array("f") for k in self._ks}

    @property
    def ks(self) -> tuple[int, ...]:
        return self._ks

    @property
    def cases(self) -> int:
        return len(self._ndcg[self._ks[0]])

    def __len__(self) -> int:
        return self.cases

    def __repr__(self) -> str:
        return f"CaseMetrics(ks={self._ks}, cases={self.cases})"

    def add(self, ranked: Sequence[str], relevant: Collection[str]) -> None:
        """Add one case: the ranked list the user held and the relevant item ids."""
        rel = _relevant_set(relevant)
        ranks = _hit_ranks(ranked, rel, self._ks[-1])
        for k in self._ks:
            in_k = [r for r in ranks if r <= k]
            value = math.fsum(_discount(r) for r in in_k) / _idcg(k, len(rel)) if in_k else 0.0
            self._ndcg[k].append(value)

    def values(self, metric: str, k: int) -> np.ndarray:
        """The per-case values of ``metric`` (``"ndcg"`` or ``"hit_rate"``) at ``k``, in case
        order, as a new float64 array (hit rate: 0.0 or 1.0)."""
        if metric not in CASE_METRICS:
            raise ValueError(f"metric: one of {CASE_METRICS}, got {metric!r}")
        if k not in self._ndcg:
            raise ValueError(f"k={k} is not among the cut-offs {self._ks}")
        ndcg = np.frombuffer(self._ndcg[k], dtype=np.float32) if self.cases else np.zeros(0, np.float32)
        return ndcg.astype(np.float64) if metric == "ndcg" else (ndcg > 0).astype(np.float64)

    def merge(self, other: CaseMetrics) -> CaseMetrics:
        """Append ``other``'s cases after this accumulator's (same ``ks`` required); returns ``self``."""
        if other._ks != self._ks:
            raise ValueError(f"cannot merge case metrics with ks={other._ks} into ks={self._ks}")
        for k in self._ks:
            self._ndcg[k].extend(other._ndcg[k])
        return self


# --------------------------------------------------------------------------- paired bootstrap

#: Resampled cell budget per chunk (resamples x cases) of :func:`paired_bootstrap_ratios`.
_BOOTSTRAP_CHUNK_CELLS: Final = 1 << 22


def _resampled_sums(matrix: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, columns)``: the column sums of ``matrix`` (cases x columns) over
    ``resamples`` draws of ``n`` cases with replacement, the same draws for every column.

    Each draw is turned into per-case counts (how often each case was drawn), so one
    matrix product sums every column; the draws depend only on ``n``, ``resamples`` and
    ``seed``.
    """
    n = matrix.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, matrix.shape[1]), dtype=np.float64)
    chunk = max(1, min(resamples, _BOOTSTRAP_CHUNK_CELLS // n))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int32)  # b * n < 2**31
        idx += (np.arange(b, dtype=np.int32) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out[start : start + b] = counts @ matrix
    return out


def _quantile(sorted_values: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of ascending values (may hold ``inf``), linear interpolation
    between order statistics as :func:`numpy.quantile`; ``None`` when not finite."""
    pos = q * (sorted_values.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    value = a if a == b else a + (b - a) * (pos - lo)
    return value if math.isfinite(value) else None


def _ratio_interval(num_total: float, den_total: float, num_boot: np.ndarray, den_boot: np.ndarray) -> dict[str, float | list[float | None] | None]:
    if den_total == 0:
        return {"ratio": None, "ci95": None}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num_boot / den_boot
    ratios = np.sort(ratios[~np.isnan(ratios)])
    ci = None if ratios.size == 0 else [_quantile(ratios, 0.025), _quantile(ratios, 0.975)]
    return {"ratio": float(num_total / den_total), "ci95": ci}


_K = TypeVar("_K", bound=Hashable)


def paired_bootstrap_ratios(
    values: Mapping[_K, Sequence[float] | np.ndarray],
    pairs: Iterable[tuple[_K, _K]] | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[tuple[_K, _K], dict[str, float | list[float | None] | None]]:
    """Ratios of means with 95% paired bootstrap confidence intervals.

    Args:
        values: per key (e.g. a method), its per-case values; every array has the same
            length ``n`` and case ``i`` is the same case in all of them (as every method of
            a backtest is scored on the same cases, in the same order).
        pairs: ``(numerator, denominator)`` keys to compare; default: every ordered pair
            of distinct keys.  A key may be compared with itself.
        resamples: bootstrap resamples.
        seed: the seed of the resampling (the result is a function of the values).

    Returns:
        per pair, ``{"ratio": mean(numerator) / mean(denominator), "ci95": [low, high]}``.
        Each resample draws ``n`` case indices with replacement, *the same indices for every
        key*, and takes the ratio of the two means over them; ``[low, high]`` are the 2.5th
        and 97.5th percentiles of those ratios (linear interpolation, as
        :func:`numpy.quantile`).  ``ratio`` and ``ci95`` are ``None`` when the denominator's
        mean is 0 (no case, or no hit); a resample whose denominator is 0 counts as ``+inf``
        when its numerator is positive and is left out when both are 0, and a bound that is
        not finite is ``None``.  Identical values give exactly ``1.0`` and ``[1.0, 1.0]``.
        All the pairs share the resamples, whose draws depend only on ``n``,
        ``resamples`` and ``seed``: one call is deterministic, and comparing ``n`` cases
        costs about ``resamples * n`` random draws whatever the number of pairs.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")
    arrays: dict[_K, np.ndarray] = {}
    for key, v in values.items():
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"values[{key!r}]: expected a 1-D sequence of numbers, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"values[{key!r}]: values must be finite")
        arrays[key] = arr
    sizes = {arr.size for arr in arrays.values()}
    if len(sizes) > 1:
        raise ValueError(f"values: every key needs the same cases, got lengths {sorted(sizes)}")
    pair_list = [(a, b) for a in arrays for b in arrays if a != b] if pairs is None else [tuple(p) for p in pairs]
    for pair in pair_list:
        if len(pair) != 2 or pair[0] not in arrays or pair[1] not in arrays:
            raise ValueError(f"pairs: {pair!r} is not a pair of keys of values")
    # one column per distinct array: identical values get bit-identical sums (ratio exactly 1)
    column: dict[_K, int] = {}
    by_bytes: dict[bytes, int] = {}
    for key in dict.fromkeys(k for pair in pair_list for k in pair):
        column[key] = by_bytes.setdefault(arrays[key].tobytes(), len(by_bytes))
    n = sizes.pop() if sizes else 0
    matrix = np.empty((n, len(by_bytes)), dtype=np.float64)
    for key, c in column.items():
        matrix[:, c] = arrays[key]
    totals = matrix.sum(axis=0)
    boot = _resampled_sums(matrix, resamples, seed) if n and matrix.shape[1] else None
    out: dict[tuple[_K, _K], dict[str, float | list[float | None] | None]] = {}
    for a, b in pair_list:
        i, j = column[a], column[b]
        if boot is None:
            out[(a, b)] = {"ratio": None, "ci95": None}
        else:
            out[(a, b)] = _ratio_interval(float(totals[i]), float(totals[j]), boot[:, i], boot[:, j])
    return out


class Coverage:
    """Catalog coverage: the distinct items that appeared in some case's top-k.

    For every recommended item the best (smallest) rank it ever reached is kept, so one
    accumulator answers any ``k``.  Ranks follow the module conventions (de-duplicated
    list, 1-based).  Ids are counted as given: filter the lists to the catalog first if
    items outside it may be recommended.

    Args:
        max_k: ranks beyond this are not recorded (bounds the work per case);
            ``None`` records whole lists.
    """

    __slots__ = ("_best", "_max_k", "_cases")

    def __init__(self, max_k: int | None = None) -> None:
        self._max_k = None if max_k is None else _check_k(max_k)
        self._best: dict[str, int] = {}
        self._cases = 0

    @property
    def cases(self) -> int:
        return self._cases

    def add(self, ranked: Sequence[str]) -> None:
        """Record one case's ranked list."""
        best = self._best
        limit = self._max_k if self._max_k is not None else len(ranked)
        for rank, item in enumerate(_top_k(ranked, limit), start=1):
            old = best.get(item)
            if old is None or rank < old:
                best[item] = rank
        self._cases += 1

    def _check_query_k(self, k: int) -> int:
        _check_k(k)
        if self._max_k is not None and k > self._max_k:
            raise ValueError(f"k={k} exceeds max_k={self._max_k} of this Coverage")
        return k

    def items(self, k: int) -> set[str]:
        """The distinct items seen in some top-``k``."""
        self._check_query_k(k)
        return {item for item, rank in self._best.items() if rank <= k}

    def distinct(self, k: int) -> int:
        """How many distinct items were seen in some top-``k``."""
        self._check_query_k(k)
        return sum(1 for rank in self._best.values() if rank <= k)

    def coverage(self, k: int, catalog_size: int) -> float:
        """``distinct(k) / catalog_size`` (``catalog_size`` must be positive)."""
        if catalog_size <= 0:
            raise ValueError(f"catalog_size must be positive, got {catalog_size}")
        return self.distinct(k) / catalog_size

    def merge(self, other: Coverage) -> Coverage:
        """Add ``other``'s cases (same ``max_k`` required); returns ``self``."""
        if other._max_k != self._max_k:
            raise ValueError(f"cannot merge coverage with max_k={other._max_k} into max_k={self._max_k}")
        best = self._best
        for item, rank in other._best.items():
            old = best.get(item)
            if old is None or rank < old:
                best[item] = rank
        self._cases += other._cases
        return self


# --------------------------------------------------------------------------- latency


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | int | None]:
    """``{"p50", "p95", "p99", "max", "mean", "count"}`` of latencies in milliseconds.

    Percentiles use numpy's default linear interpolation between order statistics
    (``np.percentile(..., method="linear")``): for sorted values ``x_0 .. x_{n-1}`` the
    ``p``-th percentile is at fractional index ``p / 100 * (n - 1)``.  With no values,
    every statistic is ``None`` and ``count`` is 0.  Non-finite values raise
    :class:`ValueError`.
    """
    arr = np.fromiter((float(v) for v in values_ms), dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0}
    if not np.all(np.isfinite(arr)):
        raise ValueError("latencies must be finite numbers")
    p50, p95, p99 = np.percentile(arr, [50.0, 95.0, 99.0], method="linear")
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "count": int(arr.size),
    }


# --------------------------------------------------------------------------- time slices


def calendar_month_start(ts_ms: int) -> int:
    """Epoch ms of the start of the UTC calendar month containing ``ts_ms``.

    Pass as ``SlicedMetrics(slice_of=calendar_month_start)`` for per-month plots.
    """
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    start = datetime(dt.year, dt.month, 1, tzinfo=timezone.utc)
    return int(start.timestamp()) * 1000


class SlicedMetrics:
    """:class:`RankingMetrics` per time slice of the target events (for plots).

    A case at time ``ts`` goes to the slice starting at
    ``origin_ms + floor((ts - origin_ms) / slice_ms) * slice_ms`` (fixed-width slices,
    e.g. ``30 * 86_400_000`` for 30 days), or at ``slice_of(ts)`` when a function is
    given instead (e.g. :func:`calendar_month_start`).  Exactly one of ``slice_ms`` and
    ``slice_of`` is required.

    Args:
        slice_ms: width of a slice in ms.
        ks: the cut-offs, as for :class:`RankingMetrics`.
        origin_ms: where fixed-width slices are aligned (default: the epoch).
        slice_of: maps an event time to the start of its slice.
    """

    __slots__ = ("_slice_ms", "_origin", "_slice_of", "_ks", "_slices")

    def __init__(
        self,
        slice_ms: int | None = None,
        ks: Iterable[int] = (5, 10, 20),
        *,
        origin_ms: int = 0,
        slice_of: Callable[[int], int] | None = None,
    ) -> None:
        if (slice_ms is None) == (slice_of is None):
            raise ValueError("give exactly one of slice_ms and slice_of")
        if slice_ms is not None:
            try:
                slice_ms = _check_k(slice_ms)
            except ValueError:
                raise ValueError(f"slice_ms must be a positive integer, got {slice_ms!r}") from None
        self._slice_ms = slice_ms
        self._origin = int(origin_ms)
        self._slice_of = slice_of
        self._ks = RankingMetrics(ks).ks
        self._slices: dict[int, RankingMetrics] = {}

    @property
    def ks(self) -> tuple[int, ...]:
        return self._ks

    def slice_start(self, ts_ms: int) -> int:
        """Start (epoch ms) of the slice that a case at ``ts_ms`` belongs to."""
        if self._slice_of is not None:
            return int(self._slice_of(ts_ms))
        assert self._slice_ms is not None
        return self._origin + ((int(ts_ms) - self._origin) // self._slice_ms) * self._slice_ms

    def add(self, ts_ms: int, ranked: Sequence[str], relevant: Collection[str]) -> None:
        """Add one case whose target event happened at ``ts_ms``."""
        start = self.slice_start(ts_ms)
        metrics = self._slices.get(start)
        if metrics is None:
            metrics = self._slices[start] = RankingMetrics(self._ks)
        metrics.add(ranked, relevant)

    def slices(self) -> list[tuple[int, RankingMetrics]]:
        """``(slice start ms, metrics)`` for every non-empty slice, in time order."""
        return sorted(self._slices.items())

    def total(self) -> RankingMetrics:
        """All slices merged into one (new) accumulator."""
        total = RankingMetrics(self._ks)
        for _, metrics in self.slices():
            total.merge(metrics)
        return total

    def summary(self) -> list[dict[str, float | int | None]]:
        """One row per non-empty slice, in time order: ``{"start_ms", **RankingMetrics.flat()}``."""
        return [{"start_ms": start, **metrics.flat()} for start, metrics in self.slices()]

    def merge(self, other: SlicedMetrics) -> SlicedMetrics:
        """Add ``other``'s cases slice by slice (same ``ks`` required); returns ``self``.

        The slices are merged by their start times; the caller keeps the slicing the same.
        """
        if other._ks != self._ks:
            raise ValueError(f"cannot merge metrics with ks={other._ks} into ks={self._ks}")
        for start, metrics in other._slices.items():
            mine = self._slices.get(start)
            if mine is None:
                mine = self._slices[start] = RankingMetrics(self._ks)
            mine.merge(metrics)
        return self


# --------------------------------------------------------------------------- latency histogram

#: Bin edges (ms) of :func:`latency_histogram`: roughly 1-2-5 steps from 0 to one minute.
DEFAULT_LATENCY_EDGES_MS: Final = (
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
    1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0,
)  # fmt: skip


def latency_histogram(values_ms: Iterable[float], edges_ms: Sequence[float] = DEFAULT_LATENCY_EDGES_MS) -> dict[str, list]:
    """``{"edges_ms": [...], "counts": [...]}``: how many latencies fall in each bin.

    ``counts[i]`` is the number of values ``v`` with ``edges_ms[i] <= v < edges_ms[i + 1]``
    (a value on an edge goes to the upper bin); the last count is the overflow bin,
    ``v >= edges_ms[-1]``.  So ``len(counts) == len(edges_ms)`` and the counts sum to the
    number of values (all zero with no values).  ``edges_ms`` must be non-empty, finite and
    strictly increasing; a value below ``edges_ms[0]`` or a non-finite value raises
    :class:`ValueError`.
    """
    edges = np.asarray(edges_ms, dtype=np.float64)
    if edges.ndim != 1 or edges.size == 0:
        raise ValueError("edges_ms must be a non-empty sequence of numbers")
    if not np.all(np.isfinite(edges)):
        raise ValueError("edges_ms must be finite numbers")
    if not np.all(np.diff(edges) > 0):
        raise ValueError("edges_ms must be strictly increasing")
    arr = np.fromiter((float(v) for v in values_ms), dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("latencies must be finite numbers")
    if arr.size and arr.min() < edges[0]:
        raise ValueError(f"latency {float(arr.min())} ms is below the first edge {float(edges[0])} ms")
    bins = np.searchsorted(edges, arr, side="right") - 1  # edges[i] <= v < edges[i + 1] -> i
    counts = np.bincount(bins, minlength=edges.size)
    return {"edges_ms": edges.tolist(), "counts": [int(c) for c in counts]}
