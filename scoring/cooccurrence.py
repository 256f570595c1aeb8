"""Incremental, decayed item-to-item co-occurrence of positive events, bounded per item.

Pure code, no Kafka.  :class:`CooccurrenceModel` is the streaming counterpart of
:class:`scoring.baselines.ItemKNNBaseline`'s neighbourhood ("people who liked i also liked
j"), with a state made to live in a keyed, changelogged table (one value per item) and a
vectorised scorer that gives a dense score vector over the item matrix's rows, so that
blending it with the text scores (:mod:`scoring.blend`) is one array operation per batch.

Definitions
===========

A *positive* event is a click, a purchase, or a review rated at least the positive
threshold (:func:`is_positive`).  Each user's *history* is their last ``history_len``
distinct positive items, oldest first (:class:`RecentItems`; the worker can derive it from
the stored profile instead, see :func:`positive_history`).

On a positive event of a user on item ``j`` at time ``ts`` with weight ``w`` (1 by
default), given the user's history *before* the event: for every other item ``i`` of the
history, ``co(i, j)`` and ``co(j, i)`` grow by ``w``, and the item's positive count ``n_j``
grows by ``w``: exactly :class:`~scoring.baselines.ItemKNNBaseline`'s update.  With
``half_life_ms`` set, every co-occurrence and count decays with that half-life.

Two optional weights make it sequence-aware (both 1 by default, which is the plain
item-kNN above): with ``pair_decay`` below 1 a pair grows by ``w * pair_decay ** gap``,
``gap`` counting the history items between ``i`` and the event (0 for the most recent),
so items a user took up close together count more; with ``recency`` below 1 a user's score
for ``j`` sums ``recency ** age(i) * sim(i, j)``, ``age`` 0 for the most recent history
item.  On MovieLens ratings (issue 8's validation window) ``pair_decay=0.9, recency=0.8``
gave 1.5x the plain item-kNN's NDCG@10 (docs/quality.md).

The cosine similarity ``sim(i, j) = co(i, j) / sqrt(n_i * n_j)`` does not depend on the
time it is read at (the decay factor cancels), and a user's score for ``j`` is the sum of
``sim(i, j)`` over the items ``i`` of their history (:meth:`CooccurrenceModel.scores`,
:class:`CooccurrenceScorer`).

State: one row per item, in log2 units of a fixed reference time
=================================================================

Each item has one :class:`CooccurrenceRow`: its count and its neighbours' co-occurrences,
all kept as ``log2`` of the decayed value *at the epoch t = 0*, which is
:class:`scoring.popularity.DecayedPopularity`'s representation: an event at ``ts`` adds
``2 ** (log2(w) + ts / H)``, accumulated with ``logaddexp2``; the value at time ``now`` is
``2 ** (L - now / H)``.  No stored number ever needs re-decaying or rescaling, so a row
changes only when an event touches its item, and rows written at different times (or by
different partitions) are directly comparable and can be summed.  (Without a half-life,
``L`` is the plain ``log2`` of the count.)  :class:`ItemKNNBaseline` instead keeps linear
weights relative to one global reference time and rescales *every* row when that
reference moves: fine in memory, but in a table it would rewrite every row at once.

**Bound.**  A row's neighbours are cut back to its ``max_neighbours`` largest
co-occurrences (ties by item id) as soon as it holds more than ``2 * max_neighbours``
(:func:`bound_neighbours`, shared with the baseline); pruning ``i -> j`` does not remove
``j -> i``, and a pruned pair that co-occurs again restarts from that occurrence.

**Serialisation.**  :meth:`CooccurrenceRow.to_bytes`: ``b"RC"``, a format version byte,
the length of an orjson list of the neighbour ids, that list, then the count and the
neighbour weights as little-endian float64 (numpy bytes).  Never pickle.
:meth:`CooccurrenceRow.from_bytes` raises :class:`CooccurrenceFormatError` on malformed
bytes or an unknown version.  The model's parameters (half-life, bound, history length)
are configuration, not row data.

Partitions: where one item's row is written and read
====================================================

A worker partitions *users*: the events of one user all arrive on one partition of the
event topics, but any partition may produce co-occurrences of any item.  Chosen design:
**per-partition partial rows, summed on read** (the scheme the worker already uses for
popularity, ``streams.app``'s ``"<partition>:<item>"`` popularity table):

* the worker that holds input partition ``p`` keeps one :class:`CooccurrenceModel` per
  held partition, fed only by ``p``'s events; the rows a micro-batch touched (returned by
  :meth:`CooccurrenceModel.observe`) are written to a RocksDB-backed table keyed
  ``"<p>:<item id>"`` in the same micro-batch (and transaction) as the profiles, with the
  changelog partition ``p``.  So each key has exactly one writer, exactly-once holds per
  input partition, and a restarted or rebalanced worker recovers partition ``p``'s partials
  from ``p``'s changelog alone;
* scoring uses the sum of the partials (:func:`merge_rows`, a ``logaddexp2`` per entry,
  then the same bound), loaded into one read-side model with
  :meth:`CooccurrenceModel.set_row`.  With one worker that is the whole stream's
  co-occurrence; with several, each worker also follows the other partitions' changelogs
  (``streams/evidence.py``, read_committed) and adds their rows as partial rows
  (:meth:`CooccurrenceModel.replace_partial`: the old part out, the new one in), so every
  worker ranks from every partition's evidence: no extra topic, its own partitions up to
  the last event, the others up to their last committed micro-batch.

Rejected: a repartition topic keyed by item (one writer per item row, exact bounded rows).
It needs a second hop per event (latency, a second transaction) and fans each positive
event out to ``history_len`` pair updates, and the scoring side still reads the rows of a
user's history items, which then live on other partitions, so it needs a replicated read
copy anyway.  The price of partials: pruning is per partial row, so a neighbour kept by one
partition and pruned by another is under-counted in the sum (it never invents a pair).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from recstream.scoring.binary import HEADER, pack_header, unpack_header
from recstream.scoring.popularity import _logaddexp2 as logaddexp2
from recstream.scoring.popularity import _logsubexp2 as logsubexp2

__all__ = [
    "MAX_LOG2_SIMILARITY",
    "CooccurrenceFormatError",
    "CooccurrenceModel",
    "CooccurrenceRow",
    "CooccurrenceScorer",
    "RecentItems",
    "bound_neighbours",
    "is_positive",
    "weight_problem",
    "merge_rows",
    "positive_history",
]

# Binary layout: MAGIC (2 bytes) | version (1 byte) | ids length (uint32 LE)
#                | orjson list of neighbour ids | float64 LE: count, then one weight per id.
_MAGIC: Final = b"RC"
_VERSION: Final = 1
_F64_LE: Final = np.dtype("<f8")
_NEG_INF: Final = -math.inf
# keys of the journal's row entries (see CooccurrenceModel.rollback)
_SWAP: Final = object()  # the row's neighbour dict was replaced: put the old one back
_COUNT: Final = object()  # the row's log2 count changed
#: Similarities are capped at 2 ** this (see :meth:`CooccurrenceModel.similarity`).
MAX_LOG2_SIMILARITY: Final = 64.0


class CooccurrenceFormatError(ValueError):
    """Serialized co-occurrence bytes are malformed or of an unknown format version."""


# --------------------------------------------------------------------------- shared pieces
# (also used by scoring.baselines.ItemKNNBaseline)


def is_positive(kind: str, rating: float | None, threshold: float) -> bool:
    """Clicks and purchases are positive; a review is positive when ``rating >= threshold``."""
    if kind == "review":
        return rating is not None and rating >= threshold
    return True


def weight_problem(name: str, value: float) -> str | None:
    """What is wrong with a sequence weight (``pair_decay``, ``recency``) named ``name``:
    ``None`` when it is in (0, 1], else the message that says so."""
    return None if 0.0 < value <= 1.0 else f"{name} must be in (0, 1], got {value!r}"


#: Neighbours each item's row keeps (``M``): 300 on the validation windows gave 1.09x the
#: NDCG@10 of 100 on ml-latest-small and the same lists on Gift Cards (docs/quality.md).
DEFAULT_MAX_NEIGHBOURS: Final = 300


def bound_neighbours(row: dict[str, float], max_neighbours: int) -> dict[str, float]:
    """``row`` itself while it holds at most ``2 * max_neighbours`` entries, else a new dict
    of its ``max_neighbours`` largest values (ties by key, ascending)."""
    if len(row) <= 2 * max_neighbours:
        return row
    return dict(sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:max_neighbours])


class RecentItems:
    """Per key (a user), the last ``limit`` *distinct* items, oldest first.

    A repeated item moves to the most recent position.
    """

    __slots__ = ("limit", "_by_key")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"history_len must be at least 1, got {limit}")
        self.limit = limit
        self._by_key: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def view(self, key: str) -> Mapping[str, None]:
        """The key's items as an ordered mapping (read-only by convention; do not keep it
        across :meth:`push`)."""
        return self._by_key.get(key, {})

    def get(self, key: str) -> list[str]:
        """The key's items, oldest first."""
        return list(self._by_key.get(key, ()))

    def push(self, key: str, item: str) -> None:
        items = self._by_key.get(key)
        if items is None:
            items = self._by_key[key] = {}
        items.pop(item, None)
        items[item] = None
        if len(items) > self.limit:
            del items[next(iter(items))]


