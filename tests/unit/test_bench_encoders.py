"""The pure parts of bench/encoders.py and bench/memory.py: batch-size choice, ratios and targets,
arguments, the generated texts, /proc parsing. No broker, no model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

# imported before bench/ (which has an encoders.py of its own) is put on sys.path: binds the package
from recstream.encoders.text import item_text

ROOT = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench as _load  # noqa: E402  (tests/ is not a package)


be = _load("recstream_bench_encoders", "encoders.py")
bm = _load("recstream_bench_memory", "memory.py")


# ------------------------------------------------------------------------------ bench/encoders.py


def test_worker_defaults_are_read_without_importing_faust() -> None:
    from recstream.streams.app import WorkerConfig

    cfg, read = WorkerConfig(), be.worker_defaults()
    assert (read.catalog_batch_max, read.encode_batch, read.max_length, read.item_fields, read.model) == (
        cfg.catalog_batch_max,
        cfg.encode_batch,
        cfg.max_length,
        tuple(cfg.item_fields),
        cfg.model,
    )


def test_best_batch_is_the_fastest_and_the_smallest_among_equals() -> None:
    rows = [
        {"batch_size": 1, "texts_per_s": 30.0},
        {"batch_size": 64, "texts_per_s": 80.0},
        {"batch_size": 32, "texts_per_s": 80.0},
        {"batch_size": 256, "texts_per_s": 75.0},
        {"batch_size": 512, "texts_per_s": None},
    ]
    assert be.best_batch(rows)["batch_size"] == 32
    with pytest.raises(ValueError):
        be.best_batch([{"batch_size": 8, "texts_per_s": None}])


def test_ratio_check_against_the_targets() -> None:
    assert be.ratio_check(45.0, 50.0, be.CATALOG_TARGET) == {"ratio": 0.9, "target": 0.9, "met": True}
    assert be.ratio_check(44.0, 50.0, be.CATALOG_TARGET)["met"] is False
    assert be.ratio_check(70.0, 100.0, be.REVIEWS_TARGET)["met"] is True
    assert be.ratio_check(None, 50.0, 0.9) == {"ratio": None, "target": 0.9, "met": None}
    assert be.ratio_check(10.0, 0.0, 0.9)["met"] is None


def test_rate_uses_the_median_run() -> None:
    assert be.rate(100, [2.0, 1.0, 10.0]) == 50.0
    assert be.rate(100, []) is None


def test_rotation_runs_every_method_once_per_repetition_in_turn() -> None:
    names = ["ours", "st32", "st64"]
    orders = [be.rotation(names, rep) for rep in range(3)]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert [o[0] for o in orders] == names  # each method leads once
    assert be.rotation([], 2) == []


def test_chunks_are_the_agent_micro_batches() -> None:
    assert [len(c) for c in be.chunks(list(range(600)), 256)] == [256, 256, 88]
    assert be.chunks([], 4) == []
    with pytest.raises(ValueError):
        be.chunks([1], 0)


def _args(*argv: str, cuda: bool = False) -> argparse.Namespace:
    return be.resolve_args(be.build_parser().parse_args(list(argv)), cuda=cuda)


def test_arguments_and_their_defaults() -> None:
    full = _args()
    assert (full.catalog_texts, full.review_texts, full.reps) == (512, 256, 3)
    assert full.batch_sizes == [1, 8, 16, 32, 64, 128, 256]
    assert full.sections == ["catalog", "reviews", "contended"]
    quick = _args("--quick")
    assert (quick.catalog_texts, quick.review_texts, quick.reps, quick.batch_sizes) == (64, 64, 1, [1, 16, 64])
    gpu = _args(cuda=True)
    assert (gpu.catalog_texts, gpu.review_texts, gpu.reps) == (4096, 2048, 3)
    own = _args("--batch-sizes", "64,8,8,1_0", "--sections", "reviews", "--device", "auto")
    assert own.batch_sizes == [8, 10, 64] and own.sections == ["reviews"] and own.device == "auto"


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-sizes", "0,8"],
        ["--batch-sizes", "x"],
        ["--device", "tpu"],
        ["--sections", "catalog,other"],
        ["--catalog-texts", "20", "--catalog-size", "10"],
        ["--reps", "0"],
        ["--threads", "-1"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _args(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_catalog_texts_are_the_workers_item_texts() -> None:
    catalog = be.gen.Catalog(50, 42)
    texts = be.catalog_texts(catalog, 20, ("title", "categories", "description"))
    assert len(texts) == 20
    first = catalog.items[0]
    assert texts[0] == item_text(first.title, first.categories, first.description)
    assert texts[0].startswith(first.title) and first.description in texts[0]
    # the first items of a bigger catalog are the same items: the sample is a prefix of the pipeline's catalog
    assert be.catalog_texts(be.gen.Catalog(200, 42), 20, ("title", "categories", "description")) == texts


def test_review_texts_come_from_the_pipeline_generator() -> None:
    catalog = be.gen.Catalog(300, 7)
    texts = be.review_texts(catalog, 40, users=50, seed=7)
    assert texts == be.review_texts(catalog, 40, users=50, seed=7)  # deterministic
    users = be.gen.Users(50, catalog, 7, prefix="ru")
    expected = [v["text"] for _, _, v in be.gen.event_stream("reviews", 40, catalog, users, 7, be.REVIEW_TAG)]
    assert texts == expected
    assert all(10 <= len(t.split()) <= 40 for t in texts)


def test_cuda_without_a_gpu_fails_with_one_clear_line(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert be.main(["--device", "cuda", "--quick"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert "CUDA is not available" in doc["error"]
    assert "Traceback" not in err and "CUDA is not available" in err


# ------------------------------------------------------------------------------ bench/memory.py


def test_memory_configs_parse_and_group_by_catalog_size() -> None:
    configs = bm.parse_configs("100kx100k, 10000x10000,10k x 100_000,100000x10000,10kx10k")
    assert configs == [(10_000, 10_000), (10_000, 100_000), (100_000, 10_000), (100_000, 100_000)]
    assert bm.plan_groups(configs) == [(10_000, [10_000, 100_000]), (100_000, [10_000, 100_000])]
    for bad in ("10000", "ax10", "0x10", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bm.parse_configs(bad)


def test_memory_defaults() -> None:
    args = bm.resolve_args(bm.build_parser().parse_args([]))
    assert args.configs == list(bm.DEFAULT_CONFIGS) and args.catalog == "seed"
    assert bm.resolve_args(bm.build_parser().parse_args(["--quick"])).configs == [(10_000, 10_000)]


def test_proc_status_fields_in_kib() -> None:
    text = "Name:\trecstream\nVmHWM:\t 1048576 kB\nVmRSS:\t  524288 kB\nThreads:\t12\nRssAnon:\t 1000 kB\n"
    assert bm.status_kib(text) == {"VmHWM": 1048576, "VmRSS": 524288, "RssAnon": 1000}


def test_memory_target_is_checked_at_100k_items_and_100k_users() -> None:
    rows = [{"items": 10_000, "users": 10_000, "vm_hwm_bytes": 3 * bm.GiB}, {"items": 100_000, "users": 100_000, "vm_hwm_bytes": int(1.5 * bm.GiB)}]
    check = bm.target_check(rows)
    assert check["met"] is True and check["peak_mib"] == 1536.0 and check["target_mib"] == 2048
    rows[1]["vm_hwm_bytes"] = 2 * bm.GiB
    assert bm.target_check(rows)["met"] is False
    assert bm.target_check(rows[:1])["met"] is None


def test_rss_timeline_downsampling_keeps_the_peak() -> None:
    samples = [(i * 0.5, "users", 1000 + (50_000 if i == 333 else i)) for i in range(1000)]
    out = bm.downsample(samples, 100)
    assert len(out) <= 103
    assert max(o[2] for o in out) == bm.mib(51_000)
    assert out[-1][0] == samples[-1][0]
    assert bm.downsample([], 10) == []


# ------------------------------------------------------------------------------ scoring.topk.ItemMatrix
# (changed for the memory benchmark: large upserts go a slice at a time, and a rebuild reserves its size)


def test_item_matrix_upsert_in_slices_equals_one_write(monkeypatch) -> None:
    import numpy as np
    import torch

    import recstream.scoring.topk as tk

    rng = np.random.default_rng(5)
    ids = [f"i{int(x)}" for x in rng.integers(0, 40, 90)]  # repeated ids: the last vector wins
    vecs = rng.standard_normal((90, 6)).astype(np.float32)
    original = vecs.copy()
    whole = tk.ItemMatrix(6, capacity=2)
    whole.upsert(ids, vecs)
    monkeypatch.setattr(tk, "UPSERT_SLICE", 7)
    for given in (vecs, list(vecs), torch.from_numpy(vecs)):
        sliced = tk.ItemMatrix(6, capacity=2)
        sliced.upsert(ids, given)
        assert sliced.ids() == whole.ids()
        assert torch.equal(sliced.data, whole.data) and torch.equal(sliced.valid, whole.valid)
    last = {i: v for i, v in zip(ids, vecs)}
    for item_id, v in last.items():
        np.testing.assert_allclose(whole.vector(item_id), v / np.linalg.norm(v), atol=1e-6)
    assert np.array_equal(vecs, original)  # the caller's array is not normalized in place


def test_item_matrix_refuses_a_bad_vector_before_changing_anything() -> None:
    import numpy as np

    from recstream.scoring.topk import ItemMatrix

    m = ItemMatrix(4)
    with pytest.raises(ValueError, match="vector 1"):
        m.upsert(["a", "b"], [np.ones(4, dtype=np.float32), np.ones(3, dtype=np.float32)])
    assert len(m) == 0 and m.ids() == []


def test_item_matrix_reserve_allocates_exactly_once() -> None:
    import numpy as np

    from recstream.scoring.topk import ItemMatrix

    m = ItemMatrix(4, capacity=2)
    m.upsert(["a"], np.ones(4, dtype=np.float32))
    m.reserve(1000)
    assert m.capacity == 1000 and m.ids() == ["a"]
    storage = m._data
    m.upsert([f"x{i}" for i in range(999)], np.ones((999, 4), dtype=np.float32))
    assert m._data is storage and len(m) == 1000  # no reallocation up to the reserved size
    m.reserve(10)
    assert m.capacity == 1000
    with pytest.raises(ValueError):
        m.reserve(-1)
