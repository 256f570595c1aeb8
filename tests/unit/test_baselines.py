"""Streaming baselines on tiny hand-built streams (counts worked out in the comments)."""

from __future__ import annotations

import math
import random

import pytest

from recstream.scoring.baselines import ItemKNNBaseline, PopularityBaseline, Recommender, observe_event
from recstream.scoring.metrics import RankingMetrics
from recstream.streams.records import Click, Purchase, Review

H = 1000  # a 1-second half-life keeps the decay arithmetic readable


# --------------------------------------------------------------------------- popularity


def popularity_stream(p: PopularityBaseline) -> None:
    p.observe("u1", "a", 0, "click")
    p.observe("u2", "a", 0, "purchase")  # a: 2 at t=0
    p.observe("u3", "b", 1000, "review", 1.0)  # b: 1 at t=1000 (any rating counts)


def test_popularity_decay_and_ties() -> None:
    p = PopularityBaseline(H)
    popularity_stream(p)
    # at t=1000: a = 2 * 0.5**(1000/1000) = 1.0, b = 1.0 -> tie, broken by id
    assert p.recommend("anyone", 5) == ["a", "b"]
    assert p.popularity.score("a", 1000) == pytest.approx(1.0)
    p.observe("u1", "c", 2000, "click")
    # at t=2000: c = 1, a = 2 * 0.25 = 0.5, b = 1 * 0.5 = 0.5 (tie -> id)
    assert p.recommend("u9", 5, now_ms=2000) == ["c", "a", "b"]
    assert p.recommend("u9", 2) == ["c", "a"]
    assert p.recommend("u9", 0) == []


def test_popularity_without_decay_effect_counts_events() -> None:
    p = PopularityBaseline(10**15)  # effectively no decay within the stream
    for user, item in [("u1", "x"), ("u2", "y"), ("u3", "y"), ("u1", "z"), ("u2", "z"), ("u3", "z")]:
        p.observe(user, item, 0, "click")
    assert p.recommend("u1", 3) == ["z", "y", "x"]  # 3, 2, 1 events


def test_popularity_exclusion_and_catalog() -> None:
    p = PopularityBaseline(H)
    popularity_stream(p)
    p.observe("u1", "c", 2000, "click")
    assert p.recommend("u1", 5, exclude={"c"}) == ["a", "b"]
    q = PopularityBaseline(H, catalog={"a", "c"})
    popularity_stream(q)
    q.observe("u1", "c", 2000, "click")
    assert q.recommend("u1", 5) == ["c", "a"]  # b is not in the catalog
    assert q.recommend("u1", 5, exclude=frozenset({"a"})) == ["c"]


def test_popularity_rejects_unknown_kinds() -> None:
    p = PopularityBaseline(H)
    with pytest.raises(ValueError):
        p.observe("u", "a", 0, "view")
    with pytest.raises(ValueError):
        p.observe("u", "a", 0, "review")  # a review needs its rating
    with pytest.raises(ValueError):
        p.recommend("u", -1)


def test_records_and_protocol() -> None:
    p = PopularityBaseline(H)
    knn = ItemKNNBaseline()
    for rec in (p, knn):
        assert isinstance(rec, Recommender)
        observe_event(rec, Click("u1", "a", 0))
        observe_event(rec, Purchase("u1", "b", 0, quantity=2))
        observe_event(rec, Review("u1", "c", 5.0, "great", 0))
    assert p.recommend("u2", 3) == ["a", "b", "c"]
    assert knn.history("u1") == ["a", "b", "c"]
    assert p.name == "popularity" and knn.name == "item-knn"


# --------------------------------------------------------------------------- item kNN

