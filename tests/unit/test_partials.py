"""Partial rows from other partitions (streams/evidence.py) added to and replaced in the
scored popularity and co-occurrence: the result is the sum of the parts, as if one model
had counted every partition's events."""

from __future__ import annotations

import math

import pytest

from recstream.scoring.cooccurrence import CooccurrenceModel, CooccurrenceRow, merge_rows
from recstream.scoring.popularity import DecayedPopularity

H = 3_600_000.0


def pops(*parts: list[tuple[str, int]]) -> list[DecayedPopularity]:
    out = []
    for events in parts:
        p = DecayedPopularity(H)
        for item, ts in events:
            p.add(item, ts)
        out.append(p)
    return out


def test_popularity_parts_add_up_and_are_replaced() -> None:
    own, other, other_later, both = pops([("a", 0), ("b", 1000)], [("a", 500)], [("a", 500), ("a", 9000), ("c", 10)], [("a", 0), ("b", 1000), ("a", 500)])
    total = pops([("a", 0), ("b", 1000)])[0]
    total.replace_partial("a", None, other.log2_score("a"))
    assert total.log2_score("a") == pytest.approx(both.log2_score("a"), abs=1e-12)
    # the other partition moved on: its old part out, the new one in
    total.replace_partial("a", other.log2_score("a"), other_later.log2_score("a"))
    total.replace_partial("c", None, other_later.log2_score("c"))
    expect = pops([("a", 0), ("b", 1000), ("a", 500), ("a", 9000), ("c", 10)])[0]
    for item in ("a", "b", "c"):
        assert total.log2_score(item) == pytest.approx(expect.log2_score(item), abs=1e-9)
    # a part taken out entirely (the key was deleted): back to the own counts only
    total.replace_partial("a", other_later.log2_score("a"), None)
    total.replace_partial("c", other_later.log2_score("c"), None)
    assert total.log2_score("a") == pytest.approx(own.log2_score("a"), abs=1e-9)
    assert "c" not in total
    assert [i for i, _ in total.top(5, now_ms=10_000)] == [i for i, _ in own.top(5, now_ms=10_000)]


def model(events: list[tuple[list[str], str, int]]) -> CooccurrenceModel:
    m = CooccurrenceModel(max_neighbours=50)
    for history, item, ts in events:
        m.observe(history, item, ts)
    return m


def rows_of(m: CooccurrenceModel) -> dict[str, tuple[float, dict[str, float]]]:
    return {i: (r.log2_count, dict(r.neighbours)) for i, r in m.rows()}


def assert_rows_close(got: CooccurrenceModel, want: dict[str, CooccurrenceRow]) -> None:
    assert set(i for i, _ in got.rows()) == set(want)
    for item, row in want.items():
        g = got.row(item)
        assert g is not None and g.log2_count == pytest.approx(row.log2_count, abs=1e-9)
        assert set(g.neighbours) == set(row.neighbours)
        for j, lw in row.neighbours.items():
            assert g.neighbours[j] == pytest.approx(lw, abs=1e-9)


def test_cooccurrence_parts_add_up_are_replaced_and_removed() -> None:
    own_events = [(["x"], "y", 1), (["x", "y"], "z", 2)]
    other_events = [(["y"], "z", 3)]
    other_later_events = other_events + [(["z"], "w", 4), (["x"], "z", 5)]
    own, other, other_later = model(own_events), model(other_events), model(other_later_events)

    total = model(own_events)
    for item, row in other.rows():
        total.replace_partial(item, None, row)
    items = {i for m in (own, other) for i, _ in m.rows()}
    assert_rows_close(total, {i: merge_rows([r for m in (own, other) if (r := m.row(i)) is not None]) for i in items})
    # the other partition's rows moved on
    for item, row in other_later.rows():
        total.replace_partial(item, other.row(item), row)
    items = {i for m in (own, other_later) for i, _ in m.rows()}
    assert_rows_close(total, {i: merge_rows([r for m in (own, other_later) if (r := m.row(i)) is not None]) for i in items})
    # its rows are gone (the partition's counts withdrawn): the own counts remain
    for item, row in other_later.rows():
        total.replace_partial(item, row, None)
    assert_rows_close(total, dict(own.rows()))
    assert "w" not in total  # an item only the other partition had is forgotten


def test_a_part_larger_than_what_is_left_removes_the_entry_instead_of_going_negative() -> None:
    total = model([(["a"], "b", 1)])
    big = CooccurrenceRow(math.log2(5.0), {"a": math.log2(5.0)})
    total.replace_partial("b", big, None)
    assert "b" not in total
