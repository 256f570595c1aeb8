#!/usr/bin/env python
"""Co-occurrence counted per partition and summed (N workers) against one model (1 worker).

With several workers, each counts the co-occurrences of the partitions it holds and adds the
other partitions' rows, as their changelogs bring them (``streams/evidence.py``,
:meth:`scoring.cooccurrence.CooccurrenceModel.replace_partial`).  Every row is bounded to its
``M`` largest neighbours, per partition before the sum and again after it, where one worker
bounds the row of the whole stream: the sum of bounded parts can differ from the bounded
whole.  This script measures how much, on a real dataset and without Kafka or any lag: the
events before ``--split`` are counted once by one model and once as ``--workers`` workers
over ``--partitions`` partitions (users keyed as Kafka's default partitioner does, the
partitions split among the workers as a range), the other partitions' changed rows taken
every ``--exchange`` events.  It reports, for each worker's model against the single one:
the rows' top-10 neighbours in common, the error of the weights they share, and for each
user the worker holds, the top-10 items of the co-occurrence scores of their positive history
(what the blend ranks with) in common.  Prints one JSON document.

    .venv/bin/python bench/cooc_partitions.py ../shared/datasets/ml-latest-small --split 2016-03-22
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from recstream.scoring.cooccurrence import CooccurrenceRow, CooccurrenceScorer, is_positive
from recstream.scoring.engine import EngineConfig
from recstream.streams.cli.options import date_ms
from recstream.streams.client import partition_for
from recstream.streams.records import Review
from recstream.streams.sources import load_dataset


def _top(values: dict[str, float], k: int) -> list[str]:
    return [j for j, _ in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def compare(
    dataset_path: str,
    split_ms: int,
    partitions: int = 6,
    workers: int = 3,
    exchange: int = 200,
    k: int = 10,
    neighbours: int | None = None,
    partition_neighbours: int | None = None,
) -> dict:
    """The measurement (see the module doc); ``neighbours``: ``M`` (default: the engine's)."""
    if not 1 <= workers <= partitions:
        raise ValueError(f"workers must be between 1 and the partitions ({partitions}), got {workers}")
    cfg = EngineConfig() if neighbours is None else EngineConfig(cooc_neighbours=neighbours)
    data = load_dataset(dataset_path, end_ms=split_ms, positive_threshold=cfg.positive_threshold)
    one = cfg.new_cooccurrence()
    part_cfg = cfg if partition_neighbours is None else EngineConfig(cooc_neighbours=partition_neighbours)
    parts = [part_cfg.new_cooccurrence() for _ in range(partitions)]
    composite = [cfg.new_cooccurrence() for _ in range(workers)]
    owner = [p * workers // partitions for p in range(partitions)]  # a range assignment
    followed: list[dict[tuple[int, str], CooccurrenceRow | None]] = [{} for _ in range(workers)]
    pending: list[set[str]] = [set() for _ in range(partitions)]
    user_partition: dict[str, int] = {}

    def exchange_rows() -> None:
        for p, items in enumerate(pending):
            for item in items:
                row = parts[p].copy_row(item)
                for w in range(workers):
                    if w != owner[p]:
                        composite[w].replace_partial(item, followed[w].get((p, item)), row)
                        followed[w][(p, item)] = row
            items.clear()

    started = time.perf_counter()
    positives = 0
    for ev in data.events:
        rating = ev.rating if isinstance(ev, Review) else None
        if not is_positive(ev.kind, rating, cfg.positive_threshold):
            continue
        p = user_partition.setdefault(ev.user_id, partition_for(ev.user_id.encode(), partitions))
        one.observe_event(ev.user_id, ev.item_id, ev.ts, ev.kind, rating)
        pending[p].update(parts[p].observe_event(ev.user_id, ev.item_id, ev.ts, ev.kind, rating))
        composite[owner[p]].observe_event(ev.user_id, ev.item_id, ev.ts, ev.kind, rating)
        positives += 1
        if exchange and positives % exchange == 0:
            exchange_rows()
    exchange_rows()

    ids = sorted({i for i, _ in one.rows()})
    row_of = {item: r for r, item in enumerate(ids)}.get
    one_scores = CooccurrenceScorer(one, row_of, len(ids))
    per_worker = []
    for w in range(workers):
        overlap, errors = [], []
        for item in ids:
            a, b = one.copy_row(item), composite[w].copy_row(item)
            if a is None or not a.neighbours:
                continue
            want = _top(a.neighbours, k)
            got = _top(b.neighbours, k) if b is not None else []
            overlap.append(len(set(want) & set(got)) / len(want))
            if b is not None:
                errors.extend(abs(lw - b.neighbours[j]) for j, lw in a.neighbours.items() if j in b.neighbours)
        scorer = CooccurrenceScorer(composite[w], row_of, len(ids))
        user_overlap = []
        for user, p in user_partition.items():
            if owner[p] != w:
                continue
            recent = list(one.histories.view(user))  # the last cooc_history_len distinct positives, as the engine scores
            (r1, v1), (r2, v2) = one_scores.sparse(recent), scorer.sparse(recent)
            if len(r1) == 0:
                continue
            want_rows = set(r1[np.argsort(-v1, kind="stable")[:k]].tolist())
            got_rows = set(r2[np.argsort(-v2, kind="stable")[:k]].tolist())
            user_overlap.append(len(want_rows & got_rows) / len(want_rows))
        per_worker.append({
            "worker": w,
            "partitions": [p for p in range(partitions) if owner[p] == w],
            "rows_top10_neighbours_in_common": round(float(np.mean(overlap)), 4),
            "shared_weights_abs_log2_error_mean": round(float(np.mean(errors)), 4) if errors else 0.0,
            "shared_weights_abs_log2_error_p99": round(float(np.percentile(errors, 99)), 4) if errors else 0.0,
            "users": len(user_overlap),
            "users_top10_cooccurrence_items_in_common": round(float(np.mean(user_overlap)), 4) if user_overlap else None,
        })  # fmt: skip
    return {
        "benchmark": "co-occurrence per partition and summed vs one model (bench/cooc_partitions.py)",
        "dataset": data.name,
        "split_ms": split_ms,
        "positive_events": positives,
        "items_with_rows": len(ids),
        "partitions": partitions,
        "workers": workers,
        "exchange_every_positive_events": exchange,
        "max_neighbours": cfg.cooc_neighbours,
        "partition_max_neighbours": part_cfg.cooc_neighbours,
        "k": k,
        "per_worker": per_worker,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a dataset folder (any format recstream reads)")
    p.add_argument("--split", required=True, type=date_ms, metavar="DATE", help="count the events before it")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--exchange", type=int, default=200, help="positive events between two exchanges of changed rows (default 200)")
    p.add_argument("--neighbours", type=int, default=None, help="neighbours kept per row, M (default: the engine's)")
    p.add_argument("--partition-neighbours", type=int, default=None, help="neighbours kept per partition's row (default: M)")
    a = p.parse_args(argv)
    doc = compare(a.dataset, a.split, a.partitions, a.workers, a.exchange, neighbours=a.neighbours, partition_neighbours=a.partition_neighbours)
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
