"""Prequential evaluation: the worker tests itself on the stream it serves.

Each user's next target event (a click, a purchase, or a review rated at least the positive
threshold: the backtest's default targets) tests the list that user *held* just before it:
the last recommendation published for them (per-event emission: after their previous event;
per-user emission: at the end of an earlier micro-batch).  A hit is the event's item in the
list's top ``k``; NDCG@k is ``1 / log2(rank + 2)`` for a hit at ``rank`` (0-based), else 0.
As in :mod:`scoring.backtest`, one user's events at one time on one item are one
interaction, tested once, at its first event; a user with no list yet is *cold* (counted,
not a case); a redelivered event is no case.  So, after a replay, the totals equal what
``recstream backtest`` computes on the same events with every event after the first of the
replay a test event (``--split`` at its start), whatever the partitions and workers.

Cases are counted by the ranker that made the held list (``blend``, ``text``, ``learned``,
or ``popularity`` for the fallback of users without evidence): totals since start, and a
sliding window of the last ``window`` cases.  Pure code, no Kafka; the worker exports the
figures to Prometheus (:mod:`streams.metrics`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Prequential", "PrequentialFigures"]


@dataclass(frozen=True, slots=True)
class PrequentialFigures:
    """One ranker's figures: totals since start, and over the sliding window."""

    cases: int = 0
    hits: int = 0
    ndcg: float = 0.0
    window_cases: int = 0
    window_hit_rate: float | None = None
    window_ndcg: float | None = None


@dataclass(slots=True)
class _Totals:
    cases: int = 0
    hits: int = 0
    ndcg: float = 0.0
    window: deque = field(default_factory=deque)  # (hit, ndcg) of the latest cases
    window_hits: int = 0
    window_ndcg: float = 0.0


class Prequential:
    """Held lists per user and the figures of every test they faced.

    Args:
        k: the list length tested (``HR@k``, ``NDCG@k``).
        window: cases in the sliding window, per ranker.
        max_users: users whose held list is remembered (least recently active first
            forgotten; a forgotten user's next event counts as cold).
        positive_threshold: the lowest rating of a review that is a target.
    """

    def __init__(self, k: int = 10, window: int = 1000, max_users: int = 200_000, positive_threshold: float = 4.0) -> None:
        if k < 1 or window < 1 or max_users < 1:
            raise ValueError(f"k, window and max_users must be at least 1, got {k}, {window}, {max_users}")
        self.k = k
        self.window = window
        self.max_users = max_users
        self.positive_threshold = positive_threshold
        #: user -> (the held list's ranker, its item ids, the lists of the ranker's other
        #: weightings as matrix rows, or None)
        self._held: OrderedDict[str, tuple[str, tuple[str, ...], np.ndarray | None]] = OrderedDict()
        self._last: dict[str, tuple[int, str]] = {}
        self._totals: dict[str, _Totals] = {}
        self.cold = 0
        #: the figures by ranker as of the last batch (a new mapping each time: safe to
        #: read from another thread)
        self.figures: Mapping[str, PrequentialFigures] = {}
        #: while a batch is open (:meth:`begin`): how to undo each change, newest last
        self._undo: list[tuple[Any, ...]] | None = None

    def is_target(self, kind: str, rating: float | None) -> bool:
        return kind != "review" or (rating is not None and rating >= self.positive_threshold)

    def _gain(self, rank: int) -> float:
        return 1.0 / math.log2(rank + 2) if rank >= 0 else 0.0

    def test(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None, item_row: int | None = None) -> np.ndarray | None:
        """An applied event of ``user_id``: a case against the list they hold, if it is a target.

        Returns, for a case whose held list came with other weightings' lists (see
        :meth:`hold`), the NDCG@k gain of each of them (``item_row``: the item's matrix row;
        ``None`` gains nothing)."""
        key = (int(ts), item_id)
        undo = self._undo
        if undo is not None:
            undo.append(("last", user_id, self._last.get(user_id)))
        companion = self._last.get(user_id) == key
        self._last[user_id] = key
        if companion or not self.is_target(kind, rating):
            return None
        held = self._held.get(user_id)
        if held is None:
            self.cold += 1
            if undo is not None:
                undo.append(("cold",))
            return None
        ranker, items, alternatives = held
        try:
            rank = items.index(item_id, 0, self.k)
        except ValueError:
            rank = -1
        hit = rank >= 0
        gain = self._gain(rank)
        t = self._totals.get(ranker)
        if t is None:
            t = self._totals[ranker] = _Totals()
        before = (t.ndcg, t.window_ndcg)
        t.cases += 1
        t.hits += hit
        t.ndcg += gain
        t.window.append((hit, gain))
        t.window_hits += hit
        t.window_ndcg += gain
        dropped = None
        if len(t.window) > self.window:
            dropped = old_hit, old_gain = t.window.popleft()
            t.window_hits -= old_hit
            t.window_ndcg -= old_gain
        if undo is not None:
            undo.append(("case", t, hit, before, dropped))
        if alternatives is None:
            return None
        gains = np.zeros(len(alternatives))
        if item_row is not None:
            for g, rank in zip(*np.nonzero(alternatives[:, : self.k] == item_row)):
                gains[g] = self._gain(int(rank))
        return gains

    def hold(self, user_id: str, ranker: str, items: Sequence[str], alternatives: np.ndarray | None = None) -> None:
        """``user_id`` was sent ``items`` (best first), ranked by ``ranker``; ``alternatives``
        (``(G, k)`` matrix rows) are the lists other weightings of the ranker would have sent."""
        undo = self._undo
        if undo is not None:
            undo.append(("held", user_id, self._held.get(user_id)))
        self._held[user_id] = (ranker, tuple(items[: self.k]), alternatives)
        self._held.move_to_end(user_id)
        if len(self._held) > self.max_users:
            forgotten, value = self._held.popitem(last=False)
            last = self._last.pop(forgotten, None)
            if undo is not None:
                undo.append(("forgot", forgotten, value, last))

    def begin(self) -> None:
        """Open a batch: its tests and held lists can be undone (:meth:`rollback`)."""
        self._undo = []

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        """Undo every test and hold since :meth:`begin` (a batch that failed is retried)."""
        undo, self._undo = self._undo or [], None
        for entry in reversed(undo):
            what = entry[0]
            if what == "last":
                _, user, old = entry
                if old is None:
                    self._last.pop(user, None)
                else:
                    self._last[user] = old
            elif what == "cold":
                self.cold -= 1
            elif what == "case":
                _, t, hit, sums, dropped = entry
                t.ndcg, t.window_ndcg = sums  # the sums as they were (not subtracted: no rounding)
                t.cases -= 1
                t.hits -= hit
                t.window.pop()
                t.window_hits -= hit
                if dropped is not None:
                    t.window.appendleft(dropped)
                    t.window_hits += dropped[0]
            elif what == "held":
                _, user, old = entry
                if old is None:
                    self._held.pop(user, None)
                else:
                    self._held[user] = old
            else:  # "forgot"
                _, user, value, last = entry
                self._held[user] = value
                self._held.move_to_end(user, last=False)
                if last is not None:
                    self._last[user] = last

    def publish(self) -> None:
        """Refresh :attr:`figures` (call after each batch)."""
        self.figures = {
            ranker: PrequentialFigures(
                t.cases,
                t.hits,
                t.ndcg,
                len(t.window),
                t.window_hits / len(t.window) if t.window else None,
                t.window_ndcg / len(t.window) if t.window else None,
            )
            for ranker, t in self._totals.items()
        }
