"""The backtest protocol (:mod:`scoring.backtest`).

Part 1 works a tiny hand-built stream through :class:`Backtest` with fake recstream lists
and the real default baselines; every number is worked out in the comments.

Part 2 runs :func:`run_offline` on a small real catalog (four distinct topics, embedded
with the real all-MiniLM-L6-v2 encoder, loaded once for the module) and a generated
stream; expectations are computed (reruns, other batch sizes, the engine itself), never
hard-coded.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import replace

import orjson
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recstream.scoring.backtest import (  # noqa: E402
    POPULARITY_MODEL,
    RECSTREAM,
    COLD,
    Backtest,
    BacktestConfig,
    ExclusionTracker,
    evaluate_records,
    format_table,
    held_before,
    interaction_kinds,
    recommendations_by_event_id,
    run_offline,
    target_kind,
)
from recstream.scoring.baselines import PopularityBaseline  # noqa: E402
from recstream.scoring.metrics import calendar_month_start  # noqa: E402
from recstream.streams.records import Click, Item, Purchase, RecItem, Recommendation, Review, Trigger  # noqa: E402

MINUTE = 60_000
DAY = 86_400_000
JAN31 = 1_706_659_200_000  # 2024-01-31T00:00:00Z
FEB1 = JAN31 + DAY
LOG2_3 = math.log2(3)  # discount of rank 2: 1 / log2(2 + 1)


# =========================================================================== part 1: by hand

# catalog a..e; split at JAN31 + 10 min.  The events, with what the protocol makes of them:
HAND_EVENTS = [
    Click("u1", "a", JAN31 + 1 * MINUTE, "e1"),  # warm
    Click("u1", "b", JAN31 + 2 * MINUTE, "e2"),  # warm
    Click("u2", "a", JAN31 + 3 * MINUTE, "e3"),  # warm
    Purchase("u2", "c", JAN31 + 4 * MINUTE, "e4"),  # warm
    Purchase("u1", "a", JAN31 + 5 * MINUTE, "e5"),  # warm
    Click("u1", "c", JAN31 + 10 * MINUTE, "e6"),  # case (click); u1 held the list after e5
    Click("u3", "a", JAN31 + 11 * MINUTE, "e7"),  # target, but u3 is cold (first event)
    Review("u2", "d", 2.0, "meh", JAN31 + 12 * MINUTE, "e8"),  # test, not a target (rating 2)
    Review("u2", "b", 5.0, "great", JAN31 + 13 * MINUTE, "e9"),  # case (positive); held: after e8
    Purchase("u3", "b", FEB1 + 1 * MINUTE, "e10"),  # case (purchase); held: after e7
    Review("u1", "e", 4.0, "fine", JAN31 + 2 * DAY, "e11"),  # case (positive, 4 >= 4.0); held: after e6
]
SPLIT = JAN31 + 10 * MINUTE
CATALOG = ["a", "b", "c", "d", "e"]

# recstream's fake list after each event (only those held at a case matter)
HAND_LISTS = {"e5": ["c", "d", "b"], "e6": ["d", "e", "c"], "e7": ["b", "c", "d"], "e8": ["d", "e", "b"]}
# the exclusion set just before each case (purchased items: u1 bought a, u2 bought c)
HAND_EXCLUDE = {"e6": {"a"}, "e9": {"c"}, "e10": set(), "e11": {"a"}}


def hand_backtest(config: BacktestConfig, **kwargs) -> Backtest:
    bt = Backtest(config, CATALOG, **kwargs)
    for ev in HAND_EVENTS:
        rec = HAND_LISTS.get(ev.event_id, ["a", "b", "c"])
        bt.observe(ev, rec, exclude_before=HAND_EXCLUDE.get(ev.event_id, set()))
    return bt


def test_hand_stream_counts_and_every_method_by_hand() -> None:
    result = hand_backtest(BacktestConfig(SPLIT, ks=(1, 3))).result()
    c = result.counts
    # 11 events: e1-e5 warm, e6-e11 test; targets e6 e7 e9 e10 e11 (e8 rated 2 is skipped);
    # e7 is cold (u3's first event) -> 4 cases
    assert (c["events"], c["warm"], c["test"], c["targets"], c["skipped"], c["cold"], c["missing"], c["cases"]) == (
        11,
        5,
        6,
        5,
        1,
        1,
        0,
        4,
    )
    assert list(result.methods) == [RECSTREAM, "popularity", "item-knn"]

    # --- recstream: the fake lists held
    # e6 c in [c d b] rank 1 | e9 b in [d e b] rank 3 | e10 b in [b c d] rank 1 | e11 e in [d e c] rank 2
    rs = result.metrics(RECSTREAM)
    assert rs["cases"] == 4
    assert rs["hit_rate@1"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert rs["ndcg@1"] == pytest.approx(0.5)
    assert rs["hit_rate@3"] == pytest.approx(1.0)
    assert rs["precision@3"] == pytest.approx(1 / 3)
    assert rs["ndcg@3"] == pytest.approx((1 + 1 / 2 + 1 + 1 / LOG2_3) / 4)  # 1/log2(4) = 1/2 for rank 3
    assert rs["mrr@3"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 2) / 4)

    # --- popularity (half-life 7 days; asked before it observes the case's event)
    # e6 @10': a=3 (e1 e3 e5), c=1 (t4), b=1 (t2; older than c) -> a c b; minus {a} -> [c b]: rank 1
    # then e6 c, e7 a, e8 d (any rating counts) are observed
    # e9 @13': a=4, c=2, d=1 (t12), b=1 (t2) -> a c d b; minus {c} -> [a d b]: b rank 3
    # e10 @Feb 1: a=4, b=2 (t2 t13), c=2 (t4 t10; earlier than b's) -> [a b c]: b rank 2
    # e11 @Feb 2: a=4, b=2+1 (e10 is a day later: weight 2**(1/7) ~ 1.10), c=2, d=1 -> minus {a}
    #   -> [b c d]: e was never seen, miss
    pop = result.metrics("popularity")
    assert pop["hit_rate@1"] == pytest.approx(1 / 4)
    assert pop["hit_rate@3"] == pytest.approx(3 / 4)
    assert pop["ndcg@3"] == pytest.approx((1 + 1 / 2 + 1 / LOG2_3 + 0) / 4)
    assert pop["mrr@3"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 0) / 4)

    # --- item-kNN (cosine co-occurrence of positive events, popularity fill)
    # after e5: n_a=3 n_b=1 n_c=1; co(a,b)=2 (e2, e5), co(a,c)=1 (e4); u1 history [b a], u2 [a c]
    # e6 u1: a += co(b,a)/sqrt(1*3) = 1.155, b += 2/sqrt(3) = 1.155, c += 1/sqrt(3) = 0.577
    #   -> a b c; minus {a} -> [b c], nothing else has events to fill: c rank 2
    # then e6 (u1 c): co(b,c)=1, co(a,c)=2, n_c=2; e7 (u3 a): n_a=4; e8 (rating 2) is not positive
    # e9 u2 [a c]: b += 2/sqrt(4*1) + 1/sqrt(2*1) = 1.707, c += 2/sqrt(4*2) = 0.707, a += 0.707
    #   -> b, then a/c tied (ids); minus {c} -> [b a] + popular d: b rank 1
    # then e9 (u2 b): co(a,b)=3, co(c,b)=2, n_b=2
    # e10 u3 [a]: b += 3/sqrt(4*2) = 1.061, c += 2/sqrt(8) = 0.707 -> [b c] + popular a: b rank 1
    # e11 u1: e has no event at all -> miss
    knn = result.metrics("item-knn")
    assert knn["hit_rate@1"] == pytest.approx(2 / 4)
    assert knn["hit_rate@3"] == pytest.approx(3 / 4)
    assert knn["ndcg@3"] == pytest.approx((1 / LOG2_3 + 1 + 1 + 0) / 4)
    assert knn["mrr@3"] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)

    # --- coverage of the case lists (catalog of 5)
    # recstream top-1: c d b d -> 3 items; top-3: {b c d e} -> 4
    # popularity [c b] [a d b] [a b c] [b c d]: top-1 c a a b -> 3; top-3 {a b c d} -> 4
    # item-kNN   [b c] [b a d] [b c a] [b c d]: top-1 b -> 1; top-3 {a b c d} -> 4
    assert result.coverage(RECSTREAM) == {"1": {"items": 3, "coverage": 0.6}, "3": {"items": 4, "coverage": 0.8}}
    assert result.coverage("popularity") == {"1": {"items": 3, "coverage": 0.6}, "3": {"items": 4, "coverage": 0.8}}
    assert result.coverage("item-knn") == {"1": {"items": 1, "coverage": 0.2}, "3": {"items": 4, "coverage": 0.8}}

    # --- calendar months: e6 e9 in January, e10 e11 in February
    doc = result.to_dict()
    pop_slices = doc["methods"]["popularity"]["slices"]
    assert [s["month"] for s in pop_slices] == ["2024-01", "2024-02"]
    assert [s["start_ms"] for s in pop_slices] == [calendar_month_start(JAN31), calendar_month_start(FEB1)]
    assert [s["cases"] for s in pop_slices] == [2, 2]
    # January: ranks 1 and 3 -> hit@3 1.0, mrr@3 (1 + 1/3) / 2; February: rank 2 and a miss
    assert pop_slices[0]["hit_rate@3"] == pytest.approx(1.0)
    assert pop_slices[0]["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert pop_slices[1]["hit_rate@1"] == pytest.approx(0.0)
    assert pop_slices[1]["hit_rate@3"] == pytest.approx(0.5)
    assert pop_slices[1]["ndcg@3"] == pytest.approx((1 / LOG2_3) / 2)


def test_targets_and_positive_threshold_select_the_cases() -> None:
    # purchases only: e10 is the one case (b held at rank 1 by recstream); e4 e5 are warm
    only_purchases = hand_backtest(BacktestConfig(SPLIT, targets={"purchase"}, ks=(1, 3))).result()
    c = only_purchases.counts
    assert (c["targets"], c["skipped"], c["cold"], c["cases"]) == (1, 5, 0, 1)
    assert only_purchases.metrics()["hit_rate@1"] == 1.0
    # popularity held [a b c] for e10: rank 2
    assert only_purchases.metrics("popularity")["mrr@3"] == pytest.approx(0.5)

    # threshold 5: the 4-star review e11 is no longer a target -> cases e6 e9 e10
    strict = hand_backtest(BacktestConfig(SPLIT, positive_threshold=5.0, ks=(1, 3))).result()
    c = strict.counts
    assert (c["targets"], c["skipped"], c["cold"], c["cases"]) == (4, 2, 1, 3)
    # recstream ranks 1, 3, 1 -> mrr@3 = (1 + 1/3 + 1) / 3
    assert strict.metrics()["mrr@3"] == pytest.approx((1 + 1 / 3 + 1) / 3)

    # a split after everything: no test event at all
    none = hand_backtest(BacktestConfig(JAN31 + 3 * DAY, ks=(1, 3))).result()
    assert (none.counts["warm"], none.counts["test"], none.counts["cases"]) == (11, 0, 0)
    assert none.metrics()["hit_rate@3"] is None


def test_target_kind() -> None:
    cfg = BacktestConfig(0)
    assert target_kind(Click("u", "i", 1), cfg) == "click"
    assert target_kind(Purchase("u", "i", 1), cfg) == "purchase"
    assert target_kind(Review("u", "i", 4.0, "", 1), cfg) == "positive"
    assert target_kind(Review("u", "i", 3.5, "", 1), cfg) is None
    assert target_kind(Click("u", "i", 1), BacktestConfig(0, targets=frozenset({"positive"}))) is None
    with pytest.raises(TypeError):
        target_kind(Item("i", "t"), cfg)  # type: ignore[arg-type]


class Spy:
    """A recommender that records what it is asked and when."""

    name = "spy"

    def __init__(self) -> None:
        self.observed: list[str] = []
        self.asked: list[tuple[str, int, frozenset[str], int | None, int]] = []

    def observe(self, user_id, item_id, ts, kind, rating=None) -> None:
        self.observed.append(item_id)

    def recommend(self, user_id, k, exclude=(), now_ms=None) -> list[str]:
        self.asked.append((user_id, k, frozenset(exclude), now_ms, len(self.observed)))
        return ["b"]


def test_baselines_are_asked_before_they_observe_the_event() -> None:
    spy = Spy()
    bt = hand_backtest(BacktestConfig(SPLIT, ks=(1, 3)), baselines=[spy])
    assert spy.observed == [ev.item_id for ev in HAND_EVENTS]  # every event, in order
    # asked for the 4 cases, with k = max(ks), the exclusion set and the event time, having
    # observed exactly the events before the case
    assert spy.asked == [
        ("u1", 3, frozenset({"a"}), JAN31 + 10 * MINUTE, 5),  # e6
        ("u2", 3, frozenset({"c"}), JAN31 + 13 * MINUTE, 8),  # e9
        ("u3", 3, frozenset(), FEB1 + MINUTE, 9),  # e10
        ("u1", 3, frozenset({"a"}), JAN31 + 2 * DAY, 10),  # e11
    ]
    # ["b"] hits e9 and e10 at rank 1
    assert bt.result().metrics("spy")["hit_rate@1"] == pytest.approx(2 / 4)


def test_missing_recommendations_drop_the_case_for_every_method() -> None:
    bt = Backtest(BacktestConfig(SPLIT, ks=(1, 3)), CATALOG, [PopularityBaseline(catalog=set(CATALOG))])
    for ev in HAND_EVENTS:
        rec = None if ev.event_id == "e5" else HAND_LISTS.get(ev.event_id, ["a"])
        bt.observe(ev, rec, exclude_before=HAND_EXCLUDE.get(ev.event_id, set()))
    c = bt.result().counts
    # e6's held list (after e5) is unavailable: missing, not a case; e11's (after e6) is there
    assert (c["targets"], c["cold"], c["missing"], c["cases"]) == (5, 1, 1, 3)
    assert bt.result().metrics("popularity")["cases"] == 3


def test_recommendation_records_unreachable_targets_and_latency() -> None:
    def rec(ev, items, model="m"):
        return Recommendation(
            ev.user_id,
            [RecItem(i, 1.0, None) for i in items],
            Trigger("clicks", 0, 0, ev.event_id),
            ev.ts,
            ev.ts,
            model,
        )

    evs = [
        Click("u", "a", 10, "x1"),
        Click("u", "a", 20, "x2"),  # a repeat click on an excluded item
        Click("u", "zz", 30, "x3"),  # an item outside the catalog
    ]
    bt = Backtest(BacktestConfig(15, ks=(1,)), CATALOG, [])
    bt.observe(evs[0], rec(evs[0], ["b"], POPULARITY_MODEL), exclude_before=set(), latency_ms=4.0)
    bt.observe(evs[1], rec(evs[1], ["b"]), exclude_before={"a"}, latency_ms=2.0)
    bt.observe(evs[2], None, exclude_before={"a"})
    r = bt.result()
    c = r.counts
    assert (c["cases"], c["excluded_targets"], c["unknown_targets"], c["fallback_cases"]) == (2, 1, 1, 1)
    assert r.latency["count"] == 2 and r.latency["max"] == 4.0 and r.latency["p50"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="time order"):
        bt.observe(Click("u", "a", 5, "x0"), None, exclude_before=set())


def _record(ev, items, *, received=None, emitted=None, model="m") -> Recommendation:
    return Recommendation(
        ev.user_id,
        [RecItem(i, 1.0, None) for i in items],
        Trigger(f"{ev.kind}s", 0, 0, ev.event_id, received),
        ev.ts,
        ev.ts if emitted is None else emitted,
        model,
    )


def test_records_are_paired_in_the_order_the_worker_processed_them() -> None:
    # u bought "a" at minute 2, but the worker took that purchase before the click of
    # minute 1 (the topics are consumed independently): the click is scored on the list
    # held when it was processed, i.e. after the purchase, never on a list from the click
    click = Click("u", "a", JAN31 + 1 * MINUTE, "c1")
    purchase = Purchase("u", "a", JAN31 + 2 * MINUTE, "p1")
    later = Click("u", "b", JAN31 + 3 * MINUTE, "c2")
    other = Click("v", "b", JAN31, "v0")
    in_topic_order = [
        _record(other, ["a"], received=100, emitted=130),
        _record(purchase, ["b", "a"], received=200, emitted=210),  # processed first
        _record(click, ["c", "b"], received=205, emitted=215),
        _record(later, ["d"], received=300, emitted=340),
        _record(click, ["e"], received=400, emitted=401),  # a redelivery: the first record counts
    ]
    events = {ev.event_id: ev for ev in (click, purchase, later, other)}
    held = held_before(in_topic_order, events)
    assert held == {"v0": COLD, "p1": COLD, "c1": in_topic_order[1], "c2": in_topic_order[2]}

    config = BacktestConfig(JAN31 + 1, targets=frozenset({"click", "purchase"}), ks=(1, 2))
    result = evaluate_records([later, purchase, click, other], in_topic_order, CATALOG, config, baselines=[], keep_lists=True)
    c = result.counts
    # v0 is warm; p1 is cold (u's first processed event); c1 and c2 are cases
    assert (c["warm"], c["targets"], c["cold"], c["missing"], c["cases"]) == (1, 3, 1, 0, 2)
    m = result.metrics()
    # c1 ("a") on ["b", "a"]: rank 2; c2 ("b") on ["c", "b"]: rank 2
    assert m["hit_rate@1"] == 0.0 and m["hit_rate@2"] == 1.0 and m["mrr@2"] == 0.5
    # the lists kept are the ones emitted after each event, in time order
    assert result.lists_by_event_id() == {"v0": ("a",), "c1": ("c", "b"), "p1": ("b", "a"), "c2": ("d",)}
    # latency: emitted - received of each event's own (first) record
    assert result.latency["count"] == 4 and result.latency["max"] == 40.0 and result.latency["p50"] == 20.0

    # without the record of c1 itself, c1 is missing (when it was processed is unknown)
    partial = evaluate_records([later, purchase, click, other], [r for r in in_topic_order if r.trigger.event_id != "c1"], CATALOG, config, baselines=[])
    assert (partial.counts["missing"], partial.counts["cases"]) == (1, 1)


def test_one_interaction_is_tested_once_before_any_state_saw_it() -> None:
    # a MovieLens rating of 5: a click and a purchase of "b" at one time.  The worker took
    # the purchase first; the interaction is still scored on the list held before both
    first = Click("u", "a", JAN31, "c0")
    click = Click("u", "b", JAN31 + MINUTE, "c1")
    purchase = Purchase("u", "b", JAN31 + MINUTE, "p1")
    in_topic_order = [_record(first, ["b", "c"]), _record(purchase, ["c"]), _record(click, ["c", "d"])]
    events = [purchase, click, first]
    assert held_before(in_topic_order, {e.event_id: e for e in events}) == {
        "c0": COLD,
        "p1": in_topic_order[0],
        "c1": in_topic_order[0],
    }
    for targets, kind in (({"click", "purchase"}, "click"), ({"purchase"}, "purchase")):
        config = BacktestConfig(JAN31 + 1, targets=frozenset(targets), ks=(1,))
        assert interaction_kinds([first, click, purchase], config) == [None if "click" not in targets else "click", kind, None]
        result = evaluate_records(events, in_topic_order, CATALOG, config)
        c = result.counts
        # one case (on ["b", "c"]: a hit at 1) for every method, the purchase a companion
        assert (c["targets"], c["cases"], c["companions"], c["skipped"]) == (1, 1, 1, 1)
        assert result.metrics()["hit_rate@1"] == 1.0
        # the baselines were asked before the interaction: "b" not excluded, and item-kNN
        # has not seen the purchase
        assert result.metrics("popularity")["cases"] == 1
    # without the click, the purchase alone is the interaction
    config = BacktestConfig(JAN31 + 1, targets=frozenset({"purchase"}), ks=(1,))
    alone = evaluate_records([first, purchase], in_topic_order[:2], CATALOG, config)
    assert (alone.counts["cases"], alone.counts["companions"]) == (1, 0)


def test_result_is_a_json_snapshot_and_the_table_reads() -> None:
    bt = hand_backtest(BacktestConfig(SPLIT, ks=(5, 10, 20)))
    result = bt.result()
    doc = json.loads(json.dumps(result.to_dict()))
    assert set(doc["methods"]) == {RECSTREAM, "popularity", "item-knn"}
    assert set(doc["methods"][RECSTREAM]) == {"metrics", "coverage", "slices"}
    assert set(doc["methods"][RECSTREAM]["coverage"]) == {"5", "10", "20"}
    assert doc["counts"]["cases"] == 4
    # observing more does not change an earlier result
    bt.observe(Click("u1", "b", JAN31 + 3 * DAY, "e12"), ["b"], exclude_before={"a"})
    assert result.counts["cases"] == 4 and result.metrics()["cases"] == 4
    assert bt.result().counts["cases"] == 5

    table = format_table(result)
    lines = table.splitlines()
    assert "4 cases of 5 targets (1 cold, 0 missing)" in lines[0]
    header = lines[1].split()
    for col in ("method", "cases", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "cov@10", "cov@20"):
        assert col in header
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert set(rows) == {RECSTREAM, "popularity", "item-knn"}
    assert rows[RECSTREAM][header.index("HR@10")] == f"{result.metrics()['hit_rate@10']:.4f}"
    assert "NDCG@5" not in format_table(result, ks=(10, 20)).splitlines()[1].split()


# --------------------------------------------------------------------------- ratios


def test_every_method_has_its_ratio_to_every_other_with_an_interval() -> None:
    bt = hand_backtest(BacktestConfig(SPLIT, ks=(1, 3)))
    result = bt.result()
    doc = orjson.loads(orjson.dumps(result.to_dict()))  # as the --json file holds it
    assert {"config", "catalog_size", "counts", "latency_ms", "methods", "ratios", "ratios_bootstrap"} == set(doc)
    assert doc["ratios_bootstrap"] == {"resamples": 1000, "seed": 0, "cases": 4, "confidence": 0.95}
    ratios = doc["ratios"]
    assert list(ratios) == ["ndcg@1", "ndcg@3", "hit_rate@1", "hit_rate@3"]
    names = [RECSTREAM, "popularity", "item-knn"]
    for key, block in ratios.items():
        assert list(block) == names, key
        for a in names:
            assert list(block[a]) == [b for b in names if b != a], (key, a)  # never itself
            for b, entry in block[a].items():
                mean_a, mean_b = doc["methods"][a]["metrics"][key], doc["methods"][b]["metrics"][key]
                assert entry["ratio"] == pytest.approx(mean_a / mean_b, rel=1e-6), (key, a, b)
                lo, hi = entry["ci95"]
                # 4 cases: where the other hits once, a resample may miss it (no upper bound)
                assert lo <= entry["ratio"] <= (math.inf if hi is None else hi), (key, a, b)
    assert ratios["hit_rate@1"][RECSTREAM]["popularity"]["ci95"][1] is None  # popularity hits 1 of 4 at 1
    # by hand (see test_hand_stream_counts_and_every_method_by_hand): HR@3 recstream 4/4,
    # popularity 3/4, item-kNN 3/4
    assert ratios["hit_rate@3"][RECSTREAM]["popularity"]["ratio"] == pytest.approx(4 / 3)
    assert ratios["hit_rate@3"]["popularity"]["item-knn"]["ratio"] == pytest.approx(1.0)
    # the same backtest gives the same intervals; observing more does not change a result
    assert hand_backtest(BacktestConfig(SPLIT, ks=(1, 3))).result().to_dict()["ratios"] == result.to_dict()["ratios"]
    bt.observe(Click("u1", "b", JAN31 + 3 * DAY, "e12"), ["b"], exclude_before={"a"})
    assert result.to_dict()["ratios"] == ratios
    assert bt.result().to_dict()["ratios_bootstrap"]["cases"] == 5
    # one metric at one cut-off, as the table asks for it
    assert result.ratios(ks=(3,), metrics=("ndcg",)) == {"ndcg@3": ratios["ndcg@3"]}
    with pytest.raises(ValueError, match="cut-offs"):
        result.ratios(ks=(5,))
    with pytest.raises(ValueError, match="metrics"):
        result.ratios(metrics=("mrr",))


def test_ratios_without_cases_or_baselines() -> None:
    # every target before the split: no case, every ratio undefined
    result = hand_backtest(BacktestConfig(JAN31 + 10 * DAY, ks=(10,))).result()
    assert result.counts["cases"] == 0
    doc = result.to_dict()
    assert doc["ratios"]["ndcg@10"][RECSTREAM] == {
        "popularity": {"ratio": None, "ci95": None},
        "item-knn": {"ratio": None, "ci95": None},
    }
    assert doc["ratios_bootstrap"]["cases"] == 0
    assert "ratio" not in format_table(result)
    # recstream alone: nothing to compare
    alone = hand_backtest(BacktestConfig(SPLIT, ks=(10,)), baselines=[]).result()
    assert alone.to_dict()["ratios"] == {"ndcg@10": {}, "hit_rate@10": {}}
    assert "ratio" not in format_table(alone)
    # a result built without per-case values has no ratios (and no line under the table)
    bare = replace(result, methods={n: replace(m, cases=None) for n, m in result.methods.items()})
    assert bare.to_dict()["ratios"] == {"ndcg@10": {}, "hit_rate@10": {}}


def test_the_table_prints_each_methods_ndcg_ratios_to_the_baselines() -> None:
    result = hand_backtest(BacktestConfig(SPLIT, ks=(5, 10, 20))).result()
    lines = format_table(result).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("NDCG@10 ratio"))
    assert at == 6  # right under the table: summary, header, rule, three methods
    assert "95% paired bootstrap interval over the 4 cases, 1000 resamples" in lines[at]
    ratios = result.ratios()["ndcg@10"]

    def cell(a: str, b: str) -> str:
        r = ratios[a][b]
        return f"vs {b} {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"

    rows = {line.split()[0]: line for line in lines[at + 1 : at + 4]}
    assert set(rows) == {RECSTREAM, "popularity", "item-knn"}
    assert cell(RECSTREAM, "item-knn") in rows[RECSTREAM] and cell(RECSTREAM, "popularity") in rows[RECSTREAM]
    assert rows["popularity"].split()[1:] == cell("popularity", "item-knn").split()  # not against itself
    assert rows["item-knn"].split()[1:] == cell("item-knn", "popularity").split()
    # without k = 10 in the table, the first k shown
    assert any(line.startswith("NDCG@20 ratio") for line in format_table(result, ks=(20,)).splitlines())


class _Lists:
    """An offline method of :func:`scoring.sidebyside.side_by_side` that emits given lists."""

    def __init__(self, name: str, lists: dict[str, list[str]] | None) -> None:
        self.name, self._lists = name, lists

    def lists(self, events, catalog, config, progress=None):  # noqa: ANN001, ANN201
        if self._lists is None:  # never recommends anything
            return [() for _ in events]
        return [tuple(self._lists.get(ev.event_id, ["a", "b", "c"])) for ev in events]


def test_side_by_side_methods_get_ratios_under_their_own_names() -> None:
    from recstream.scoring.sidebyside import side_by_side

    catalog = [Item(i, i.upper()) for i in CATALOG]
    methods = [_Lists("first", HAND_LISTS), _Lists("twin", HAND_LISTS), _Lists("mute", None)]
    result, _ = side_by_side(HAND_EVENTS, catalog, BacktestConfig(SPLIT, ks=(3, 10)), methods)
    assert list(result.methods) == ["first", "twin", "mute", "popularity", "item-knn"]
    doc = orjson.loads(orjson.dumps(result.to_dict()))
    ndcg = doc["ratios"]["ndcg@10"]
    assert list(ndcg) == list(result.methods)
    # the same lists on the same cases: exactly 1, whatever the resamples
    assert ndcg["first"]["twin"] == ndcg["twin"]["first"] == {"ratio": 1.0, "ci95": [1.0, 1.0]}
    # a method that never hits: 0 over the others, undefined under them
    assert ndcg["mute"]["first"] == {"ratio": 0.0, "ci95": [0.0, 0.0]}
    assert ndcg["first"]["mute"] == {"ratio": None, "ci95": None}
    lines = format_table(result).splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert list(rows) == ["first", "twin", "mute", "popularity", "item-knn"]
    assert rows["first"].split()[1:] == rows["twin"].split()[1:]
    assert rows["mute"].split()[1:] == "vs item-knn 0.000 [0.000, 0.000] vs popularity 0.000 [0.000, 0.000]".split()


def test_config_validation() -> None:
    assert BacktestConfig(0, ks=(20, 5, 10)).ks == (5, 10, 20)
    assert BacktestConfig(0, targets={"click"}).targets == frozenset({"click"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets"):
        BacktestConfig(0, targets=frozenset({"review"}))
    with pytest.raises(ValueError, match="targets"):
        BacktestConfig(0, targets=frozenset())
    with pytest.raises(ValueError, match="ks"):
        BacktestConfig(0, ks=(0, 5))
    with pytest.raises(ValueError, match="split_ms"):
        BacktestConfig(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        Backtest(BacktestConfig(0), CATALOG, [PopularityBaseline(), PopularityBaseline()])


def test_popularity_model_name_matches_the_engine() -> None:
    from recstream.scoring.engine import POPULARITY_MODEL as ENGINE_POPULARITY_MODEL

    assert POPULARITY_MODEL == ENGINE_POPULARITY_MODEL


# =========================================================================== part 2: real engine

TOPIC_ITEMS: dict[str, list[tuple[str, list[str], str]]] = {
    "space": [
        ("Backyard Telescope Guide to the Night Sky", ["Astronomy", "Telescopes"], "Find planets and nebulae."),
        ("Atlas of Galaxies and Star Clusters", ["Astronomy", "Space"], "Deep-sky objects mapped."),
        ("The Moon: A Lunar Observer's Handbook", ["Astronomy", "Moon"], "Craters, maria and phases."),
        ("Astrophotography of Comets and Planets", ["Astronomy", "Photography"], "Imaging the solar system."),
        ("Black Holes and Neutron Stars Explained", ["Astronomy", "Astrophysics"], "Gravity at its extreme."),
        ("Rockets and Space Probes to Jupiter", ["Space Exploration"], "Missions to the outer planets."),
    ],
    "bread": [
        ("Sourdough Starter and Rustic Loaves", ["Baking", "Bread"], "Wild yeast bread at home."),
        ("Baguettes and French Bread Baking", ["Baking", "Bread"], "Crusty loaves and shaping."),
        ("Whole Wheat and Rye Bread Recipes", ["Baking", "Bread"], "Dense, flavourful grain breads."),
        ("Bread Machine Baking for Beginners", ["Baking", "Bread"], "Easy loaves from a machine."),
        ("Focaccia, Ciabatta and Italian Breads", ["Baking", "Bread"], "Olive oil doughs."),
        ("Cinnamon Rolls and Sweet Yeast Doughs", ["Baking", "Pastry"], "Enriched dough and glazes."),
    ],
    "chess": [
        ("Chess Openings: The Sicilian Defence", ["Chess", "Openings"], "Sharp lines for black."),
        ("Endgame Strategy for Chess Players", ["Chess", "Endgames"], "King and pawn endings."),
        ("Tactics Puzzles: Checkmate in Two Moves", ["Chess", "Puzzles"], "Forks, pins and mates."),
        ("Wooden Chess Board and Weighted Pieces", ["Chess", "Games"], "A tournament chess set."),
        ("Grandmaster Chess Games Annotated", ["Chess", "History"], "Classic games explained."),
        ("Chess Clock for Blitz Tournaments", ["Chess", "Accessories"], "Digital timer for rapid chess."),
    ],
    "knit": [
        ("Knitting Wool Sweaters for Beginners", ["Knitting", "Crafts"], "Cast on and purl."),
        ("Merino Yarn Bundle for Knitting", ["Knitting", "Yarn"], "Soft wool skeins."),
        ("Bamboo Knitting Needles Set", ["Knitting", "Needles"], "Circular and straight needles."),
        ("Crochet and Knit Scarves and Hats", ["Knitting", "Crochet"], "Cosy winter accessories."),
        ("Fair Isle Colourwork Knitting Patterns", ["Knitting", "Patterns"], "Stranded wool motifs."),
        ("Knitted Socks: Heels, Toes and Cables", ["Knitting", "Socks"], "Sock knitting techniques."),
    ],
}
TOPICS = list(TOPIC_ITEMS)
REAL_CATALOG = [Item(f"{topic}-{j}", title, desc, tuple(cats)) for topic, items in TOPIC_ITEMS.items() for j, (title, cats, desc) in enumerate(items)]
T0 = 1_700_000_000_000
REAL_SPLIT_FRACTION = 0.4


def topic_stream(seed: int = 3, users: int = 24) -> tuple[list[Click | Purchase | Review], int]:
    """Each user sticks to one topic: five distinct items of it, clicked, bought or reviewed
    (positively, with a text), users interleaved at random; one event per minute."""
    rng = random.Random(seed)
    plans: list[list[tuple[str, str]]] = []
    for u in range(users):
        topic = TOPICS[u % len(TOPICS)]
        items = rng.sample([f"{topic}-{j}" for j in range(len(TOPIC_ITEMS[topic]))], 5)
        plans.append([(f"u{u}", item) for item in items])
    order = [u for u, plan in enumerate(plans) for _ in plan]
    rng.shuffle(order)
    pos = [0] * users
    events: list[Click | Purchase | Review] = []
    for n, u in enumerate(order):
        user, item = plans[u][pos[u]]
        pos[u] += 1
        ts, eid = T0 + n * MINUTE, f"ev{n}"
        r = rng.random()
        if r < 0.6:
            events.append(Click(user, item, ts, eid))
        elif r < 0.85:
            events.append(Purchase(user, item, ts, eid))
        else:
            title = REAL_CATALOG[[i.item_id for i in REAL_CATALOG].index(item)].title
            events.append(Review(user, item, rng.choice([4.0, 5.0]), f"Loved it: {title}", ts, eid))
    return events, T0 + int(len(events) * REAL_SPLIT_FRACTION) * MINUTE


@pytest.fixture(scope="module")
def one_torch_thread():
    """The engine steps here are tiny (24 items): one thread is faster and does not suffer
    from a busy machine.  Restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder(one_torch_thread):
    from recstream.encoders.text import TextEncoder

    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def stream() -> tuple[list[Click | Purchase | Review], int]:
    return topic_stream()