def positive_history(entries: Iterable[Any], history_len: int, positive_threshold: float = 4.0) -> list[str]:
    """The last ``history_len`` distinct positive items of a profile's history entries
    (objects with ``item_id``, ``kind`` and ``rating``, oldest first, as
    :attr:`encoders.profile.UserProfile.history`), oldest first.

    The worker can feed :meth:`CooccurrenceModel.observe` from the stored profile with it
    instead of keeping a second per-user history.  (The profile keeps its last 50 events of
    any kind, so with many non-positive events it can hold fewer positives than a
    dedicated :class:`RecentItems` would.)
    """
    if history_len < 1:
        raise ValueError(f"history_len must be at least 1, got {history_len}")
    # what pushing every positive entry into a RecentItems(history_len) keeps, read from the
    # newest entry back: each item at its last occurrence, the history_len most recent ones
    seq = entries if isinstance(entries, Sequence) else list(entries)
    recent: dict[str, None] = {}
    for e in reversed(seq):
        if e.kind == "review" and not (e.rating is not None and e.rating >= positive_threshold):
            continue
        item = e.item_id
        if item not in recent:
            recent[item] = None
            if len(recent) >= history_len:
                break
    out = list(recent)
    out.reverse()
    return out


# --------------------------------------------------------------------------- rows