# u1: click a, click b, purchase c
# u2: click a, click c
# u3: click b, review d 2 stars (not positive), review c 5 stars
#
# u1 a -> n_a = 1;                                    u1 history [a]
# u1 b -> co(a,b) = 1;                 n_b = 1;       u1 history [a, b]
# u1 c -> co(a,c) = 1, co(b,c) = 1;    n_c = 1;       u1 history [a, b, c]
# u2 a -> n_a = 2;                                    u2 history [a]
# u2 c -> co(a,c) = 2;                 n_c = 2;       u2 history [a, c]
# u3 b -> n_b = 2;                                    u3 history [b]
# u3 d (2 stars): ignored by the model, d counted once for popularity
# u3 c -> co(b,c) = 2;                 n_c = 3;       u3 history [b, c]
#
# final: co(a,b) = 1, co(a,c) = 2, co(b,c) = 2 (symmetric); n_a = 2, n_b = 2, n_c = 3
# popularity (all events): a 2, b 2, c 3, d 1
STREAM = [
    ("u1", "a", "click", None),
    ("u1", "b", "click", None),
    ("u1", "c", "purchase", None),
    ("u2", "a", "click", None),
    ("u2", "c", "click", None),
    ("u3", "b", "click", None),
    ("u3", "d", "review", 2.0),
    ("u3", "c", "review", 5.0),
]


def feed(knn: ItemKNNBaseline, stream: list[tuple[str, str, str, float | None]], ts: int = 0) -> None:
    for user, item, kind, rating in stream:
        knn.observe(user, item, ts, kind, rating)


def test_knn_cooccurrence_counts() -> None:
    knn = ItemKNNBaseline()
    feed(knn, STREAM)
    assert knn.neighbours("a") == {"b": 1.0, "c": 2.0}
    assert knn.neighbours("b") == {"a": 1.0, "c": 2.0}
    assert knn.neighbours("c") == {"a": 2.0, "b": 2.0}
    assert knn.neighbours("d") == {}
    assert (knn.count("a"), knn.count("b"), knn.count("c"), knn.count("d")) == (2.0, 2.0, 3.0, 0.0)
    assert knn.history("u1") == ["a", "b", "c"]
    assert knn.history("u2") == ["a", "c"]
    assert knn.history("u3") == ["b", "c"]  # the 2-star review of d is not a positive


def test_knn_raw_scores() -> None:
    knn = ItemKNNBaseline(normalize=None)
    feed(knn, STREAM)
    # u2 history [a, c]: from a: b +1, c +2; from c: a +2, b +2 -> b 3, a 2, c 2
    assert knn.scores("u2") == {"b": 3.0, "c": 2.0, "a": 2.0}
    assert knn.recommend("u2", 3) == ["b", "a", "c"]  # a and c tie at 2: by id
    # u3 history [b, c]: from b: a +1, c +2; from c: a +2, b +2 -> a 3, b 2, c 2
    assert knn.recommend("u3", 2) == ["a", "b"]


def test_knn_cosine_scores() -> None:
    knn = ItemKNNBaseline()
    feed(knn, STREAM)
    # sim(a,b) = 1/sqrt(2*2) = 0.5; sim(a,c) = 2/sqrt(2*3) = 0.8164965809; sim(b,c) = 2/sqrt(2*3) = 0.8164965809
    assert knn.similarity("a", "b") == pytest.approx(0.5)
    assert knn.similarity("c", "a") == pytest.approx(2 / math.sqrt(6))
    # u2 history [a, c]: b = 0.5 + 0.8164965809 = 1.3164965809, a = 0.8164965809, c = 0.8164965809
    scores = knn.scores("u2")
    assert scores["b"] == pytest.approx(0.5 + 2 / math.sqrt(6))
    assert scores["a"] == scores["c"] == pytest.approx(2 / math.sqrt(6))
    assert knn.recommend("u2", 3) == ["b", "a", "c"]


