"""The reference protocol on tiny synthetic data: interactions, windows, cases, candidates, tuning."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from recstream.scoring.blend import EQUAL_WEIGHTS, BlendWeights, popularity_vector
from recstream.scoring.protocol import (
    COOC_EVENTS,
    DAY_MS,
    Interaction,
    ProtocolConfig,
    ProtocolData,
    Replay,
    grid_ranks,
    interactions_from_events,
    movie_text,
    protocol_windows,
    run_reference,
    tune,
    weight_grid,
)
from recstream.streams.records import Click, Item, Purchase, Review


def catalog(ids: str) -> list[Item]:
    return [Item(i, f"Movie {i}", "", ("Drama",)) for i in ids]


def it(ts: int, user: str, item: str, positive: bool = True) -> Interaction:
    return Interaction(ts, user, item, positive, ("click", "purchase") if positive else ("click",))


def test_interactions_group_the_events_of_one_rating() -> None:
    events = [
        Click("u1", "a", 10),
        Purchase("u1", "a", 10),  # with its click: one positive interaction
        Click("u1", "b", 10),  # a rating below the threshold: a click alone
        Review("u1", "c", 5.0, "tag", 11),  # reviews are left out by default
        Click("u2", "a", 12),
    ]
    got = interactions_from_events(events)
    assert got == [
        Interaction(10, "u1", "a", True, ("click", "purchase")),
        Interaction(10, "u1", "b", False, ("click",)),
        Interaction(12, "u2", "a", False, ("click",)),
    ]
    with_reviews = interactions_from_events(events + [Review("u3", "d", 3.0, "meh", 13)], kinds=("click", "purchase", "review"))
    assert with_reviews[2] == Interaction(11, "u1", "c", True, ("review",), 5.0)  # rated >= 4: positive
    assert with_reviews[-1] == Interaction(13, "u3", "d", False, ("review",), 3.0)
    with pytest.raises(ValueError, match="kinds"):
        interactions_from_events(events, kinds=("view",))


def test_windows_and_item_text() -> None:
    assert protocol_windows(10) == (7, 8)
    assert protocol_windows(100_836) == (70_585, 80_668)  # ml-latest-small
    with pytest.raises(ValueError):
        protocol_windows(10, test_fraction=1.5)
    assert movie_text(Item("1", "Toy Story (1995)", "", ("Adventure", "Animation"))) == "Toy Story (1995). Genres: Adventure, Animation"
    assert movie_text(Item("2", "Untitled", "", ())) == "Untitled"


def test_weight_grid() -> None:
    g = weight_grid(0.5, ["zscore"])
    assert [w.as_tuple() for w in g] == [(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)]
    assert len(weight_grid(0.1)) == 2 * 66
    with pytest.raises(ValueError, match="step"):
        weight_grid(0.3)


# --------------------------------------------------------------------------- cases and candidates

# 8 interactions: the test window is [6, 8) (floor(0.8 * 8) = 6)
#   0 u1 a +, 1 u2 a +, 2 u3 a +, 3 u2 b +, 4 u3 b -, 5 u1 c +   (warm-up)
#   6 u4 d +   cold: u4 has no earlier interaction, not a case
#   7 u1 b +   a case: u1 rated a and c, so the candidates are b and d
# positive interactions just before 7 (30-day half-life, all at t ~ 0): a 3, b 1, c 1, d 1
# (b 2 when every interaction counts)
SMALL = [it(0, "u1", "a"), it(1, "u2", "a"), it(2, "u3", "a"), it(3, "u2", "b"), it(4, "u3", "b", False),
         it(5, "u1", "c"), it(6, "u4", "d"), it(7, "u1", "b")]  # fmt: skip


def small_replay(k: int = 1, counts: str = "positive") -> Replay:
    data = ProtocolData("small", catalog("abcd"), SMALL)
    emb = np.eye(4, 3, dtype=np.float32)
    emb[3] = [0, 0, 1]  # d is c's twin in text
    return Replay(data, emb, ProtocolConfig(k=k, batch_size=2, popularity_counts=counts))


def test_cases_cold_users_and_candidates() -> None:
    replay = small_replay()
    replay.advance(6, progress=False)
    assert replay.rated_ids["u1"] == {"a", "c"}
    res = replay.evaluate(8, blends={"eq": EQUAL_WEIGHTS}, progress=False)
    assert (res.cases, res.cold) == (1, 1)
    table = res.table(1)
    # popularity: a (3) is excluded for u1 (rated); b and d have 1 positive each, d's is
    # the more recent: d, a miss
    assert table["popularity"] == {"hr@1": 0.0, "ndcg@1": 0.0}
    # item-kNN: u1's history [a, c]; co(a, b) = 1 (u2), so b: a hit
    assert table["item-knn"]["hr@1"] == 1.0
    # text-only: u1's profile is a + c; b's vector is orthogonal to both, d is c's twin: d, a miss
    assert table["text-only"]["hr@1"] == 0.0
    assert set(table) == {"popularity", "item-knn", "text-only", "eq"}
    # counting every interaction, b has 2 (u3's rating below 4 counts too): a hit
    replay = small_replay(counts="all")
    replay.advance(6, progress=False)
    assert replay.evaluate(8, progress=False).table(1)["popularity"] == {"hr@1": 1.0, "ndcg@1": 1.0}
    with pytest.raises(ValueError, match="popularity_counts"):
        ProtocolConfig(popularity_counts="clicks")


def test_the_target_and_every_rated_item_are_handled_as_the_protocol_says() -> None:
    # with k = 4 every method lists all of u1's candidates, and only those: b and d
    replay = small_replay(k=4)
    replay.advance(7, progress=False)  # just before the case (d is known from u4 on)
    got: dict[str, list[str]] = {}
    for name in ("popularity", "item-knn"):
        rec = getattr(replay, "popularity" if name == "popularity" else "knn")
        got[name] = rec.recommend("u1", 4, replay.rated_ids["u1"], now_ms=7)
    assert sorted(got["popularity"]) == sorted(got["item-knn"]) == ["b", "d"]
    res = replay.evaluate(8, blends={"eq": EQUAL_WEIGHTS}, progress=False)
    for name, m in res.metrics.items():
        assert m.flat()["hit_rate@4"] == 1.0, name  # b is always among the 2 candidates


def test_state_is_every_event_before_the_case() -> None:
    # the case's own interaction (and later ones) must not be seen by any method
    data = ProtocolData("t", catalog("ab"), [it(0, "u1", "a"), it(1, "u2", "a"), it(2, "u2", "b"), it(3, "u1", "b")])
    replay = Replay(data, np.eye(2, 2, dtype=np.float32), ProtocolConfig(k=1))
    replay.advance(3, progress=False)
    assert replay.knn.history("u1") == ["a"] and replay.cooc.count("b") == 1.0
    res = replay.evaluate(4, progress=False)
    assert res.cases == 1 and res.table(1)["item-knn"]["hr@1"] == 1.0
    assert replay.knn.history("u1") == ["a", "b"]  # applied after it was scored


def test_what_feeds_the_blend_cooccurrence() -> None:
    """ "positive": only positive interactions; "engine": those and any holding a click (a
    MovieLens rating below 4 is a click); "all": everything, a review below 4 included."""
    low_review = Interaction(2, "u1", "c", False, ("review",), 2.0)
    rows = [it(0, "u1", "a"), it(1, "u1", "b", positive=False), low_review]
    data = ProtocolData("t", catalog("abc"), rows)
    counts = {}
    for events in COOC_EVENTS:
        replay = Replay(data, np.eye(3, 3, dtype=np.float32), ProtocolConfig(cooc_events=events))
        replay.advance(3, progress=False)
        counts[events] = [replay.cooc.count(i) for i in "abc"]
    assert counts == {"positive": [1.0, 0.0, 0.0], "engine": [1.0, 1.0, 0.0], "all": [1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="cooc_events"):
        ProtocolConfig(cooc_events="clicks")
    with pytest.raises(ValueError, match="cooc_recency"):
        ProtocolConfig(cooc_recency=0.0)


@pytest.mark.parametrize("counts", ["positive", "all"])
def test_blend_popularity_signal_is_the_decayed_popularity(counts: str) -> None:
    replay = small_replay(counts=counts)
    replay.advance(6, progress=False)
    now = 5 * DAY_MS
    ref = popularity_vector(replay.popularity.popularity, replay.ids, now)
    assert replay.popularity_signal(now).tolist() == pytest.approx(ref.tolist(), rel=1e-6)


# --------------------------------------------------------------------------- grid and tuning


def test_grid_ranks_by_hand() -> None:
    # one user, 4 items, target = item 0 with z = (0, 0, 0)
    z = torch.tensor(
        [
            [[0.0, 1.0, -1.0, 0.0]],  # text
            [[0.0, -1.0, 2.0, 0.0]],  # co-occurrence
            [[0.0, 0.0, 0.0, 0.0]],  # popularity
        ]
    )
    cand = torch.tensor([[True, True, True, True]])
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    ranks = grid_ranks(z, cand, torch.tensor([0]), w, k=10)
    # text: item 1 above, item 3 ties (counted against the target) -> 2
    # co-occurrence: item 2 above, item 3 ties -> 2; popularity: all tie -> 3
    # half/half: item 1 -> 0, item 2 -> 0.5, item 3 -> 0: all at least the target -> 3
    assert ranks.tolist() == [[2, 2, 3, 3]]
    assert grid_ranks(z, cand, torch.tensor([0]), w, k=2).tolist() == [[2, 2, 2, 2]]  # capped at k
    cand[0, 0] = False  # an excluded target is never a hit
    assert grid_ranks(z, cand, torch.tensor([0]), w, k=10).tolist() == [[10, 10, 10, 10]]


def random_data(seed: int = 0, n_users: int = 30, n_items: int = 25, n: int = 1500) -> tuple[ProtocolData, np.ndarray]:
    rng = random.Random(seed)
    items = [f"i{j}" for j in range(n_items)]
    # two taste groups: users of a group mostly pick the group's items
    inter = []
    for t in range(n):
        u = rng.randrange(n_users)
        pool = items[: n_items // 2] if u % 2 == 0 else items[n_items // 2 :]
        item = rng.choice(pool) if rng.random() < 0.8 else rng.choice(items)
        inter.append(it(t * 60_000, f"u{u}", item, rng.random() < 0.6))
    emb = np.random.default_rng(seed).normal(size=(n_items, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return ProtocolData("random", catalog(items), inter), emb


def test_grid_metrics_equal_the_ranking_metrics_of_the_same_blend() -> None:
    data, emb = random_data()
    val_start, test_start = protocol_windows(len(data.interactions))
    # (weights that make exact ties of blended scores unlikely: the grid counts ties against
    # the target, torch.topk orders them arbitrarily)
    grid = [EQUAL_WEIGHTS, BlendWeights(0.31, 0.47, 0.22, "rank"), BlendWeights(1, 0, 0)]
    replay = Replay(data, emb, ProtocolConfig(k=5, batch_size=7))
    replay.advance(val_start, progress=False)
    res = replay.evaluate(test_start, grid=grid, blends={f"g{n}": w for n, w in enumerate(grid)}, progress=False)
    assert res.cases > 50
    for n, point in enumerate(res.grid):
        flat = res.metrics[f"g{n}"].flat()
        assert point.hit_rate == pytest.approx(flat["hit_rate@5"])
        assert point.ndcg == pytest.approx(flat["ndcg@5"])
    best = res.best()
    assert best.ndcg == max(p.ndcg for p in res.grid)


def test_tune_fits_on_the_validation_window_only() -> None:
    data, emb = random_data(seed=2)
    val_start, test_start = protocol_windows(len(data.interactions))
    grid = weight_grid(0.5, ["zscore"])
    w = tune(data, emb, val_start, test_start, config=ProtocolConfig(k=5), grid=grid, progress=False)
    assert w in grid
    # changing the test window's interactions cannot change the tuned weights
    scrambled = ProtocolData(data.name, data.catalog, data.interactions[:test_start] + [it(10**12, "zz", "i0")] * 30)
    assert tune(scrambled, emb, val_start, test_start, config=ProtocolConfig(k=5), grid=grid, progress=False) == w
    with pytest.raises(ValueError, match="bad window"):
        tune(data, emb, test_start, val_start, grid=grid, progress=False)


def test_run_reference_document() -> None:
    data, emb = random_data(seed=3)
    doc = run_reference(data, emb, config=ProtocolConfig(k=10), grid=weight_grid(0.5), progress=False)
    test = doc["test"]
    assert set(test["table"]) == {"popularity", "item-knn", "text-only", "blend-tuned", "blend-equal-zscore"}
    assert test["cases"] > 0 and doc["validation"]["cases"] > 0
    assert doc["validation"]["interactions"][1] == test["interactions"][0]
    assert BlendWeights.from_dict(doc["tuned_weights"]).normalization in ("zscore", "rank")
    assert doc["ratios_ndcg_vs_item_knn"]["item-knn"] in (1.0, None)
    assert all(math.isfinite(row["ndcg@10"]) for row in test["table"].values())
