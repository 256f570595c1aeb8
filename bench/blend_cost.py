#!/usr/bin/env python
"""CPU time per event of the engine's batch step: text-only, the dense blend and the
two-stage blend (the worker's default ranker), side by side.

The benchmark's click workload (bench/pipeline.py): a generated catalog (default 10,000
items, random unit vectors of the text model's size: the click path never runs the text
model), 2,000 users clicking items (Zipf-like popularity, each user's clicks around a few
favourite items), micro-batches of 512, per-user emission, as the worker runs by default.
The same events go through :class:`scoring.engine.Engine` without blend weights, with the
default weights ranked densely (every item blended), and with the same weights in two
stages (``EngineConfig.blend_candidates``, the default); the blends' figures include what the worker adds for it: serialising the co-occurrence
rows the batch changed (``CooccurrenceRow.to_bytes``, the table writes).

CPU time is the process's (``time.process_time``, every thread), after warm-up batches;
one scoring thread, as the worker's default.  Prints one JSON document.  The machine may
be shared: repeat on a quiet one for figures to quote.

    .venv/bin/python bench/blend_cost.py [--items 10000] [--users 2000] [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encoders.profile import DecayedProfileModel, UserProfile  # noqa: E402
from scoring.blend import DEFAULT_WEIGHTS, BlendWeights  # noqa: E402
from scoring.engine import Engine, EngineConfig, Incoming  # noqa: E402
from scoring.popularity import DecayedPopularity  # noqa: E402
from scoring.topk import ItemMatrix  # noqa: E402
from streams.records import Click  # noqa: E402

DIM = 384


class NoTexts:
    name = "none"

    def encode_numpy(self, texts):  # pragma: no cover - clicks carry no text
        raise AssertionError("the click workload has no review text")


def workload(items: int, users: int, events: int, seed: int) -> tuple[list[str], np.ndarray, list[Incoming]]:
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(items)]
    vecs = rng.standard_normal((items, DIM)).astype(np.float32)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    favourites = rng.choice(items, size=(users, 5), p=pop)
    out = []
    ts = 1_700_000_000_000
    for n in range(events):
        u = int(rng.integers(users))
        item = int(favourites[u, rng.integers(5)] + rng.integers(-3, 4)) % items if rng.random() < 0.7 else int(rng.choice(items, p=pop))
        ts += int(rng.integers(1, 50))
        out.append(Incoming(Click(f"user-{u}", ids[item], ts, f"e{n}"), "clicks", u % 4, n))
    return ids, vecs, out


def run(ids, vecs, events, blend: BlendWeights | None, batch: int, warm: int, two_stage: bool = True) -> dict:
    matrix = ItemMatrix(DIM, "cpu")
    matrix.upsert(ids, vecs)
    cfg = EngineConfig(k=10, emit="per-user", blend=blend, blend_candidates=two_stage)
    engine = Engine(model=DecayedProfileModel(dim=DIM), matrix=matrix, popularity=DecayedPopularity(cfg.popularity_half_life_ms),
                    texts=NoTexts(), config=cfg, partition_popularity={}, partition_cooccurrence={} if blend else None)
    profiles: dict[str, UserProfile] = {}
    cpu = wall = 0.0
    measured = rows = row_bytes = 0
    for n, start in enumerate(range(0, len(events), batch)):
        chunk = events[start : start + batch]
        c0, w0 = time.process_time(), time.perf_counter()
        # the worker reads profiles from RocksDB as bytes and writes them back as bytes
        users = {i.event.user_id for i in chunk}
        stored = {u: UserProfile.from_bytes(profiles[u]) for u in users if u in profiles}
        res = engine.process(chunk, stored)
        for u, p in res.profiles.items():
            profiles[u] = p.to_bytes()
        for p, item in res.cooccurrence_touched:
            row = engine.partition_cooccurrence[p].row(item)  # type: ignore[index]
            row_bytes += len(row.to_bytes())
            rows += 1
        c1, w1 = time.process_time(), time.perf_counter()
        if n >= warm:
            cpu += c1 - c0
            wall += w1 - w0
            measured += len(chunk)
    return {
        "events_measured": measured,
        "cpu_us_per_event": round(1e6 * cpu / max(measured, 1), 1),
        "wall_us_per_event": round(1e6 * wall / max(measured, 1), 1),
        "cooccurrence_rows_written_per_event": round(rows / len(events), 2) if blend else 0,
        "cooccurrence_bytes_per_row": round(row_bytes / rows) if rows else 0,
        "cooccurrence_items": len(engine.cooccurrence) if engine.cooccurrence is not None else 0,
        "candidates_per_user": round(engine.candidate_stats.candidates / max(engine.candidate_stats.users, 1), 1),
        "users_ranked_densely": round(engine.candidate_stats.dense / max(engine.candidate_stats.users, 1), 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warm", type=int, default=4, help="batches not measured (default 4)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    torch.set_num_threads(1)
    ids, vecs, events = workload(args.items, args.users, args.events, args.seed)
    text = run(ids, vecs, events, None, args.batch, args.warm)
    dense = run(ids, vecs, events, DEFAULT_WEIGHTS, args.batch, args.warm, two_stage=False)
    blend = run(ids, vecs, events, DEFAULT_WEIGHTS, args.batch, args.warm)
    doc = {
        "benchmark": "engine CPU per event, text-only vs blend (bench/blend_cost.py)",
        "parameters": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_avg_1m": os.getloadavg()[0]},
        "weights": DEFAULT_WEIGHTS.label(),
        "text_only": text,
        "blend_dense": dense,
        "blend": blend,
        "blend_dense_over_text_cpu": round(dense["cpu_us_per_event"] / max(text["cpu_us_per_event"], 1e-9), 2),
        "blend_over_text_cpu": round(blend["cpu_us_per_event"] / max(text["cpu_us_per_event"], 1e-9), 2),
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
