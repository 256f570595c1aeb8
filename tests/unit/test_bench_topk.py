"""bench/topk.py on tiny sizes: JSON shape, exact methods against numpy, recall@k. No timing assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench  # noqa: E402  (tests/ is not a package)

sc = load_bench("recstream_bench_topk", "topk.py")
K = 10


def tiny(**kw) -> "sc.Settings":
    base = dict(
        sizes=[300, 1200],
        batches=[1, 8],
        dim=16,
        k=K,
        seed=3,
        device="cpu",
        threads=1,
        cell_target_s=0.001,
        min_reps=1,
        max_reps=2,
        clusters=20,
        topics=4,
        subspace_rank=4,
        ann=["ivf", "hnsw"],
        nprobe=[2, 10_000],
        ef_search=[64],
        hnsw_m=8,
        hnsw_size=600,
    )
    base.update(kw)
    return sc.Settings(**base)


def numpy_topk(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def result() -> dict:
    return sc.run_benchmark(tiny())


def test_json_shape(result: dict) -> None:
    doc = json.loads(json.dumps(result))  # JSON-serialisable as is
    assert set(doc) >= {"data", "results", "ratios", "notes"}
    res = doc["results"]
    assert set(res) >= {"exact", "approximate", "builds", "approximate_builds", "checks"}
    exact = [r for r in res["exact"] if "subsample_of" not in r]
    assert len(exact) == 2 * 2 * 3  # sizes x batches x exact methods
    reference = [r for r in res["exact"] if "subsample_of" in r]  # faiss flat on the HNSW subsample
    assert {(r["n"], r["method"]) for r in reference} == {(600, "faiss_flat_ip")} and len(reference) == 2
    assert {r["method"] for r in exact} == {"recstream_score_topk", "torch_topk", "faiss_flat_ip"}
    for r in exact:
        assert r["users_per_s"] > 0 and r["reps"] >= 1 and r["median_ms"] > 0
        assert {"n", "batch", "engine", "params", "search_peak_rss_growth_mib", "cell_cpu_per_wall"} <= set(r)
    assert {(b["n"], b["method"]) for b in res["builds"]} >= {(n, m) for n in (300, 1200) for m in ("recstream_score_topk", "torch_topk", "faiss_flat_ip")}
    assert all(b["index_bytes"] > 0 for b in res["builds"] + res["approximate_builds"])
    # IVF on the largest N (nprobe capped at nlist), HNSW on a 600-item subsample with its own flat reference
    ivf = [r for r in res["approximate"] if r["method"] == "faiss_ivf_flat"]
    hnsw = [r for r in res["approximate"] if r["method"] == "faiss_hnsw_flat"]
    assert {r["n"] for r in ivf} == {1200} and len(ivf) == 2 * 2
    assert {r["n"] for r in hnsw} == {600} and all(r["subsample_of"] == 1200 for r in hnsw)
    nlist = round(1200**0.5)
    assert {r["params"]["nprobe"] for r in ivf} == {2, nlist}
    assert {b["method"] for b in res["approximate_builds"]} == {"faiss_ivf_flat", "faiss_hnsw_flat"}
    assert any("subsample" in n for n in doc["notes"])
    ratios = doc["ratios"]
    assert len(ratios["recstream_over_faiss_flat"]) == 4 and len(ratios["torch_over_faiss_flat"]) == 4
    assert len(ratios["approximate_over_exact"]) == len(ivf) + len(hnsw)
    assert all(r["speedup_vs_faiss_flat"] > 0 for r in ratios["approximate_over_exact"])


def test_exact_methods_agree_in_the_run(result: dict) -> None:
    checks = result["results"]["checks"]
    for c in checks:
        if c["kind"] == "exact":
            assert c["recall_at_10"] == 1.0 and c["identical_ranked_lists"] == 1.0, c
    # IVF probing every list is exhaustive: recall 1.0 against the flat index
    full = [c for c in checks if c["label"] == f"faiss_ivf_flat[nprobe={round(1200**0.5)}]"]
    assert full and full[0]["recall_at_10"] == 1.0
    # 0 <= recall <= 1 everywhere, and it is reported next to each approximate figure
    assert all(0.0 <= r["recall_at_k"] <= 1.0 for r in result["ratios"]["approximate_over_exact"])


def test_exact_methods_match_numpy_brute_force() -> None:
    s = tiny()
    mix = sc.Mixture(s)
    items = mix.sample(1500, stream=1)
    queries = mix.sample(13, stream=2)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    want = numpy_topk(items, queries, K)
    for m in sc.exact_methods(K, torch.device("cpu")):
        m.build(items)
        got = m.search(queries)
        assert got.shape == (13, K) and got.dtype == np.int64
        np.testing.assert_array_equal(got, want, err_msg=m.name)
        # one query at a time gives the same answer
        np.testing.assert_array_equal(m.search(queries[:1]), want[:1], err_msg=m.name)
        m.close()


def test_data_is_seeded_and_structured() -> None:
    s = tiny()
    a = sc.Mixture(s).sample(200, stream=1)
    b = sc.Mixture(s).sample(200, stream=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sc.Mixture(s).sample(200, stream=2))
    # chunked generation is a prefix of a longer run
    np.testing.assert_array_equal(sc.Mixture(s).sample(500, stream=1, chunk=64)[:64], sc.Mixture(s).sample(64, stream=1, chunk=64))
    # clustered: the nearest neighbour is much closer than a random pair
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    assert sims.max(axis=1).mean() > sims.mean() + 0.3


def test_slow_cells_skip_the_warm_up() -> None:
    s = tiny(slow_round_s=0.5)
    mix = sc.Mixture(s)
    items, pool = mix.sample(500, stream=1), mix.sample(16, stream=2)
    methods = sc.exact_methods(K, torch.device("cpu"))
    for m in methods:
        m.build(items)
    mem = sc.Memory(torch.device("cpu"))
    fast = sc.time_cell(methods, pool, 4, s, mem, expected_round_s=0.0)
    slow = sc.time_cell(methods, pool, 4, s, mem, expected_round_s=10.0)
    assert fast["warmup"] and not slow["warmup"] and slow["reps"] == 2
    assert all(r["reps"] == 2 and r["warmup_ms"] is None for r in slow["rows"].values())
    want = numpy_topk(items, pool[:4], K)
    for cell in (fast, slow):
        for ids in cell["first_ids"].values():
            np.testing.assert_array_equal(ids, want)
    assert sc.expected_round(fast, [4, 8], 4) == pytest.approx(sum(r["median_ms"] for r in fast["rows"].values()) / 1000 * 2)
    assert sc.expected_round(fast, [4, 8], 8) == 0.0


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert sc.recall_at_k(exact, exact) == 1.0
    assert sc.recall_at_k(exact[:, ::-1], exact) == 1.0  # order does not matter
    approx = np.array([[1, 2, 9, -1], [8, 7, 6, 5]])
    assert sc.recall_at_k(approx, exact) == pytest.approx((2 + 4) / 8)
    assert sc.recall_at_k(np.full((2, 4), -1), exact) == 0.0
    with pytest.raises(ValueError):
        sc.recall_at_k(exact[:1], exact)
    # an exact index has recall 1.0 against the numpy brute force
    s = tiny()
    mix = sc.Mixture(s)
    items, queries = mix.sample(800, stream=1), mix.sample(20, stream=2)
    flat = sc.FaissFlat(K)
    flat.build(items)
    assert sc.recall_at_k(flat.search(queries), numpy_topk(items, queries, K)) == 1.0


def test_cli_writes_one_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scoring.json"
    status = sc.main(
        [
            "--sizes",
            "200,400",
            "--batches",
            "1,4",
            "--dim",
            "8",
            "--threads",
            "1",
            "--cell-target-s",
            "0.001",
            "--min-reps",
            "1",
            "--max-reps",
            "2",
            "--ann",
            "ivf",
            "--nprobe",
            "4",
            "--output",
            str(out),
        ]
    )
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert "error" not in doc
    assert {"machine", "versions", "parameters", "results", "ratios"} <= set(doc)
    assert doc["machine"]["threads"] == 1 and doc["machine"]["torch_threads"] == 1
    assert doc["machine"]["faiss_omp_threads"] == 1 and doc["machine"]["cpu_count"] >= 1
    assert {"torch", "faiss", "numpy", "python"} <= set(doc["versions"])
    assert doc["parameters"]["sizes"] == [200, 400] and doc["parameters"]["ann"] == ["ivf"]
    assert not [r for r in doc["results"]["approximate"] if r["method"] == "faiss_hnsw_flat"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_cuda_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = sc.main(["--device", "cuda", "--sizes", "100", "--batches", "1", "--dim", "8", "--ann", "none"])
    assert status == 1
    doc = json.loads(capsys.readouterr().out)
    assert "CUDA is not available" in doc["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_tiny() -> None:
    res = sc.run_benchmark(tiny(device="cuda", ann=[]))
    for c in res["results"]["checks"]:
        assert c["recall_at_10"] >= 0.9  # fp16 on the GPU may swap near-ties (16-d items, close scores)
    assert all("search_peak_gpu_growth_mib" in r for r in res["results"]["exact"] if r["engine"].startswith("cuda"))
