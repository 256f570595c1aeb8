#!/usr/bin/env python
"""Cost per event of the engine's batch step with and without the learned user encoder.

Engine-level, no Kafka: :meth:`scoring.engine.Engine.process` on the benchmark's click
workload (bench/pipeline.py: a 10,000-item catalog, 2,000 users, 90% clicks and 10%
purchases, Zipf item popularity), once with the text profile (the worker's default) and once
with ``user_encoder`` (scoring/learned.py; a SASRec checkpoint of the given shape with random
weights: the cost does not depend on the weights) on the same events.  Profiles persist from
batch to batch, so histories fill up as in a long run; the first ``--warmup`` batches are left
out.  CPU time is ``time.process_time`` (all threads), scoring with one torch thread as in the
worker, and wall time ``time.perf_counter`` (what counts on a GPU, where the matrix products
leave the CPU); each figure is the median over ``--rounds`` rounds.  ``--device cuda`` puts
the item matrix (fp16, the worker's default there) and the model on the GPU.  JSON on stdout.

    .venv/bin/python bench/learned_serving.py                   # batches of 128 and 512
    .venv/bin/python bench/learned_serving.py --quick
    python bench/learned_serving.py --device cuda               # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import cpu_model, emit_result  # noqa: E402
from recstream.encoders.profile import DecayedProfileModel, ProfileConfig  # noqa: E402
from recstream.encoders.sasrec import SASRec, SASRecConfig, save_checkpoint  # noqa: E402
from recstream.scoring.engine import Engine, EngineConfig, Incoming  # noqa: E402
from recstream.scoring.learned import LearnedUserEncoder  # noqa: E402
from recstream.scoring.popularity import DecayedPopularity  # noqa: E402
from recstream.scoring.topk import ItemMatrix  # noqa: E402
from recstream.streams.records import Click, Purchase  # noqa: E402

DIM = 384


class NoTexts:
    name = "all-MiniLM-L6-v2"

    def encode_numpy(self, texts):  # pragma: no cover
        raise AssertionError("no review texts in this workload")


def events(n: int, users: int, items: int, rng: np.random.Generator, start_ts: int) -> list[Incoming]:
    ranks = np.arange(1, items + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    item_idx = rng.choice(items, size=n, p=p)
    user_idx = rng.integers(0, users, size=n)
    kinds = rng.random(n) < 0.9
    out = []
    for j in range(n):
        cls = Click if kinds[j] else Purchase
        topic = "clicks" if kinds[j] else "purchases"
        out.append(
            Incoming(cls(user_id=f"u{user_idx[j]}", item_id=f"item-{item_idx[j]}", ts=start_ts + j * 10, event_id=f"e{start_ts + j}"), topic, 0, start_ts + j)
        )
    return out


def run(engine: Engine, batches: list[list[Incoming]], warmup: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per event after the first ``warmup`` batches."""
    profiles: dict = {}
    cpu = wall = 0.0
    counted = 0
    for b, batch in enumerate(batches):
        t0, w0 = time.process_time(), time.perf_counter()
        res = engine.process(batch, profiles)  # returns Python lists: the GPU work is done
        dt, dw = time.process_time() - t0, time.perf_counter() - w0
        profiles.update(res.profiles)
        if b >= warmup:
            cpu += dt
            wall += dw
            counted += len(batch)
    return cpu / max(counted, 1), wall / max(counted, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=10_000, help="catalog items (default 10000)")
    p.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    p.add_argument("--events", type=int, default=20_000, help="events per round (default 20000)")
    p.add_argument("--batches", default="128,512", help="micro-batch sizes (default 128,512)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="first batches left out (default 5)")
    p.add_argument("--history-len", type=int, default=50, help="profile events kept (default 50, the worker's)")
    p.add_argument("--dim", type=int, default=64, help="model width (default 64)")
    p.add_argument("--layers", type=int, default=2, help="blocks (default 2)")
    p.add_argument("--max-len", type=int, default=50, help="model max_len (default 50)")
    p.add_argument("--checkpoint", type=Path, help="serve this checkpoint instead of a random one of that shape")
    p.add_argument("--device", default="cpu", help="torch device of the item matrix and the model (default cpu)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 events, 1 round")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 2000, 1
    torch.set_num_threads(1)
    rng = np.random.default_rng(42)
    vecs = rng.standard_normal((args.items, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"item-{j}" for j in range(args.items)]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            torch.manual_seed(0)
            ckpt = save_checkpoint(
                SASRec(SASRecConfig(vocab=tuple(ids), text_dim=DIM, dim=args.dim, layers=args.layers, max_len=args.max_len)), Path(tmp) / "random.ckpt"
            )
        encoder = LearnedUserEncoder(ckpt, args.device)
        results: dict = {}
        for bs in [int(b) for b in args.batches.split(",")]:
            for mode in ("text-profile", "learned"):
                per_event, wall_per_event = [], []
                for r in range(args.rounds):
                    m = ItemMatrix(DIM, args.device)
                    m.upsert(ids, vecs)
                    cfg = EngineConfig(k=10, emit="per-user")
                    engine = Engine(
                        model=DecayedProfileModel(ProfileConfig(history_len=args.history_len), dim=DIM),
                        matrix=m,
                        popularity=DecayedPopularity(cfg.popularity_half_life_ms),
                        texts=NoTexts(),
                        config=cfg,
                        user_encoder=encoder if mode == "learned" else None,
                    )
                    evs = events(args.events, args.users, args.items, np.random.default_rng(100 + r), 1_700_000_000_000)
                    batches = [evs[i : i + bs] for i in range(0, len(evs), bs)]
                    cpu_s, wall_s = run(engine, batches, args.warmup)
                    per_event.append(cpu_s)
                    wall_per_event.append(wall_s)
                    print(
                        f"[learned_serving] batch {bs} {mode} round {r}: {cpu_s * 1e6:.0f} us CPU/event, {wall_s * 1e6:.0f} us wall/event",
                        file=sys.stderr,
                        flush=True,
                    )
                results.setdefault(f"batch_{bs}", {})[mode] = {
                    "cpu_us_per_event_median": round(statistics.median(per_event) * 1e6, 1),
                    "wall_us_per_event_median": round(statistics.median(wall_per_event) * 1e6, 1),
                    "rounds_us": [round(x * 1e6, 1) for x in per_event],
                    "rounds_wall_us": [round(x * 1e6, 1) for x in wall_per_event],
                }
            row = results[f"batch_{bs}"]
            for what in ("cpu", "wall"):
                key = f"{what}_us_per_event_median"
                row[f"learned_over_text_profile_{what}"] = round(row["learned"][key] / row["text-profile"][key], 3)
        doc = {
            "benchmark": "learned encoder serving cost (bench/learned_serving.py)",
            "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": {
                "checkpoint": str(args.checkpoint) if args.checkpoint else "random weights",
                "dim": args.dim,
                "layers": args.layers,
                "max_len": encoder.current().max_len,
            },
            "machine": {
                "cpu_model": cpu_model(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "device": args.device,
                "gpu": torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else None,
            },
            "results": results,
        }
    emit_result(doc, args.output, lambda m: print(f"[learned_serving] {m}", file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
