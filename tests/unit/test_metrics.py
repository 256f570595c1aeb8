"""Ranking metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math
import random

import pytest

from recstream.scoring.metrics import (
    METRIC_NAMES,
    Coverage,
    RankingMetrics,
    SlicedMetrics,
    calendar_month_start,
    hit_rate_at_k,
    latency_summary,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

FUNCS = {
    "hit_rate": hit_rate_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
}


def all_metrics(ranked: list[str], relevant: set[str] | str, k: int) -> dict[str, float]:
    return {name: f(ranked, relevant, k) for name, f in FUNCS.items()}


# --------------------------------------------------------------------------- one case


def test_single_target_at_rank_3() -> None:
    ranked = ["a", "b", "c", "d", "e", "f"]
    got = all_metrics(ranked, {"c"}, 5)
    assert got["hit_rate"] == 1.0  # c is within the top 5
    assert got["recall"] == 1.0  # 1 of the 1 relevant items
    assert got["precision"] == pytest.approx(0.2)  # 1 hit / k = 1 / 5
    # DCG = 1/log2(3 + 1) = 1/2; IDCG over min(5, 1) = 1 position = 1/log2(2) = 1
    assert got["ndcg"] == pytest.approx(0.5)
    assert got["mrr"] == pytest.approx(1 / 3)  # first hit at rank 3


def test_single_target_outside_the_cut_off() -> None:
    # c is at rank 3 > k = 2: every metric is 0
    assert all_metrics(["a", "b", "c"], {"c"}, 2) == dict.fromkeys(FUNCS, 0.0)


def test_target_at_rank_1_is_perfect() -> None:
    assert all_metrics(["x", "y"], {"x"}, 1) == dict.fromkeys(FUNCS, 1.0)
    # at k = 10 only precision drops: 1 hit / 10
    got = all_metrics(["x", "y"], {"x"}, 10)
    assert got == {"hit_rate": 1.0, "recall": 1.0, "precision": 0.1, "ndcg": 1.0, "mrr": 1.0}


def test_several_relevant_items() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    relevant = {"b", "e", "z"}  # z is never recommended
    got = all_metrics(ranked, relevant, 5)
    assert got["hit_rate"] == 1.0
    assert got["recall"] == pytest.approx(2 / 3)  # b and e of {b, e, z}
    assert got["precision"] == pytest.approx(2 / 5)  # 2 hits / k = 5
    # DCG  = 1/log2(2+1) + 1/log2(5+1) = 0.6309297536 + 0.3868528072 = 1.0177825608
    # IDCG = over min(5, 3) = 3 positions = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.6309297536 + 0.5 = 2.1309297536
    # NDCG = 1.0177825608 / 2.1309297536 = 0.4776237035
    assert got["ndcg"] == pytest.approx(0.4776237035, abs=1e-9)
    assert got["mrr"] == pytest.approx(0.5)  # first hit b at rank 2

    got3 = all_metrics(ranked, relevant, 3)  # top 3 = a, b, c: only b
    assert got3["recall"] == pytest.approx(1 / 3)
    assert got3["precision"] == pytest.approx(1 / 3)
    # DCG = 1/log2(3) = 0.6309297536; IDCG over min(3, 3) = 2.1309297536 -> 0.2960819110
    assert got3["ndcg"] == pytest.approx(0.2960819110, abs=1e-9)
    assert got3["mrr"] == pytest.approx(0.5)


def test_ideal_dcg_is_capped_by_k() -> None:
    # 3 relevant items, k = 2, both top positions relevant: DCG = IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "b", "c"], {"a", "b", "c"}, 2) == pytest.approx(1.0)
    # all relevant but not first: [x, a], relevant {a, b}, k = 2:
    # DCG = 1/log2(3) = 0.6309297536; IDCG = 1 + 0.6309297536 = 1.6309297536 -> 0.3868528072
    assert ndcg_at_k(["x", "a"], {"a", "b"}, 2) == pytest.approx(0.3868528072, abs=1e-9)


def test_empty_list_scores_zero() -> None:
    assert all_metrics([], {"a"}, 5) == dict.fromkeys(FUNCS, 0.0)


def test_target_absent_scores_zero() -> None:
    assert all_metrics(["a", "b", "c"], {"q"}, 10) == dict.fromkeys(FUNCS, 0.0)


def test_k_larger_than_list() -> None:
    got = all_metrics(["a", "b"], {"b"}, 10)
    assert got["hit_rate"] == 1.0
    assert got["recall"] == 1.0
    assert got["precision"] == pytest.approx(0.1)  # divides by k = 10, not by the 2 items given
    assert got["ndcg"] == pytest.approx(1 / math.log2(3))  # 0.6309297536
    assert got["mrr"] == pytest.approx(0.5)


def test_duplicates_are_not_double_counted() -> None:
    # a relevant item listed three times is one hit at rank 1
    got = all_metrics(["c", "c", "c"], {"c"}, 3)
    assert got == {"hit_rate": 1.0, "recall": 1.0, "precision": pytest.approx(1 / 3), "ndcg": 1.0, "mrr": 1.0}
    # duplicates take one rank: [a, a, b, b, c] is [a, b, c], so c is at rank 3 within k = 3
    got = all_metrics(["a", "a", "b", "b", "c"], {"c"}, 3)
    assert got["hit_rate"] == 1.0
    assert got["ndcg"] == pytest.approx(0.5)  # 1/log2(4)
    assert got["mrr"] == pytest.approx(1 / 3)
    # two relevant items, one duplicated: recall counts distinct hits only
    assert recall_at_k(["a", "a", "b"], {"a", "b"}, 5) == 1.0
    assert precision_at_k(["a", "a", "b"], {"a", "b"}, 5) == pytest.approx(2 / 5)


def test_a_bare_string_is_one_item_id() -> None:
    assert all_metrics(["ab", "c"], "c", 2) == all_metrics(["ab", "c"], {"c"}, 2)
    assert hit_rate_at_k(["a", "b"], "ab", 2) == 0.0  # not the characters "a" and "b"


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_invalid_arguments(name: str) -> None:
    f = FUNCS[name]
    with pytest.raises(ValueError):
        f(["a"], set(), 5)
    with pytest.raises(ValueError):
        f(["a"], {"a"}, 0)
    with pytest.raises(ValueError):
        f(["a"], {"a"}, -1)


# --------------------------------------------------------------------------- accumulator


def test_ranking_metrics_averages() -> None:
    m = RankingMetrics(ks=(3, 1))
    assert m.ks == (1, 3)
    m.add(["a", "b", "c"], {"a"})  # hit at rank 1
    m.add(["a", "b", "c"], ["c"])  # hit at rank 3
    m.add([], {"x"})  # nothing recommended
    s = m.summary()
    assert list(s) == [1, 3]
    # k = 1: only case 1 scores, with 1 on every metric -> means 1/3
    for name in METRIC_NAMES:
        assert s[1][name] == pytest.approx(1 / 3)
    # k = 3: hit (1 + 1 + 0)/3; recall the same; precision (1/3 + 1/3 + 0)/3 = 2/9;
    # ndcg (1 + 1/log2(4) + 0)/3 = 1.5/3 = 0.5; mrr (1 + 1/3 + 0)/3 = 4/9
    assert s[3]["hit_rate"] == pytest.approx(2 / 3)
    assert s[3]["recall"] == pytest.approx(2 / 3)
    assert s[3]["precision"] == pytest.approx(2 / 9)
    assert s[3]["ndcg"] == pytest.approx(0.5)
    assert s[3]["mrr"] == pytest.approx(4 / 9)
    assert s[1]["cases"] == s[3]["cases"] == 3 == m.cases == len(m)

    flat = m.flat()
    assert flat["cases"] == 3
    assert flat["mrr@3"] == pytest.approx(4 / 9)
    assert set(flat) == {"cases"} | {f"{n}@{k}" for n in METRIC_NAMES for k in (1, 3)}


def test_ranking_metrics_empty_summary() -> None:
    s = RankingMetrics().summary()
    assert list(s) == [5, 10, 20]
    for row in s.values():
        assert row["cases"] == 0
        assert all(row[name] is None for name in METRIC_NAMES)


def test_ranking_metrics_equal_mean_of_per_case_functions() -> None:
    rng = random.Random(7)
    items = [f"i{n}" for n in range(30)]
    ks = (1, 5, 10, 20)
    m = RankingMetrics(ks)
    cases = []
    for _ in range(300):
        ranked = [rng.choice(items) for _ in range(rng.randint(0, 25))]  # duplicates included
        relevant = set(rng.sample(items, rng.randint(1, 3)))
        cases.append((ranked, relevant))
        m.add(ranked, relevant)
    s = m.summary()
    for k in ks:
        for name, f in FUNCS.items():
            expected = sum(f(r, rel, k) for r, rel in cases) / len(cases)
            assert s[k][name] == pytest.approx(expected, abs=1e-12), (k, name)


def test_ranking_metrics_merge() -> None:
    cases = [(["a", "b"], {"b"}), (["c"], {"a"}), (["a", "c", "b"], {"a", "b"}), ([], {"z"})]
    whole, left, right = RankingMetrics((1, 2)), RankingMetrics((1, 2)), RankingMetrics((2, 1))
    for i, (ranked, rel) in enumerate(cases):
        whole.add(ranked, rel)
        (left if i < 2 else right).add(ranked, rel)
    assert left.merge(right) is left
    assert left.cases == 4
    for k in (1, 2):
        for name in METRIC_NAMES:
            assert left.summary()[k][name] == pytest.approx(whole.summary()[k][name])
    with pytest.raises(ValueError):
        left.merge(RankingMetrics((1, 3)))


def test_ranking_metrics_validation() -> None:
    with pytest.raises(ValueError):
        RankingMetrics(())
    with pytest.raises(ValueError):
        RankingMetrics((0, 5))
    m = RankingMetrics()
    with pytest.raises(ValueError):
        m.add(["a"], [])
    assert m.cases == 0  # a rejected case is not counted


# --------------------------------------------------------------------------- coverage


def test_coverage() -> None:
    cov = Coverage()
    cov.add(["a", "b", "c"])
    cov.add(["a", "d"])
    cov.add(["e", "a", "a", "f"])  # de-duplicated: e, a, f -> f at rank 3
    cov.add([])
    assert cov.cases == 4
    # best ranks: a 1, e 1, b 2, d 2, c 3, f 3
    assert cov.items(1) == {"a", "e"}
    assert cov.coverage(1, 10) == pytest.approx(2 / 10)
    assert cov.items(2) == {"a", "b", "d", "e"}
    assert cov.coverage(2, 10) == pytest.approx(4 / 10)
    assert cov.distinct(3) == 6
    assert cov.coverage(3, 10) == pytest.approx(6 / 10)
    assert cov.coverage(50, 6) == 1.0
    with pytest.raises(ValueError):
        cov.coverage(3, 0)


def test_coverage_max_k_and_merge() -> None:
    cov = Coverage(max_k=2)
    cov.add(["a", "b", "c"])  # c at rank 3 is not recorded
    assert cov.items(2) == {"a", "b"}
    with pytest.raises(ValueError):
        cov.distinct(3)
    other = Coverage(max_k=2)
    other.add(["c", "b"])  # c at rank 1, b improves nothing
    assert cov.merge(other) is cov
    assert cov.items(1) == {"a", "c"}
    assert cov.items(2) == {"a", "b", "c"}
    assert cov.cases == 2
    with pytest.raises(ValueError):
        cov.merge(Coverage())


# --------------------------------------------------------------------------- latency


def test_latency_summary_linear_interpolation() -> None:
    values = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5]  # sorted: 1 .. 10, n = 10
    s = latency_summary(values)
    # p50 at index 0.50 * 9 = 4.5  -> x[4] + 0.5  * (x[5] - x[4]) = 5 + 0.5  = 5.5
    # p95 at index 0.95 * 9 = 8.55 -> x[8] + 0.55 * (x[9] - x[8]) = 9 + 0.55 = 9.55
    # p99 at index 0.99 * 9 = 8.91 -> 9 + 0.91 = 9.91
    assert s["p50"] == pytest.approx(5.5)
    assert s["p95"] == pytest.approx(9.55)
    assert s["p99"] == pytest.approx(9.91)
    assert s["max"] == 10.0
    assert s["mean"] == pytest.approx(5.5)  # 55 / 10
    assert s["count"] == 10
    assert all(type(v) is float for key, v in s.items() if key != "count")


def test_latency_summary_single_and_empty() -> None:
    assert latency_summary(iter([7.25])) == {
        "p50": 7.25,
        "p95": 7.25,
        "p99": 7.25,
        "max": 7.25,
        "mean": 7.25,
        "count": 1,
    }
    assert latency_summary([]) == {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0}
    with pytest.raises(ValueError):
        latency_summary([1.0, float("nan")])


# --------------------------------------------------------------------------- slices


def test_sliced_metrics_fixed_width() -> None:
    sm = SlicedMetrics(1000, ks=(1,))
    sm.add(0, ["a"], {"a"})  # slice [0, 1000): hit
    sm.add(999, ["b"], {"a"})  # slice [0, 1000): miss
    sm.add(1000, ["a"], {"a"})  # slice [1000, 2000): hit
    sm.add(2500, [], {"a"})  # slice [2000, 3000): miss
    rows = sm.summary()
    assert [r["start_ms"] for r in rows] == [0, 1000, 2000]
    assert [r["cases"] for r in rows] == [2, 1, 1]
    assert [r["hit_rate@1"] for r in rows] == [0.5, 1.0, 0.0]
    total = sm.total().summary()[1]
    assert total["cases"] == 4
    assert total["hit_rate"] == pytest.approx(0.5)  # 2 hits / 4 cases
    assert [start for start, _ in sm.slices()] == [0, 1000, 2000]


def test_sliced_metrics_origin_and_merge() -> None:
    sm = SlicedMetrics(1000, ks=(1,), origin_ms=500)
    # floor((0 - 500) / 1000) = -1 -> slice starts at 500 - 1000 = -500
    assert sm.slice_start(0) == -500
    assert sm.slice_start(500) == 500
    assert sm.slice_start(1499) == 500
    sm.add(0, ["a"], {"a"})
    other = SlicedMetrics(1000, ks=(1,), origin_ms=500)
    other.add(100, ["b"], {"a"})
    other.add(600, ["a"], {"a"})
    sm.merge(other)
    rows = sm.summary()
    assert [(r["start_ms"], r["cases"], r["hit_rate@1"]) for r in rows] == [(-500, 2, 0.5), (500, 1, 1.0)]
    with pytest.raises(ValueError):
        sm.merge(SlicedMetrics(1000, ks=(2,)))


def test_sliced_metrics_by_calendar_month() -> None:
    jan = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    feb = jan + 31 * 86_400_000  # 2024-02-01T00:00:00Z = 1_706_745_600_000
    assert calendar_month_start(jan) == jan
    assert calendar_month_start(feb - 1) == jan  # 2024-01-31T23:59:59.999Z
    assert calendar_month_start(feb) == feb
    mar = feb + 29 * 86_400_000  # 2024 is a leap year: February has 29 days
    assert calendar_month_start(mar - 1) == feb  # 2024-02-29T23:59:59.999Z
    assert calendar_month_start(mar) == mar
    sm = SlicedMetrics(slice_of=calendar_month_start, ks=(5,))
    sm.add(jan + 10, ["a"], {"a"})
    sm.add(feb - 1, ["a"], {"b"})
    sm.add(feb + 3, ["a"], {"a"})
    assert [(r["start_ms"], r["cases"], r["hit_rate@5"]) for r in sm.summary()] == [(jan, 2, 0.5), (feb, 1, 1.0)]


def test_sliced_metrics_validation() -> None:
    with pytest.raises(ValueError):
        SlicedMetrics()
    with pytest.raises(ValueError):
        SlicedMetrics(1000, slice_of=calendar_month_start)
    with pytest.raises(ValueError):
        SlicedMetrics(0)