def test_cosine_discounts_a_popular_hub() -> None:
    # u1, u2: q then h; u3: q then x; u4..u7: h alone; u8: q
    # co(q,h) = 2, co(q,x) = 1; n_q = 4 (u1, u2, u3, u8), n_h = 6 (u1, u2, u4..u7), n_x = 1
    stream = [("u1", "q"), ("u1", "h"), ("u2", "q"), ("u2", "h"), ("u3", "q"), ("u3", "x")]
    stream += [(f"u{n}", "h") for n in range(4, 8)] + [("u8", "q")]
    raw, cos = ItemKNNBaseline(normalize=None), ItemKNNBaseline(normalize="cosine")
    for knn in (raw, cos):
        feed(knn, [(u, i, "click", None) for u, i in stream])
    # raw, u8 history [q]: h 2 > x 1
    assert raw.recommend("u8", 2) == ["h", "x"]
    # cosine: h = 2/sqrt(4*6) = 0.4082482905 < x = 1/sqrt(4*1) = 0.5
    assert cos.scores("u8") == {"h": pytest.approx(2 / math.sqrt(24)), "x": pytest.approx(0.5)}
    assert cos.recommend("u8", 2) == ["x", "h"]


def test_knn_positive_threshold() -> None:
    knn = ItemKNNBaseline(positive_threshold=4.0)
    knn.observe("u", "a", 0, "click")
    knn.observe("u", "b", 0, "review", 3.9)  # below the threshold: ignored
    knn.observe("u", "c", 0, "review", 4.0)  # at the threshold: positive
    assert knn.history("u") == ["a", "c"]
    assert knn.neighbours("a") == {"c": 1.0}
    assert knn.count("b") == 0.0


def test_knn_history_window_and_repeats() -> None:
    knn = ItemKNNBaseline(history_len=2, normalize=None)
    # a: history [a]
    # b: co(a,b) = 1;                       history [a, b]
    # a: co(b,a) = 2 (a itself skipped);    history [b, a] (a moves to the end)
    # c: co(b,c) = 1, co(a,c) = 1;          history [a, c] (b falls out)
    # d: co(a,d) = 1, co(c,d) = 1;          history [c, d] -> b and d never co-occur
    for item in "abacd":
        knn.observe("u", item, 0, "click")
    assert knn.history("u") == ["c", "d"]
    assert knn.cooccurrence("a", "b") == knn.cooccurrence("b", "a") == 2.0
    assert knn.cooccurrence("a", "a") == 0.0
    assert knn.neighbours("b") == {"a": 2.0, "c": 1.0}
    assert knn.neighbours("d") == {"a": 1.0, "c": 1.0}
    assert knn.count("a") == 2.0  # two positives on a


def test_knn_decay() -> None:
    # (a,b) co-occurs twice at t=0, (a,c) once at t=3000; u3 clicks a at t=3000
    stream = [("u1", "a", 0), ("u1", "b", 0), ("u2", "a", 0), ("u2", "b", 0), ("u3", "c", 3000), ("u3", "a", 3000)]
    plain = ItemKNNBaseline(normalize=None)
    decayed = ItemKNNBaseline(normalize=None, half_life_ms=H)
    for user, item, ts in stream:
        plain.observe(user, item, ts, "click")
        decayed.observe(user, item, ts, "click")
    # no decay: co(a,b) = 2 > co(a,c) = 1
    assert plain.recommend("u3", 2, exclude={"a"}) == ["b", "c"]
    # decayed, seen at t=3000: co(a,b) = 2 * 0.5**3 = 0.25 < co(a,c) = 1
    # (stored relative to t=0: co(a,b) = 2 * 2**0 = 2, co(a,c) = 2**(3000/1000) = 8)
    assert decayed.cooccurrence("a", "b") == 2.0
    assert decayed.cooccurrence("a", "c") == 8.0
    assert decayed.recommend("u3", 2, exclude={"a"}) == ["c", "b"]


