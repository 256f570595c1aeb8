#!/usr/bin/env python
"""CPU time of the co-occurrence scores of many users at once (what a micro-batch ranks
with), computed one history at a time, in groups of consecutive histories up to a number
of terms, and all together.

The events before ``--split`` of a dataset are counted by the engine's co-occurrence model
(``--neighbours``: ``M``, default the engine's); then the sparse scores of every user's
positive history are computed, over the dataset's catalog, in batches of ``--batch``
histories (a worker's micro-batch of 512 events touches up to 512 users), with
:meth:`scoring.cooccurrence.CooccurrenceScorer.sparse_batch` grouping at most ``T`` terms
(neighbour entries) per group, for each ``T`` of ``--group-terms`` (1: one history at a time;
0: the whole batch as one group).  The settings are interleaved ``--repeat`` times and each
one's least CPU time is kept.  Prints one JSON document.

    .venv/bin/python bench/cooc_sparse.py ../shared/datasets/ml-latest-small --split 2016-03-22
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from recstream.scoring import cooccurrence
from recstream.scoring.cooccurrence import CooccurrenceScorer
from recstream.scoring.engine import EngineConfig
from recstream.streams.cli.options import date_ms
from recstream.streams.records import Review
from recstream.streams.sources import load_dataset


def measure(dataset_path: str, split_ms: int, batch: int, group_terms: list[int], repeat: int, neighbours: int | None = None) -> dict:
    cfg = EngineConfig() if neighbours is None else EngineConfig(cooc_neighbours=neighbours)
    data = load_dataset(dataset_path, end_ms=split_ms, positive_threshold=cfg.positive_threshold)
    model = cfg.new_cooccurrence()
    users: set[str] = set()  # those with a positive event (observe_event counts it: not [])
    for ev in data.events:
        if model.observe_event(ev.user_id, ev.item_id, ev.ts, ev.kind, ev.rating if isinstance(ev, Review) else None):
            users.add(ev.user_id)
    ids = [item.item_id for item in data.catalog]
    scorer = CooccurrenceScorer(model, {item: r for r, item in enumerate(ids)}.get, len(ids))
    histories = [model.histories.get(u) for u in sorted(users)]
    batches = [histories[s : s + batch] for s in range(0, len(histories), batch)]
    terms = sum(len(model.neighbour_arrays(i)[0]) for h in histories for i in h)
    default = cooccurrence._GROUP_TERMS
    reference = [scorer.sparse(h) for h in histories]
    best: dict[int, float] = {}
    for _ in range(repeat):
        for t in group_terms:
            started = time.process_time()
            got = [pair for b in batches for pair in scorer.sparse_batch(b, t if t > 0 else 1 << 62)]
            cpu = time.process_time() - started
            best[t] = min(best.get(t, cpu), cpu)
            if any(not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])) for a, b in zip(got, reference)):
                raise AssertionError(f"group_terms {t}: scores differ from one history at a time")
    return {
        "dataset": dataset_path,
        "split_ms": split_ms,
        "neighbours": cfg.cooc_neighbours,
        "histories": len(histories),
        "batch": batch,
        "terms_per_history": round(terms / max(len(histories), 1), 1),
        "default_group_terms": default,
        "cpu_us_per_history": {("all" if t == 0 else str(t)): round(1e6 * best[t] / max(len(histories), 1), 1) for t in group_terms},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--split", required=True, help="count the events before this date (YYYY-MM-DD)")
    p.add_argument("--batch", type=int, default=512, help="histories per sparse_batch call (default 512)")
    p.add_argument(
        "--group-terms", type=int, nargs="+", default=[1, 1024, 4096, 16384, 0], help="terms per group to compare (1: one history at a time, 0: all together)"
    )
    p.add_argument("--neighbours", type=int, default=None, help="co-occurrence neighbours per item (default: the engine's)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    if a.batch < 1 or a.repeat < 1 or any(t < 0 for t in a.group_terms):
        p.error("--batch and --repeat must be at least 1, --group-terms at least 0")
    print(json.dumps(measure(a.dataset, date_ms(a.split), a.batch, a.group_terms, a.repeat, a.neighbours), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
