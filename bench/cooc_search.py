#!/usr/bin/env python
"""How the co-occurrence's sequence-aware weights were chosen: a grid on the validation window.

Issue 8's reference protocol (``scoring/protocol.py``) on ml-latest-small, **validation window
only** (interactions 70-80%, warmed on the first 70%; the test window is never read): the
co-occurrence signal *alone* (:class:`scoring.cooccurrence.CooccurrenceModel`'s definition:
cosine ``co(i, j) / sqrt(n_i n_j)`` summed over the user's last ``history`` distinct items) is
scored under a grid of

* ``events``: what feeds it: the positive ratings (>= 4, the item-kNN baseline's choice) or
  every rating (what the worker's engine does with MovieLens ratings, which are clicks);
* ``history``: distinct items per user paired and scored;
* ``pair_decay``: a new item is paired with the user's latest item at weight 1, the one before
  at ``pair_decay``, ...;
* ``recency``: when scoring, the latest history item's neighbours count 1, the one before
  ``recency``, ...

``pair_decay = recency = 1`` with positive events and a history of 20 is the issue's
item-kNN.  For speed the counts live in a dense ``items x items`` float32 matrix (380 MB for
ml-latest-small), **without** the per-item neighbour bound the worker applies (``--cooc-
neighbours``), so the figures are an upper bound of the bounded model's; the chosen weights
are then checked with the real, bounded code by ``bench/reference_protocol.py``
(``--cooc-pair-decay``, ``--cooc-recency``), which also reports the test window.  Ties in a
ranking count half against the target; the popularity of the last 30 days breaks exact ties.

One JSON document goes to stdout (``--output`` also writes it): every grid point's HR@10 and
NDCG@10, best first.  Progress goes to stderr.  About 20 s per (events, history, pair_decay)
on the 2-core development machine::

    .venv/bin/python bench/cooc_search.py --output bench/results/cooc_search.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

from common import cpu_model, emit_result  # noqa: E402
from recstream.scoring.protocol import DAY_MS, protocol_windows  # noqa: E402
from recstream.streams.tune import load_protocol_data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-latest-small"


def log(msg: str) -> None:
    print(f"[cooc_search] {msg}", file=sys.stderr, flush=True)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"MovieLens folder (default {DEFAULT_DATA})")
    p.add_argument("--pair-decay", type=floats, default=floats("1,0.95,0.9,0.8"), help="pair_decay values (default 1,0.95,0.9,0.8)")
    p.add_argument("--recency", type=floats, default=floats("1,0.9,0.8,0.7,0.5"), help="recency values (default 1,0.9,0.8,0.7,0.5)")
    p.add_argument("--history", type=ints, default=ints("20,50"), help="history lengths (default 20,50)")
    p.add_argument("--events", default="positive,all", help="what feeds the counts (default positive,all)")
    p.add_argument("-k", type=int, default=10, help="list length (default 10)")
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")
    return p


def search(data, val_start: int, val_end: int, events: str, history: int, pair_decay: float, recencies: list[float], k: int) -> list[tuple[float, float]]:
    """(HR@k, NDCG@k) for each recency, one replay of interactions [0, val_end)."""
    n_items = len(data.ids)
    row_of = data.row_of
    co = np.zeros((n_items, n_items), dtype=np.float32)
    count = np.zeros(n_items, dtype=np.float64)
    pop_log2 = np.full(n_items, -math.inf)
    half_life = 30 * DAY_MS
    hist: dict[str, list[int]] = {}
    rated: dict[str, set[int]] = {}
    sums = np.zeros((len(recencies), 2))
    cases = 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for pos in range(val_end):
        it = data.interactions[pos]
        row = row_of.get(it.item_id)
        if row is None:
            continue
        if pos >= val_start and it.positive and it.user_id in rated:
            cases += 1
            h = hist.get(it.user_id, [])
            cand = np.ones(n_items, dtype=bool)
            cand[list(rated[it.user_id])] = False
            with np.errstate(over="ignore"):
                pop = np.log1p(np.exp2(pop_log2 - it.ts / half_life))
            tie_break = 1e-6 * pop / max(pop.max(), 1e-12)
            inv = 1.0 / np.sqrt(np.maximum(count, 1.0))
            rows = co[h] * inv[h, None] if h else None
            for r, rec in enumerate(recencies):
                if rows is None:
                    s = np.zeros(n_items)
                else:
                    w = rec ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
                    s = (w.astype(np.float32) @ rows) * inv
                s = np.where(cand, s + tie_break, -np.inf)
                t = s[row]
                rank = int((s > t).sum()) + int((s == t).sum() - 1) // 2
                if rank < k:
                    sums[r, 0] += 1
                    sums[r, 1] += discount[rank]
        if it.positive or events == "all":
            h = hist.setdefault(it.user_id, [])
            if row in h:
                h.remove(row)
            if h:
                w = (pair_decay ** np.arange(len(h) - 1, -1, -1)).astype(np.float32)
                co[h, row] += w
                co[row, h] += w
            count[row] += 1
            h.append(row)
            if len(h) > history:
                del h[0]
        if it.positive:
            pop_log2[row] = np.logaddexp2(pop_log2[row], it.ts / half_life)
        rated.setdefault(it.user_id, set()).add(row)
    return [(s[0] / max(cases, 1), s[1] / max(cases, 1)) for s in sums]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    data = load_protocol_data(args.data, progress=False)
    val_start, test_start = protocol_windows(len(data.interactions))
    log(f"{len(data.interactions):,} interactions; validation window [{val_start:,}, {test_start:,})")
    rows = []
    events_list = [e.strip() for e in args.events.split(",") if e.strip()]
    for events, history, pd in itertools.product(events_list, args.history, args.pair_decay):
        t1 = time.perf_counter()
        got = search(data, val_start, test_start, events, history, pd, args.recency, args.k)
        for rec, (hr, nd) in zip(args.recency, got):
            rows.append({"events": events, "history": history, "pair_decay": pd, "recency": rec, f"hr@{args.k}": round(hr, 4), f"ndcg@{args.k}": round(nd, 4)})
        best = max(got, key=lambda x: x[1])
        log(f"events={events} history={history} pair_decay={pd}: best NDCG@{args.k} {best[1]:.4f} ({time.perf_counter() - t1:.0f} s)")
    rows.sort(key=lambda r: -r[f"ndcg@{args.k}"])
    reference = next((r for r in rows if (r["events"], r["history"], r["pair_decay"], r["recency"]) == ("positive", 20, 1.0, 1.0)), None)
    result = {
        "benchmark": "co-occurrence weights on the validation window (bench/cooc_search.py)",
        "command": shlex.join(["bench/cooc_search.py", *(sys.argv[1:] if argv is None else argv)]),
        "window": {"validation": [val_start, test_start]},
        "unbounded_item_knn": reference,
        "grid": rows,
        "machine": {"cpu_model": cpu_model(), "cpus_usable": len(os.sched_getaffinity(0))},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    emit_result(result, args.output, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
