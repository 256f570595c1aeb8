"""Stream-time order of the event partitions (streams/streamtime.py), without a broker."""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest

from recstream.scoring.backtest import event_order_key
from recstream.streams.records import parse_event
from recstream.streams.streamtime import UNORDERED, ReleasedRecords, StreamTimeMerger, StreamTimeScheduler, record_key

TP = namedtuple("TP", "topic partition")
Rec = namedtuple("Rec", "offset value")
TOPICS = {"x.clicks": "clicks", "x.purchases": "purchases", "x.reviews": "reviews"}
CLICKS, PURCHASES, REVIEWS = TP("x.clicks", 0), TP("x.purchases", 0), TP("x.reviews", 0)


def value(user: str, item: str, ts: int, eid: str, **extra) -> bytes:
    return orjson.dumps({"user_id": user, "item_id": item, "ts": ts, "event_id": eid, **extra})


def records(*events: tuple[str, str, int, str]) -> list[Rec]:
    return [Rec(i, value(*e)) for i, e in enumerate(events)]


def ids(released) -> list[str]:
    return [orjson.loads(r.value)["event_id"] if r.value.startswith(b"{") else r.value.decode() for _, r in released]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_order_key_is_the_protocols_event_order():
    raw = {"clicks": value("u1", "i2", 5, "c1"), "purchases": value("u1", "i2", 5, "p1"), "reviews": value("u1", "i2", 5, "r1", rating=5, text="ok")}
    ranks = {"clicks": 0, "purchases": 1, "reviews": 2}
    for topic, v in raw.items():
        assert record_key(ranks[topic], v) == event_order_key(parse_event(topic, b"u1", v, now_ms=10))
    assert record_key(0, b"not json") == UNORDERED
    assert record_key(0, b"[1, 2]") == UNORDERED
    assert record_key(0, orjson.dumps({"user_id": "u", "ts": "soon"})) == UNORDERED
    assert record_key(0, None) == UNORDERED


def test_a_topic_fetched_far_ahead_waits_for_the_earlier_records_of_another():
    m = StreamTimeMerger(TOPICS, clock=Clock())
    caught_up = set()
    lagging = lambda tp: tp not in caught_up  # noqa: E731
    # the purchases partition was fetched to t=30, the clicks only to t=10
    m.add(PURCHASES, records(("u1", "a", 10, "p10"), ("u1", "b", 20, "p20"), ("u1", "c", 30, "p30")))
    m.add(CLICKS, records(("u1", "a", 10, "c10")))
    caught_up.add(REVIEWS)  # nothing there
    # the click at 10 goes; the purchases wait: the clicks partition has records on the
    # broker that may come before them (another click at 10 of a user before u1)
    assert ids(m.release([CLICKS, PURCHASES, REVIEWS], lagging)) == ["c10"]
    assert m.held(PURCHASES) == 3
    m.add(CLICKS, records(("u1", "b", 20, "c20"), ("u2", "z", 25, "c25"), ("u1", "c", 30, "c30")))
    caught_up.add(CLICKS)
    assert ids(m.release([CLICKS, PURCHASES, REVIEWS], lagging)) == ["p10", "c20", "p20", "c25", "c30", "p30"]
    assert m.held() == 0


def test_a_caught_up_partition_does_not_hold_the_others_back_by_default():
    m = StreamTimeMerger(TOPICS, clock=Clock())
    m.add(CLICKS, records(("u1", "a", 10, "c10"), ("u1", "b", 20, "c20")))
    assert ids(m.release([CLICKS, PURCHASES, REVIEWS], lambda tp: False)) == ["c10", "c20"]


def test_ties_follow_user_item_kind_and_event_id_across_partitions():
    m = StreamTimeMerger(TOPICS, clock=Clock())
    other = TP("x.clicks", 1)
    m.add(CLICKS, records(("u2", "a", 5, "c-u2")))
    m.add(other, records(("u1", "b", 5, "c-u1b"), ("u1", "c", 5, "c-u1c")))
    m.add(PURCHASES, records(("u1", "b", 5, "p-u1b")))
    out = ids(m.release([CLICKS, other, PURCHASES, REVIEWS], lambda tp: False))
    assert out == ["c-u1b", "p-u1b", "c-u1c", "c-u2"]


