"""Per-case metrics and the paired bootstrap of ratios (:mod:`scoring.metrics`).

What a user comparing two methods relies on: the interval holds the ratio, narrows as cases
are added, says "1" for a method against itself, is the same on every run, holds 1 for
methods that are equal on average (about 95% of the time), and pairing the cases makes it
narrower than resampling the two methods independently would.
"""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest

from recstream.scoring.metrics import (
    CaseMetrics,
    RankingMetrics,
    ndcg_at_k,
    paired_bootstrap_ratios,
)


def bernoulli(p: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(np.float64)


def width(entry: dict) -> float:
    lo, hi = entry["ci95"]
    return hi - lo


# --------------------------------------------------------------------------- CaseMetrics


def test_case_metrics_keep_every_case_and_average_like_ranking_metrics() -> None:
    rng = random.Random(3)
    items = [f"i{n}" for n in range(30)]
    ks = (1, 5, 10)
    cases, summary = CaseMetrics(ks), RankingMetrics(ks)
    added = []
    for _ in range(300):
        ranked = rng.sample(items, rng.randint(0, 12))
        relevant = rng.sample(items, rng.randint(1, 2))
        cases.add(ranked, relevant)
        summary.add(ranked, relevant)
        added.append((ranked, relevant))
    assert len(cases) == cases.cases == 300
    for k in ks:
        ndcg = cases.values("ndcg", k)
        hits = cases.values("hit_rate", k)
        assert ndcg.dtype == hits.dtype == np.float64 and ndcg.shape == (300,)
        # case by case, in order (stored as float32)
        assert ndcg.tolist() == pytest.approx([ndcg_at_k(r, rel, k) for r, rel in added], rel=1e-6)
        assert set(hits.tolist()) <= {0.0, 1.0}
        assert hits.mean() == summary.summary()[k]["hit_rate"]
        assert ndcg.mean() == pytest.approx(summary.summary()[k]["ndcg"], rel=1e-6)


def test_case_metrics_empty_merge_and_validation() -> None:
    a, b = CaseMetrics((3,)), CaseMetrics((3,))
    assert a.values("ndcg", 3).shape == (0,)
    a.add(["x", "y"], "x")
    b.add(["x", "y"], "y")
    b.add([], "y")
    snapshot = CaseMetrics((3,)).merge(a)
    a.merge(b)
    assert a.values("hit_rate", 3).tolist() == [1.0, 1.0, 0.0]
    assert a.values("ndcg", 3).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.0])
    assert snapshot.values("hit_rate", 3).tolist() == [1.0]  # a copy: later cases do not reach it
    with pytest.raises(ValueError, match="metric"):
        a.values("mrr", 3)
    with pytest.raises(ValueError, match="k=5"):
        a.values("ndcg", 5)
    with pytest.raises(ValueError, match="ks"):
        a.merge(CaseMetrics((5,)))


# --------------------------------------------------------------------------- the ratios


def test_the_interval_holds_the_ratio_of_the_means() -> None:
    for seed in range(10):
        n = 50 + 40 * seed
        values = {"a": bernoulli(0.3, n, seed), "b": bernoulli(0.2, n, 100 + seed), "c": bernoulli(0.25, n, 200 + seed)}
        out = paired_bootstrap_ratios(values)
        assert set(out) == {(x, y) for x in "abc" for y in "abc" if x != y}
        for (x, y), entry in out.items():
            assert entry["ratio"] == pytest.approx(values[x].mean() / values[y].mean(), rel=1e-12)
            lo, hi = entry["ci95"]
            assert lo <= entry["ratio"] <= hi, (seed, x, y, entry)


def test_the_interval_narrows_with_more_cases() -> None:
    widths = []
    for n in (200, 2_000, 20_000):
        values = {"new": bernoulli(0.33, n, 1), "old": bernoulli(0.3, n, 2)}
        widths.append(width(paired_bootstrap_ratios(values, [("new", "old")])[("new", "old")]))
    # about 1 / sqrt(n): each tenfold more cases shrinks it about 3.2 times
    assert widths[0] > 2 * widths[1] > 4 * widths[2] > 0


def test_a_method_against_itself_is_exactly_one() -> None:
    v = np.random.default_rng(5).random(1_000) * bernoulli(0.4, 1_000, 6)
    out = paired_bootstrap_ratios({"m": v, "same": v.copy(), "other": bernoulli(0.5, 1_000, 7)}, [("m", "m"), ("m", "same"), ("same", "m")])
    for entry in out.values():
        assert entry == {"ratio": 1.0, "ci95": [1.0, 1.0]}
    # a single case that hits: every resample is that case
    assert paired_bootstrap_ratios({"a": [1.0], "b": [0.5]})[("a", "b")] == {"ratio": 2.0, "ci95": [2.0, 2.0]}