@pytest.fixture(scope="module")
def offline(encoder, stream):
    events, split = stream
    return run_offline(events, REAL_CATALOG, BacktestConfig(split), encoder=encoder, keep_lists=True)


def comparable(doc: dict) -> dict:
    """A result document without the measured latencies."""
    return {k: v for k, v in doc.items() if k != "latency_ms"}


def test_recstream_beats_popularity_when_users_stick_to_a_topic(offline, stream) -> None:
    events, _ = stream
    c = offline.counts
    assert c["events"] == len(events) == c["warm"] + c["test"]
    assert c["cases"] >= 40 and c["cases"] == c["targets"] - c["cold"] - c["missing"]
    assert c["missing"] == 0 and c["excluded_targets"] == 0 and c["unknown_targets"] == 0
    rs, pop = offline.metrics(RECSTREAM), offline.metrics("popularity")
    for metric in ("hit_rate@5", "ndcg@5", "ndcg@10", "mrr@20"):
        assert rs[metric] > pop[metric], metric
    # the lists held are the engine's: k = max(ks) = 20 minus the exclusions (24 items)
    assert all(len(items) <= 20 for _, items in offline.per_event)
    assert offline.latency["count"] == len(events)
    print("\n" + format_table(offline))


def test_offline_is_deterministic_and_batching_changes_nothing(encoder, stream, offline) -> None:
    events, split = stream
    cfg = BacktestConfig(split)
    again = run_offline(events, REAL_CATALOG, cfg, encoder=encoder, keep_lists=True)
    assert comparable(again.to_dict()) == comparable(offline.to_dict())
    assert again.lists_by_event_id() == offline.lists_by_event_id()

    # batches of 1 and 7 instead of one of 512; the second run also gets the events out of
    # order: they are put in time order first (the stream has no ties)
    shuffled = list(events)
    random.Random(1).shuffle(shuffled)
    done: list[int] = []
    for size, given in ((1, events), (7, shuffled)):
        other = run_offline(given, REAL_CATALOG, cfg, encoder=encoder, batch_size=size, keep_lists=True, progress=done.append)
        assert other.lists_by_event_id() == offline.lists_by_event_id(), size
        assert comparable(other.to_dict()) == comparable(offline.to_dict()), size
    assert sum(done) == 2 * len(events) and max(done) == 7


