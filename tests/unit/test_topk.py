"""ItemMatrix and batched exact top-k against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstream.scoring.topk import ItemMatrix, Recommendation, default_dtype, score_topk

DIM = 24


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def brute_force(ids: list[str], vecs: np.ndarray, queries: np.ndarray, k: int, exclude: list[set[str]]) -> list[list[tuple[str, float]]]:
    scores = queries.astype(np.float64) @ vecs.astype(np.float64).T
    out = []
    for b in range(len(queries)):
        order = np.argsort(-scores[b], kind="stable")
        picked = [(ids[j], float(scores[b, j])) for j in order if ids[j] not in exclude[b]]
        out.append(picked[:k])
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def make_matrix(rng: np.random.Generator, n: int, capacity: int = 4) -> tuple[ItemMatrix, list[str], np.ndarray]:
    ids = [f"item{i}" for i in range(n)]
    vecs = unit_rows(rng, n)
    m = ItemMatrix(DIM, "cpu", capacity=capacity)
    m.upsert(ids, vecs)
    return m, ids, vecs


def assert_same(got: list[list[Recommendation]], want: list[list[tuple[str, float]]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [r.item_id for r in g] == [i for i, _ in w]
        np.testing.assert_allclose([r.score for r in g], [s for _, s in w], atol=1e-5)
        assert all(isinstance(r.score, float) for r in g)


def test_matches_brute_force(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 300)
    queries = unit_rows(rng, 7)
    got = score_topk(m, queries, k=10, exclude=[set()] * 7)
    assert_same(got, brute_force(ids, vecs, queries, 10, [set()] * 7))
    # torch input gives the same
    got_t = score_topk(m, torch.from_numpy(queries), k=10, exclude=[()] * 7)
    assert got_t == got
    assert all(r.because is None for res in got for r in res)


def test_exclusion_still_k(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 50)
    queries = unit_rows(rng, 3)
    plain = score_topk(m, queries, k=5, exclude=[set()] * 3)
    exclude = [
        {r.item_id for r in plain[0]},  # the whole unconstrained top-5
        {plain[1][0].item_id, "not-in-catalog"},
        set(),
    ]
    got = score_topk(m, queries, k=5, exclude=exclude)
    assert_same(got, brute_force(ids, vecs, queries, 5, exclude))
    for res, excl in zip(got, exclude):
        assert len(res) == 5
        assert not {r.item_id for r in res} & excl


def test_small_catalog_and_edge_cases(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 4)
    q = unit_rows(rng, 2)
    got = score_topk(m, q, k=10, exclude=[{"item0"}, set()])
    assert [len(r) for r in got] == [3, 4]
    assert_same(got, brute_force(ids, vecs, q, 10, [{"item0"}, set()]))
    assert score_topk(m, np.zeros((0, DIM), np.float32), k=5, exclude=[]) == []
    assert score_topk(m, q, k=0, exclude=[(), ()]) == [[], []]
    empty = ItemMatrix(DIM, "cpu")
    assert score_topk(empty, q, k=3, exclude=[(), ()]) == [[], []]
    with pytest.raises(ValueError):
        score_topk(m, q, k=3, exclude=[()])


def test_removed_never_returned_and_rows_reused(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 40)
    queries = unit_rows(rng, 4)
    top = score_topk(m, queries, k=5, exclude=[()] * 4)
    gone = sorted({r.item_id for res in top for r in res})
    freed_rows = {m.row(i) for i in gone}
    used_before = m.rows_used
    assert m.remove(gone + ["unknown"]) == len(gone)
    assert len(m) == 40 - len(gone)
    for i in gone:
        assert i not in m and m.vector(i) is None
    keep = [j for j, i in enumerate(ids) if i not in set(gone)]
    live_ids = [ids[j] for j in keep]
    got = score_topk(m, queries, k=5, exclude=[()] * 4)
    assert_same(got, brute_force(live_ids, vecs[keep], queries, 5, [set()] * 4))
    # all but one removed: only that one comes back
    m2, ids2, _ = make_matrix(rng, 6)
    m2.remove(ids2[1:])
    assert [r.item_id for r in score_topk(m2, queries, k=3, exclude=[()] * 4)[0]] == [ids2[0]]
    # new items reuse the freed rows, no growth
    new_ids = [f"new{i}" for i in range(len(gone))]
    new_vecs = unit_rows(rng, len(gone))
    m.upsert(new_ids, new_vecs)
    assert m.rows_used == used_before
    assert {m.row(i) for i in new_ids} == freed_rows
    all_ids = live_ids + new_ids
    all_vecs = np.concatenate([vecs[keep], new_vecs])
    got = score_topk(m, queries, k=8, exclude=[()] * 4)
    assert_same(got, brute_force(all_ids, all_vecs, queries, 8, [set()] * 4))


def test_growth_keeps_rows_and_update_in_place(rng: np.random.Generator) -> None:
    m = ItemMatrix(DIM, "cpu", capacity=2)
    all_ids: list[str] = []
    all_vecs = []
    caps = []
    for chunk in range(6):
        ids = [f"c{chunk}-{i}" for i in range(chunk + 3)]
        vecs = unit_rows(rng, len(ids))
        m.upsert(ids, vecs)
        all_ids += ids
        all_vecs.append(vecs)
        caps.append(m.capacity)
    vecs = np.concatenate(all_vecs)
    assert len(m) == len(all_ids) and m.ids() == all_ids
    assert caps == sorted(caps) and m.capacity < 4 * len(all_ids)
    np.testing.assert_allclose(m.get(all_ids).numpy(), vecs, atol=1e-6)
    # update in place: same row, new vector
    row = m.row("c0-0")
    v = unit_rows(rng, 1)
    m.upsert(["c0-0"], v)
    assert m.row("c0-0") == row and len(m) == len(all_ids)
    np.testing.assert_allclose(m.vector("c0-0"), v[0], atol=1e-6)
    # duplicate ids in one call: last wins
    a, b = unit_rows(rng, 2)
    m.upsert(["dup", "dup"], np.stack([a, b]))
    np.testing.assert_allclose(m.vector("dup"), b, atol=1e-6)
    # vectors are stored unit-norm
    m.upsert(["big"], 5 * a)
    np.testing.assert_allclose(m.vector("big"), a, atol=1e-6)
    with pytest.raises(KeyError):
        m.get(["missing"])
    m.clear()
    assert len(m) == 0 and m.ids() == [] and "big" not in m


def test_because_is_most_similar_history_item(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 60)
    queries = unit_rows(rng, 3)
    history = [
        ["item1", "item2", "item3", "not-in-catalog"],
        ["nothing-known"],
        ["item5"],
    ]
    got = score_topk(m, queries, k=6, exclude=[set(), set(), set()], history=history)
    index = {i: j for j, i in enumerate(ids)}
    for b, res in enumerate(got):
        hist = [h for h in history[b] if h in index]
        for rec in res:
            cands = [h for h in hist if h != rec.item_id]
            if not cands:
                assert rec.because is None
                continue
            sims = [float(vecs[index[rec.item_id]] @ vecs[index[h]]) for h in cands]
            assert rec.because == cands[int(np.argmax(sims))]
    assert all(r.because is None for r in got[1])
    # a history item that is itself recommended is explained by another history item
    top1 = score_topk(m, queries[:1], k=1, exclude=[()])[0][0].item_id
    res = score_topk(m, queries[:1], k=1, exclude=[()], history=[[top1, "item9"]])[0]
    assert res[0].item_id == top1 and res[0].because == "item9"
    res = score_topk(m, queries[:1], k=1, exclude=[()], history=[[top1]])[0]
    assert res[0].because is None


def test_dtype_by_device() -> None:
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.float16
    assert default_dtype(torch.device("cuda:1")) == torch.float16
    assert ItemMatrix(DIM, "cpu").dtype == torch.float32
    assert ItemMatrix(DIM, "cpu", dtype=torch.float64).dtype == torch.float64


def test_vector_is_a_copy(rng: np.random.Generator) -> None:
    m, ids, vecs = make_matrix(rng, 3)
    v = m.vector("item0")
    assert v is not None and v.dtype == np.float32
    m.upsert(["item0"], vecs[1])
    np.testing.assert_allclose(v, vecs[0], atol=1e-6)


def test_fp16_storage_on_cpu(rng: np.random.Generator) -> None:
    ids = [f"item{i}" for i in range(200)]
    vecs = unit_rows(rng, 200)
    m = ItemMatrix(DIM, "cpu", dtype=torch.float16)
    m.upsert(ids, vecs)
    queries = unit_rows(rng, 3)
    got = score_topk(m, queries, k=5, exclude=[()] * 3, history=[["item1"], [], ["item2"]])
    want = brute_force(ids, vecs, queries, 5, [set()] * 3)
    for g, w in zip(got, want):
        np.testing.assert_allclose([r.score for r in g], [s for _, s in w], atol=5e-3)
    assert all(r.because == "item1" for r in got[0] if r.item_id != "item1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches(rng: np.random.Generator) -> None:
    ids = [f"item{i}" for i in range(500)]
    vecs = unit_rows(rng, 500)
    m = ItemMatrix(DIM, "cuda")
    assert m.dtype == torch.float16
    m.upsert(ids, vecs)
    queries = unit_rows(rng, 5)
    got = score_topk(m, queries, k=10, exclude=[()] * 5)
    want = brute_force(ids, vecs, queries, 10, [set()] * 5)
    for g, w in zip(got, want):
        np.testing.assert_allclose([r.score for r in g], [s for _, s in w], atol=5e-3)


def straightforward(
    ids: list[str | None],
    vecs: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: list[set[str]],
    history: list[list[str]],
) -> list[list[tuple[str, float, str | None]]]:
    """One query at a time, one item at a time (float64): the ranked admissible items and,
    for each, the history item (in the catalog, not the item itself) most similar to it."""
    row = {i: j for j, i in enumerate(ids) if i is not None}
    out = []
    for b in range(len(queries)):
        scores = [(float(queries[b].astype(np.float64) @ vecs[j].astype(np.float64)), j) for j, i in enumerate(ids) if i is not None and i not in exclude[b]]
        scores.sort(key=lambda t: -t[0])
        res = []
        for s, j in scores[:k]:
            best, why = -np.inf, None
            for h in dict.fromkeys(history[b]):
                if h in row and h != ids[j]:
                    sim = float(vecs[j].astype(np.float64) @ vecs[row[h]].astype(np.float64))
                    if sim > best:
                        best, why = sim, h
            res.append((ids[j], s, why))
        out.append(res)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_batch_equals_one_query_at_a_time(seed: int) -> None:
    """The batched path (exclusions masked in the score matrix, because by one padded bmm)
    against the straightforward version on random catalogs with freed rows, random
    exclusions (some unknown, some excluding almost everything) and random histories."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    m, ids, vecs = make_matrix(rng, n)
    removed = [ids[j] for j in rng.choice(n, size=n // 5, replace=False)]
    m.remove(removed)
    slots: list[str | None] = [None if i in removed else i for i in ids]
    live = [i for i in ids if i not in removed]
    b = int(rng.integers(1, 40))
    queries = unit_rows(rng, b)
    exclude, history = [], []
    for q in range(b):
        n_ex = len(live) - 3 if q == 0 else int(rng.integers(0, 30))  # query 0: fewer than k admissible
        ex = {ids[j] for j in rng.choice(n, size=min(n_ex, n), replace=False)} | {"unknown"}
        exclude.append(ex if q % 2 else frozenset(ex))
        history.append([ids[j] for j in rng.integers(0, n, size=int(rng.integers(0, 25)))] + ["gone"] * (q % 3))
    k = int(rng.integers(1, 15))
    if b > 1:  # a history of only the query's best item: that item has no because
        history[1] = [straightforward(slots, vecs, queries[1:2], 1, exclude[1:2], [[]])[0][0][0]]
    got = score_topk(m, queries, k, exclude=exclude, history=history)
    want = straightforward(slots, vecs, queries, k, exclude, history)
    for g, w in zip(got, want):
        assert [(r.item_id, r.because) for r in g] == [(i, why) for i, _, why in w]
        np.testing.assert_allclose([r.score for r in g], [s for _, s, _ in w], atol=1e-5)
        assert all(type(r) is Recommendation and isinstance(r.score, float) for r in g)
