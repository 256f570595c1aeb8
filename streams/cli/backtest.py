"""``recstream backtest``: replay a time range (or run the engine over a dataset) and score the recommendations."""

from __future__ import annotations

import argparse
import sys

from .options import _env_int, adapt_knobs, blend_weights, csv_options, dataset_options, engine_knobs, parse_time_opt, settings_from


def _method_names() -> list[str]:
    from recstream.scoring.sidebyside import method_names

    return method_names()


#: the destinations of :func:`~streams.cli.options.engine_knobs` that are worker flags of the same name
_ENGINE_KNOBS = (
    "item_fields",
    "half_life_days",
    "popularity_half_life_days",
    "cooc_neighbours",
    "cooc_history_len",
    "cooc_half_life_days",
    "cooc_pair_decay",
    "cooc_recency",
)


def engine_worker_args(args: argparse.Namespace) -> list[str]:
    """``backtest``'s engine settings as flags of the replay's worker, so that it computes
    what they say (their defaults and environment variables are the worker's own)."""
    out: list[str] = []
    for dest in _ENGINE_KNOBS:
        out += ["--" + dest.replace("_", "-"), str(getattr(args, dest))]
    for dest in ("adapt_step", "adapt_rate", "adapt_epoch"):
        out += ["--" + dest.replace("_", "-"), str(getattr(args, dest))]
    if args.adapt is not None:
        out.append("--adapt" if args.adapt else "--no-adapt")
    return out


def cmd_backtest(args: argparse.Namespace) -> int:
    import collections
    import time as _time

    from recstream.scoring.backtest import BacktestConfig, format_table

    from .. import topics
    from ..backtest import backtest_replay
    from ..produce import parse_time
    from ..replay import run_replay

    ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
    config = BacktestConfig(
        split_ms=parse_time(args.split),
        targets=frozenset(t.strip() for t in args.targets.split(",")),
        positive_threshold=args.positive_threshold,
        ks=ks,
        ease=args.ease,
    )
    options = dataset_options(args, args.dataset)
    if args.dataset:
        return _backtest_dataset(args, config, options)
    source = settings_from(args)
    started = _time.monotonic()
    timings: dict[str, float] = {}
    if args.replay_prefix:
        target = source.with_prefix(args.replay_prefix)
    else:
        target = source.with_prefix(f"{source.topic_prefix}backtest-{int(_time.time())}.")
        partitions = topics.list_topics(source).get(source.topic(topics.CLICKS))
        if not partitions:
            print(f"recstream backtest: no topic {source.topic(topics.CLICKS)!r} on {source.broker}", file=sys.stderr)
            return 1
        worker_args = ["-k", str(max(ks)), "--history-len", str(args.history_len), *engine_worker_args(args)]
        if args.blend:  # the replay's worker ranks with these weights: its column is theirs
            blend_weights(args.blend)  # a bad file fails here, not in the replay's worker
            worker_args += ["--blend", args.blend]
        if args.user_model:
            worker_args += ["--user-model", args.user_model]
        if args.ranker:
            worker_args += ["--ranker", args.ranker]
        stats = run_replay(
            source,
            target,
            start_ms=parse_time(args.from_) if args.from_ else None,
            end_ms=parse_time(args.to) if args.to else None,
            partitions=partitions,
            worker_args=worker_args,
            workers=args.workers,
        )
        print(
            f"replayed {stats.events_total} events into {target.topic_prefix!r} in {stats.seconds:.1f}s "
            f"({stats.events_total / max(stats.seconds, 1e-9):.0f} events/s)",
            file=sys.stderr,
        )
        timings.update(replay_s=round(stats.seconds, 3), replay_events_per_s=round(stats.events_total / max(stats.seconds, 1e-9), 1))
    scored = _time.monotonic()
    result, contents = backtest_replay(target, config, history_len=args.history_len)
    timings.update(scoring_s=round(_time.monotonic() - scored, 3), total_s=round(_time.monotonic() - started, 3))
    print(format_table(result, ks=[k for k in ks if k >= 10] or ks))
    # which ranker made the records (the popularity fallback included), as their ``model`` says
    models = collections.Counter(rec.model for rec in contents.recommendations)
    doc = {
        "replay_prefix": target.topic_prefix,
        "invalid_records": contents.invalid,
        "timings": timings,
        "models": dict(models.most_common()),
        **result.to_dict(),
    }
    _write_reports(doc, args)
    return 0


def _write_reports(doc: dict, args: argparse.Namespace) -> None:
    """The backtest's ``--json`` and ``--html`` files, when asked for."""
    import orjson

    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.html:
        from recstream.scoring.report import write_html

        write_html(doc, args.html)
        print(f"wrote {args.html}", file=sys.stderr)