@dataclass(slots=True, eq=False)
class CooccurrenceRow:
    """One item's state: ``log2`` of its decayed positive count and of each neighbour's
    decayed co-occurrence, at the epoch (see the module doc)."""

    log2_count: float = _NEG_INF
    neighbours: dict[str, float] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CooccurrenceRow):
            return NotImplemented
        return self.log2_count == other.log2_count and self.neighbours == other.neighbours

    def __repr__(self) -> str:
        return f"CooccurrenceRow(log2_count={self.log2_count:.6g}, neighbours={len(self.neighbours)})"

    def to_bytes(self) -> bytes:
        """Versioned binary form (orjson ids + little-endian float64 numbers)."""
        ids = orjson.dumps(list(self.neighbours))
        nums = np.empty(1 + len(self.neighbours), dtype=_F64_LE)
        nums[0] = self.log2_count
        nums[1:] = np.fromiter(self.neighbours.values(), dtype=np.float64, count=len(self.neighbours))
        return pack_header(_MAGIC, _VERSION, len(ids)) + ids + nums.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CooccurrenceRow:
        """Inverse of :meth:`to_bytes`; raises :class:`CooccurrenceFormatError` on bad input."""
        buf, ids_len = unpack_header(data, _MAGIC, _VERSION, CooccurrenceFormatError, short="co-occurrence row", name="co-occurrence row")
        start = HEADER.size
        try:
            ids = orjson.loads(buf[start : start + ids_len])
        except orjson.JSONDecodeError as exc:
            raise CooccurrenceFormatError(f"malformed co-occurrence row ids: {exc}") from exc
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise CooccurrenceFormatError("malformed co-occurrence row: the ids are not a list of strings")
        raw = buf[start + ids_len :]
        if len(raw) != 8 * (1 + len(ids)):
            raise CooccurrenceFormatError(f"co-occurrence row has {len(raw)} bytes of numbers, expected {8 * (1 + len(ids))} for {len(ids)} neighbours")
        nums = np.frombuffer(raw, dtype=_F64_LE).astype(np.float64)
        if np.isnan(nums).any() or np.isposinf(nums).any():
            raise CooccurrenceFormatError("malformed co-occurrence row: a weight is NaN or +inf")
        if len(set(ids)) != len(ids):
            raise CooccurrenceFormatError("malformed co-occurrence row: repeated neighbour id")
        return cls(float(nums[0]), dict(zip(ids, nums[1:].tolist())))


def merge_rows(rows: Iterable[CooccurrenceRow], max_neighbours: int | None = None) -> CooccurrenceRow:
    """The sum of partial rows of one item (e.g. one per partition): counts and
    co-occurrences add up (``logaddexp2``); with ``max_neighbours`` the result is bounded
    like any row (:func:`bound_neighbours`)."""
    out = CooccurrenceRow()
    acc = out.neighbours
    for row in rows:
        out.log2_count = logaddexp2(out.log2_count, row.log2_count) if out.log2_count != _NEG_INF else row.log2_count
        for j, lw in row.neighbours.items():
            old = acc.get(j)
            acc[j] = lw if old is None else logaddexp2(old, lw)
    if max_neighbours is not None:
        out.neighbours = bound_neighbours(acc, max_neighbours)
    return out


# --------------------------------------------------------------------------- the model


