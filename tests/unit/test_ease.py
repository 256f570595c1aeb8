"""Recency-weighted EASE (scoring/ease.py) on tiny hand-built streams, and its bench script."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.scoring.backtest import BacktestConfig
from recstream.scoring.baselines import PopularityBaseline, Recommender
from recstream.scoring.ease import DAY_MS, EASEBaseline, ease_weights
from recstream.streams.records import Click, Purchase, Review
from tests.unit.benchload import load_bench

T0 = 1_700_000_000_000  # some time in 2023
POP_H = 7 * DAY_MS


def buy(m: EASEBaseline, user: str, items: str, ts: int) -> None:
    for item in items:
        m.observe(user, item, ts, "purchase")


def co_purchase(m: EASEBaseline, ts: int = T0) -> None:
    """Five users buy a and b together, five buy c and d; e is bought alone by many."""
    for n in range(5):
        buy(m, f"ab{n}", "ab", ts)
        buy(m, f"cd{n}", "cd", ts)
    for n in range(8):
        buy(m, f"e{n}", "e", ts)


def test_recovers_co_purchase_pattern() -> None:
    m = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS)
    co_purchase(m)
    buy(m, "q", "a", T0 + 2 * DAY_MS)  # after the split: the fit has not seen it
    assert m.fitted and m.fitted_at_ms == T0 + DAY_MS
    assert m.recommend("q", 1, now_ms=T0 + 3 * DAY_MS) == ["b"]
    buy(m, "r", "d", T0 + 2 * DAY_MS)
    assert m.recommend("r", 1) == ["c"]
    assert m.weight("a", "b") > 0.5 and m.weight("a", "a") == 0.0
    assert m.weight("a", "c") == pytest.approx(0.0, abs=1e-6)
    # a full list: b first, then the rest by score (popular e never beats b)
    assert m.recommend("q", 5)[0] == "b"


def test_matches_closed_form_with_recency_weights() -> None:
    rng = np.random.default_rng(0)
    users, items = 30, 12
    H = 10 * DAY_MS
    fit_at = T0 + 100 * DAY_MS
    m = EASEBaseline(lam=3.0, half_life_ms=H, fit_at_ms=fit_at, query_half_life_ms="fit")
    X = np.zeros((users, items))
    events = []
    for u in range(users):
        for i in range(items):
            if rng.random() < 0.3:
                ts = T0 + int(rng.integers(0, 100 * DAY_MS))
                events.append((ts, u, i))
    events.sort()
    for ts, u, i in events:
        m.observe(f"u{u}", f"i{i:02d}", ts, "click")
        X[u, i] = np.exp(-np.log(2) * (fit_at - ts) / H)  # latest positive wins
    m.fit(fit_at)
    present = [i for i in range(items) if X[:, i].any()]
    Xp = X[:, present]
    P = np.linalg.inv(Xp.T @ Xp + 3.0 * np.eye(len(present)))
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    assert m.items == [f"i{i:02d}" for i in present]
    np.testing.assert_allclose(m.B, B, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ease_weights(Xp.T @ Xp, 3.0), B, rtol=1e-9, atol=1e-12)
    # scores: the user's recency-weighted row times B
    u = 7
    hist = {i: ts for ts, uu, i in events if uu == u}
    t_last = max(hist.values())
    x = np.zeros(len(present))
    for i, ts in hist.items():
        x[present.index(i)] = np.exp(-np.log(2) * (t_last - ts) / H)
    want = x @ B
    got = m.scores("u7")
    ratio = got[f"i{present[0]:02d}"] / want[0]
    np.testing.assert_allclose([got[f"i{i:02d}"] for i in present], ratio * want, rtol=1e-4, atol=1e-6)


def recency_stream(m: EASEBaseline) -> None:
    """Long ago six users bought a with b; lately three bought a with c."""
    for n in range(6):
        buy(m, f"old{n}", "ab", T0)
    for n in range(3):
        buy(m, f"new{n}", "ac", T0 + 30 * DAY_MS)
    buy(m, "q", "a", T0 + 31 * DAY_MS)


def test_recency_weighting_changes_which_neighbour_wins() -> None:
    split = T0 + 31 * DAY_MS
    flat = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=split, query_half_life_ms=None)
    recent = EASEBaseline(lam=1.0, half_life_ms=2 * DAY_MS, fit_at_ms=split, query_half_life_ms=None)
    for m in (flat, recent):
        recency_stream(m)
    assert flat.recommend("q", 1) == ["b"]  # six old co-purchases beat three recent ones
    assert recent.recommend("q", 1) == ["c"]  # old ones weigh 2 ** -15
    assert recent.weight("a", "c") > recent.weight("a", "b")


def test_query_row_is_recency_weighted() -> None:
    """x and y are neighbours of different items: the user's more recent item decides."""
    m = EASEBaseline(lam=1.0, half_life_ms=DAY_MS, fit_at_ms=T0 + DAY_MS, query_half_life_ms="fit")
    for n in range(5):
        buy(m, f"p{n}", "ax", T0)
        buy(m, f"r{n}", "by", T0)
    buy(m, "q", "a", T0 + 2 * DAY_MS)
    buy(m, "q", "b", T0 + 5 * DAY_MS)
    assert m.recommend("q", 1) == ["y"]
    buy(m, "q", "a", T0 + 9 * DAY_MS)  # a again, now the latest: x leads (cached row updated)
    assert m.recommend("q", 1) == ["x"]
    fresh = EASEBaseline(lam=1.0, half_life_ms=DAY_MS, fit_at_ms=T0 + DAY_MS, query_half_life_ms="fit", cache_users=0)
    for n in range(5):
        buy(fresh, f"p{n}", "ax", T0)
        buy(fresh, f"r{n}", "by", T0)
    buy(fresh, "q", "a", T0 + 2 * DAY_MS)
    buy(fresh, "q", "b", T0 + 5 * DAY_MS)
    buy(fresh, "q", "a", T0 + 9 * DAY_MS)
    assert fresh.recommend("q", 4) == m.recommend("q", 4)
    np.testing.assert_allclose(
        [fresh.scores("q")[i] for i in "abxy"],
        [m.scores("q")[i] * fresh.scores("q")["x"] / m.scores("q")["x"] for i in "abxy"],
        rtol=1e-5,
        atol=1e-7,
    )


