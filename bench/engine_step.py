#!/usr/bin/env python
"""CPU cost of the worker's click/purchase path without Kafka: the per-event work of one
micro-batch, stage by stage, in CPU seconds per 1,000 events.

What the events agent does for a micro-batch, minus the broker and Faust:

* ``parse``: :func:`streams.records.parse_event` of every record (orjson + validation);
* ``profiles_read``: :meth:`UserProfile.from_bytes` of the stored profile of every touched user;
* ``engine``: :meth:`scoring.engine.Engine.process` (apply the events, snapshot, score, ``because``);
* ``profiles_write``: :meth:`UserProfile.to_bytes` of every changed profile;
* ``encode``: :func:`streams.records.encode_emitted` of every recommendation.

The catalog is random unit vectors (``--items``, d = 384), the events are synthetic clicks (90%)
and purchases over ``--users`` users with Zipf item popularity, and profiles persist from batch to
batch (as bytes, as in the table), so histories fill up as in a long run. CPU time is
``time.process_time`` (all threads of this process); the scoring runs with one torch thread, as in
the worker. Figures are the median over ``--rounds`` rounds of ``--events`` events each.

    .venv/bin/python bench/engine_step.py                  # 10,000 items, batches of 128 and 512
    .venv/bin/python bench/engine_step.py --quick          # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson

# the repository before bench/ (a script's own folder comes first): bench/encoders.py must
# not shadow the encoders package
HERE = Path(__file__).resolve().parent
if str(HERE.parent) in sys.path:
    sys.path.remove(str(HERE.parent))
sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import cpu_model, emit_result, pkg_version  # noqa: E402

STAGES = ("parse", "profiles_read", "engine", "profiles_write", "encode")


def log(msg: str) -> None:
    print(f"[engine_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class _NoTexts:
    """Clicks and purchases carry no text: the engine never calls the encoder."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def encode_numpy(self, texts):  # pragma: no cover - never called for clicks
        raise AssertionError("no review texts in this benchmark")