def engine_records(encoder, events, *, batch: int) -> list[Recommendation]:
    """The records a one-partition worker emits for ``events`` taken in the given order."""
    import numpy as np

    from recstream.encoders.profile import DecayedProfileModel
    from recstream.encoders.text import item_text
    from recstream.scoring.engine import Engine, EngineConfig, Incoming
    from recstream.scoring.popularity import DecayedPopularity
    from recstream.scoring.topk import ItemMatrix

    cfg = EngineConfig(k=20, emit="per-event")
    matrix = ItemMatrix(encoder.dim, "cpu")
    texts = [item_text(i.title, i.categories, i.description) for i in REAL_CATALOG]
    matrix.upsert([i.item_id for i in REAL_CATALOG], np.asarray(encoder.encode_numpy(texts)))
    engine = Engine(
        model=DecayedProfileModel(dim=encoder.dim),
        matrix=matrix,
        popularity=DecayedPopularity(cfg.popularity_half_life_ms),
        texts=encoder,
        config=cfg,
    )
    offsets: dict[str, int] = {}
    incoming = []
    for ev in events:
        topic = f"t.{ev.kind}s"
        incoming.append(Incoming(ev, topic, 0, offsets.setdefault(topic, 0)))
        offsets[topic] += 1
    records = []
    profiles: dict = {}
    for start in range(0, len(incoming), batch):
        chunk = incoming[start : start + batch]
        res = engine.process(chunk, profiles, now_ms=max(inc.event.ts for inc in chunk))
        profiles.update(res.profiles)
        records.extend(res.recommendations)
    return records


