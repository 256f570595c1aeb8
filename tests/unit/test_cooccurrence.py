"""Incremental co-occurrence: counts, decay, the neighbour bound, rows on the wire, scoring."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest

from recstream.encoders.profile import HistoryEntry
from recstream.scoring.baselines import ItemKNNBaseline
from recstream.scoring.cooccurrence import (
    MAX_LOG2_SIMILARITY,
    CooccurrenceFormatError,
    CooccurrenceModel,
    CooccurrenceRow,
    CooccurrenceScorer,
    RecentItems,
    bound_neighbours,
    merge_rows,
    positive_history,
)

H = 1000  # a 1-second half-life keeps the decay arithmetic readable

# The stream of tests/unit/test_baselines.py, worked out there:
# final co(a,b) = 1, co(a,c) = 2, co(b,c) = 2 (symmetric); n_a = 2, n_b = 2, n_c = 3
STREAM = [
    ("u1", "a", "click", None),
    ("u1", "b", "click", None),
    ("u1", "c", "purchase", None),
    ("u2", "a", "click", None),
    ("u2", "c", "click", None),
    ("u3", "b", "click", None),
    ("u3", "d", "review", 2.0),  # not positive: ignored
    ("u3", "c", "review", 5.0),
]


def feed(model: CooccurrenceModel, stream=STREAM, ts: int = 0) -> None:
    for user, item, kind, rating in stream:
        model.observe_event(user, item, ts, kind, rating)


def test_counts_match_the_worked_example() -> None:
    m = CooccurrenceModel()
    feed(m)
    assert m.neighbours("a") == pytest.approx({"b": 1.0, "c": 2.0})
    assert m.neighbours("b") == pytest.approx({"a": 1.0, "c": 2.0})
    assert m.neighbours("c") == pytest.approx({"a": 2.0, "b": 2.0})
    assert "d" not in m and m.neighbours("d") == {}
    assert [m.count(i) for i in "abcd"] == pytest.approx([2.0, 2.0, 3.0, 0.0])
    assert m.histories.get("u3") == ["b", "c"]
    # cosine: co(a,c) / sqrt(n_a n_c) = 2 / sqrt(6)
    assert m.similarity("a", "c") == pytest.approx(2 / math.sqrt(6))
    # u1's history [a, b, c]: d gets nothing; c gets sim(a,c) + sim(b,c)
    assert m.scores(["a", "b"]) == pytest.approx(
        {"a": 1 / 2, "b": 1 / 2, "c": 4 / math.sqrt(6)}  # a: sim(b,a); b: sim(a,b)
    )


def test_pair_decay_and_recency_weight_by_position_in_the_history() -> None:
    """u1 takes up a, b, c in that order: c pairs with b (the latest, weight 1) and with a
    (one item between, weight 0.5); scoring with recency 0.25 weighs b's neighbours 1 and
    a's 0.25 for a user whose history is [a, b]."""
    m = CooccurrenceModel(pair_decay=0.5, recency=0.25)
    for item in "abc":
        m.observe_event("u1", item, 0, "click")
    assert m.neighbours("c") == pytest.approx({"a": 0.5, "b": 1.0})
    assert m.neighbours("a") == pytest.approx({"b": 1.0, "c": 0.5})
    # every count is 1, so sim = co; score(c) = 1 * sim(b, c) + 0.25 * sim(a, c)
    assert m.scores(["a", "b"]) == pytest.approx({"a": 1.0, "b": 0.25, "c": 1.0 + 0.25 * 0.5})
    # the order of the history matters; with both weights at 1 it would not
    assert m.scores(["b", "a"]) == pytest.approx({"a": 0.25, "b": 1.0, "c": 0.5 + 0.25 * 1.0})
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="pair_decay"):
            CooccurrenceModel(pair_decay=bad)
        with pytest.raises(ValueError, match="recency"):
            CooccurrenceModel(recency=bad)


def test_observe_returns_the_rows_it_changed() -> None:
    m = CooccurrenceModel()
    assert m.observe([], "a", 0) == ["a"]
    assert m.observe(["a", "b", "a", "x"], "x", 0) == ["x", "a", "b"]  # repeats and the item itself ignored
    assert m.observe_event("u", "a", 0, "review", 3.0) == []  # not positive