def test_excludes_the_exclusion_set_and_respects_catalog() -> None:
    m = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, popularity_half_life_ms=POP_H)
    co_purchase(m)
    buy(m, "q", "a", T0 + 2 * DAY_MS)
    top = m.recommend("q", 5, exclude=frozenset({"b"}))
    assert "b" not in top and sorted(top) == ["a", "c", "d", "e"]  # every other item
    assert "b" not in m.recommend("q", 5, exclude={"b", "a"}) and "a" not in m.recommend("q", 5, exclude={"b", "a"})

    class NoIter:  # a Container that cannot be iterated: filtered on the way out
        def __contains__(self, item: object) -> bool:
            return item == "b"

    assert m.recommend("q", 3, exclude=NoIter())[0] != "b"
    assert "b" not in m.recommend("q", 5, exclude=NoIter())
    # the user's history may be recommended unless excluded
    assert "a" in m.recommend("q", 5)
    h = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, exclude_history=True)
    co_purchase(h)
    buy(h, "q", "a", T0 + 2 * DAY_MS)
    assert "a" not in h.recommend("q", 5)
    c = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, catalog=frozenset({"a", "c", "d", "e"}))
    co_purchase(c)
    buy(c, "q", "a", T0 + 2 * DAY_MS)
    assert set(c.recommend("q", 10)) <= {"a", "c", "d", "e"}
    assert c.recommend("q", 0) == []
    with pytest.raises(ValueError):
        c.recommend("q", -1)