def test_a_lagging_partition_holds_the_others_back_at_most_the_lag_wait():
    clock = Clock()
    m = StreamTimeMerger(TOPICS, lag_wait_s=2.0, clock=clock)
    m.add(PURCHASES, records(("u1", "a", 10, "p10")))
    lagging = lambda tp: tp == CLICKS  # noqa: E731
    assert m.release([CLICKS, PURCHASES], lagging) == []
    assert m.wait_hint() == pytest.approx(2.0)
    clock.now += 1.0
    assert m.release([CLICKS, PURCHASES], lagging) == []
    clock.now += 1.5
    # the time is up, but the worker fetched nothing meanwhile (it was busy): no evidence yet
    assert m.release([CLICKS, PURCHASES], lagging) == [] and m.enforced == 0
    for _ in range(m.min_fetch_attempts - 1):
        m.fetched({CLICKS, PURCHASES}, {PURCHASES: ["x"]})  # fetches that bring nothing of the clicks
    assert m.release([CLICKS, PURCHASES], lagging) == []
    m.fetched({CLICKS}, {})
    assert ids(m.release([CLICKS, PURCHASES], lagging)) == ["p10"]
    assert m.enforced == 1


def test_max_idle_makes_a_caught_up_partition_wait_for_its_producers():
    clock = Clock()
    m = StreamTimeMerger(TOPICS, max_idle_s=0.5, clock=clock)
    m.add(CLICKS, records(("u1", "a", 10, "c10")))
    assert m.release([CLICKS, PURCHASES], lambda tp: False) == []
    clock.now += 0.2
    m.add(PURCHASES, records(("u1", "a", 8, "p8")))  # arrived in time: goes first
    clock.now += 0.4
    assert ids(m.release([CLICKS, PURCHASES], lambda tp: False)) == ["p8"]
    # the purchases partition is empty again: the click waits for it once more, in full
    clock.now += 0.4
    assert m.release([CLICKS, PURCHASES], lambda tp: False) == []
    clock.now += 0.2
    assert ids(m.release([CLICKS, PURCHASES], lambda tp: False)) == ["c10"]


def test_records_that_are_not_events_go_first_and_offsets_keep_their_order():
    m = StreamTimeMerger(TOPICS, clock=Clock())
    m.add(CLICKS, [Rec(0, value("u1", "a", 50, "c50")), Rec(1, b"garbage"), Rec(2, value("u1", "b", 40, "c40"))])
    m.add(PURCHASES, records(("u1", "a", 45, "p45")))
    # a partition's own order is never changed: the garbage and the click at 40 wait behind the click at 50
    assert ids(m.release([CLICKS, PURCHASES], lambda tp: False)) == ["p45", "c50", "garbage", "c40"]


def test_full_partitions_stop_fetching_and_clear_forgets():
    m = StreamTimeMerger(TOPICS, max_held=2, clock=Clock())
    m.add(CLICKS, records(("u", "a", 1, "1"), ("u", "b", 2, "2")))
    assert m.full(CLICKS) and not m.full(PURCHASES)
    m.clear([CLICKS])
    assert m.held() == 0 and not m.full(CLICKS)
    assert not m.participates(TP("x.items", 0))


def test_the_scheduler_delivers_other_topics_then_the_released_events_in_order():
    items = TP("x.items", 0)
    released = [(PURCHASES, "p"), (CLICKS, "c"), (PURCHASES, "p2")]
    got = list(StreamTimeScheduler().iterate(ReleasedRecords({items: ["i1", "i2"]}, released)))
    assert got == [(items, "i1"), (items, "i2"), *released]
    assert list(StreamTimeScheduler().iterate({items: ["i1"]})) == [(items, "i1")]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        StreamTimeMerger(TOPICS, max_idle_s=-1)