def test_the_same_values_give_the_same_intervals() -> None:
    values = {"a": bernoulli(0.3, 500, 1), "b": bernoulli(0.25, 500, 2)}
    first = paired_bootstrap_ratios(values)
    assert paired_bootstrap_ratios({k: v.copy() for k, v in values.items()}) == first
    assert paired_bootstrap_ratios(values, seed=1) != first  # the seed is what varies the resamples
    # the same draws for a pair whatever else is compared alongside
    more = paired_bootstrap_ratios({**values, "c": bernoulli(0.2, 500, 3)})
    assert more[("a", "b")] == first[("a", "b")]


def test_methods_equal_on_average_get_an_interval_holding_one() -> None:
    # the same values in another case order: the means are equal
    a = np.random.default_rng(8).random(400) * bernoulli(0.3, 400, 9)
    b = np.random.default_rng(10).permutation(a)
    entry = paired_bootstrap_ratios({"a": a, "b": b}, [("a", "b")])[("a", "b")]
    assert entry["ratio"] == pytest.approx(1.0, rel=1e-12)
    assert entry["ci95"][0] < 1 < entry["ci95"][1]
    # two methods with the same hit rate: the interval holds 1 in about 95% of the datasets
    held = 0
    for seed in range(40):
        out = paired_bootstrap_ratios({"a": bernoulli(0.3, 300, seed), "b": bernoulli(0.3, 300, 1000 + seed)})
        lo, hi = out[("a", "b")]["ci95"]
        held += lo <= 1 <= hi
    assert held >= 34, held


def test_pairing_the_cases_narrows_the_interval() -> None:
    # b agrees with a on all but 5% of the cases: the paired interval is far narrower than
    # what resampling each method on its own would give
    n = 2_000
    a = bernoulli(0.3, n, 11)
    flip = bernoulli(0.05, n, 12).astype(bool)
    b = np.where(flip, 1 - a, a)
    paired = paired_bootstrap_ratios({"a": a, "b": b}, [("a", "b")])[("a", "b")]
    rng = np.random.default_rng(13)
    unpaired = [a[rng.integers(0, n, n)].mean() / b[rng.integers(0, n, n)].mean() for _ in range(1_000)]
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert paired["ci95"][0] <= paired["ratio"] <= paired["ci95"][1]
    assert width(paired) < 0.5 * (hi - lo)


def test_undefined_ratios_are_none() -> None:
    zeros, some = np.zeros(20), bernoulli(0.5, 20, 1)
    out = paired_bootstrap_ratios({"zero": zeros, "some": some})
    assert out[("some", "zero")] == {"ratio": None, "ci95": None}  # denominator mean 0
    assert out[("zero", "some")] == {"ratio": 0.0, "ci95": [0.0, 0.0]}
    # no case at all
    assert paired_bootstrap_ratios({"a": [], "b": []}) == {
        ("a", "b"): {"ratio": None, "ci95": None},
        ("b", "a"): {"ratio": None, "ci95": None},
    }
    # the denominator hits one case of ten: over a third of the resamples miss it, so the
    # ratio is unbounded above (None), yet the point ratio and the lower bound are there
    out = paired_bootstrap_ratios({"a": np.ones(10), "b": np.eye(10)[0]}, [("a", "b")])[("a", "b")]
    assert out["ratio"] == 10.0 and out["ci95"][1] is None and 0 < out["ci95"][0] <= 10.0
    assert orjson.loads(orjson.dumps({str(k): v for k, v in out.items()})) == {"ratio": 10.0, "ci95": out["ci95"]}


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError, match="same cases"):
        paired_bootstrap_ratios({"a": [1.0, 0.0], "b": [1.0]})
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ratios({"a": [1.0, math.nan], "b": [1.0, 0.0]})
    with pytest.raises(ValueError, match="1-D"):
        paired_bootstrap_ratios({"a": [[1.0]], "b": [[1.0]]})
    with pytest.raises(ValueError, match="pairs"):
        paired_bootstrap_ratios({"a": [1.0], "b": [1.0]}, [("a", "c")])
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ratios({"a": [1.0]}, resamples=0)