def test_knn_decay_rescales_without_overflow() -> None:
    knn = ItemKNNBaseline(half_life_ms=1.0, normalize=None)
    knn.observe("u1", "a", 0, "click")
    knn.observe("u1", "b", 0, "click")  # co(a,b) = 1 relative to t=0
    # t=300 is 300 half-lives later: the reference moves to t=300, co(a,b) becomes 2**-300
    knn.observe("u2", "c", 300, "click")
    knn.observe("u2", "d", 300, "click")
    assert knn.cooccurrence("a", "b") == 2.0**-300
    assert knn.cooccurrence("c", "d") == 1.0
    # t=5000: 4700 half-lives later every older weight underflows to 0 and is dropped
    knn.observe("u3", "e", 5000, "click")
    knn.observe("u3", "f", 5000, "click")
    assert knn.cooccurrence("a", "b") == knn.cooccurrence("c", "d") == 0.0
    assert knn.neighbours("a") == {} and knn.count("a") == 0.0
    assert knn.cooccurrence("e", "f") == 1.0
    # u1's history still lists a and b, but they have no neighbours left: popularity fills in
    assert knn.recommend("u1", 2, exclude={"a", "b"}) == ["e", "f"]


def test_knn_pruning_keeps_the_strongest_neighbours() -> None:
    knn = ItemKNNBaseline(max_neighbours=2, normalize=None)
    # one fresh user per pair "h then x": co(h,x) += 1 each time
    seq = ["n1", "n1", "n1", "n2", "n2", "n3", "n4"]
    for n, x in enumerate(seq):
        knn.observe(f"u{n}", "h", 0, "click")
        knn.observe(f"u{n}", x, 0, "click")
    # h's row: n1 3, n2 2, n3 1, n4 1 -> 4 entries = 2 * max_neighbours: not pruned yet
    assert knn.neighbours("h") == {"n1": 3.0, "n2": 2.0, "n3": 1.0, "n4": 1.0}
    knn.observe("u99", "h", 0, "click")
    knn.observe("u99", "n5", 0, "click")
    # 5 entries > 4: keep the 2 largest, n1 3 and n2 2
    assert knn.neighbours("h") == {"n1": 3.0, "n2": 2.0}
    assert knn.neighbours("n5") == {"h": 1.0}  # the reverse direction is untouched
    # a pruned pair restarts from its next co-occurrence
    knn.observe("u100", "h", 0, "click")
    knn.observe("u100", "n3", 0, "click")
    assert knn.neighbours("h") == {"n1": 3.0, "n2": 2.0, "n3": 1.0}


def test_knn_pruning_ties_by_item_id() -> None:
    knn = ItemKNNBaseline(max_neighbours=1, normalize=None)
    for n, x in enumerate(["z", "y", "x"]):  # all co-occur once with h
        knn.observe(f"u{n}", "h", 0, "click")
        knn.observe(f"u{n}", x, 0, "click")
    # third neighbour: 3 > 2 entries -> keep 1, ties at 1 broken by id: x
    assert knn.neighbours("h") == {"x": 1.0}


def test_knn_memory_bound_on_a_random_stream() -> None:
    rng = random.Random(3)
    knn = ItemKNNBaseline(history_len=10, max_neighbours=5)
    for t in range(3000):
        knn.observe(f"u{rng.randrange(40)}", f"i{rng.randrange(200)}", t, "click")
    assert all(len(knn.neighbours(f"i{n}")) <= 10 for n in range(200))
    assert all(len(knn.history(f"u{n}")) <= 10 for n in range(40))


def test_knn_exclusions() -> None:
    knn = ItemKNNBaseline(normalize=None)
    feed(knn, STREAM)
    # u2: b 3, a 2, c 2; excluding u2's purchases/own items a and c leaves b, then popularity
    # fills from the rest: popularity a 2, b 2, c 3, d 1 minus {a, c, b} -> d
    assert knn.recommend("u2", 3, exclude={"a", "c"}) == ["b", "d"]
    own = ItemKNNBaseline(normalize=None, exclude_history=True)
    feed(own, STREAM)
    assert own.recommend("u2", 3) == ["b", "d"]  # the same, via the user's history [a, c]
    assert own.recommend("u2", 3, exclude={"b"}) == ["d"]


def test_knn_catalog() -> None:
    knn = ItemKNNBaseline(normalize=None, catalog={"a", "c", "d"})
    feed(knn, STREAM)
    # u2: b 3 is not in the catalog -> a 2, c 2, then popularity: d
    assert knn.recommend("u2", 3) == ["a", "c", "d"]