def test_same_scores_as_the_item_knn_baseline_on_a_random_stream() -> None:
    rng = random.Random(7)
    knn = ItemKNNBaseline(history_len=5, max_neighbours=4)
    m = CooccurrenceModel(max_neighbours=4, history_len=5)
    for t in range(2000):
        user, item = f"u{rng.randrange(30)}", f"i{rng.randrange(60)}"
        kind, rating = rng.choice([("click", None), ("purchase", None), ("review", 2.0), ("review", 4.5)])
        knn.observe(user, item, t, kind, rating)
        m.observe_event(user, item, t, kind, rating)
    for n in range(30):
        user = f"u{n}"
        assert m.histories.get(user) == knn.history(user)
        assert m.scores(m.histories.get(user)) == pytest.approx(knn.scores(user), rel=1e-9)
    for n in range(60):
        assert m.neighbours(f"i{n}") == pytest.approx(knn.neighbours(f"i{n}"), rel=1e-9)


def test_decay() -> None:
    # (a,b) co-occurs twice at t=0, (a,c) once at t=3000 (as in test_baselines.test_knn_decay)
    m = CooccurrenceModel(half_life_ms=H)
    for user, item, ts in [("u1", "a", 0), ("u1", "b", 0), ("u2", "a", 0), ("u2", "b", 0), ("u3", "c", 3000), ("u3", "a", 3000)]:
        m.observe_event(user, item, ts, "click")
    # read at t=3000 (the last event): co(a,b) = 2 * 0.5**3, co(a,c) = 1; n_a = 2 * 0.5**3 + 1
    assert m.cooccurrence("a", "b") == pytest.approx(0.25)
    assert m.cooccurrence("a", "c") == pytest.approx(1.0)
    assert m.count("a") == pytest.approx(1.25)
    assert m.cooccurrence("a", "b", now_ms=0) == pytest.approx(2.0)
    # the stored form is log2 at the epoch: co(a,c) = 2 ** (3000 / 1000)
    assert m.row("a").neighbours["c"] == pytest.approx(3.0)
    # similarities do not depend on the reading time: co(a,c) / sqrt(n_a n_c) = 1 / sqrt(1.25 * 1)
    assert m.similarity("a", "c") == pytest.approx(1 / math.sqrt(1.25))
    assert m.scores(["a"])["c"] > m.scores(["a"])["b"]


def test_decay_needs_no_rescaling_over_thousands_of_half_lives() -> None:
    m = CooccurrenceModel(half_life_ms=1.0)
    m.observe_event("u1", "a", 0, "click")
    m.observe_event("u1", "b", 0, "click")
    before = m.row("a").to_bytes()
    m.observe_event("u2", "e", 5000, "click")  # 5000 half-lives later
    m.observe_event("u2", "f", 5000, "click")
    assert m.row("a").to_bytes() == before  # untouched rows are never rewritten
    assert m.cooccurrence("a", "b") == 0.0  # underflows when read at t=5000
    assert m.cooccurrence("e", "f") == 1.0
    assert m.similarity("a", "b") == pytest.approx(1.0)  # still finite and time-free
    # u1's stale history [a, b] meets e: co(e, a) = 1 now, but n_a = 2 ** -5000 now, so the
    # cosine is astronomically large: it is capped, and every score stays finite
    m.observe_event("u1", "e", 5000, "click")
    assert m.similarity("e", "a") == 2.0**MAX_LOG2_SIMILARITY
    scorer = CooccurrenceScorer(m, {"a": 0, "b": 1, "e": 2, "f": 3}.get, 4)
    assert np.isfinite(scorer.dense(["a", "b", "e"])).all()
    assert all(math.isfinite(v) for v in m.scores(["a", "b", "e"]).values())


