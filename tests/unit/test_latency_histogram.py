"""``latency_histogram`` against hand-counted bins."""

from __future__ import annotations

import math

import pytest

from recstream.scoring.metrics import DEFAULT_LATENCY_EDGES_MS, latency_histogram


def test_values_fall_in_half_open_bins() -> None:
    # edges 0 | 1 | 2 | 5 ; bins [0,1) [1,2) [2,5) [5,inf)
    got = latency_histogram([0.0, 0.5, 1.5, 1.9, 4.99, 7.0], edges_ms=[0.0, 1.0, 2.0, 5.0])
    assert got == {"edges_ms": [0.0, 1.0, 2.0, 5.0], "counts": [2, 2, 1, 1]}


def test_a_value_on_an_edge_goes_to_the_upper_bin() -> None:
    got = latency_histogram([1.0, 2.0, 5.0, 0.0], edges_ms=[0.0, 1.0, 2.0, 5.0])
    assert got["counts"] == [1, 1, 1, 1]  # 0 -> [0,1), 1 -> [1,2), 2 -> [2,5), 5 -> overflow


def test_default_edges_and_overflow_bin() -> None:
    values = [0.2, 0.9, 3.0, 12.0, 12.0, 150.0, 999.9, 60000.0, 3_600_000.0]
    got = latency_histogram(values)
    assert got["edges_ms"] == list(DEFAULT_LATENCY_EDGES_MS)
    counts = got["counts"]
    assert len(counts) == len(DEFAULT_LATENCY_EDGES_MS) == 16
    # [0,1): 0.2, 0.9 | [2,5): 3.0 | [10,20): 12 twice | [100,200): 150 | [500,1000): 999.9
    # overflow (>= 60 s): 60000, 3600000
    expected = [0] * 16
    expected[0] = 2
    expected[2] = 1
    expected[4] = 2
    expected[7] = 1
    expected[9] = 1
    expected[15] = 2
    assert counts == expected
    assert sum(counts) == len(values)


def test_no_values_gives_zero_counts() -> None:
    assert latency_histogram([]) == {"edges_ms": list(DEFAULT_LATENCY_EDGES_MS), "counts": [0] * 16}
    assert latency_histogram(iter(()), edges_ms=(10.0,)) == {"edges_ms": [10.0], "counts": [0]}


def test_single_edge_counts_everything_in_the_overflow_bin() -> None:
    assert latency_histogram([10.0, 11.0, 1e9], edges_ms=[10.0])["counts"] == [3]


def test_accepts_any_iterable_of_numbers() -> None:
    got = latency_histogram((v for v in (1, 2, 3)), edges_ms=(0, 2))
    assert got == {"edges_ms": [0.0, 2.0], "counts": [1, 2]}


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, -math.inf])
def test_values_below_the_first_edge_or_not_finite_raise(bad: float) -> None:
    with pytest.raises(ValueError):
        latency_histogram([1.0, bad])


def test_a_value_below_a_custom_first_edge_raises() -> None:
    with pytest.raises(ValueError, match="below the first edge"):
        latency_histogram([4.0], edges_ms=[5.0, 10.0])


@pytest.mark.parametrize(
    "edges",
    [[], [0.0, 1.0, 1.0], [0.0, 2.0, 1.0], [0.0, math.inf], [math.nan, 1.0], [[0.0, 1.0]]],
)
def test_bad_edges_raise(edges: list) -> None:
    with pytest.raises(ValueError):
        latency_histogram([1.0], edges_ms=edges)