def _backtest_dataset(args: argparse.Namespace, config, options: dict | None) -> int:
    """``backtest --dataset``: the engine's methods run offline side by side (:func:`streams.backtest.backtest_dataset`)."""
    from recstream.scoring.backtest import format_table

    from ..app import WorkerConfig
    from ..backtest import backtest_dataset, method_list

    names = method_list(args.methods, user_model=args.user_model)
    worker = WorkerConfig(
        blend=blend_weights(args.blend),
        adapt=args.adapt,
        adapt_step=args.adapt_step,
        adapt_rate=args.adapt_rate,
        adapt_epoch=args.adapt_epoch,
        popularity_half_life_days=args.popularity_half_life_days,
        cooc_neighbours=args.cooc_neighbours,
        cooc_history_len=args.cooc_history_len,
        cooc_half_life_days=args.cooc_half_life_days,
        cooc_pair_decay=args.cooc_pair_decay,
        cooc_recency=args.cooc_recency,
        half_life_days=args.half_life_days,
        history_len=args.history_len,
        item_fields=tuple(f.strip() for f in args.item_fields.split(",") if f.strip()),
    )
    run = backtest_dataset(
        args.dataset,
        config,
        worker=worker,
        methods=names,
        user_model=args.user_model,
        partitions=args.partitions,
        start_ms=parse_time_opt(args.from_),
        end_ms=parse_time_opt(args.to),
        dataset_options=options,
    )
    print(format_table(run.result, ks=[k for k in run.config.ks if k >= 10] or run.config.ks))
    print(f"engine runs: {', '.join(f'{n} {s:.0f}s' for n, s in run.engine_s.items())}; {run.total_s:.0f}s in all", file=sys.stderr)
    _write_reports(run.to_dict(), args)
    return 0


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backtest",
        parents=[kafka_opts],
        help="replay a time range and score the recommendations against what users did next",
        description="Replay the events of a time range through an isolated worker (per-event emission), then, "
        "for every target interaction after --split, rank the recommendation the user held when the "
        "worker processed it against the event's item; popularity and item-kNN baselines are scored "
        "on the same cases. Prints a table; --json writes every figure, --html a report with plots.",
    )
    p.add_argument("--split", required=True, metavar="DATE", help="events before it warm the state; later target events are test cases")
    p.add_argument("--from", dest="from_", metavar="DATE", help="first event of the replay (default: the beginning)")
    p.add_argument("--to", metavar="DATE", help="end of the replay, exclusive (default: now)")
    p.add_argument("--replay-prefix", help="score an existing replay namespace instead of running a new one")
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="replay through N workers of one group sharing the partitions (default 1; at most the partitions)"
    )
    p.add_argument(
        "--targets",
        default="click,purchase,positive",
        help="which events are test cases: click, purchase, positive (reviews at or above the threshold); default all",
    )
    p.add_argument("--positive-threshold", type=float, default=4.0, help="rating of a positive review (default 4)")
    p.add_argument("--ks", default="5,10,20", help="cut-offs (default 5,10,20)")
    p.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="the worker's history length (env RECSTREAM_HISTORY_LEN; default 50)")
    p.add_argument(
        "--ease",
        action="store_true",
        help="also score the recency-weighted EASE baseline, fit at --split on the "
        "interactions before it (seconds to minutes and GBs: it inverts an items x items matrix)",
    )
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a report with plots (metrics per month, latency, baselines) as one HTML file")
    g = p.add_argument_group(
        "side by side, offline (--dataset)",
        "Run recstream's engine here instead of a worker, once per "
        "method, over a dataset folder, and score every method and the baselines on the same cases. "
        "Without --dataset, the engine settings (--item-fields to --cooc-recency) are passed to "
        "the replay's worker.",
    )
    g.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'): no broker, no replay")
    g.add_argument(
        "--partitions",
        type=int,
        default=1,
        metavar="N",
        help="with --dataset: key each user's events to one of N input "
        "partitions, as a worker's topics would (the adaptive weights "
        "are kept per partition; default 1)",
    )
    g.add_argument(
        "--methods", help=f"methods, in table order (default {','.join(m for m in _method_names() if m != 'learned')}, and learned with --user-model)"
    )
    g.add_argument(
        "--user-model", metavar="CKPT", help="the learned method's checkpoint from 'recstream train'; without --dataset, the replay's worker ranks with it"
    )
    g.add_argument(
        "--blend",
        metavar="PATH",
        help="the blend method's weights file from 'recstream tune' (default: the worker's default "
        "weights); without --dataset, the replay's worker runs with it",
    )
    g.add_argument(
        "--ranker",
        choices=["blend", "text", "learned"],
        help="without --dataset: the replay worker's ranker (default: the worker's, blend; learned with --user-model)",
    )
    engine_knobs(g)
    adapt_knobs(g)
    csv_options(p)
    p.set_defaults(func=cmd_backtest)