def test_knn_fallback_to_popularity() -> None:
    knn = ItemKNNBaseline(normalize=None)
    feed(knn, STREAM)
    # a new user has no history: pure popularity, c 3, then a 2 and b 2 (id), then d 1
    assert knn.recommend("stranger", 4) == ["c", "a", "b", "d"]
    # u2 has 3 neighbourhood candidates (b, a, c): the 4th comes from popularity (d)
    assert knn.recommend("u2", 5) == ["b", "a", "c", "d"]
    # only popularity-less items are left: a shorter list, never an excluded item
    assert knn.recommend("u2", 5, exclude={"a", "b", "c", "d"}) == []
    assert knn.recommend("u2", 0) == []


def test_knn_fallback_uses_decayed_popularity() -> None:
    knn = ItemKNNBaseline(popularity_half_life_ms=H)
    knn.observe("u1", "old", 0, "click")
    knn.observe("u2", "old", 0, "click")  # old: 2 at t=0 -> 2 * 0.5**2 = 0.5 at t=2000
    knn.observe("u3", "new", 2000, "click")  # new: 1 at t=2000
    assert knn.recommend("stranger", 2) == ["new", "old"]


def test_knn_is_deterministic_and_breaks_ties_by_id() -> None:
    rng = random.Random(11)
    stream = [(f"u{rng.randrange(30)}", f"i{rng.randrange(60)}", t * 1000, rng.choice(["click", "purchase", "review"])) for t in range(1500)]
    ratings = [float(rng.randint(1, 5)) for _ in stream]
    runs = []
    for _ in range(2):
        knn = ItemKNNBaseline(history_len=5, max_neighbours=8, half_life_ms=50_000)
        for (user, item, ts, kind), rating in zip(stream, ratings):
            knn.observe(user, item, ts, kind, rating if kind == "review" else None)
        runs.append({f"u{n}": knn.recommend(f"u{n}", 10, exclude={"i0"}) for n in range(30)})
        # neighbourhood items come first, ordered by (-score, id)
        for n in range(30):
            scores = knn.scores(f"u{n}")
            recs = runs[-1][f"u{n}"]
            head = [i for i in recs if scores.get(i, 0.0) > 0.0]
            assert recs[: len(head)] == head
            assert head == sorted(head, key=lambda i: (-scores[i], i))
            assert "i0" not in recs and len(recs) == len(set(recs)) == 10
    assert runs[0] == runs[1]


def test_knn_validation() -> None:
    with pytest.raises(ValueError):
        ItemKNNBaseline(history_len=0)
    with pytest.raises(ValueError):
        ItemKNNBaseline(max_neighbours=0)
    with pytest.raises(ValueError):
        ItemKNNBaseline(half_life_ms=0)
    with pytest.raises(ValueError):
        ItemKNNBaseline(normalize="jaccard")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ItemKNNBaseline().observe("u", "a", 0, "like")


def test_backtest_style_evaluation() -> None:
    """Users who click x then y: after warm-up, kNN predicts y for a user holding x."""
    knn, pop = ItemKNNBaseline(), PopularityBaseline(10**12)
    metrics = {"knn": RankingMetrics((1,)), "pop": RankingMetrics((1,))}
    # "z" is globally most popular but never follows x
    for n in range(20):
        for rec in (knn, pop):
            for j in range(3):
                rec.observe(f"z{n}", "z", n, "click")
    for n in range(10):
        user = f"u{n}"
        for rec in (knn, pop):
            rec.observe(user, "x", 100 + n, "click")
        # the test case: the list held just before the target click on y
        if n >= 5:
            metrics["knn"].add(knn.recommend(user, 1, exclude={"x"}), {"y"})
            metrics["pop"].add(pop.recommend(user, 1, exclude={"x"}), {"y"})
        for rec in (knn, pop):
            rec.observe(user, "y", 100 + n, "click")
    assert metrics["knn"].summary()[1]["hit_rate"] == 1.0
    assert metrics["pop"].summary()[1]["hit_rate"] == 0.0
