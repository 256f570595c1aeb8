"""The IVF item matrix (``--index ivf|auto``): same answers as exact search where it must be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from recstream.scoring.ann import IVFItemMatrix, make_item_matrix, resolve_index  # noqa: E402
from recstream.scoring.topk import ItemMatrix, score_topk  # noqa: E402

DIM = 16


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"i{j}" for j in range(start, start + n)]


def _pair(n: int, **kw) -> tuple[ItemMatrix, IVFItemMatrix]:
    vecs = _clustered(n)
    exact, ivf = ItemMatrix(DIM), IVFItemMatrix(DIM, **kw)
    exact.upsert(_ids(n), vecs)
    ivf.upsert(_ids(n), vecs)
    return exact, ivf


def _ranked(results) -> list[list[str]]:
    return [[r.item_id for r in res] for res in results]


def test_below_min_items_it_is_exact() -> None:
    exact, ivf = _pair(300, min_items=1_000)
    assert not ivf.approximate
    q = _clustered(8, seed=1)
    none = [()] * 8
    assert _ranked(score_topk(ivf, q, 10, none)) == _ranked(score_topk(exact, q, 10, none))


def test_probing_every_list_gives_the_exact_ranking() -> None:
    exact, ivf = _pair(2_000, min_items=500, nlist=16, nprobe=16)
    assert ivf.approximate and ivf.index_lists == 16
    q = _clustered(32, seed=2)
    none = [()] * 32
    got, want = score_topk(ivf, q, 10, none), score_topk(exact, q, 10, none)
    assert _ranked(got) == _ranked(want)
    assert np.allclose([[r.score for r in res] for res in got], [[r.score for r in res] for res in want], atol=1e-5)


def test_default_probing_keeps_high_recall() -> None:
    exact, ivf = _pair(5_000, min_items=1_000)  # nlist = round(sqrt(5000)) = 71, nprobe 16
    q = _clustered(200, seed=3)
    none = [()] * 200
    got, want = _ranked(score_topk(ivf, q, 10, none)), _ranked(score_topk(exact, q, 10, none))
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9


def test_updates_and_removals_reach_the_index() -> None:
    exact, ivf = _pair(2_000, min_items=500, nlist=8, nprobe=8)
    q = _clustered(1, seed=4)
    ivf.upsert(["i7"], q[0])  # i7 now points exactly at the query
    assert score_topk(ivf, q, 1, [()])[0][0].item_id == "i7"
    ivf.remove(["i7"])
    assert "i7" not in _ranked(score_topk(ivf, q, 10, [()]))[0]
    assert ivf.approximate and len(ivf) == 1_999


def test_exclusions_never_shorten_a_list() -> None:
    """With one list probed, the index proposes few candidates; excluding them all must still
    give k items: the short queries are answered exactly."""
    exact, ivf = _pair(2_000, min_items=500, nlist=200, nprobe=1)  # about 10 items per list
    q = _clustered(4, seed=5)
    proposed = _ranked(score_topk(ivf, q, 60, [()] * 4))
    _, rows = ivf.search(torch.from_numpy(q), 70)
    assert all(-1 in r for r in rows)  # the probed list holds fewer than 70 items
    exclude = [set(p) for p in proposed]
    got = score_topk(ivf, q, 10, exclude)
    want = score_topk(exact, q, 10, exclude)
    assert all(len(res) == 10 for res in got)
    assert _ranked(got) == _ranked(want)


def test_rebuilds_when_the_catalog_grows() -> None:
    ivf = IVFItemMatrix(DIM, min_items=500, retrain_growth=2.0)
    ivf.upsert(_ids(600), _clustered(600))
    assert ivf.builds == 1
    ivf.upsert(_ids(500, start=600), _clustered(500, seed=9))  # 1,100 > 2 x 600? no
    assert ivf.builds == 1
    ivf.upsert(_ids(200, start=1_100), _clustered(200, seed=10))  # 1,300 > 1,200: rebuild
    assert ivf.builds == 2 and ivf.approximate
    ivf.clear()
    assert not ivf.approximate and len(ivf) == 0


def test_resolve_index() -> None:
    assert resolve_index("exact", "cpu") == "exact"
    assert resolve_index("ivf", "cpu") == "ivf"
    assert resolve_index("auto", "cpu") == "ivf"
    assert resolve_index("auto", torch.device("cuda")) == "exact"  # the exact fp16 matmul wins on a GPU
    with pytest.raises(ValueError, match="index: must be one of"):
        resolve_index("hnsw", "cpu")
    assert type(make_item_matrix(DIM, "cpu", "exact")) is ItemMatrix
    assert isinstance(make_item_matrix(DIM, "cpu", "auto"), IVFItemMatrix)


def test_bad_settings() -> None:
    for kw in ({"min_items": 0}, {"nprobe": 0}, {"nlist": 0}, {"retrain_growth": 1.0}):
        with pytest.raises(ValueError):
            IVFItemMatrix(DIM, **kw)