def _appended(a: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``a`` with ``value`` appended (``np.append`` costs several times more)."""
    out = np.empty(len(a) + 1, dtype=a.dtype)
    out[:-1] = a
    out[-1] = value
    return out


class CooccurrenceModel:
    """Item-to-item co-occurrence of positive events (see the module doc).

    Args:
        max_neighbours: neighbours kept per item (``M``; a row holds at most ``2 M``).
        half_life_ms: decay of co-occurrences and counts; ``None`` for plain counts.
        history_len: positive items per user kept by :meth:`observe_event`'s own
            histories (the worker passes histories to :meth:`observe` instead).
        positive_threshold: the lowest positive review rating.
        pair_decay: weight of a pair by its distance in the user's history: the event's
            item is paired with the history's most recent item at weight 1, the one before
            at ``pair_decay``, then ``pair_decay ** 2``... (1.0, the default: every pair
            counts 1, the issue's item-kNN; below 1, items rated close together in time
            count more, a session-kNN's weighting).
        recency: weight of a history item when scoring (:meth:`scores`,
            :class:`CooccurrenceScorer`): the most recent counts 1, the one before
            ``recency``, then ``recency ** 2``... (1.0, the default: a plain sum).

    Every item the model knows gets a *slot* (a dense index, in order of first sight);
    the counts are mirrored in a float64 array by slot, and each row caches its neighbours
    as ``(slots, log2 weights)`` arrays until it changes, which is what
    :class:`CooccurrenceScorer` reads.
    """

    def __init__(
        self,
        max_neighbours: int = DEFAULT_MAX_NEIGHBOURS,
        half_life_ms: float | None = None,
        history_len: int = 20,
        positive_threshold: float = 4.0,
        pair_decay: float = 1.0,
        recency: float = 1.0,
    ) -> None:
        for name, v in (("pair_decay", pair_decay), ("recency", recency)):
            if problem := weight_problem(name, v):
                raise ValueError(problem)
        if isinstance(max_neighbours, bool) or not isinstance(max_neighbours, int) or max_neighbours < 1:
            raise ValueError(f"max_neighbours must be an integer >= 1, got {max_neighbours!r}")
        if half_life_ms is not None and not (half_life_ms > 0 and math.isfinite(half_life_ms)):
            raise ValueError(f"half_life_ms must be positive and finite, got {half_life_ms}")
        self.max_neighbours = max_neighbours
        self.half_life_ms = half_life_ms
        self.positive_threshold = positive_threshold
        self.pair_decay = float(pair_decay)
        self.recency = float(recency)
        self.histories = RecentItems(history_len)
        self._rows: dict[str, CooccurrenceRow] = {}
        self._slot: dict[str, int] = {}
        self._slot_ids: list[str] = []
        self._log2_count = np.full(64, _NEG_INF, dtype=np.float64)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # cache, dropped on change
        # each row's neighbour dict and the slots of its first keys, kept while observe only
        # updates and adds entries (a dict keeps its order, new keys last): the slots are then
        # looked up again for the new keys only (neighbour_arrays)
        self._key_slots: dict[str, tuple[dict[str, float], np.ndarray]] = {}
        #: the items whose cached arrays were read since they were made: observe patches
        #: those (a per-event snapshot reads the rows its event changed) and drops the others
        self._read: set[str] = set()
        self._last_ts: int | None = None
        #: how many times :meth:`clear` ran (slots are reassigned then: caches by slot are stale)
        self.clears = 0
        # while a journal is open (begin): how to undo observe's changes, as flat triples
        # (target, key, old) newest last (see rollback), and the items they touched
        self._undo: list[Any] | None = None
        self._undo_items: list[str] = []
        self._undo_last_ts: int | None = None

    @property
    def history_len(self) -> int:
        return self.histories.limit

    @property
    def last_ts(self) -> int | None:
        """Latest event time observed (ms), ``None`` before any."""
        return self._last_ts

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def __repr__(self) -> str:
        return f"CooccurrenceModel(max_neighbours={self.max_neighbours}, half_life_ms={self.half_life_ms}, items={len(self._rows)})"

    # ------------------------------------------------------------------ rows
    def row(self, item_id: str) -> CooccurrenceRow | None:
        """The item's row (the live object: do not modify it; use :meth:`set_row`)."""
        return self._rows.get(item_id)

    def rows(self) -> Iterator[tuple[str, CooccurrenceRow]]:
        """``(item id, row)`` for every item (for persistence)."""
        return iter(self._rows.items())

    def set_row(self, item_id: str, row: CooccurrenceRow) -> None:
        """Put a stored (e.g. recovered or merged) row in place of the item's row."""
        if self._undo is not None:
            self._undo += (self._rows, item_id, self._rows.get(item_id))
            self._undo_items.append(item_id)
        self._rows[item_id] = row
        self._key_slots.pop(item_id, None)
        self._changed(item_id, row)

    def replace_partial(self, item_id: str, old: CooccurrenceRow | None, new: CooccurrenceRow | None) -> None:
        """One part of the item's row changed from ``old`` to ``new`` (``None``: no part),
        e.g. another worker's partition's row: this model's row is the sum of such parts
        (and of what it observed itself), so the old part is taken out and the new one
        added, entry by entry, then the row is bounded as usual.  An entry the row had
        already pruned is not taken out again (it is not there)."""
        cur = self._rows.get(item_id)
        row = CooccurrenceRow() if cur is None else CooccurrenceRow(cur.log2_count, dict(cur.neighbours))
        nb = row.neighbours
        if old is not None:
            row.log2_count = logsubexp2(row.log2_count, old.log2_count) if row.log2_count != _NEG_INF else _NEG_INF
            for j, lw in old.neighbours.items():
                have = nb.get(j)
                if have is not None:
                    left = logsubexp2(have, lw)
                    if left == _NEG_INF:
                        del nb[j]
                    else:
                        nb[j] = left
        if new is not None:
            row.log2_count = new.log2_count if row.log2_count == _NEG_INF else logaddexp2(row.log2_count, new.log2_count)
            for j, lw in new.neighbours.items():
                have = nb.get(j)
                nb[j] = lw if have is None else logaddexp2(have, lw)
        if len(nb) > 2 * self.max_neighbours:
            row.neighbours = bound_neighbours(nb, self.max_neighbours)
        if row.log2_count == _NEG_INF and not row.neighbours:
            self.remove_row(item_id)
        else:
            self.set_row(item_id, row)

    def copy_row(self, item_id: str) -> CooccurrenceRow | None:
        """A copy of the item's row (``None`` when it has none), for :meth:`restore_row`."""
        row = self._rows.get(item_id)
        return None if row is None else CooccurrenceRow(row.log2_count, dict(row.neighbours))

    def restore_row(self, item_id: str, row: CooccurrenceRow | None, last_ts: int | None) -> None:
        """Undo updates: put back a row saved by :meth:`copy_row` (``None``: the item had
        no row) and the :attr:`last_ts` of that time (a failed micro-batch is rolled back
        this way)."""
        if row is None:
            self.remove_row(item_id)
        else:
            self.set_row(item_id, row)
        self._last_ts = last_ts

    def begin(self) -> None:
        """Open a journal: the changes :meth:`observe` makes from now on can be undone
        (:meth:`rollback`; a failed micro-batch), at the cost of a few list entries per pair
        instead of a copy of every row it touches (:meth:`copy_row`)."""
        self._undo = []
        self._undo_items = []
        self._undo_last_ts = self._last_ts

    def commit(self) -> None:
        """Close the journal: keep the changes."""
        self._undo = None
        self._undo_items = []

    def rollback(self) -> None:
        """Undo every change of :meth:`observe` (and :meth:`set_row`, :meth:`remove_row`)
        since :meth:`begin`, and close the journal: the rows, their neighbour order included,
        the counts by slot and :attr:`last_ts` are as they were (new slots stay assigned)."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        for at in range(len(undo) - 3, -1, -3):
            target, key, old = undo[at], undo[at + 1], undo[at + 2]
            if type(target) is dict:  # a neighbour dict, or the rows by item
                if old is None:
                    del target[key]
                else:
                    target[key] = old
            elif key is _SWAP:
                target.neighbours = old
            else:  # _COUNT
                target.log2_count = old
        for item_id in dict.fromkeys(self._undo_items):
            self._arrays.pop(item_id, None)
            self._key_slots.pop(item_id, None)  # keys may have been deleted
            slot = self._slot.get(item_id)
            if slot is not None:
                row = self._rows.get(item_id)
                self._log2_count[slot] = _NEG_INF if row is None else row.log2_count
        self._undo_items = []
        self._last_ts = self._undo_last_ts

    def clear(self) -> None:
        """Forget every row, slot and history (before a rebuild from stored rows)."""
        self._undo = None
        self._undo_items = []
        self.histories = RecentItems(self.histories.limit)
        self._rows.clear()
        self._slot.clear()
        self._slot_ids = []
        self._log2_count = np.full(64, _NEG_INF, dtype=np.float64)
        self._arrays.clear()
        self._key_slots.clear()
        self._read.clear()
        self._last_ts = None
        self.clears += 1

    def remove_row(self, item_id: str) -> bool:
        """Forget an item's row (its slot stays); returns whether it was present."""
        if self._undo is not None and item_id in self._rows:
            self._undo += (self._rows, item_id, self._rows[item_id])
            self._undo_items.append(item_id)
        if self._rows.pop(item_id, None) is None:
            return False
        self._arrays.pop(item_id, None)
        self._key_slots.pop(item_id, None)
        self._log2_count[self._slot[item_id]] = _NEG_INF
        return True

    def slot(self, item_id: str) -> int:
        """The item's slot, assigned on first sight."""
        s = self._slot.get(item_id)
        if s is None:
            s = self._slot[item_id] = len(self._slot_ids)
            self._slot_ids.append(item_id)
            if s >= self._log2_count.shape[0]:
                grown = np.full(2 * self._log2_count.shape[0], _NEG_INF, dtype=np.float64)
                grown[:s] = self._log2_count[:s]
                self._log2_count = grown
        return s

    @property
    def slot_ids(self) -> Sequence[str]:
        """Item id of every slot, in slot order (read-only)."""
        return self._slot_ids

    def log2_counts(self) -> np.ndarray:
        """``log2`` count at the epoch by slot (``-inf`` for no count); a read-only view."""
        view = self._log2_count[: len(self._slot_ids)]
        view.flags.writeable = False
        return view

    def neighbour_arrays(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(slots int64, log2 weights float64)`` of the item's neighbours, in the row's order (cached)."""
        self._read.add(item_id)
        cached = self._arrays.get(item_id)
        if cached is not None:
            return cached
        row = self._rows.get(item_id)
        if row is None or not row.neighbours:
            out = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
        else:
            nb = row.neighbours
            n = len(nb)
            known = self._key_slots.get(item_id)
            if known is not None and known[0] is nb and len(known[1]) <= n:
                # the same dict, only updated and grown since (observe): its first keys are the same
                slots = known[1]
                if len(slots) < n:
                    slots = np.concatenate([slots, self._slots_of(list(itertools.islice(nb, len(slots), None)))])
            else:
                slots = self._slots_of(nb)
            self._key_slots[item_id] = (nb, slots)
            out = (slots, np.fromiter(nb.values(), dtype=np.float64, count=n))
        self._arrays[item_id] = out
        return out

    def _patch(self, item_id: str, row: CooccurrenceRow, key: str, added: bool) -> None:
        """``row.neighbours[key]`` (``item_id``'s row) was just set by :meth:`observe`
        (``added``: a new key, the dict's last): the cached arrays are patched to what
        :meth:`neighbour_arrays` would make of the row, or dropped where they cannot be."""
        self._read.discard(item_id)
        cached = self._arrays.pop(item_id, None)
        known = self._key_slots.get(item_id)
        nb = row.neighbours
        s = self._slot.get(key)
        if cached is None or known is None or known[0] is not nb or s is None or len(cached[0]) + added != len(nb):
            return
        slots, lw = cached
        if added:
            slots, lw = _appended(slots, s), _appended(lw, nb[key])
            self._key_slots[item_id] = (nb, slots)
        else:
            lw = lw.copy()
            lw[slots == s] = nb[key]
        self._arrays[item_id] = (slots, lw)

    def _slots_of(self, keys: Collection[str]) -> np.ndarray:
        """The slots of item ids, assigned in order where new."""
        n = len(keys)
        try:  # every neighbour usually has its slot already: plain lookups
            return np.fromiter(map(self._slot.__getitem__, keys), dtype=np.int64, count=n)
        except KeyError:  # a stored row naming items this model has not seen
            return np.fromiter((self.slot(j) for j in keys), dtype=np.int64, count=n)

    def _changed(self, item_id: str, row: CooccurrenceRow) -> None:
        self._arrays.pop(item_id, None)
        slot = self.slot(item_id)  # may grow the array: index it afterwards
        self._log2_count[slot] = row.log2_count

    # ------------------------------------------------------------------ updates
    def _term(self, ts: int, weight: float) -> float:
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        term = math.log2(weight)
        if self.half_life_ms is not None:
            term += ts / self.half_life_ms
        if not math.isfinite(term):
            raise ValueError(f"timestamp {ts!r} out of range")
        return term

    def _row_for_update(self, item_id: str) -> CooccurrenceRow:
        row = self._rows.get(item_id)
        if row is None:
            row = self._rows[item_id] = CooccurrenceRow()
        return row

    def _bump(self, row: CooccurrenceRow, j: str, term: float) -> None:
        nb = row.neighbours
        old = nb.get(j)
        nb[j] = term if old is None else logaddexp2(old, term)
        if len(nb) > 2 * self.max_neighbours:
            row.neighbours = bound_neighbours(nb, self.max_neighbours)

    def observe(self, history: Iterable[str], item_id: str, ts: int, weight: float = 1.0) -> list[str]:
        """Count one positive event of a user on ``item_id`` at ``ts`` (ms), given the
        user's positive history *before* it, oldest first (repeats and ``item_id`` itself
        are ignored; the order matters only with ``pair_decay`` below 1).  Returns the
        items whose rows changed (``item_id`` first), i.e. the table keys to write for
        this event."""
        term = self._term(ts, weight)
        rows = self._rows
        undo = self._undo
        row_j = rows.get(item_id)
        if row_j is None:
            row_j = rows[item_id] = CooccurrenceRow()
            if undo is not None:
                undo += (rows, item_id, None)
        if undo is not None:
            undo += (row_j, _COUNT, row_j.log2_count)
        row_j.log2_count = term if row_j.log2_count == _NEG_INF else logaddexp2(row_j.log2_count, term)
        touched = [item_id]
        others = [i for i in dict.fromkeys(history) if i != item_id]
        step = math.log2(self.pair_decay)  # 0.0 without decay
        last = len(others) - 1
        # _row_for_update, _bump and _changed of every pair, inlined (the same updates; with
        # a journal open, each change is recorded as (target, key, old value) first)
        cap = 2 * self.max_neighbours
        drop = self._arrays.pop
        read = self._read
        slot_of = self._slot.get
        log2_count = self._log2_count
        for pos, i in enumerate(others):
            pair_term = term + (last - pos) * step  # the most recent at weight 1
            row_i = rows.get(i)
            if row_i is None:
                row_i = rows[i] = CooccurrenceRow()
                if undo is not None:
                    undo += (rows, i, None)
            nb = row_i.neighbours
            old = old_i = nb.get(item_id)
            nb[item_id] = pair_term if old is None else logaddexp2(old, pair_term)
            if undo is not None:
                undo += (nb, item_id, old)
            if len(nb) > cap:
                row_i.neighbours = bound_neighbours(nb, self.max_neighbours)
                self._key_slots.pop(i, None)
                if undo is not None:
                    undo += (row_i, _SWAP, nb)
            nb = row_j.neighbours
            old = nb.get(i)
            nb[i] = pair_term if old is None else logaddexp2(old, pair_term)
            if undo is not None:
                undo += (nb, i, old)
            if len(nb) > cap:
                row_j.neighbours = bound_neighbours(nb, self.max_neighbours)
                self._key_slots.pop(item_id, None)
                if undo is not None:
                    undo += (row_j, _SWAP, nb)
            if i in read:
                self._patch(i, row_i, item_id, old_i is None)
            else:
                drop(i, None)
            s = slot_of(i)
            if s is None:
                s = self.slot(i)  # may grow the array
                log2_count = self._log2_count
            log2_count[s] = row_i.log2_count
            touched.append(i)
        self._changed(item_id, row_j)
        if undo is not None:
            self._undo_items += touched
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = int(ts)
        return touched

    def observe_event(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> list[str]:
        """Like :meth:`observe`, keeping the users' histories here (:attr:`histories`):
        a non-positive event changes nothing and returns ``[]``."""
        if not is_positive(kind, rating, self.positive_threshold):
            return []
        touched = self.observe(self.histories.view(user_id), item_id, ts)
        self.histories.push(user_id, item_id)
        return touched

    # ------------------------------------------------------------------ queries
    def count(self, item_id: str, now_ms: int | None = None) -> float:
        """The item's decayed positive count at ``now_ms`` (default :attr:`last_ts`)."""
        row = self._rows.get(item_id)
        return 0.0 if row is None else self._value(row.log2_count, now_ms)

    def cooccurrence(self, i: str, j: str, now_ms: int | None = None) -> float:
        """``co(i, j)`` as stored in ``i``'s row, decayed to ``now_ms`` (default
        :attr:`last_ts`); 0.0 when absent or pruned."""
        row = self._rows.get(i)
        lw = None if row is None else row.neighbours.get(j)
        return 0.0 if lw is None else self._value(lw, now_ms)

    def neighbours(self, item_id: str, now_ms: int | None = None) -> dict[str, float]:
        """``{j: co(item, j)}`` decayed to ``now_ms`` (default :attr:`last_ts`)."""
        row = self._rows.get(item_id)
        if row is None:
            return {}
        return {j: self._value(lw, now_ms) for j, lw in row.neighbours.items()}

    def _value(self, log2_value: float, now_ms: int | None) -> float:
        if log2_value == _NEG_INF:
            return 0.0
        shift = 0.0
        if self.half_life_ms is not None:
            now = now_ms if now_ms is not None else (self._last_ts or 0)
            shift = now / self.half_life_ms
        try:
            return 2.0 ** (log2_value - shift)
        except OverflowError:
            return math.inf

    def similarity(self, i: str, j: str) -> float:
        """``sim(i, j) = co(i, j) / sqrt(n_i * n_j)`` (does not depend on the time).

        Usually at most about 1, but not bounded: repeated positives, and with decay a
        stale history item (its count decayed away) meeting a fresh item, push it above;
        it is capped at ``2 ** MAX_LOG2_SIMILARITY`` so that scores stay finite.
        """
        row_i, row_j = self._rows.get(i), self._rows.get(j)
        if row_i is None or row_j is None:
            return 0.0
        lw = row_i.neighbours.get(j)
        if lw is None or row_i.log2_count == _NEG_INF or row_j.log2_count == _NEG_INF:
            return 0.0
        return 2.0 ** min(lw - 0.5 * (row_i.log2_count + row_j.log2_count), MAX_LOG2_SIMILARITY)

    def scores(self, history: Iterable[str]) -> dict[str, float]:
        """``{j: sum over i in history of recency ** age(i) * sim(i, j)}`` for every
        neighbour ``j`` (``history`` oldest first, ``age`` 0 for its most recent distinct
        item; history items included, nothing excluded): the scalar reference of
        :class:`CooccurrenceScorer`."""
        out: dict[str, float] = {}
        distinct = list(dict.fromkeys(history))
        for age, i in enumerate(reversed(distinct)):
            row = self._rows.get(i)
            if row is None:
                continue
            w = self.recency**age
            for j in row.neighbours:
                s = self.similarity(i, j) * w
                if s > 0.0:
                    out[j] = out.get(j, 0.0) + s
        return out


# --------------------------------------------------------------------------- vectorised scoring

#: :func:`_positive_sums` adds up through a dense vector while it has at most this many
#: entries per term (zeroing and scanning it costs less than sorting the terms).
_DENSE_SUMS: Final = 100

#: :meth:`CooccurrenceScorer.sparse_batch` computes consecutive histories together up to
#: about this many terms (neighbour entries): beyond, the arrays leave the CPU's caches and
#: cost more per term than one history at a time (docs/benchmarks.md).
_GROUP_TERMS: Final = 4096


def _positive_sums(keys: np.ndarray, values: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` (in ``[0, n_keys)``) ascending with the sums of their ``values``,
    where positive.  Each sum is added up in the order given (``np.bincount``), through a dense
    vector of every key or, where that is long for the terms, through ``np.unique``: the same
    numbers either way."""
    if n_keys <= _DENSE_SUMS * len(keys):
        sums = np.bincount(keys, weights=values, minlength=n_keys)
        at = np.flatnonzero(sums > 0.0)
        return at, sums[at]
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=uniq.shape[0])
    pos = sums > 0.0
    return uniq[pos], sums[pos]


class CooccurrenceScorer:
    """Dense co-occurrence scores over a fixed item order (e.g. an ItemMatrix's rows).

    Args:
        model: the co-occurrence model (read, never changed).
        row_of: item id -> row in the target order, ``None`` for items outside it
            (``ItemMatrix.row`` as is, or ``dict.get`` of a mapping).
        n_rows: the length of the score vectors (``ItemMatrix.rows_used``).

    Row ``r`` of a score vector holds ``sum over i in history of recency ** age(i) *
    sim(i, item at r)``, as :meth:`CooccurrenceModel.scores` (float32; 0 where there is no co-occurrence).  The
    model's slot -> row mapping is cached and extended as the model learns new items; call
    :meth:`reindex` after the target order changes (items added to or removed from the
    matrix).
    """

    def __init__(self, model: CooccurrenceModel, row_of: Callable[[str], int | None], n_rows: int) -> None:
        self.model = model
        self._row_of = row_of
        self._n_rows = int(n_rows)
        self._slot_row = np.empty(0, dtype=np.int64)

    @property
    def n_rows(self) -> int:
        return self._n_rows

    def reindex(self, row_of: Callable[[str], int | None] | None = None, n_rows: int | None = None) -> None:
        """Forget the slot -> row mapping (and optionally change the target order)."""
        if row_of is not None:
            self._row_of = row_of
        if n_rows is not None:
            self._n_rows = int(n_rows)
        self._slot_row = np.empty(0, dtype=np.int64)

    def _sync(self) -> np.ndarray:
        ids = self.model.slot_ids
        known = self._slot_row.shape[0]
        if known < len(ids):
            row_of = self._row_of
            new = np.fromiter(
                ((-1 if (r := row_of(ids[s])) is None else r) for s in range(known, len(ids))),
                dtype=np.int64,
                count=len(ids) - known,
            )
            if new.size and new.max(initial=-1) >= self._n_rows:
                raise ValueError(f"row_of gave row {int(new.max())} but the score vectors have {self._n_rows} rows")
            self._slot_row = np.concatenate([self._slot_row, new])
        return self._slot_row

    def sparse(self, history: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows int64, scores float64)`` of one history: rows unique and ascending, only
        the rows with a positive score (:meth:`sparse_batch` of one history)."""
        return self.sparse_batch([history])[0]

    def sparse_batch(self, histories: Sequence[Iterable[str]], group_terms: int = _GROUP_TERMS) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`sparse` of every history (the same numbers as one at a time: each element is
        computed alone, and each row's sum is added up in the order of its history's items).
        Consecutive histories are computed together until their terms reach ``group_terms``;
        the pairs of a group are views into shared arrays (read-only by convention)."""
        model = self.model
        step = math.log2(model.recency)  # 0.0 without recency weighting
        neg_inf = _NEG_INF
        # per history item of the batch: (slots, log2 weights, 0.5 * log2 count), or None
        known: dict[str, tuple[np.ndarray, np.ndarray, float] | None] = {}
        get_row = model.row
        arrays = model.neighbour_arrays
        out: list[tuple[np.ndarray, np.ndarray]] = []
        # the group being collected: per history item's terms, its arrays, shift and history
        slot_parts: list[np.ndarray] = []
        log_parts: list[np.ndarray] = []
        shifts: list[float] = []
        lengths: list[int] = []
        owners: list[int] = []
        members = terms = 0
        for history in histories:
            distinct = list(dict.fromkeys(history))
            if members and terms >= group_terms:
                out += self._group_sums(slot_parts, log_parts, shifts, lengths, owners, members)
                slot_parts, log_parts, shifts, lengths, owners = [], [], [], [], []
                members = terms = 0
            for age, i in enumerate(reversed(distinct)):
                got: Any = known.get(i, False)  # False: not looked up yet
                if got is False:
                    row = get_row(i)
                    if row is None or row.log2_count == neg_inf or not row.neighbours:
                        got = None
                    else:
                        slots, lw = arrays(i)
                        got = (slots, lw, 0.5 * row.log2_count)
                    known[i] = got
                if got is None:
                    continue
                slot_parts.append(got[0])
                log_parts.append(got[1])
                shifts.append(got[2] - age * step)
                lengths.append(len(got[0]))
                owners.append(members)
                terms += len(got[0])
            members += 1
        if members:
            out += self._group_sums(slot_parts, log_parts, shifts, lengths, owners, members)
        return out

    def _group_sums(
        self, slot_parts: list[np.ndarray], log_parts: list[np.ndarray], shifts: list[float], lengths: list[int], owners: list[int], batch: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The sparse scores of ``batch`` histories from their items' terms (history item
        ``t`` of history ``owners[t]``: its neighbours' slots and log2 weights, less its shift)."""
        if not slot_parts:
            empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
            return [empty] * batch
        model = self.model
        slots = np.concatenate(slot_parts)
        counts = np.asarray(lengths, dtype=np.int64)
        slot_row = self._sync()
        half_j = 0.5 * model.log2_counts()[slots]
        # sim(i, j) = 2 ** (log2 co_ij - log2 n_i / 2 - log2 n_j / 2), weighted by recency ** age:
        # lw - (0.5 * log2 n_i - age * step), then - log2 n_j / 2, capped, 0 without a count
        logs = np.concatenate(log_parts) - np.repeat(np.asarray(shifts, dtype=np.float64), counts)
        vals = np.exp2(np.minimum(logs - half_j, MAX_LOG2_SIMILARITY))
        vals[half_j == _NEG_INF] = 0.0
        rows = slot_row[slots]
        keep = rows >= 0
        n = max(self._n_rows, 1)
        if batch == 1:  # (sparse) the keys are the rows
            return [_positive_sums(rows[keep], vals[keep], n)]
        keys = np.repeat(np.asarray(owners, dtype=np.int64), counts)[keep] * n + rows[keep]
        # one row's terms keep their order (bincount adds them in order): the sums of one history alone
        uniq, sums = _positive_sums(keys, vals[keep], batch * n)
        users = uniq // n
        out_rows = uniq - users * n
        bounds = np.searchsorted(users, np.arange(batch + 1)).tolist()
        return [(out_rows[s:e], sums[s:e]) for s, e in itertools.pairwise(bounds)]

    def dense(self, history: Iterable[str], out: np.ndarray | None = None) -> np.ndarray:
        """Scores of one history as a float32 ``(n_rows,)`` vector (written into ``out``
        when given, which is zeroed first)."""
        if out is None:
            out = np.zeros(self._n_rows, dtype=np.float32)
        else:
            if out.shape != (self._n_rows,):
                raise ValueError(f"out has shape {out.shape}, expected ({self._n_rows},)")
            out[:] = 0.0
        rows, vals = self.sparse(history)
        out[rows] = vals
        return out

    def batch(self, histories: Sequence[Iterable[str]]) -> np.ndarray:
        """Scores of many histories as a float32 ``(B, n_rows)`` matrix."""
        out = np.zeros((len(histories), self._n_rows), dtype=np.float32)
        for b, history in enumerate(histories):
            rows, vals = self.sparse(history)
            out[b, rows] = vals
        return out