def test_while_a_partition_holds_the_others_back_only_it_and_other_topics_are_fetched():
    m = StreamTimeMerger(TOPICS, max_held=2, clock=Clock())
    items = TP("x.items", 0)
    m.add(PURCHASES, records(("u", "a", 5, "p")))
    # the clicks partition is empty and has records on the broker: take only its records
    assert m.to_fetch([CLICKS, PURCHASES, REVIEWS, items], lambda tp: tp == CLICKS) == {CLICKS, items}
    # nothing holds back: every partition not held full
    m.add(PURCHASES, records(("u", "b", 6, "p2")))
    assert m.to_fetch([CLICKS, PURCHASES, REVIEWS, items], lambda tp: False) == {CLICKS, REVIEWS, items}


def test_the_lag_wait_counts_from_when_the_partition_started_lagging():
    clock = Clock()
    m = StreamTimeMerger(TOPICS, lag_wait_s=2.0, clock=clock)
    m.add(PURCHASES, records(("u1", "a", 10, "p10")))
    m.add(CLICKS, records(("u1", "a", 5, "c5")))
    state = {"lagging": False}
    lag = lambda tp: tp == CLICKS and state["lagging"]  # noqa: E731
    assert ids(m.release([CLICKS, PURCHASES], lag)) == ["c5", "p10"]  # clicks caught up: nothing waits
    m.add(PURCHASES, records(("u1", "b", 20, "p20")))
    clock.now += 60.0  # long empty and caught up; now it has records on the broker again
    state["lagging"] = True
    assert m.release([CLICKS, PURCHASES], lag) == []  # it holds the others back, in full
    clock.now += 1.0
    assert m.release([CLICKS, PURCHASES], lag) == [] and m.enforced == 0


def test_events_past_the_other_workers_horizon_wait_for_them():
    m = StreamTimeMerger(TOPICS, clock=Clock())
    horizon: list[float | None] = [20]
    m.horizon = lambda: horizon[0]
    m.add(CLICKS, records(("u1", "a", 10, "c10"), ("u1", "b", 20, "c20"), ("u1", "c", 30, "c30"), ("u1", "d", 40, "c40")))
    caught_up = lambda tp: False  # noqa: E731 - nothing more on the broker
    # up to the horizon, and one event past it (not yet past, it may take its next one)
    assert ids(m.release([CLICKS, PURCHASES, REVIEWS], caught_up)) == ["c10", "c20", "c30"]
    assert m.at_horizon and m.held() == 1 and m.wait_hint() == pytest.approx(0.05)
    assert m.release([CLICKS, PURCHASES, REVIEWS], caught_up) == []  # past it: nothing more
    horizon[0] = None  # the slowest partition went quiet
    assert ids(m.release([CLICKS, PURCHASES, REVIEWS], caught_up)) == ["c40"]
    assert not m.at_horizon


def test_workers_in_step_never_wait_for_each_other_for_ever():
    # two workers, each one's horizon the other's stream time (max skew 0): when both stand
    # at the same time with their next events later, one of them still moves on
    a, b = StreamTimeMerger(TOPICS, clock=Clock()), StreamTimeMerger(TOPICS, clock=Clock())
    a.horizon = lambda: b.released_ms
    b.horizon = lambda: a.released_ms
    a.add(CLICKS, records(*[("a", f"i{t}", t, f"a{t}") for t in (10, 30, 31, 32, 70)]))
    b.add(CLICKS, records(*[("b", f"i{t}", t, f"b{t}") for t in (20, 40, 50, 60, 80)]))
    caught_up = lambda tp: False  # noqa: E731
    done: dict[str, list[int]] = {"a": [], "b": []}
    for _ in range(20):
        got = ids(a.release([CLICKS], caught_up)) + ids(b.release([CLICKS], caught_up))
        for name in got:
            done[name[0]].append(int(name[1:]))
        # neither is ever more than one event past the other's stream time
        assert sum(t > b.released_ms for t in done["a"]) <= 1 and sum(t > a.released_ms for t in done["b"]) <= 1
        if not got:
            break
    assert done == {"a": [10, 30, 31, 32, 70], "b": [20, 40, 50, 60, 80]}