def test_neighbour_bound_keeps_the_strongest_and_breaks_ties_by_id() -> None:
    m = CooccurrenceModel(max_neighbours=2)
    for n, x in enumerate(["n1", "n1", "n1", "n2", "n2", "n3", "n4"]):
        m.observe([], "h", 0)
        m.observe(["h"], x, 0)
    assert m.neighbours("h") == pytest.approx({"n1": 3.0, "n2": 2.0, "n3": 1.0, "n4": 1.0})  # 4 = 2M: kept
    m.observe(["h"], "n5", 0)
    assert m.neighbours("h") == pytest.approx({"n1": 3.0, "n2": 2.0})  # 5 > 2M: cut to M
    assert m.neighbours("n5") == pytest.approx({"h": 1.0})  # the reverse direction is untouched
    ties = CooccurrenceModel(max_neighbours=1)
    for x in ["z", "y", "x"]:
        ties.observe(["h"], x, 0)
    assert list(ties.neighbours("h")) == ["x"]
    assert bound_neighbours({"b": 1.0, "a": 1.0}, 1) == {"b": 1.0, "a": 1.0}  # 2 = 2M: kept
    assert bound_neighbours({"b": 1.0, "a": 1.0, "c": 0.5}, 1) == {"a": 1.0}  # tie by id


def test_memory_bound_on_a_random_stream() -> None:
    rng = random.Random(3)
    m = CooccurrenceModel(max_neighbours=5, history_len=10)
    for t in range(3000):
        m.observe_event(f"u{rng.randrange(40)}", f"i{rng.randrange(200)}", t, "click")
    assert all(len(row.neighbours) <= 10 for _, row in m.rows())


def test_row_serialisation_round_trip() -> None:
    m = CooccurrenceModel(half_life_ms=H)
    feed(m, ts=1234)
    for item, row in m.rows():
        data = row.to_bytes()
        assert data[:3] == b"RC\x01"
        back = CooccurrenceRow.from_bytes(data)
        assert back == row and list(back.neighbours) == list(row.neighbours)
    empty = CooccurrenceRow()
    assert CooccurrenceRow.from_bytes(empty.to_bytes()) == empty  # -inf count survives
    unicode = CooccurrenceRow(1.5, {"é-1": -2.0, "x": 3.25})
    assert CooccurrenceRow.from_bytes(memoryview(unicode.to_bytes())) == unicode


def test_row_format_errors() -> None:
    data = CooccurrenceRow(0.0, {"a": 1.0}).to_bytes()
    with pytest.raises(CooccurrenceFormatError, match="unknown co-occurrence row format version 2"):
        CooccurrenceRow.from_bytes(data[:2] + b"\x02" + data[3:])
    with pytest.raises(CooccurrenceFormatError, match="magic"):
        CooccurrenceRow.from_bytes(b"XX" + data[2:])
    with pytest.raises(CooccurrenceFormatError, match="too short"):
        CooccurrenceRow.from_bytes(b"RC")
    with pytest.raises(CooccurrenceFormatError, match="bytes of numbers"):
        CooccurrenceRow.from_bytes(data[:-1])
    ids = b'["a"'
    with pytest.raises(CooccurrenceFormatError, match="ids"):
        CooccurrenceRow.from_bytes(struct.pack("<2sBI", b"RC", 1, len(ids)) + ids + bytes(16))


def test_partial_rows_of_two_partitions_sum_to_the_whole() -> None:
    rng = random.Random(11)
    whole = CooccurrenceModel(half_life_ms=50.0)
    parts = [CooccurrenceModel(half_life_ms=50.0), CooccurrenceModel(half_life_ms=50.0)]
    for t in range(600):
        user, item = rng.randrange(12), f"i{rng.randrange(15)}"
        whole.observe_event(f"u{user}", item, t, "click")
        parts[user % 2].observe_event(f"u{user}", item, t, "click")  # users partitioned
    merged = CooccurrenceModel(half_life_ms=50.0)
    for item, _ in whole.rows():
        rows = [CooccurrenceRow.from_bytes(p.row(item).to_bytes()) for p in parts if p.row(item) is not None]
        merged.set_row(item, merge_rows(rows))
    for item, row in whole.rows():
        assert merged.row(item).log2_count == pytest.approx(row.log2_count)
        assert merged.row(item).neighbours == pytest.approx(row.neighbours)
    assert merged.scores(["i1", "i2"]) == pytest.approx(whole.scores(["i1", "i2"]))
    assert len(merge_rows([CooccurrenceRow(0.0, {f"j{n}": float(n) for n in range(9)})], max_neighbours=2).neighbours) == 2


