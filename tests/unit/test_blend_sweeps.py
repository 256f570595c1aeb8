"""The per-event fast paths of the two-stage blend give what the direct computations give,
bit for bit: the popularity states swept through the journal (scoring.blend.PopularityStates),
the row-wise softplus, and the co-occurrence arrays patched by observe (scoring.cooccurrence)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recstream.scoring.blend import _NO_COUNT, PopularityStates, _Groups, _softplus_rows
from recstream.scoring.cooccurrence import CooccurrenceModel, CooccurrenceScorer

LN2 = math.log(2.0)


class NoTexts:
    name = "none"

    def encode_numpy(self, texts):  # pragma: no cover - never called
        raise AssertionError("no texts here")


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 126, 1251])
def test_softplus_of_each_row_is_that_of_the_row_alone(n):
    # torch computes the tail of a contiguous run with scalar code: a row of a contiguous
    # (U, n) tensor could round differently from the same row alone
    x = torch.randn(40, n) * 8
    want = torch.stack([torch.nn.functional.softplus(x[i].clone()) for i in range(len(x))])
    assert torch.equal(_softplus_rows(x), want)


def journal_case(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([9, 300, 1000]))
    base = rng.normal(0, 2, n)
    if ties:  # quantised counts: many equal values, at the popular rows' edge too
        base = np.round(base * 2) / 2
    base = np.where(rng.random(n) < 0.7, base, -np.inf).astype(np.float32)
    rows = rng.integers(0, n, size=200).astype(np.int64)
    cur = base.copy()
    values = np.empty(len(rows), dtype=np.float32)
    for e, r in enumerate(rows):  # counts only grow
        values[e] = cur[r] = (cur[r] if np.isfinite(cur[r]) else -3.0) + float(rng.choice([0.0, 0.5, 1.0]))
    return PopularityStates(torch.from_numpy(base), rows, values, popular=int(rng.choice([5, 40]))), rng


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_the_sweeps_give_each_state_as_computed_alone(seed, ties):
    states, rng = journal_case(seed, ties)
    fresh, _ = journal_case(seed, ties)  # the same journal, nothing swept yet
    positions = np.unique(np.concatenate([np.arange(0, 60), rng.integers(0, len(states.rows) + 1, size=20)]))
    groups = _Groups(states.n_rows, 4)
    gmax = states.group_max(positions, groups)
    base_top = torch.topk(fresh.base, fresh.popular, sorted=False).indices.numpy()
    for j, pos in enumerate(positions.tolist()):
        state = fresh.state(pos)
        # the popular rows: the top P of the base's top and the changed rows, ascending (the
        # same array to select from: the same rows under ties), at most as popular as each of them
        top = states.popular_rows(pos)
        merged = np.unique(np.concatenate([base_top, states.rows[:pos]])) if pos else base_top
        if pos and len(merged) > states.popular:
            merged = merged[np.argpartition(-state.numpy()[merged], states.popular - 1)[: states.popular]]
        assert np.array_equal(top.numpy(), merged)
        rest = torch.ones(states.n_rows, dtype=torch.bool)
        rest[top] = False
        if rest.any() and len(top):
            assert state[rest].max() <= state[top].min()
        # each group's largest count outside them, from the whole state
        w = state.clone().clamp_(min=_NO_COUNT)
        w[top] = -math.inf
        assert np.array_equal(gmax[j], groups.maxima(w.unsqueeze(0))[0].numpy())
    # the values at given rows: swept (ascending positions) or looked up in the journal
    ask = rng.integers(0, states.n_rows, size=(len(positions), 30))
    want = np.stack([fresh.state(int(p)).numpy()[r] for p, r in zip(positions, ask)])
    assert np.array_equal(states.state_at(ask, positions), want)
    shuffled = rng.permutation(len(positions))
    assert np.array_equal(states.state_at(ask[shuffled], positions[shuffled]), want[shuffled])


def arrays_from_scratch(model: CooccurrenceModel, item_id: str) -> tuple[np.ndarray, np.ndarray]:
    nb = model.row(item_id).neighbours  # type: ignore[union-attr]
    return np.array([model.slot(j) for j in nb], dtype=np.int64), np.array(list(nb.values()), dtype=np.float64)


@pytest.mark.parametrize("max_neighbours", [3, 100])
def test_the_arrays_observe_patches_are_those_of_the_rows(max_neighbours):
    rng = np.random.default_rng(5)
    model = CooccurrenceModel(max_neighbours, 3_600_000.0, pair_decay=0.9, recency=0.8)
    scorer = CooccurrenceScorer(model, lambda item: int(item[1:]), 60)
    histories: dict[int, list[str]] = {u: [] for u in range(12)}
    for ts in range(600):
        user, item = int(rng.integers(12)), f"i{int(rng.integers(60))}"
        if ts % 50 == 49:
            model.begin()
        model.observe(histories[user][-20:], item, ts * 1000)
        if ts % 50 == 49:
            model.rollback() if ts % 100 == 99 else model.commit()
        else:
            histories[user] = [h for h in histories[user] if h != item] + [item]
        rows, scores = scorer.sparse(histories[user])  # reads the rows the event changed
        assert np.all(np.diff(rows) > 0) and np.all(scores > 0)
        for i in histories[user]:
            if model.row(i) is not None:
                got, want = model.neighbour_arrays(i), arrays_from_scratch(model, i)
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_the_popularity_by_row_is_each_items_log2_count():
    from recstream.encoders.profile import DecayedProfileModel
    from recstream.scoring.engine import Engine
    from recstream.scoring.popularity import DecayedPopularity
    from recstream.scoring.topk import ItemMatrix

    matrix = ItemMatrix(4, "cpu")
    matrix.upsert([f"i{j}" for j in range(6)], np.eye(6, 4, dtype=np.float32) + 0.1)
    matrix.remove(["i2"])
    popularity = DecayedPopularity(1000.0)
    for ts, item in enumerate(["i1", "i2", "i5", "gone", "i1"]):
        popularity.add(item, ts)
    engine = Engine(model=DecayedProfileModel(dim=4), matrix=matrix, popularity=popularity, texts=NoTexts())
    want = np.full(matrix.rows_used, -np.inf)
    for item, lg in popularity.items():
        if matrix.row(item) is not None:
            want[matrix.row(item)] = lg
    assert np.array_equal(engine._popularity_by_row(), want)
