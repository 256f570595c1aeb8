#!/usr/bin/env python
"""CPU time per event of the engine's batch step: text-only, the dense blend, the
two-stage blend with fixed weights and the default ranker (the two-stage blend with weights
adapting online), side by side, at one or more catalog sizes.

The benchmark's click workload (bench/pipeline.py): a generated catalog (default 10,000 and
100,000 items, random unit vectors of the text model's size: the click path never runs the text
model; ``--index ivf``: the worker's IVF index, searched from 100,000 items), 2,000 users clicking items (Zipf-like popularity, each user's clicks around a few
favourite items), micro-batches of 512, per-user emission, as the worker runs by default
(``--emit per-event``: a list per event, as bench/pipeline.py's worker).
The same events go through :class:`scoring.engine.Engine` without blend weights (today's
text-only path), with the default weights ranked densely (every item blended), with the same
weights in two stages (``EngineConfig.blend_candidates``), and with the worker's default
ranker: two stages and weights adapting online (``adapt=AdaptConfig()``, which also ranks
each user's grid of neighbouring weightings, :mod:`scoring.adapt`), and the same default as a
worker with its HTTP API runs it (``default_api``: the batch ranked in segments of
``RANK_SEGMENT`` snapshots with :attr:`Engine.between_steps` called between them, where the API's
queries are answered; here the hook does nothing); the blends' figures
include what the worker adds for it: serialising the co-occurrence rows the batch changed
(``CooccurrenceRow.to_bytes``, the table writes).

CPU time is the process's (``time.process_time``, every thread), after warm-up batches;
one scoring thread, as the worker's default.  Each size's runs are made one after another
in the same process and their ratios to the text-only run are reported (compare ratios of
one run: the machine may be shared).  ``--repeat N`` runs each ranker N times, interleaved,
and keeps each one's least CPU time.  Prints one JSON document.

    .venv/bin/python bench/blend_cost.py [--items 10000 100000] [--users 2000] [--events N] [--warm N]
                                         [--repeat N] [--rankers ...] [--index exact|auto|ivf] [--emit per-user|per-event]

``--events`` and ``--warm`` default to 6,000 and 4 batches up to 20,000 items, 4,000 and 2
beyond.
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

from recstream.encoders.profile import DecayedProfileModel, UserProfile  # noqa: E402
from recstream.scoring.adapt import AdaptConfig  # noqa: E402
from recstream.scoring.blend import DEFAULT_WEIGHTS, BlendWeights  # noqa: E402
from recstream.scoring.engine import Engine, EngineConfig, Incoming  # noqa: E402
from recstream.scoring.popularity import DecayedPopularity  # noqa: E402
from recstream.scoring.ann import make_item_matrix  # noqa: E402
from recstream.scoring.topk import ItemMatrix  # noqa: E402
from recstream.streams.records import Click  # noqa: E402

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


def run(
    ids,
    vecs,
    events,
    blend: BlendWeights | None,
    batch: int,
    warm: int,
    two_stage: bool = True,
    adapt: AdaptConfig | None = None,
    index: str = "exact",
    emit: str = "per-user",
    between: bool = False,
) -> dict:
    matrix = ItemMatrix(DIM, "cpu") if index == "exact" else make_item_matrix(DIM, "cpu", index)
    matrix.upsert(ids, vecs)
    cfg = EngineConfig(k=10, emit=emit, blend=blend, blend_candidates=two_stage, adapt=adapt)
    engine = Engine(
        model=DecayedProfileModel(dim=DIM),
        matrix=matrix,
        popularity=DecayedPopularity(cfg.popularity_half_life_ms),
        texts=NoTexts(),
        config=cfg,
        partition_popularity={},
        partition_cooccurrence={} if blend else None,
    )
    if between:  # the worker with its API on: a hook (here doing nothing) at the batch's consistent points
        engine.between_steps = lambda: None
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
        "index": "ivf" if getattr(matrix, "approximate", False) else "exact",
        "cpu_us_per_event": round(1e6 * cpu / max(measured, 1), 1),
        "cpu_s_per_1000_events": round(1e3 * cpu / max(measured, 1), 4),
        "wall_us_per_event": round(1e6 * wall / max(measured, 1), 1),
        "cooccurrence_rows_written_per_event": round(rows / len(events), 2) if blend else 0,
        "cooccurrence_bytes_per_row": round(row_bytes / rows) if rows else 0,
        "cooccurrence_items": len(engine.cooccurrence) if engine.cooccurrence is not None else 0,
        "candidates_per_user": round(engine.candidate_stats.candidates / max(engine.candidate_stats.users, 1), 1),
        "users_ranked_densely": round(engine.candidate_stats.dense / max(engine.candidate_stats.users, 1), 4),
        "users_widened": round(getattr(engine.candidate_stats, "widened", 0) / max(engine.candidate_stats.users, 1), 4),
    }


RUNS = {
    # name: (blend weights, two stages, adaptation, a between-steps hook)
    "text_only": (None, True, None, False),
    "blend_dense": (DEFAULT_WEIGHTS, False, None, False),
    "blend": (DEFAULT_WEIGHTS, True, None, False),
    "default": (DEFAULT_WEIGHTS, True, AdaptConfig(), False),
    # the default as a worker with its HTTP API runs it: ranked in segments, a hook between
    "default_api": (DEFAULT_WEIGHTS, True, AdaptConfig(), True),
}


def measure(items: int, args: argparse.Namespace) -> dict:
    events_n = args.events or (6000 if items <= 20_000 else 4000)
    warm = args.warm if args.warm is not None else (4 if items <= 20_000 else 2)
    ids, vecs, events = workload(items, args.users, events_n, args.seed)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in args.rankers:
            blend, two_stage, adapt, between = RUNS[name]
            res = run(ids, vecs, events, blend, args.batch, warm, two_stage=two_stage, adapt=adapt, index=args.index, emit=args.emit, between=between)
            if name not in best or res["cpu_us_per_event"] < best[name]["cpu_us_per_event"]:
                best[name] = res
    doc: dict = {"items": items, "events": events_n, "warm_batches": warm, **best}
    text = best.get("text_only")
    if text is not None:
        for name in ("blend_dense", "blend", "default", "default_api"):
            if name in best:
                doc[f"{name}_over_text_cpu"] = round(best[name]["cpu_us_per_event"] / max(text["cpu_us_per_event"], 1e-9), 2)
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--events", type=int, default=None, help="events per size (default 6,000; 4,000 beyond 20,000 items)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warm", type=int, default=None, help="batches not measured (default 4; 2 beyond 20,000 items)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=1, help="runs of each ranker, interleaved; the least CPU time is kept")
    p.add_argument("--rankers", nargs="+", choices=list(RUNS), default=list(RUNS))
    p.add_argument(
        "--index",
        choices=["exact", "auto", "ivf"],
        default="exact",
        help="the item matrix: exact (default), or the worker's --index auto/ivf (an IVF index from 100,000 items)",
    )
    p.add_argument(
        "--emit",
        choices=["per-user", "per-event"],
        default="per-user",
        help="a list per user and batch (default, the worker's default) or one per event (a snapshot of the state at each event)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    sizes = [measure(items, args) for items in args.items]
    doc = {
        "benchmark": "engine CPU per event, text-only vs blend (bench/blend_cost.py)",
        "parameters": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
        "weights": DEFAULT_WEIGHTS.label(),
        "adapt": repr(AdaptConfig()),
        "sizes": sizes,
    }
    if len(sizes) == 1:  # the single-size layout of earlier versions, at the top level too
        doc.update({k: v for k, v in sizes[0].items() if k != "items"})
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
