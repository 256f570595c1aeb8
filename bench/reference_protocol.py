#!/usr/bin/env python
"""Issue 8's reference protocol on ml-latest-small: popularity, item-kNN, text-only and blends.

Runs :func:`scoring.protocol.run_reference` (see that module for the protocol): all ratings in
``(timestamp, user, item)`` order, the first 80% warm the state, every later rating >= 4 of a
user with an earlier rating is a test case, candidates are the whole catalog minus the items
the user rated before.  The blend weights are tuned on the validation window (the 70-80% slice,
warmed on the first 70%) over a grid of weights on the simplex for each normalisation, then
every method is evaluated on the test window (the last 20%): popularity (30-day half-life),
item-kNN (last 20 positives), the text-only profile, the blend with the tuned weights and the
issue's equal-weight z-score blend.

Item embeddings (all-MiniLM-L6-v2 of ``"<title>. Genres: ..."``) are cached in
``.recstream/cache/`` (git-ignored): the first run embeds the 9,742 movies, which takes minutes
on a small CPU.

One JSON document goes to stdout (``--output`` also writes it to a file): the table, the tuned
weights, the counts, the timings, the machine and the versions.  Progress goes to stderr.
Exit status 0 on success, 1 on an error (the JSON then has ``error``), 130 when interrupted.

Run from the repository root::

    .venv/bin/python bench/reference_protocol.py --output bench/results/reference_protocol.json
    .venv/bin/python bench/reference_protocol.py --quick     # smoke run: the first 15,000 ratings, coarse grid
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # bench/ (common.py), then the checkout first
    if _p not in sys.path:
        sys.path.insert(0, _p)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import Guarded, add_run_args, bench_header, cpu_model, finish, mem_total_gib, pkg_version  # noqa: E402
from recstream.scoring.blend import NORMALIZATIONS, BlendWeights  # noqa: E402
from recstream.scoring.protocol import (  # noqa: E402
    COOC_EVENTS,
    DAY_MS,
    ProtocolConfig,
    ProtocolData,
    embed_texts,
    run_reference,
    weight_grid,
)
from recstream.streams.tune import load_protocol_data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
QUICK_INTERACTIONS = 15_000


def log(msg: str) -> None:
    print(f"[reference_protocol] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    p.add_argument("-k", type=int, default=10, help="list length (default 10)")
    p.add_argument("--grid-step", type=float, default=0.1, help="weight grid step on the simplex (default 0.1; --quick 0.25)")
    p.add_argument("--normalizations", default=",".join(NORMALIZATIONS), help="normalisations tried (default zscore,rank)")
    p.add_argument("--cooc-half-life-days", type=float, default=0.0, help="co-occurrence half-life in days, 0 = no decay (default 0)")
    p.add_argument("--cooc-neighbours", type=int, default=100, help="co-occurrence neighbours kept per item (default 100)")
    p.add_argument(
        "--cooc-events",
        choices=COOC_EVENTS,
        default="positive",
        help="the blend's co-occurrence counts positive ratings (default), every rating, or the engine's positives",
    )
    p.add_argument("--cooc-pair-decay", type=float, default=1.0, help="co-occurrence pair weight per history position between the two items (default 1: none)")
    p.add_argument(
        "--cooc-recency", type=float, default=1.0, help="weight per position of a history item when scoring, the latest counts 1 (default 1: plain sum)"
    )
    p.add_argument("--cooc-history", type=int, default=20, help="history items paired and scored by the co-occurrence (default 20)")
    p.add_argument("--knn-neighbours", type=int, default=100, help="item-kNN baseline neighbours kept per item (default 100)")
    p.add_argument(
        "--popularity-counts",
        choices=("positive", "all"),
        default="positive",
        help="popularity counts positive ratings (default, as the issue's table) or all ratings",
    )
    p.add_argument("--batch-size", type=int, default=256, help="cases scored together (default 256)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".recstream" / "cache", help="embedding cache folder")
    p.add_argument("--device", default=None, help="text encoder device (default: cuda when present, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores this process may use)")
    p.add_argument("--save-weights", type=Path, help="write the tuned weights to this blend config file")
    add_run_args(p, f"smoke run: the first {QUICK_INTERACTIONS:,} ratings, grid step 0.25")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    step = 0.25 if args.quick and args.grid_step == 0.1 else args.grid_step
    norms = [n.strip() for n in args.normalizations.split(",") if n.strip()]
    result: dict = bench_header("issue 8 reference protocol (bench/reference_protocol.py)", "bench/reference_protocol.py", argv)
    progress = not args.no_progress
    with Guarded(result, log) as guard:
        torch.set_num_threads(threads)
        config = ProtocolConfig(
            k=args.k,
            cooc_max_neighbours=args.cooc_neighbours,
            knn_max_neighbours=args.knn_neighbours,
            popularity_counts=args.popularity_counts,
            cooc_half_life_ms=args.cooc_half_life_days * DAY_MS if args.cooc_half_life_days > 0 else None,
            cooc_events=args.cooc_events,
            cooc_pair_decay=args.cooc_pair_decay,
            cooc_recency=args.cooc_recency,
            cooc_history_len=args.cooc_history,
            batch_size=args.batch_size,
        )
        grid = weight_grid(step, norms)
        result["parameters"] = {
            "data": str(args.data),
            "quick": args.quick,
            "grid_step": step,
            "normalizations": norms,
            "protocol": config.to_dict(),
            "threads": threads,
        }
        result["machine"] = {
            "cpu_model": cpu_model(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": mem_total_gib(),
            "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "cuda_available": torch.cuda.is_available(),
        }
        result["versions"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "transformers": pkg_version("transformers"),
            "recstream": pkg_version("recstream"),
        }
        t0 = time.perf_counter()
        log(f"reading {args.data}")
        data = load_protocol_data(args.data, progress=progress)
        t_read = time.perf_counter() - t0
        if args.quick:
            data = ProtocolData(data.name, data.catalog, data.interactions[:QUICK_INTERACTIONS], data.row_of)
        log(f"{len(data.interactions):,} interactions, {len(data.catalog):,} items; embedding (cache {args.cache_dir})")
        emb, emb_info = embed_texts(data.texts(), cache_dir=args.cache_dir, device=args.device, progress=progress)
        log(f"embeddings: {emb_info}")
        t1 = time.perf_counter()
        doc = run_reference(data, emb, config=config, grid=grid, progress=progress)
        t_protocol = time.perf_counter() - t1
        result.update(doc)
        result["embeddings"] = {**emb_info, "dim": int(emb.shape[1]), "text_example": data.texts()[0]}
        result["seconds"] = {
            "read_dataset": round(t_read, 1),
            "embed": emb_info["seconds"],
            "protocol": round(t_protocol, 1),
            **doc["seconds"],
        }
        if args.save_weights:
            tuned = BlendWeights.from_dict(doc["tuned_weights"])
            tuned.save(
                args.save_weights,
                meta={
                    "dataset": data.name,
                    "tuned_on_interactions": doc["validation"]["interactions"],
                    "tuned_on_ts_ms": doc["validation"]["ts_ms"],
                    "validation_ndcg": doc["validation"]["top5"][0][f"ndcg@{args.k}"],
                    "command": result["command"],
                },
            )
            result["weights_file"] = str(args.save_weights)
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
