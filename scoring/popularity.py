"""Exponentially decayed item popularity.

The popularity of an item at time ``now`` is ``sum_i w_i * 0.5 ** ((now - t_i) / H)``
over its events (weight ``w_i``, time ``t_i`` in ms, half-life ``H``).  Writing it
as ``2 ** (-now / H) * sum_i w_i * 2 ** (t_i / H)`` shows that the second factor
does not depend on ``now``: we keep ``L = log2(sum_i w_i * 2 ** (t_i / H))``
per item (relative to the fixed epoch ``t = 0``), updated with
``L = logaddexp2(L, log2(w) + t / H)``.  Ranking by ``L`` is the ranking at any
time, nothing is ever re-decayed, and working in log space never overflows.

A sorted ``(-L, item_id)`` list gives :meth:`DecayedPopularity.top` in O(k + skipped
items).  It is brought up to date when it is read, not on every ``add``: the worker counts
every event (globally and per partition) and reads the ranking only for users without a
profile, so the items changed since the last read are moved once (binary search + one list
move each), or the list is re-sorted when most of it changed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = ["DecayedPopularity", "PopularityFormatError"]

_VERSION: Final = 1
_LN2: Final = math.log(2.0)
#: Counts are reported up to 2 ** this (far beyond any real count, far below overflow).
_MAX_LOG2_COUNT: Final = 1000.0


class PopularityFormatError(ValueError):
    """Serialized popularity bytes are malformed or of an unknown format version."""


def _logaddexp2(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(2.0 ** (lo - hi)) / _LN2


def _logsubexp2(a: float, b: float) -> float:
    """``log2(2 ** a - 2 ** b)``; ``-inf`` when ``b`` is not below ``a`` (never negative: a
    partial count removed is at most the sum it is part of, up to rounding)."""
    if b == -math.inf:
        return a
    if not b < a - 1e-12:
        return -math.inf
    return a + math.log1p(-(2.0 ** (b - a))) / _LN2


def _exp2(x: float) -> float:
    try:
        return 2.0**x
    except OverflowError:
        return math.inf


class DecayedPopularity:
    """Decayed event counts per item, ranked without re-decaying.

    Args:
        half_life_ms: an event's weight halves every ``half_life_ms`` milliseconds.
    """

    def __init__(self, half_life_ms: float) -> None:
        if not (half_life_ms > 0 and math.isfinite(half_life_ms)):
            raise ValueError(f"half_life_ms must be positive and finite, got {half_life_ms}")
        self._half_life = half_life_ms
        self._log2: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []  # (-log2 score, item_id), ascending; see _ranked
        # items changed since _order was last brought up to date, with their log2 score as it
        # is in _order (None: not in it)
        self._pending: dict[str, float | None] = {}
        self._last_ts: int | None = None

    @property
    def half_life_ms(self) -> float:
        return self._half_life

    @property
    def last_ts(self) -> int | None:
        """Latest event time added (ms), ``None`` when empty."""
        return self._last_ts

    def __len__(self) -> int:
        return len(self._log2)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._log2

    def __repr__(self) -> str:
        return f"DecayedPopularity(half_life_ms={self._half_life}, items={len(self)})"

    # ------------------------------------------------------------------ updates
    def add(self, item_id: str, ts: int, weight: float = 1.0) -> float:
        """Count an event of ``item_id`` at ``ts`` (ms) with ``weight > 0``.

        Returns the item's new log2 score (see :meth:`log2_score`).
        """
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        term = math.log2(weight) + ts / self._half_life
        if not math.isfinite(term):
            raise ValueError(f"timestamp {ts!r} out of range")
        old = self._log2.get(item_id)
        new = term if old is None else _logaddexp2(old, term)
        self._set(item_id, new, old)
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = int(ts)
        return new

    def set_log2(self, item_id: str, log2_score: float) -> None:
        """Restore an item's log2 score (as yielded by :meth:`items`)."""
        if not math.isfinite(log2_score):
            raise ValueError(f"log2 score must be finite, got {log2_score}")
        self._set(item_id, float(log2_score), self._log2.get(item_id))

    def restore(self, item_id: str, log2_score: float | None, last_ts: int | None) -> None:
        """Put back an item's earlier state: its :meth:`log2_score` (``None``: absent)
        and :attr:`last_ts` (to roll back :meth:`add` calls)."""
        if log2_score is None:
            self.remove(item_id)
        else:
            self.set_log2(item_id, log2_score)
        self._last_ts = last_ts

    def replace_partial(self, item_id: str, old: float | None, new: float | None) -> None:
        """One part of an item's score changed from ``old`` to ``new`` (log2 scores;
        ``None``: no part), e.g. another worker's partition: the score is the sum of
        such parts, so the old one is taken out and the new one added."""
        cur = self._log2.get(item_id)
        value = -math.inf if cur is None else cur
        if old is not None:
            value = _logsubexp2(value, old)
        if new is not None:
            value = new if value == -math.inf else _logaddexp2(value, new)
        if value == -math.inf:
            self.remove(item_id)
        else:
            self._set(item_id, value, cur)

    def remove(self, item_id: str) -> bool:
        """Forget an item; returns whether it was present."""
        old = self._log2.pop(item_id, None)
        if old is None:
            return False
        self._pending.setdefault(item_id, old)
        return True

    def clear(self) -> None:
        self._log2.clear()
        self._order.clear()
        self._pending.clear()
        self._last_ts = None

    def _set(self, item_id: str, new: float, old: float | None) -> None:
        self._pending.setdefault(item_id, old)  # not pending yet: _order holds ``old``
        self._log2[item_id] = new

    def _ranked(self) -> list[tuple[float, str]]:
        """The ``(-log2 score, item_id)`` list, ascending, brought up to date."""
        pending = self._pending
        if pending:
            if 4 * len(pending) > len(self._order):
                self._order = sorted((-lg, item_id) for item_id, lg in self._log2.items())
            else:
                order = self._order
                for item_id, in_order in pending.items():
                    if in_order is not None:
                        del order[bisect.bisect_left(order, (-in_order, item_id))]
                    lg = self._log2.get(item_id)
                    if lg is not None:
                        bisect.insort(order, (-lg, item_id))
            pending.clear()
        return self._order

    # ------------------------------------------------------------------ queries
    def log2_score(self, item_id: str) -> float | None:
        """``log2`` of the item's decayed count at time 0 (the ranking key), or ``None``."""
        return self._log2.get(item_id)

    def score(self, item_id: str, now_ms: int) -> float:
        """The item's decayed count at ``now_ms`` (0.0 for an unknown item; capped, see
        :meth:`top`)."""
        lg = self._log2.get(item_id)
        if lg is None:
            return 0.0
        return _exp2(lg - self.shift(now_ms))

    def top(
        self,
        k: int,
        exclude: Container[str] = (),
        allowed: Callable[[str], bool] | Container[str] | None = None,
        now_ms: int | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` most popular items as ``(item_id, decayed count)``.

        Ties are broken by item id (ascending).  ``exclude`` ids are skipped;
        ``allowed`` (a predicate or a container such as the catalog) restricts the
        candidates.  Counts are taken at ``now_ms`` (default: :attr:`last_ts`), the top
        one capped at ``2 ** 1000`` (for a time long before the events) so that scores
        stay finite; the ranking itself does not depend on it.
        """
        order = self._ranked()
        if k <= 0 or not order:
            return []
        if allowed is None:
            ok: Callable[[str], bool] | None = None
        elif callable(allowed):
            ok = allowed
        else:
            ok = allowed.__contains__
        shift = self.shift(now_ms)
        out: list[tuple[str, float]] = []
        for neg, item_id in order:
            if item_id in exclude or (ok is not None and not ok(item_id)):
                continue
            out.append((item_id, _exp2(-neg - shift)))
            if len(out) == k:
                break
        return out

    def shift(self, now_ms: int | None) -> float:
        """``now / H`` for counts at ``now_ms`` (``None``: the latest event's time; an item's
        count then is ``2 ** (log2 score - shift)``, as :meth:`score` computes), but never so
        early that the top count exceeds ``2 ** 1000``: counts "as of" a time long before
        their events grow without bound, and a score must stay a finite number."""
        now = float(now_ms if now_ms is not None else (self._last_ts or 0))
        shift = now / self._half_life
        order = self._ranked()
        if order:
            shift = max(shift, -order[0][0] - _MAX_LOG2_COUNT)
        return shift

    def items(self) -> Iterator[tuple[str, float]]:
        """``(item_id, log2 score)`` pairs, most popular first (for persistence)."""
        return ((item_id, -neg) for neg, item_id in self._ranked())

    def log2_scores(self) -> Mapping[str, float]:
        """``{item_id: log2 score}`` in no particular order: a read-only view, without
        bringing the ranking of :meth:`items` up to date."""
        return MappingProxyType(self._log2)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_items(cls, half_life_ms: float, items: Iterable[tuple[str, float]], last_ts: int | None = None) -> DecayedPopularity:
        """Rebuild from :meth:`items` output."""
        pop = cls(half_life_ms)
        for item_id, lg in items:
            if not math.isfinite(lg):
                raise ValueError(f"log2 score of {item_id!r} must be finite, got {lg}")
            pop._log2[item_id] = float(lg)
        pop._order = sorted((-lg, item_id) for item_id, lg in pop._log2.items())  # nothing pending
        pop._last_ts = last_ts
        return pop

    def to_bytes(self) -> bytes:
        """orjson document ``{"v", "half_life_ms", "last_ts", "items": [[id, log2], ...]}``."""
        return orjson.dumps(
            {
                "v": _VERSION,
                "half_life_ms": self._half_life,
                "last_ts": self._last_ts,
                "items": [[item_id, lg] for item_id, lg in self.items()],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | str) -> DecayedPopularity:
        """Inverse of :meth:`to_bytes`; raises :class:`PopularityFormatError` on bad input."""
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PopularityFormatError(f"malformed popularity bytes: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("v") != _VERSION:
            version = doc.get("v") if isinstance(doc, dict) else None
            raise PopularityFormatError(f"unknown popularity format version {version!r} (this code reads version {_VERSION})")
        try:
            return cls.from_items(doc["half_life_ms"], ((str(i), float(lg)) for i, lg in doc["items"]), doc["last_ts"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PopularityFormatError(f"malformed popularity document: {exc}") from exc
