"""Recency-weighted EASE (scoring/ease.py) beside item-kNN and popularity, offline.

Runs the backtest protocol (scoring/backtest.py) over a dataset folder with baselines only
(no engine): every event goes through one :class:`scoring.backtest.Backtest` in time order
with the exclusion sets of :class:`scoring.backtest.ExclusionTracker` (the worker's
defaults: exclude seen, history 50), so the cases are exactly those of
``recstream backtest --dataset`` (a target of a user with an earlier event), and EASE,
item-kNN and popularity are scored on the same cases.  EASE is fit once at the split, on
the positives before it.

* test (default): events before ``--split`` warm up, later targets are cases;
* ``--validate``: only events before ``--split`` are read; the validation window is the
  last eighth of the interactions before the split, as ``recstream tune`` defines it
  (:func:`streams.tune.tune_weights`: interactions of all kinds on catalog items, the
  window starting at interaction ``int(0.875 * n)``); its first interaction's time is the
  backtest's split (and EASE's fit time).

``--lambda``, ``--half-life-days`` (and ``--query-half-life-days``, default: the fit's) take
comma lists: every combination is one EASE column of the same backtest (``none``, ``0``,
``inf`` or ``1e9`` half-life: no decay).

    .venv/bin/python bench/ease_baseline.py --dataset ../shared/datasets/ml-latest-small \
        --split 2016-03-22 --validate --lambda 50,200,500,1000,2000 --half-life-days 365

One JSON document on stdout (and ``--json FILE``); progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the project's packages before bench/ (which has an encoders.py of its own)
if str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

from recstream.scoring.backtest import (  # noqa: E402
    Backtest,
    BacktestConfig,
    ExclusionTracker,
    _time_ordered,
    default_baselines,
    interaction_kinds,
)
from recstream.scoring.baselines import Recommender  # noqa: E402
from recstream.scoring.ease import (  # noqa: E402
    DAY_MS,
    DEFAULT_HALF_LIFE_MS,
    DEFAULT_LAMBDA,
    DEFAULT_MAX_ITEMS,
    DEFAULT_QUERY_HALF_LIFE_MS,
    EASEBaseline,
)


class Timed:
    """A recommender whose observe/recommend time is accumulated (fits included)."""

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.name = inner.name
        self.observe_s = 0.0
        self.recommend_s = 0.0

    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        t0 = time.perf_counter()
        self.inner.observe(user_id, item_id, ts, kind, rating)
        self.observe_s += time.perf_counter() - t0

    def recommend(self, user_id: str, k: int, exclude: Container[str] = (), now_ms: int | None = None) -> list[str]:
        t0 = time.perf_counter()
        out = self.inner.recommend(user_id, k, exclude, now_ms)
        self.recommend_s += time.perf_counter() - t0
        return out


def validation_split_ms(events: Sequence[Any], catalog_ids: Container[str], split_ms: int, positive_threshold: float = 4.0) -> tuple[int, dict[str, int]]:
    """The start of ``recstream tune``'s validation window before ``split_ms``: the time of
    interaction ``int(end * (1 - 0.1 / 0.8))`` of the interactions (all kinds, catalog
    items) before the split, ``end`` of them."""
    from recstream.scoring.protocol import interactions_from_events

    inter = interactions_from_events(events, kinds=("click", "purchase", "review"), positive_threshold=positive_threshold)
    inter = [it for it in inter if it.item_id in catalog_ids]
    end = next((i for i, it in enumerate(inter) if it.ts >= split_ms), len(inter))
    start = int(end * (1 - 0.1 / 0.8))
    if not 0 < start < end:
        raise ValueError(f"empty warm-up or validation window: [0, {start}) warm, [{start}, {end}) validate")
    return int(inter[start].ts), {"start": start, "end": end}


def half_life_ms(days: str) -> float | None:
    v = float(days)
    if v <= 0 or math.isinf(v) or v >= 1e9:  # 1e9 days: no decay within any data set
        return None
    return v * DAY_MS


def run(
    events: Sequence[Any],
    catalog_ids: Sequence[str],
    config: BacktestConfig,
    eases: Sequence[EASEBaseline],
    *,
    baselines: bool = True,
    exclude_seen: bool = True,
    history_len: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    """The backtest of ``eases`` (and the default baselines) over ``events``; a JSON-ready dict."""
    from tqdm import tqdm

    ordered = _time_ordered(events)
    catalog = frozenset(catalog_ids)
    timed = [Timed(b) for b in (default_baselines(config, catalog) if baselines else [])] + [Timed(e) for e in eases]
    bt = Backtest(config, catalog, timed)
    tracker = ExclusionTracker(exclude_seen, history_len)
    t0 = time.perf_counter()
    for ev, kind in tqdm(
        zip(ordered, interaction_kinds(ordered, config)),
        total=len(ordered),
        desc="backtest",
        unit=" ev",
        file=sys.stderr,
        disable=not progress,
        mininterval=2.0,
    ):
        bt.observe(ev, (), exclude_before=tracker.exclusion(ev.user_id), kind=kind)  # () : no recstream column
        tracker.observe(ev)
    res = bt.result()
    methods = {}
    for t in timed:
        flat = res.methods[t.name].metrics.flat()
        row: dict[str, Any] = {f"{m}@{k}": flat[f"{m}@{k}"] for k in config.ks for m in ("ndcg", "hit_rate")}
        row.update(observe_s=round(t.observe_s, 2), recommend_s=round(t.recommend_s, 2))
        if isinstance(t.inner, EASEBaseline):
            e = t.inner
            row.update(
                lam=e.lam,
                half_life_days=None if e.half_life_ms is None else e.half_life_ms / DAY_MS,
                query_half_life_days=None if e.query_half_life_ms is None else e.query_half_life_ms / DAY_MS,
                fit=e.fit_info,
            )
        methods[t.name] = row
    return {"counts": res.counts, "catalog_size": res.catalog_size, "methods": methods, "backtest_s": round(time.perf_counter() - t0, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a dataset folder (formats of 'recstream produce')")
    p.add_argument("--split", required=True, help="start of the test period (YYYY-MM-DD)")
    p.add_argument("--validate", action="store_true", help="score the validation window before --split instead (nothing at/after --split is read)")
    p.add_argument("--lambda", dest="lam", default=str(DEFAULT_LAMBDA), help=f"EASE lambda(s), comma-separated (default {DEFAULT_LAMBDA:g})")
    default_hl = "none" if DEFAULT_HALF_LIFE_MS is None else f"{DEFAULT_HALF_LIFE_MS / DAY_MS:g}"
    p.add_argument(
        "--half-life-days", default=default_hl, help=f"recency half-life(s) of the fit in days, comma-separated; none/0/1e9: no decay (default {default_hl})"
    )
    p.add_argument(
        "--query-half-life-days",
        default=f"{DEFAULT_QUERY_HALF_LIFE_MS / DAY_MS:g}",
        help=f"half-life(s) of the query row's weights; 'fit': the fit's (default {DEFAULT_QUERY_HALF_LIFE_MS / DAY_MS:g})",
    )
    p.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS)
    p.add_argument("--exclude-history", action="store_true", help="EASE also excludes the user's positive history")
    p.add_argument("--no-baselines", action="store_true", help="EASE columns only (no item-knn, popularity)")
    p.add_argument("--targets", default="click,purchase,positive")
    p.add_argument("--positive-threshold", type=float, default=4.0)
    p.add_argument("--ks", default="10")
    p.add_argument("--history-len", type=int, default=50, help="the worker's history length, for the exclusion sets (default 50)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--popularity-half-life-days", type=float, default=7.0)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from recstream.streams.produce import parse_time
    from recstream.streams.tune import load_source

    started = time.perf_counter()
    split_ms = parse_time(args.split)
    # validation: nothing at or after the split is read
    src = load_source(args.dataset, end_ms=split_ms if args.validate else None, positive_threshold=args.positive_threshold, progress=not args.quiet)
    catalog_ids = list(dict.fromkeys(it.item_id for it in src.catalog))
    load_s = time.perf_counter() - started
    window = None
    eval_split = split_ms
    if args.validate:
        eval_split, window = validation_split_ms(src.events, frozenset(catalog_ids), split_ms, args.positive_threshold)
    pop_hl = int(args.popularity_half_life_days * DAY_MS)
    config = BacktestConfig(
        split_ms=eval_split,
        targets=frozenset(t.strip() for t in args.targets.split(",")),
        positive_threshold=args.positive_threshold,
        ks=tuple(int(k) for k in args.ks.split(",")),
        popularity_half_life_ms=pop_hl,
    )
    lams = [float(x) for x in args.lam.split(",") if x.strip()]
    hls = [x.strip() for x in args.half_life_days.split(",") if x.strip()]
    qhls = [x.strip() for x in args.query_half_life_days.split(",") if x.strip()]
    grid = list(itertools.product(lams, hls, qhls))
    eases = []
    days = lambda ms: "none" if ms is None else f"{ms / DAY_MS:g}"  # noqa: E731
    for lam, hl, qhl in grid:
        hl_ms = None if hl.lower() in ("none", "inf") else half_life_ms(hl)
        q_ms = "fit" if qhl == "fit" else None if qhl.lower() in ("none", "inf") else half_life_ms(qhl)
        name = "ease" if len(grid) == 1 else f"ease(l={lam:g},h={days(hl_ms)}" + ("" if q_ms == "fit" else f",q={days(q_ms)}") + ")"
        eases.append(
            EASEBaseline(
                lam,
                hl_ms,
                fit_at_ms=eval_split,
                max_items=args.max_items,
                positive_threshold=args.positive_threshold,
                exclude_history=args.exclude_history,
                catalog=frozenset(catalog_ids),
                popularity_half_life_ms=pop_hl,
                name=name,
                query_half_life_ms=q_ms,
            )
        )
    out = run(
        src.events,
        catalog_ids,
        config,
        eases,
        baselines=not args.no_baselines,
        exclude_seen=args.exclude_seen,
        history_len=args.history_len,
        progress=not args.quiet,
    )
    fmt = lambda ms: time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))  # noqa: E731
    doc = {
        "dataset": args.dataset,
        "mode": "validate" if args.validate else "test",
        "split": args.split,
        "eval_from": fmt(eval_split),
        "eval_from_ms": eval_split,
        "validation_interactions": window,
        "events": len(src.events),
        **out,
        "timings": {"load_s": round(load_s, 2), "backtest_s": out["backtest_s"], "total_s": round(time.perf_counter() - started, 2)},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