def test_dense_scores_follow_the_given_row_order() -> None:
    m = CooccurrenceModel()
    feed(m)
    order = ["c", "zz", "a", "b"]  # "zz" never seen, "d" not in the order
    row_of = {item: r for r, item in enumerate(order)}.get
    scorer = CooccurrenceScorer(m, row_of, len(order))
    ref = m.scores(["a", "b"])
    dense = scorer.dense(["a", "b"])
    assert dense.dtype == np.float32 and dense.shape == (4,)
    assert dense.tolist() == pytest.approx([ref["c"], 0.0, ref["a"], ref["b"]])
    rows, vals = scorer.sparse(["a", "b"])
    assert rows.tolist() == [0, 2, 3]
    batch = scorer.batch([["a", "b"], [], ["unknown"]])
    assert batch.shape == (3, 4) and batch[0].tolist() == pytest.approx(dense.tolist())
    assert not batch[1:].any()
    # items learned after the scorer was made are picked up; a changed order needs reindex()
    m.observe_event("u9", "zz", 1, "click")
    m.observe_event("u9", "a", 1, "click")
    assert scorer.dense(["a"])[1] > 0.0
    scorer.reindex({"zz": 0}.get, 1)
    assert scorer.dense(["a"]).tolist() == pytest.approx([m.similarity("a", "zz")])
    with pytest.raises(ValueError, match="out has shape"):
        scorer.dense(["a"], out=np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("pair_decay,recency", [(1.0, 1.0), (0.9, 0.8)])
def test_dense_scores_match_the_scalar_ones_on_a_decayed_random_stream(pair_decay: float, recency: float) -> None:
    rng = random.Random(5)
    m = CooccurrenceModel(max_neighbours=6, half_life_ms=200.0, history_len=8, pair_decay=pair_decay, recency=recency)
    for t in range(3000):
        m.observe_event(f"u{rng.randrange(25)}", f"i{rng.randrange(80)}", t * 3, "click")
    ids = [f"i{n}" for n in range(80)]
    scorer = CooccurrenceScorer(m, {i: r for r, i in enumerate(ids)}.get, len(ids))
    for n in range(25):
        hist = m.histories.get(f"u{n}")
        ref = m.scores(hist)
        assert scorer.dense(hist).tolist() == pytest.approx([ref.get(i, 0.0) for i in ids], rel=1e-5, abs=1e-12)


def test_histories_and_profile_history() -> None:
    r = RecentItems(3)
    for item in ["a", "b", "a", "c", "d"]:
        r.push("u", item)
    assert r.get("u") == ["a", "c", "d"] and r.get("nobody") == []
    entries = [
        HistoryEntry("a", 1, "click"),
        HistoryEntry("b", 2, "review", 2.0),  # not positive
        HistoryEntry("c", 3, "purchase"),
        HistoryEntry("a", 4, "review", 5.0),  # a again: moves to the end
    ]
    assert positive_history(entries, 5) == ["c", "a"]
    assert positive_history(entries, 1) == ["a"]


def test_validation() -> None:
    with pytest.raises(ValueError, match="max_neighbours"):
        CooccurrenceModel(max_neighbours=0)
    with pytest.raises(ValueError, match="half_life_ms"):
        CooccurrenceModel(half_life_ms=-1.0)
    with pytest.raises(ValueError, match="history_len"):
        CooccurrenceModel(history_len=0)
    with pytest.raises(ValueError, match="weight"):
        CooccurrenceModel().observe([], "a", 0, weight=0.0)


def _state(m: CooccurrenceModel) -> tuple:
    """Everything rollback must restore: the rows with their neighbours in order (the scores
    add them up in that order), the counts by slot and the latest event time.  (A row removed
    and put back goes to the end of the model's rows, as with restore_row.)"""
    rows = sorted((i, r.log2_count, list(r.neighbours.items())) for i, r in m.rows())
    return rows, m.log2_counts().tolist(), m.last_ts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rollback_undoes_a_journal_of_observations_exactly(seed: int) -> None:
    rng = random.Random(seed)
    m = CooccurrenceModel(max_neighbours=3, history_len=6, pair_decay=0.9, recency=0.8)
    items = [f"i{n}" for n in range(25)]

    def observe_some(n: int, t0: int) -> None:
        for t in range(n):
            m.observe_event(f"u{rng.randrange(6)}", rng.choice(items), t0 + t, "click")

    observe_some(150, 0)  # rows full enough to be pruned (2 * 3 neighbours)
    scorer = CooccurrenceScorer(m, {i: r for r, i in enumerate(items)}.get, len(items))
    before, histories = _state(m), {u: m.histories.get(u) for u in (f"u{n}" for n in range(6))}
    sparse_before = [scorer.sparse(items[:k]) for k in (3, 8)]
    m.begin()
    observe_some(60, 1000)
    m.observe(["new-a", "i1"], "new-b", 2000)  # rows that did not exist
    m.set_row("i2", CooccurrenceRow(1.5, {"i3": 0.5}))
    m.remove_row("i4")
    m.observe(["i4", "i2"], "i5", 2001)
    scorer.sparse(items[:8])  # caches filled from the changed rows
    assert _state(m) != before
    m.rollback()
    assert _state(m)[0] == before[0] and _state(m)[2] == before[2]
    # the counts of the slots that existed are back; new slots stay assigned (no count)
    assert _state(m)[1][: len(before[1])] == before[1] and set(_state(m)[1][len(before[1]) :]) <= {-math.inf}
    for got, ref in zip([scorer.sparse(items[:k]) for k in (3, 8)], sparse_before):
        assert got[0].tolist() == ref[0].tolist() and got[1].tolist() == ref[1].tolist()
    # a committed journal keeps the changes, and nothing is recorded after it
    m.histories = RecentItems(6)
    for u, h in histories.items():
        for i in h:
            m.histories.push(u, i)
    m.begin()
    m.observe(["i1"], "i2", 3000)
    m.commit()
    after = _state(m)
    m.rollback()
    assert _state(m) == after


def test_positive_history_is_what_recent_items_keeps() -> None:
    rng = random.Random(3)
    for _ in range(200):
        entries = [
            HistoryEntry(f"i{rng.randrange(12)}", t, rng.choice(["click", "purchase", "review"]), rng.choice([None, 1.0, 3.5, 4.0, 5.0]))
            for t in range(rng.randrange(40))
        ]
        for limit in (1, 3, 20):
            recent = RecentItems(limit)
            for e in entries:
                if e.kind != "review" or (e.rating is not None and e.rating >= 4.0):
                    recent.push("", e.item_id)
            assert positive_history(entries, limit, 4.0) == recent.get("")
            assert positive_history(iter(entries), limit, 4.0) == recent.get("")
    with pytest.raises(ValueError, match="at least 1"):
        positive_history([], 0)


@pytest.mark.parametrize("group_terms", [1, 30, 10**9])  # alone, a few histories together, all together
def test_sparse_batch_equals_sparse_of_each_history(group_terms: int) -> None:
    rng = random.Random(4)
    m = CooccurrenceModel(max_neighbours=5, history_len=8, pair_decay=0.9, recency=0.8)
    items = [f"i{n}" for n in range(40)]
    for t in range(600):
        m.observe_event(f"u{rng.randrange(15)}", rng.choice(items), t, "click")
    order = items[::2] + ["never-seen"]  # half the items have no row in the target order
    scorer = CooccurrenceScorer(m, {i: r for r, i in enumerate(order)}.get, len(order))
    histories = [[rng.choice(items + ["unknown"]) for _ in range(rng.randrange(12))] for _ in range(50)] + [[]]
    got = scorer.sparse_batch(histories, group_terms)
    assert len(got) == len(histories)
    for (rows, vals), h in zip(got, histories):
        ref_rows, ref_vals = scorer.sparse(h)
        assert rows.dtype == ref_rows.dtype and vals.dtype == ref_vals.dtype
        assert rows.tolist() == ref_rows.tolist() and vals.tolist() == ref_vals.tolist()  # the same floats
    assert scorer.sparse_batch([]) == [] and [len(r) for r, _ in scorer.sparse_batch([[], ["unknown"]])] == [0, 0]
