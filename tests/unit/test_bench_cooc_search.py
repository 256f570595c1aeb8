"""bench/cooc_search.py: the dense grid that chose the co-occurrence's shape ranks as the
definitions say (scoring/cooccurrence.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from recstream.scoring.protocol import Interaction, ProtocolData
from recstream.streams.records import Item

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench  # noqa: E402  (tests/ is not a package)

cs = load_bench("recstream_bench_cooc_search", "cooc_search.py")


def data(rows: list[tuple[str, str, bool]]) -> ProtocolData:
    catalog = [Item(i, f"Movie {i}", "", ("Drama",)) for i in "abcde"]
    its = [Interaction(t * 1000, u, i, pos, ("click", "purchase") if pos else ("click",)) for t, (u, i, pos) in enumerate(rows)]
    return ProtocolData("t", catalog, its)


def test_recency_decides_between_an_old_and_a_recent_neighbour() -> None:
    # co(a, c) = 2 (u2, u4), co(b, d) = 1 (u3); u1 takes up a, then b, then d (the case):
    # candidates c, d (e has no score). Plain sum: c's sim(a, c) = 2 / sqrt(3 * 2) beats
    # d's sim(b, d) = 1 / sqrt(2 * 1): a miss. Recency 0.5 halves the older a's neighbours:
    # d wins, a hit at rank 1.
    rows = [
        ("u2", "a", True),
        ("u2", "c", True),
        ("u4", "a", True),
        ("u4", "c", True),
        ("u3", "b", True),
        ("u3", "d", True),
        ("u1", "a", True),
        ("u1", "b", True),
        ("u1", "d", True),
    ]
    d = data(rows)
    n = len(rows)
    got = cs.search(d, n - 1, n, "positive", 20, 1.0, [1.0, 0.5], k=1)
    assert got == [(0.0, 0.0), (1.0, 1.0)]


def test_events_choose_what_feeds_the_counts() -> None:
    # u3 rated b below 4 right after a: only "all" links a and b, so only then is b (the
    # case's target, after u1's a) ranked first among b, c, d, e.
    rows = [("u3", "a", True), ("u3", "b", False), ("u2", "c", True), ("u2", "e", True), ("u1", "a", True), ("u1", "b", True)]
    d = data(rows)
    n = len(rows)
    assert cs.search(d, n - 1, n, "all", 20, 1.0, [1.0], k=1) == [(1.0, 1.0)]
    ((hr, nd),) = cs.search(d, n - 1, n, "positive", 20, 1.0, [1.0], k=1)
    assert hr == 0.0 and nd == 0.0


def test_pair_decay_weighs_pairs_by_their_distance() -> None:
    # u2 and u4 take up a, b, c; u3 takes up a, d; u1 has a, then d is the case. Counts: a 4,
    # b 2, c 2, d 1. Without decay co(a, b) = co(a, c) = 2 and co(a, d) = 1: b and c
    # (2 / sqrt(8)) come before d (1 / sqrt(4)), a miss at k = 2. With pair decay 0.1, c is one
    # item away from a in u2's and u4's histories: co(a, c) = 0.2, so d is second: a hit at rank 2.
    rows = [
        ("u2", "a", True),
        ("u2", "b", True),
        ("u2", "c", True),
        ("u4", "a", True),
        ("u4", "b", True),
        ("u4", "c", True),
        ("u3", "a", True),
        ("u3", "d", True),
        ("u1", "a", True),
        ("u1", "d", True),
    ]
    d = data(rows)
    n = len(rows)
    assert cs.search(d, n - 1, n, "positive", 20, 1.0, [1.0], k=2) == [(0.0, 0.0)]
    ((hr, nd),) = cs.search(d, n - 1, n, "positive", 20, 0.1, [1.0], k=2)
    assert hr == 1.0 and nd == pytest.approx(1 / math.log2(3))