def test_records_read_back_give_the_offline_result(encoder, stream, offline) -> None:
    """What the Kafka path does: per-event Recommendation records from an engine (here run
    directly, as a one-partition worker would), matched to events by trigger.event_id."""
    events, split = stream
    records = engine_records(encoder, events, batch=50)
    # a redelivered record comes later: the first one per event wins
    records.append(replace(records[0], items=[]))
    assert recommendations_by_event_id(records)[events[0].event_id] is records[0]

    from_records = evaluate_records(events, records, [i.item_id for i in REAL_CATALOG], BacktestConfig(split), keep_lists=True)
    assert from_records.lists_by_event_id() == offline.lists_by_event_id()
    assert comparable(from_records.to_dict())["methods"] == comparable(offline.to_dict())["methods"]
    assert from_records.counts == offline.counts

    # a target without a record of its own is missing (when it was processed is unknown),
    # for all methods
    dropped = {r.trigger.event_id for r in records[::5]}
    partial = evaluate_records(
        events,
        [r for r in records if r.trigger.event_id not in dropped],
        [i.item_id for i in REAL_CATALOG],
        BacktestConfig(split),
    )
    cfg = BacktestConfig(split)
    dropped_targets = [e for e in events if e.event_id in dropped and e.ts >= split and target_kind(e, cfg)]
    assert partial.counts["missing"] == len(dropped_targets) > 0
    c = partial.counts
    assert c["cases"] == c["targets"] - c["cold"] - c["missing"] < offline.counts["cases"]
    assert {m.metrics.cases for m in partial.methods.values()} == {partial.counts["cases"]}


