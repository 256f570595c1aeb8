"""The two-stage blend's cheaper parts (scoring.blend): the popularity signal without a dense
tensor (PopularityStates), the text candidates' grouped selection, the second candidate round,
the "new items" source and the approximate-index path: each gives the dense ranking's lists."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from recstream.encoders.profile import DecayedProfileModel
from recstream.scoring.ann import IVFItemMatrix, faiss_available
from recstream.scoring.blend import (
    DEFAULT_WEIGHTS,
    BlendWeights,
    CandidateStats,
    NewItems,
    PopularityStates,
    _Groups,
    _text_candidates,
    blend_score_topk,
    candidate_blend_topk,
)
from recstream.scoring.engine import Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.streams.records import Click, Purchase

DIM = 16
LN2 = math.log(2.0)


def catalog(n: int, seed: int = 1, cls: type[ItemMatrix] = ItemMatrix, **kwargs) -> ItemMatrix:
    rng = np.random.default_rng(seed)
    m = cls(DIM, "cpu", **kwargs)
    m.upsert([f"i{j}" for j in range(n)], rng.standard_normal((n, DIM)).astype(np.float32) + 0.2)
    return m


def journal(rng: np.random.Generator, base: np.ndarray, live: np.ndarray, n: int, decreases: bool = False):
    """``n`` changes of the log2 counts of live rows (counts grow, or now and then shrink)."""
    cur = base.copy()
    rows = rng.choice(np.flatnonzero(live), size=n).astype(np.int64)
    vals = np.empty(n, dtype=np.float32)
    for e, r in enumerate(rows):
        v = np.logaddexp2(cur[r], rng.uniform(-3, 3)) if np.isfinite(cur[r]) else rng.uniform(-3, 3)
        if decreases and rng.random() < 0.1 and np.isfinite(cur[r]):
            v = cur[r] - 2.0
        vals[e] = cur[r] = np.float32(v)
    return rows, vals


def states_case(seed: int, n: int = 800, users: int = 30, span: float = 0.05, decreases: bool = False):
    rng = np.random.default_rng(seed)
    live = rng.random(n) > 0.05
    base = np.where(rng.random(n) < 0.6, np.log2(rng.pareto(1.2, size=n) + 1e-3), -np.inf).astype(np.float32)
    base[~live] = -np.inf
    rows, vals = journal(rng, base, live, 300, decreases)
    states = PopularityStates(torch.from_numpy(base), rows, vals, popular=40)
    pos = rng.integers(0, len(rows) + 1, size=users)
    shift = torch.tensor(-rng.uniform(0, span, size=users), dtype=torch.float32)
    dense = torch.stack([torch.nn.functional.softplus((states.state(int(p)) - shift[b]) * LN2) for b, p in enumerate(pos)])
    return states, pos, shift, dense, live


@pytest.mark.parametrize("span", [1e-4, 0.05, 30.0])  # one Taylor centre, a few, one per snapshot
@pytest.mark.parametrize("decreases", [False, True])
def test_the_popularity_of_each_snapshot_without_a_dense_tensor(span, decreases):
    states, pos, shift, dense, live = states_case(3, span=span, decreases=decreases)
    view = states.view(pos, shift)
    rng = np.random.default_rng(4)
    rows = torch.from_numpy(rng.integers(0, dense.shape[1], size=(len(pos), 50)))
    assert torch.equal(view.at(rows), dense.gather(1, rows))  # the dense ranking's values, bit for bit
    s1, s2 = view.sums()
    want1 = dense.double().sum(dim=1, keepdim=True)
    want2 = (dense.double() ** 2).sum(dim=1, keepdim=True)
    assert torch.allclose(s1, want1, rtol=1e-7) and torch.allclose(s2, want2, rtol=1e-7)
    # the popular rows: every other row at most as popular as each of them
    top = view.popular_rows()
    for b in range(len(pos)):
        member = torch.zeros(dense.shape[1], dtype=torch.bool)
        member[top[b]] = True
        assert dense[b][~member].max() <= dense[b][top[b]].min()
    # each group's largest popularity outside the popular rows bounds its rows'
    groups = _Groups(dense.shape[1], 8)
    gmax = view.group_max(groups)
    for b in range(0, len(pos), 7):
        x = dense[b].clone()
        x[top[b]] = -math.inf
        assert (groups.maxima(x.unsqueeze(0))[0] <= gmax[b] * (1 + 1e-6)).all()  # up to float rounding


def test_the_text_candidates_hold_the_top_k_and_bound_the_rest():
    torch.manual_seed(0)
    for n in (5, 150, 401, 3001, 10007):
        for k in (0, 1, 10, 100):
            x = torch.randn(6, n)
            x[torch.rand(6, n) < 0.1] = -math.inf  # excluded and free rows
            x[3] = -math.inf
            x[4, : n // 2] = 0.5  # ties
            skip = torch.tensor([False, False, True, False, False, False])
            rows, bound, _ = _text_candidates(x.clone(), k, skip)
            for b in range(6):
                r = rows[b][rows[b] < n]
                assert len(set(r.tolist())) == len(r) and torch.isfinite(x[b, r]).all()
                rest = torch.ones(n, dtype=torch.bool)
                rest[r] = False
                others = x[b][rest]
                others = others[torch.isfinite(others)]
                if len(others):
                    assert float(others.max()) <= float(bound[b])
                finite = x[b][torch.isfinite(x[b])]
                if skip[b]:
                    assert len(r) == 0
                elif 0 < k <= len(finite):
                    assert float(bound[b]) <= float(torch.topk(finite, k).values[-1])


def ranking_case(m: ItemMatrix, users: int, seed: int, excluded: int = 10):
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(m.valid.numpy())
    queries = rng.standard_normal((users, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    queries[1] = 0.0  # no text profile
    cooc = []
    for u in range(users):
        rows = np.unique(rng.choice(live, size=0 if u % 4 == 2 else 25, replace=False)).astype(np.int64)
        cooc.append((rows, rng.gamma(0.5, 1.0, size=len(rows))))
    base = np.where(rng.random(m.rows_used) < 0.7, np.log2(rng.pareto(1.2, size=m.rows_used) + 1e-3), -np.inf)
    base = base.astype(np.float32)
    base[~m.valid.numpy()] = -np.inf
    rows, vals = journal(rng, base, m.valid.numpy(), 200)
    states = PopularityStates(torch.from_numpy(base), rows, vals)
    pos = np.full(users, len(rows))  # per-user emission: every snapshot after the batch
    shift = torch.tensor(-rng.uniform(0, 1e-4, size=users), dtype=torch.float32)
    view = states.view(pos, shift)
    dense_pop = torch.nn.functional.softplus((states.state(len(rows)).unsqueeze(0) - shift.unsqueeze(1)) * LN2)
    exclude = [{m.id_at(int(r)) for r in rng.choice(live, size=excluded, replace=False)} for _ in range(users)]
    dense_co = np.zeros((users, m.rows_used), dtype=np.float32)
    for u, (r, v) in enumerate(cooc):
        dense_co[u, r] = v
    return queries, cooc, view, dense_co, dense_pop, exclude


def same_lists(got, want):
    assert [[r.item_id for r in g] for g in got] == [[r.item_id for r in w] for w in want]
    for g, w in zip(got, want):
        assert [r.score for r in g] == pytest.approx([r.score for r in w], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("weights", [DEFAULT_WEIGHTS, BlendWeights(0.1, 0.2, 0.7, "zscore")])
def test_two_stages_with_the_snapshot_popularity_rank_what_the_dense_blend_ranks(weights):
    m = catalog(3000, seed=2)
    m.remove([f"i{j}" for j in range(0, 3000, 37)])
    queries, cooc, view, dense_co, dense_pop, exclude = ranking_case(m, 40, seed=3)
    stats = CandidateStats()
    got = candidate_blend_topk(m, queries, 10, exclude, weights, cooc, view, stats=stats)
    same_lists(got, blend_score_topk(m, queries, 10, exclude, weights, dense_co, dense_pop))
    assert stats.users == 40 and stats.candidates / stats.users < 400


def test_a_second_round_of_candidates_proves_the_top_k_without_ranking_densely():
    """With few text candidates and no popular ones many users' candidates cannot prove their
    top-k: the items whose text could still make the list are added, not the whole catalog."""
    m = catalog(3000, seed=5)
    queries, cooc, view, dense_co, dense_pop, exclude = ranking_case(m, 30, seed=6)
    view.states.popular = 0
    view.states._base_top = None
    stats = CandidateStats()
    got = candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, view, text_candidates=10, stats=stats)
    assert stats.widened > 0
    assert stats.dense < stats.widened
    same_lists(got, blend_score_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, dense_co, dense_pop))


def test_new_items_are_the_latest_added_to_the_catalog_and_are_candidates():
    m = catalog(100, seed=7)
    new = NewItems(limit=5)
    assert new.rows(m).tolist() == [99, 98, 97, 96, 95]  # first poll: the last rows
    rng = np.random.default_rng(8)
    m.upsert(["a", "b"], rng.standard_normal((2, DIM)).astype(np.float32))
    assert new.rows(m).tolist() == [101, 100, 99, 98, 97]
    m.remove(["i10", "b"])
    assert new.rows(m).tolist() == [100, 99, 98, 97]  # a removed item is no longer offered
    m.upsert(["c"], rng.standard_normal((1, DIM)).astype(np.float32))  # reuses a freed row
    assert m.row("c") in (10, 101) and new.rows(m).tolist()[0] == m.row("c")
    m.upsert(["i5"], rng.standard_normal((1, DIM)).astype(np.float32))  # an update is not new
    assert m.row("i5") not in new.rows(m).tolist()

    # in the ranking: new items are every user's candidates (the lists stay the dense ones)
    m = catalog(3000, seed=9)
    queries, cooc, view, dense_co, dense_pop, exclude = ranking_case(m, 20, seed=10)
    fresh = np.arange(2990, 3000)
    with_new, without = CandidateStats(), CandidateStats()
    got = candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, view, stats=with_new, new_rows=fresh)
    candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, view, stats=without)
    assert with_new.candidates > without.candidates
    same_lists(got, blend_score_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, dense_co, dense_pop))


@pytest.mark.skipif(not faiss_available(), reason="needs faiss")
def test_with_an_approximate_index_the_text_sums_come_from_the_item_vectors():
    m = catalog(3000, seed=11, cls=IVFItemMatrix, min_items=1000, nprobe=10_000)  # every list: exact neighbours
    assert m.approximate
    s, g = m.text_moments()
    rng = np.random.default_rng(12)
    m.upsert([f"i{j}" for j in range(50)], rng.standard_normal((50, DIM)).astype(np.float32))  # updates
    m.upsert(["new-1", "new-2"], rng.standard_normal((2, DIM)).astype(np.float32))
    m.remove([f"i{j}" for j in range(60, 90)])
    s, g = m.text_moments()
    v = m.data[m.valid].double()
    assert torch.allclose(s, v.sum(dim=0), atol=1e-6) and torch.allclose(g, v.T @ v, rtol=1e-6, atol=1e-4)
    queries, cooc, view, dense_co, dense_pop, exclude = ranking_case(m, 30, seed=13)
    stats = CandidateStats()
    got = candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, view, stats=stats)
    same_lists(got, blend_score_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, dense_co, dense_pop))
    assert stats.dense == 0 and stats.widened == 0  # no bound: the index's candidates are taken as they are


class NoTexts:
    name = "none"

    def encode_numpy(self, texts):  # pragma: no cover - clicks and purchases only
        raise AssertionError("no review texts here")


@pytest.mark.parametrize("emit,gap_s", [("per-user", 3600), ("per-event", 30), ("per-user", 3 * 86400)])
def test_the_engine_ranks_in_two_stages_what_it_ranks_densely(emit, gap_s):
    """Per-user and per-event emission, events minutes to days apart (the popularity sums'
    expansion centres), a catalog change between batches."""
    rng = random.Random(21)
    events, t = [], 1_700_000_000_000
    for n in range(1200):
        t += rng.randint(1, gap_s) * 1000
        user, item = f"u{rng.randint(0, 80)}", f"i{min(int(rng.paretovariate(0.7)), 1999)}"
        events.append(Click(user, item, t, f"c{n}"))
        if rng.random() < 0.3:
            events.append(Purchase(user, item, t, f"p{n}"))
    batch = [Incoming(ev, "clicks" if isinstance(ev, Click) else "purchases", 0, i) for i, ev in enumerate(events)]
    lists = []
    for two_stage in (True, False):
        config = EngineConfig(k=10, emit=emit, blend=DEFAULT_WEIGHTS, blend_candidates=two_stage)
        m = catalog(2000, seed=22)
        engine = Engine(
            model=DecayedProfileModel(dim=DIM), matrix=m, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=NoTexts(), config=config
        )
        profiles: dict = {}
        recs = []
        for start in range(0, len(batch), 300):
            if start == 600:
                m.remove([f"i{j}" for j in range(3, 60, 4)])
            res = engine.process(batch[start : start + 300], profiles, now_ms=0)
            profiles.update(res.profiles)
            recs += [[i.item_id for i in r.items] for r in res.recommendations]
        lists.append(recs)
    assert lists[0] == lists[1]