def test_fit_uses_nothing_at_or_after_fit_at_ms() -> None:
    split = T0 + DAY_MS
    full = EASEBaseline(lam=1.0, half_life_ms=10 * DAY_MS, fit_at_ms=split)
    before = EASEBaseline(lam=1.0, half_life_ms=10 * DAY_MS)
    co_purchase(full)
    co_purchase(before)
    buy(full, "ab0", "c", split - 1)
    buy(before, "ab0", "c", split - 1)
    assert not full.fitted
    # after the split: a new pattern (a with z) and a repeat of b at a later time
    buy(full, "late0", "az", split)  # the first event at the split triggers the fit first
    assert full.fitted and full.fitted_at_ms == split
    for n in range(1, 10):
        buy(full, f"late{n}", "az", split + n * DAY_MS)
    buy(full, "ab1", "b", split + 2 * DAY_MS)
    before.fit(split)
    assert "z" not in full.items
    assert full.items == before.items
    np.testing.assert_array_equal(full.B, before.B)
    # the model stays fixed; the query row uses the user's whole history, after the fit too
    assert full.recommend("late3", 1, exclude={"a", "z"}) == ["b"]
    # fit(now) ignores events observed at or after now
    again = EASEBaseline(lam=1.0, half_life_ms=10 * DAY_MS)
    co_purchase(again)
    buy(again, "ab0", "c", split - 1)
    for n in range(10):
        buy(again, f"late{n}", "az", split + n * DAY_MS)
    buy(again, "ab1", "b", split + 2 * DAY_MS)
    again.fit(split)
    np.testing.assert_array_equal(again.B, before.B)


def test_fit_triggered_by_a_query_at_the_split() -> None:
    split = T0 + DAY_MS
    m = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=split, popularity_half_life_ms=POP_H)
    co_purchase(m)
    buy(m, "q", "a", T0 + 1)
    # before the split there is no model: the popularity fallback
    pop = m.recommend("q", 3, now_ms=split - 1)
    assert not m.fitted
    assert pop == [i for i, _ in m.popularity.top(3, now_ms=split - 1)]
    assert m.recommend("q", 1, now_ms=split) == ["b"]
    assert m.fitted and m.fitted_at_ms == split


def test_cold_users_get_popularity_like_item_knn() -> None:
    m = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, popularity_half_life_ms=POP_H)
    p = PopularityBaseline(POP_H)
    for r in (m, p):
        co_purchase(r)  # type: ignore[arg-type]
        r.observe("neg", "a", T0 + 2 * DAY_MS, "review", 2.0)  # a negative review: not a positive
        r.observe("new", "zz", T0 + 2 * DAY_MS, "click")  # an item the model does not know
    for user in ("nobody", "neg", "new"):
        assert m.recommend(user, 4, exclude={"e"}) == p.recommend(user, 4, exclude={"e"})
    assert m.history("neg") == {} and m.history("new") == {"zz": T0 + 2 * DAY_MS}
    assert isinstance(m, Recommender)
    with pytest.raises(ValueError):
        m.observe("u", "a", T0, "view")
    with pytest.raises(ValueError):
        m.observe("u", "a", T0, "review")


def test_short_lists_are_filled_and_ties_go_by_id() -> None:
    m = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, popularity_half_life_ms=POP_H)
    buy(m, "u1", "ab", T0)
    buy(m, "u2", "ab", T0)
    m.observe("u3", "x", T0, "review", 1.0)  # popular, never positive: outside the model
    m.observe("u4", "x", T0, "review", 1.0)
    m.observe("u5", "x", T0, "review", 1.0)
    buy(m, "q", "c", T0 + 2 * DAY_MS)  # c is unknown to the model: popularity
    assert m.recommend("q", 3) == ["x", "a", "b"]
    buy(m, "q", "a", T0 + 3 * DAY_MS)
    out = m.recommend("q", 4, exclude={"a"})
    assert out[0] == "b" and out[1:] == ["x", "c"]  # only b is a model candidate; then popularity
    # max_items keeps the most frequent items (ties by id)
    k = EASEBaseline(lam=1.0, half_life_ms=None, max_items=2)
    co_purchase(k)
    k.fit(T0 + 1)
    assert k.items == ["a", "e"]  # e: 8 users; a, b, c, d: 5 each, a first by id