def make_events(n: int, users: int, items: int, rng: np.random.Generator, start_ts: int) -> list[tuple[str, bytes, bytes]]:
    """``(kind, key, value)`` records: 90% clicks, 10% purchases, Zipf items, uniform users."""
    ranks = np.arange(1, items + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    item_idx = rng.choice(items, size=n, p=p)
    user_idx = rng.integers(0, users, size=n)
    kinds = np.where(rng.random(n) < 0.9, "clicks", "purchases")
    out = []
    for i in range(n):
        kind = str(kinds[i])
        user = f"user-{int(user_idx[i]):05d}"
        value = {"schema": 1, "user_id": user, "item_id": f"item-{int(item_idx[i]):06d}", "ts": start_ts + i, "event_id": f"ev-{start_ts + i}"}
        if kind == "purchases":
            value["quantity"] = 1
        out.append((kind, user.encode(), orjson.dumps(value)))
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from recstream.encoders.profile import DecayedProfileModel, ProfileConfig, UserProfile
    from recstream.scoring.engine import Engine, EngineConfig, Incoming
    from recstream.scoring.popularity import DecayedPopularity
    from recstream.scoring.topk import ItemMatrix
    from recstream.streams.records import encode_emitted, parse_event

    rng = np.random.default_rng(args.seed)
    dim = 384
    matrix = ItemMatrix(dim)
    vecs = rng.standard_normal((args.items, dim)).astype(np.float32)
    matrix.upsert([f"item-{i:06d}" for i in range(args.items)], vecs)
    day = 24 * 3600 * 1000
    model = DecayedProfileModel(ProfileConfig(half_life_ms=30 * day, history_len=50), dim=dim)
    partition_pop: dict[int, DecayedPopularity] = {}
    engine = Engine(
        model=model,
        matrix=matrix,
        popularity=DecayedPopularity(7 * day),
        texts=_NoTexts(),
        config=EngineConfig(k=10, emit="per-event", exclude_seen=True),
        partition_popularity=partition_pop,
    )
    topic = {"clicks": "bench.clicks", "purchases": "bench.purchases"}
    store: dict[str, bytes] = {}  # the profiles table: user id -> bytes
    now = int(time.time() * 1000)
    offsets = {"clicks": 0, "purchases": 0}

    def one_batch(records) -> dict[str, float]:
        t: dict[str, float] = {}
        c0 = time.process_time()
        parsed = []
        for kind, key, value in records:
            ev = parse_event(kind, key, value)
            parsed.append(Incoming(ev, topic[kind], 0, offsets[kind]))
            offsets[kind] += 1
        c1 = time.process_time()
        profiles = {}
        for user in {inc.event.user_id for inc in parsed}:
            raw = store.get(user)
            if raw is not None:
                profiles[user] = UserProfile.from_bytes(raw)
        c2 = time.process_time()
        result = engine.process(parsed, profiles)
        c3 = time.process_time()
        for user, profile in result.profiles.items():
            store[user] = profile.to_bytes()
        c4 = time.process_time()
        for rec in result.recommendations:
            encode_emitted(rec, emitted_ts=now, received_ts=now)
        c5 = time.process_time()
        assert len(result.recommendations) == len(records)
        t.update(parse=c1 - c0, profiles_read=c2 - c1, engine=c3 - c2, profiles_write=c4 - c3, encode=c5 - c4)
        return t

    torch.set_num_threads(1)
    log(f"warming up: {args.warmup_events} events to fill the users' histories")
    ts = now - 10 * day
    for start in range(0, args.warmup_events, args.batch[0]):
        one_batch(make_events(min(args.batch[0], args.warmup_events - start), args.users, args.items, rng, ts + start))
    ts += args.warmup_events
    rows = []
    for batch in args.batch:
        per_round: list[dict[str, float]] = []
        for r in range(args.rounds):
            events = make_events(args.events, args.users, args.items, rng, ts)
            ts += args.events
            totals = dict.fromkeys(STAGES, 0.0)
            for start in range(0, len(events), batch):
                for stage, s in one_batch(events[start : start + batch]).items():
                    totals[stage] += s
            per_round.append({s: 1000 * v / len(events) for s, v in totals.items()})
        med = {s: round(statistics.median(r[s] for r in per_round), 4) for s in STAGES}
        total = round(statistics.median(sum(r.values()) for r in per_round), 4)
        rows.append({"batch": batch, "cpu_s_per_1000_events": med | {"total": total}})
        log(f"batch {batch}: {total:.3f} CPU s per 1,000 events ({', '.join(f'{s} {v:.3f}' for s, v in med.items())})")
    return {
        "benchmark": "engine_step",
        "what": "CPU seconds per 1,000 click/purchase events of the worker's per-event work without Kafka "
        "(parse, profile read, Engine.process per-event, profile write, recommendation encoding)",
        "machine": {"cpu_model": cpu_model(), "cpus_usable": len(os.sched_getaffinity(0)), "load_average_1min": round(os.getloadavg()[0], 2)},
        "versions": {"python": sys.version.split()[0], "torch": pkg_version("torch"), "numpy": pkg_version("numpy")},
        "parameters": {
            "items": args.items,
            "users": args.users,
            "events_per_round": args.events,
            "rounds": args.rounds,
            "warmup_events": args.warmup_events,
            "batches": args.batch,
            "k": 10,
            "history_len": 50,
            "emit": "per-event",
            "seed": args.seed,
        },
        "rows": rows,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=10_000, help="catalog items (default 10000)")
    p.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    p.add_argument("--events", type=int, default=4096, help="events per round (default 4096)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per batch size; the median is reported (default 5)")
    p.add_argument("--warmup-events", type=int, default=20_000, help="events applied first, to fill histories (default 20000)")
    p.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512], help="micro-batch sizes, comma-separated (default 128,512)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 items, 1,000 warm-up events, 2 rounds of 512")
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.warmup_events, args.rounds, args.events = 1000, 1000, 2, 512
    for name in ("items", "users", "events", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup_events < 0 or not args.batch or min(args.batch) < 1:
        p.error("--warmup-events must be >= 0 and batch sizes >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        return 130
    emit_result(result, args.output, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