def test_offline_in_a_given_processing_order_equals_a_worker_that_took_it(encoder, stream) -> None:
    """A worker that took some users' events out of time order: run_offline(order=...)
    reproduces its records' result exactly."""
    events, split = stream
    rng = random.Random(8)
    order = list(events)
    for _ in range(60):  # swap neighbours of one user (as two topics fetched unevenly would)
        i = rng.randrange(len(order) - 1)
        j = next((j for j in range(i + 1, min(i + 6, len(order))) if order[j].user_id == order[i].user_id), None)
        if j is not None:
            order[i], order[j] = order[j], order[i]
    assert [e.event_id for e in order] != [e.event_id for e in events]
    records = engine_records(encoder, order, batch=16)
    catalog_ids = [i.item_id for i in REAL_CATALOG]
    from_records = evaluate_records(events, records, catalog_ids, BacktestConfig(split), keep_lists=True)
    offline = run_offline(events, REAL_CATALOG, BacktestConfig(split), encoder=encoder, keep_lists=True, order=[e.event_id for e in order], batch_size=16)
    assert from_records.lists_by_event_id() == offline.lists_by_event_id()
    assert comparable(from_records.to_dict())["methods"] == comparable(offline.to_dict())["methods"]
    assert from_records.counts == offline.counts
    in_time = run_offline(events, REAL_CATALOG, BacktestConfig(split), encoder=encoder, keep_lists=True)
    assert in_time.lists_by_event_id() != offline.lists_by_event_id()

    with pytest.raises(ValueError, match="every event exactly once"):
        run_offline(events, REAL_CATALOG, BacktestConfig(split), encoder=encoder, order=[e.event_id for e in order][1:])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_exclusion_tracker_equals_the_engines_exclusions(encoder, exclude_seen: bool) -> None:
    import numpy as np

    from recstream.encoders.profile import DecayedProfileModel, ProfileConfig
    from recstream.scoring.engine import Engine, EngineConfig, Incoming
    from recstream.scoring.popularity import DecayedPopularity
    from recstream.scoring.topk import ItemMatrix

    rng = np.random.default_rng(11)
    matrix = ItemMatrix(encoder.dim, "cpu")
    matrix.upsert([i.item_id for i in REAL_CATALOG], rng.standard_normal((len(REAL_CATALOG), encoder.dim)))
    cfg = EngineConfig(k=5, emit="per-event", exclude_seen=exclude_seen)
    engine = Engine(
        model=DecayedProfileModel(ProfileConfig(history_len=3), dim=encoder.dim),
        matrix=matrix,
        popularity=DecayedPopularity(cfg.popularity_half_life_ms),
        texts=encoder,
        config=cfg,
    )
    tracker = ExclusionTracker.for_engine(engine)
    assert (tracker.exclude_seen, tracker.history_len) == (exclude_seen, 3)

    r = random.Random(5)
    items = [i.item_id for i in REAL_CATALOG][:8] + ["not-in-catalog"]
    profiles: dict = {}
    ts = T0
    for n in range(300):
        # mostly rising times with ties, some late events (inserted into the history)
        ts += r.choice([0, 0, MINUTE, 2 * MINUTE])
        ev_ts = ts - r.choice([0, 0, 0, 5 * MINUTE, 30 * MINUTE])
        user, item = f"u{r.randrange(4)}", r.choice(items)
        kind = r.random()
        ev = (
            Click(user, item, ev_ts, f"r{n}")
            if kind < 0.6
            else Purchase(user, item, ev_ts, f"r{n}")
            if kind < 0.75
            else Review(user, item, r.choice([1.0, 3.0, 5.0]), "", ev_ts, f"r{n}")
        )
        res = engine.process([Incoming(ev, "t", 0, n)], profiles, now_ms=0)
        profiles.update(res.profiles)
        tracker.observe(ev)
        assert tracker.exclusion(user) == engine.exclusions(profiles[user]), n
        assert not {i.item_id for i in res.recommendations[0].items} & tracker.exclusion(user)
    assert any(len(p.purchased) > 0 for p in profiles.values())
    for user, profile in profiles.items():
        assert tracker.exclusion(user) == engine.exclusions(profile)
    assert tracker.exclusion("nobody") == frozenset()