# --------------------------------------------------------------------------- the bench


def test_bench_runs_the_protocol_with_baselines_only() -> None:
    bench = load_bench("bench_ease_baseline", "ease_baseline.py")
    split = T0 + 10 * DAY_MS
    events: list = []
    for n in range(12):
        u = f"u{n}"
        pair = "ab" if n % 2 else "cd"
        events.append(Purchase(u, pair[0], T0 + n * 1000, f"p{n}a"))
        events.append(Purchase(u, pair[1], T0 + n * 1000 + 1, f"p{n}b"))
    for n in range(6):  # test period: users who bought a buy b, and so on
        u = f"t{n}"
        first, second = ("a", "b") if n % 2 else ("c", "d")
        events.append(Click(u, first, split + n * 1000, f"t{n}a"))
        events.append(Purchase(u, second, split + n * 1000 + 1, f"t{n}b"))
        events.append(Review(u, second, 5.0, "good", split + n * 1000 + 1, f"t{n}c"))  # a companion
    catalog = ["a", "b", "c", "d", "e"]
    config = BacktestConfig(split_ms=split, ks=(1, 10))
    ease = EASEBaseline(1.0, None, fit_at_ms=split, catalog=frozenset(catalog), popularity_half_life_ms=POP_H)
    out = bench.run(events, catalog, config, [ease])
    assert set(out["methods"]) == {"popularity", "item-knn", "ease"}
    assert out["counts"]["cases"] == 6 and out["counts"]["cold"] == 6  # each t-user's first click is cold
    assert out["methods"]["ease"]["hit_rate@1"] == 1.0
    assert out["methods"]["ease"]["fit"]["items"] == 4
    # the validation window: the last eighth of the interactions before the split
    start_ms, window = bench.validation_split_ms(events, frozenset(catalog), split)
    assert window == {"start": 21, "end": 24} and start_ms == T0 + 10 * 1000 + 1
    assert bench.half_life_ms("1e9") is None and bench.half_life_ms("2") == 2 * DAY_MS


def test_query_half_life_can_differ_from_the_fit() -> None:
    def stream(m: EASEBaseline) -> None:
        for n in range(5):
            buy(m, f"p{n}", "ax", T0)
            buy(m, f"r{n}", "by", T0)
        buy(m, "q", "a", T0 + 2 * DAY_MS)
        buy(m, "q", "b", T0 + 5 * DAY_MS)

    flat = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, query_half_life_ms="fit")
    recent_row = EASEBaseline(lam=1.0, half_life_ms=None, fit_at_ms=T0 + DAY_MS, query_half_life_ms=DAY_MS)
    for m in (flat, recent_row):
        stream(m)
    assert flat.recommend("q", 2) == ["x", "y"]  # a tie, broken by id
    assert recent_row.recommend("q", 2) == ["y", "x"]  # b is the more recent
    np.testing.assert_array_equal(flat.B, recent_row.B)
    with pytest.raises(ValueError):
        EASEBaseline(query_half_life_ms=0.0)


def test_defaults() -> None:
    from recstream.scoring.ease import DEFAULT_QUERY_HALF_LIFE_MS

    m = EASEBaseline()
    assert (m.lam, m.half_life_ms, m.query_half_life_ms) == (200.0, None, DEFAULT_QUERY_HALF_LIFE_MS)
    assert DEFAULT_QUERY_HALF_LIFE_MS == 30 * DAY_MS and m.max_items == 20_000


def test_the_backtest_scores_ease_beside_the_other_baselines_when_asked():
    from recstream.scoring.backtest import BacktestConfig, default_baselines

    assert [b.name for b in default_baselines(BacktestConfig(split_ms=10), ["a"])] == ["popularity", "item-knn"]
    with_ease = default_baselines(BacktestConfig(split_ms=10, ease=True), ["a", "b"])
    assert [b.name for b in with_ease] == ["popularity", "item-knn", "ease"]
    assert with_ease[-1].fit_at_ms == 10
