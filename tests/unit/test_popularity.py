"""Decayed popularity against hand-computed decayed counts."""

from __future__ import annotations

import math
import random

import pytest

from recstream.scoring.popularity import DecayedPopularity, PopularityFormatError

H = 7 * 24 * 3600 * 1000  # one week
T0 = 1_700_000_000_000

EVENTS = [
    ("a", T0, 1.0),
    ("a", T0 + H, 1.0),
    ("b", T0 + H // 2, 3.0),
    ("c", T0 + 2 * H, 1.0),
    ("a", T0 + 3 * H, 0.5),
    ("d", T0 - 10 * H, 100.0),
]


def decayed(item: str, now: int) -> float:
    """Reference: sum of w * 0.5 ** ((now - t) / H) over the item's events."""
    return sum(w * 0.5 ** ((now - t) / H) for i, t, w in EVENTS if i == item)


@pytest.fixture
def pop() -> DecayedPopularity:
    p = DecayedPopularity(H)
    for item, ts, w in EVENTS:
        p.add(item, ts, w)
    return p


def test_scores_match_hand_computation(pop: DecayedPopularity) -> None:
    for now in (T0, T0 + 3 * H, T0 + 40 * H, T0 - 20 * H):
        for item in "abcd":
            assert math.isclose(pop.score(item, now), decayed(item, now), rel_tol=1e-9)
    assert pop.score("zzz", T0) == 0.0
    assert len(pop) == 4 and "a" in pop and "zzz" not in pop
    assert pop.last_ts == T0 + 3 * H
    # a single event one half-life ago counts one half
    single = DecayedPopularity(H)
    single.add("x", T0)
    assert math.isclose(single.score("x", T0 + H), 0.5, rel_tol=1e-12)


def test_order_independent_of_arrival_and_no_overflow() -> None:
    shuffled = list(EVENTS)
    random.Random(3).shuffle(shuffled)
    p = DecayedPopularity(H)
    for item, ts, w in shuffled:
        p.add(item, ts, w)
    now = T0 + 3 * H
    for item in "abcd":
        assert math.isclose(p.score(item, now), decayed(item, now), rel_tol=1e-9)
    # very short half-life, far-apart timestamps: no overflow, newest dominates
    fast = DecayedPopularity(1.0)
    fast.add("old", 0, 1e6)
    fast.add("new", 10**13)
    assert [i for i, _ in fast.top(2)] == ["new", "old"]
    assert math.isclose(fast.score("new", 10**13), 1.0)


def test_top_ranking_independent_of_time(pop: DecayedPopularity) -> None:
    for now in (T0 + 3 * H, T0 + 100 * H):
        expected = sorted("abcd", key=lambda i: (-decayed(i, now), i))
        got = pop.top(4, now_ms=now)
        assert [i for i, _ in got] == expected
        for item, score in got:
            assert math.isclose(score, decayed(item, now), rel_tol=1e-9)
    # default "now" is the latest event time
    assert pop.top(4) == pop.top(4, now_ms=T0 + 3 * H)
    assert len(pop.top(2)) == 2 and pop.top(0) == []


def test_tie_break_by_item_id() -> None:
    p = DecayedPopularity(H)
    for item in ["m", "b", "z", "a", "k"]:
        p.add(item, T0, 2.0)
    p.add("top", T0 + H, 2.0)
    assert [i for i, _ in p.top(6)] == ["top", "a", "b", "k", "m", "z"]
    q = DecayedPopularity(H)
    for item in ["k", "z", "a", "top", "b", "m"]:
        q.add(item, T0 + (H if item == "top" else 0), 2.0)
    assert q.top(6) == p.top(6)


def test_exclude_and_allowed(pop: DecayedPopularity) -> None:
    now = T0 + 3 * H
    ranked = [i for i, _ in pop.top(4, now_ms=now)]
    assert [i for i, _ in pop.top(2, exclude={ranked[0]})] == ranked[1:3]
    catalog = {ranked[1], ranked[3]}
    assert [i for i, _ in pop.top(4, allowed=catalog)] == [ranked[1], ranked[3]]
    assert [i for i, _ in pop.top(4, allowed=lambda i: i != ranked[1])] == [ranked[0], ranked[2], ranked[3]]
    assert [i for i, _ in pop.top(4, exclude=[ranked[3]], allowed=catalog)] == [ranked[1]]


def test_round_trip(pop: DecayedPopularity) -> None:
    data = pop.to_bytes()
    back = DecayedPopularity.from_bytes(data)
    assert back.half_life_ms == pop.half_life_ms and back.last_ts == pop.last_ts
    assert list(back.items()) == list(pop.items())
    assert back.top(10) == pop.top(10)
    rebuilt = DecayedPopularity.from_items(H, pop.items(), last_ts=pop.last_ts)
    assert list(rebuilt.items()) == list(pop.items())
    # keeps working after restore
    back.add("c", T0 + 4 * H, 10.0)
    assert back.top(1)[0][0] == "c"


def test_bad_input() -> None:
    p = DecayedPopularity(H)
    with pytest.raises(ValueError):
        p.add("a", T0, 0.0)
    with pytest.raises(ValueError):
        DecayedPopularity(0)
    with pytest.raises(PopularityFormatError, match="version"):
        DecayedPopularity.from_bytes(b'{"v": 9, "half_life_ms": 1, "last_ts": null, "items": []}')
    with pytest.raises(PopularityFormatError):
        DecayedPopularity.from_bytes(b"not json")
    assert p.remove("a") is False
    p.add("a", T0)
    p.add("b", T0 + 1)
    assert p.remove("a") is True and [i for i, _ in p.top(5)] == ["b"]


def test_counts_long_before_the_events_stay_finite() -> None:
    pop = DecayedPopularity(7 * 86_400_000)
    now = 1_800_000_000_000
    pop.add("a", now)
    pop.add("b", now - 1000)
    # at the epoch, 56 years before the events: 2 ** 2900 would overflow; scores are capped
    top = pop.top(2, now_ms=0)
    assert [i for i, _ in top] == ["a", "b"] and all(math.isfinite(s) and s > 0 for _, s in top)
    assert math.isfinite(pop.score("a", 0)) and pop.score("a", 0) >= pop.score("b", 0)
    # near the events nothing is capped
    assert pop.score("a", now) == pytest.approx(1.0)


def test_restore_rolls_an_add_back() -> None:
    pop = DecayedPopularity(1000)
    pop.add("a", 5000)
    state = (list(pop.items()), pop.last_ts)
    old_a, old_b, last = pop.log2_score("a"), pop.log2_score("b"), pop.last_ts
    pop.add("a", 9000)
    pop.add("b", 9500)
    pop.restore("b", old_b, last)
    pop.restore("a", old_a, last)
    assert (list(pop.items()), pop.last_ts) == state and "b" not in pop


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_read_between_any_changes_equals_a_full_sort(seed: int) -> None:
    """The ranking is brought up to date when read: after any mix of adds, removes,
    restores and set_log2, read after each change, every few changes or only at the end,
    it is the full sort of the scores."""
    rng = random.Random(seed)
    for read_every in (1, 7, 10_000):
        pop = DecayedPopularity(H)
        for step in range(600):
            item = f"i{int(rng.paretovariate(1.2)) % 60}"
            r = rng.random()
            if r < 0.75:
                pop.add(item, T0 + rng.randrange(0, 3 * H), rng.choice([1.0, 2.0, 0.5]))
            elif r < 0.85:
                pop.remove(item)
            elif r < 0.95:
                pop.restore(item, None if rng.random() < 0.3 else rng.uniform(0, 200), pop.last_ts)
            else:
                pop.set_log2(item, rng.uniform(0, 200))
            if step % read_every == 0 or step == 599:
                want = sorted(((-lg, i) for i, lg in ((i, pop.log2_score(i)) for i in {f"i{n}" for n in range(60)}) if lg is not None))
                assert list(pop.items()) == [(i, -neg) for neg, i in want]
                assert [i for i, _ in pop.top(5, exclude={"i1"})] == [i for _, i in want if i != "i1"][:5]
