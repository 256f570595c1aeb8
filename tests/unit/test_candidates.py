"""The two-stage blend (scoring.blend.candidate_blend_topk): candidates, then only they are
ranked, giving the dense ranking's lists (scoring.blend.blend_score_topk)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from recstream.scoring.blend import DEFAULT_WEIGHTS, BlendWeights, CandidateStats, blend_score_topk, candidate_blend_topk
from recstream.scoring.engine import Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.encoders.profile import DecayedProfileModel
from recstream.streams.records import Click, Purchase

DIM = 24


def catalog(n: int, seed: int = 1) -> ItemMatrix:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    m = ItemMatrix(DIM, "cpu")
    m.upsert([f"i{j}" for j in range(n)], v)
    return m


def case(m: ItemMatrix, users: int, seed: int = 2, cooc_items: int = 30, excluded: int = 15):
    rng = np.random.default_rng(seed)
    n = m.rows_used
    queries = rng.standard_normal((users, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    queries[0] = 0.0  # a user without a text profile (with co-occurrence evidence)
    cooc = []
    for u in range(users):  # every fifth user without co-occurrence evidence
        rows = np.unique(rng.choice(n, size=cooc_items if u % 5 != 1 else 0, replace=False)).astype(np.int64)
        cooc.append((rows, rng.gamma(0.5, 1.0, size=len(rows))))
    base = np.log2(rng.pareto(1.5, size=n) + 1e-3).astype(np.float32)  # a long tail of counts
    base[~m.valid.numpy()] = -np.inf  # a free row has no count
    pop = torch.log1p(torch.exp2(torch.from_numpy(base))).unsqueeze(0).expand(users, -1).contiguous()
    popular = torch.topk(torch.from_numpy(base), min(100, n)).indices.unsqueeze(0).expand(users, -1)
    exclude = [{f"i{j}" for j in rng.choice(n, size=excluded, replace=False)} for _ in range(users)]
    dense_cooc = np.zeros((users, n), dtype=np.float32)
    for u, (rows, vals) in enumerate(cooc):
        dense_cooc[u, rows] = vals
    return queries, cooc, dense_cooc, pop, popular, exclude


@pytest.mark.parametrize("weights", [DEFAULT_WEIGHTS, BlendWeights(1, 0, 1, "zscore"), BlendWeights(0.1, 0.2, 0.7, "zscore")])
def test_two_stages_rank_what_the_dense_blend_ranks(weights):
    m = catalog(3000)
    queries, cooc, dense_cooc, pop, popular, exclude = case(m, 40)
    stats = CandidateStats()
    got = candidate_blend_topk(m, queries, 10, exclude, weights, cooc, pop, popular, stats=stats)
    want = blend_score_topk(m, queries, 10, exclude, weights, dense_cooc, pop)
    for g, w in zip(got, want):
        assert [r.item_id for r in g] == [r.item_id for r in w]
        assert [r.score for r in g] == pytest.approx([r.score for r in w], rel=1e-4, abs=1e-4)
        assert not {r.item_id for r in g} & exclude[got.index(g)]
    # a few hundred candidates of 3,000 items, and most users need nothing else
    assert stats.users == 40 and stats.candidates / stats.users < 400
    assert stats.dense < stats.users / 2


def test_a_user_whose_candidates_cannot_prove_their_top_k_is_ranked_densely():
    m = catalog(2000, seed=5)
    queries, cooc, dense_cooc, pop, popular, exclude = case(m, 12, seed=6)
    stats = CandidateStats()
    # one text candidate and no popular ones: the bound rarely holds
    got = candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, pop, popular[:, :0], text_candidates=1, stats=stats)
    want = blend_score_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, dense_cooc, pop)
    assert stats.dense > 0
    assert [[r.item_id for r in g] for g in got] == [[r.item_id for r in w] for w in want]


def test_small_catalogs_removed_items_and_short_lists():
    m = catalog(30, seed=9)
    m.remove(["i3", "i4"])
    queries, cooc, dense_cooc, pop, popular, _ = case(m, 5, cooc_items=5, excluded=0)
    cooc = [(r[~np.isin(r, [3, 4])], v[~np.isin(r, [3, 4])]) for r, v in cooc]  # the scorer gives live rows only
    dense_cooc[:, [3, 4]] = 0
    exclude = [{f"i{j}" for j in range(25)}] * 5  # 5 live items left to rank
    got = candidate_blend_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, cooc, pop, popular[:, :5])
    want = blend_score_topk(m, queries, 10, exclude, DEFAULT_WEIGHTS, dense_cooc, pop)
    assert [[r.item_id for r in g] for g in got] == [[r.item_id for r in w] for w in want]
    assert all(len(g) == 5 for g in got)


def test_the_rank_normalisation_is_refused():
    m = catalog(10)
    with pytest.raises(ValueError, match="z-score"):
        candidate_blend_topk(
            m,
            np.zeros((1, DIM), np.float32),
            5,
            [set()],
            BlendWeights(1, 1, 1, "rank"),
            [(np.empty(0, np.int64), np.empty(0))],
            torch.zeros(1, 10),
            torch.zeros((1, 0), dtype=torch.long),
        )


def _engine(matrix: ItemMatrix, two_stage: bool) -> Engine:
    config = EngineConfig(k=10, emit="per-event", blend=DEFAULT_WEIGHTS, blend_candidates=two_stage)

    class NoTexts:
        name = "none"

        def encode_numpy(self, texts):  # pragma: no cover - clicks and purchases only
            raise AssertionError("no review texts here")

    return Engine(
        model=DecayedProfileModel(dim=DIM), matrix=matrix, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=NoTexts(), config=config
    )


def test_the_engine_gives_the_same_lists_in_two_stages_and_densely():
    rng = random.Random(4)
    events, t = [], 1_700_000_000_000
    for n in range(1500):
        t += rng.randint(1, 3600) * 1000
        user, item = f"u{rng.randint(0, 60)}", f"i{min(int(rng.paretovariate(0.7)), 1999)}"
        events.append(Click(user, item, t, f"c{n}"))
        if rng.random() < 0.3:
            events.append(Purchase(user, item, t, f"p{n}"))
    batch = [Incoming(ev, "clicks" if isinstance(ev, Click) else "purchases", 0, i) for i, ev in enumerate(events)]
    lists = []
    for two_stage in (True, False):
        engine = _engine(catalog(2000, seed=3), two_stage)
        profiles: dict = {}
        recs = []
        for start in range(0, len(batch), 256):
            res = engine.process(batch[start : start + 256], profiles, now_ms=0)
            profiles.update(res.profiles)
            recs += [[i.item_id for i in r.items] for r in res.recommendations]
        lists.append(recs)
        if two_stage:
            assert engine.candidate_stats.users > 1000
    assert lists[0] == lists[1]


def test_a_batch_spanning_years_ranks_without_overflow():
    """Popularity is log1p(2 ** x) of counts decayed to each snapshot's time: a batch whose
    events lie years apart (a late event, a catch-up) must not overflow float32."""
    year = 365 * 24 * 3600 * 1000
    events = [Click(f"u{n % 5}", f"i{n % 40}", 1_000_000_000_000 + (n % 2) * 10 * year + n, f"c{n}") for n in range(200)]
    batch = [Incoming(ev, "clicks", 0, i) for i, ev in enumerate(events)]
    res = _engine(catalog(50, seed=2), True).process(batch, {}, now_ms=0)
    assert len(res.recommendations) == 200 and all(len(r.items) == 10 for r in res.recommendations[10:])


def test_blended_recommendations_say_which_history_item_explains_them():
    events = [Click("u", f"i{n}", 1_000_000 + n, f"c{n}") for n in (3, 7, 11)]
    res = _engine(catalog(60, seed=8), True).process([Incoming(ev, "clicks", 0, i) for i, ev in enumerate(events)], {}, now_ms=0)
    last = res.recommendations[-1]
    assert last.model.startswith("blend/") and last.items
    assert all(item.because in {"i3", "i7", "i11"} and item.because != item.item_id for item in last.items)
