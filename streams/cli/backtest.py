"""``recstream backtest``: replay a time range (or run the engine over a dataset) and score the
recommendations (its flags, and the :class:`streams.backtest.BacktestSettings` they make; the
run is :func:`streams.backtest.run_backtest`)."""

from __future__ import annotations

import argparse

from .options import (
    Problems,
    adapt_knobs,
    add_setting,
    blend_weights,
    csv_options,
    dataset_options,
    date_ms,
    default_of,
    engine_knobs,
    integers,
    knob_settings,
    names,
    renamed,
    settings_from,
)


def _method_names() -> list[str]:
    from recstream.scoring.sidebyside import method_names

    return method_names()


def backtest_settings(args: argparse.Namespace):
    """The :class:`streams.backtest.BacktestSettings` of ``recstream backtest``'s flags; every
    problem with them is listed in one ConfigError (one line, exit status 2)."""
    from recstream.scoring.backtest import BacktestConfig

    from ..app import WorkerConfig
    from ..backtest import BacktestSettings, method_list

    blend = blend_weights(args.blend)  # a bad file: one line, exit status 1
    problems = Problems()
    if args.split is None:  # required, from a flag or the config file
        problems.add("--split DATE is required: events before it warm the state, later ones are tested")
    protocol = problems.check(
        lambda: BacktestConfig(
            split_ms=0 if args.split is None else args.split,  # 0 stands in for a missing split, to check the rest
            targets=args.targets,
            positive_threshold=args.positive_threshold,
            ks=args.ks,
            ease=args.ease,
        )
    )
    worker = problems.check(lambda: WorkerConfig(blend=blend, **knob_settings(args, adapt=True)))
    options = problems.check(lambda: dataset_options(args, args.dataset))
    problems.check(lambda: method_list(args.methods, user_model=args.user_model))
    kafka = None if args.dataset else problems.check(lambda: settings_from(args))
    if args.from_ is not None and args.to is not None and args.from_ >= args.to:
        problems.add("--from must be before --to")
    if args.workers < 1:
        problems.add(f"--workers must be at least 1, got {args.workers}")
    if args.partitions < 1:
        problems.add(f"--partitions must be at least 1, got {args.partitions}")
    problems.raise_any()
    assert protocol is not None and worker is not None
    return BacktestSettings(
        protocol=protocol,
        worker=worker,
        kafka=kafka,
        from_ms=args.from_,
        to_ms=args.to,
        replay_prefix=args.replay_prefix,
        workers=args.workers,
        dataset=args.dataset,
        dataset_options=options,
        partitions=args.partitions,
        methods=args.methods,
        user_model=args.user_model,
        blend=args.blend,
        ranker=args.ranker,
        json_file=args.json_file,
        html_file=args.html_file,
    )


def cmd_backtest(args: argparse.Namespace) -> int:
    from ..backtest import run_backtest

    return run_backtest(backtest_settings(args))


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    from recstream.scoring.backtest import BacktestConfig

    from ..app import RANKERS
    from ..backtest import BacktestSettings

    p = sub.add_parser(
        "backtest",
        parents=[kafka_opts],
        help="replay a time range and score the recommendations against what users did next",
        description="Replay the events of a time range through an isolated worker (per-event emission), then, "
        "for every target interaction after --split, rank the recommendation the user held when the "
        "worker processed it against the event's item; popularity and item-kNN baselines are scored "
        "on the same cases. Prints a table; --json-file writes every figure, --html-file a report with plots.",
    )
    p.add_argument("--split", metavar="DATE", type=date_ms, help="events before it warm the state; later target events are test cases (required)")
    p.add_argument("--from", dest="from_", metavar="DATE", type=date_ms, help="first event of the replay (default: the beginning)")
    p.add_argument("--to", metavar="DATE", type=date_ms, help="end of the replay, exclusive (default: now)")
    p.add_argument("--replay-prefix", help="score an existing replay namespace instead of running a new one")
    add_setting(
        p,
        "--workers",
        type=int,
        metavar="N",
        env=False,
        default=default_of(BacktestSettings, "workers"),
        help="replay through N workers of one group sharing the partitions; at most the partitions",
    )
    add_setting(
        p,
        "--targets",
        type=names,
        metavar="KIND,...",
        env=False,
        default=default_of(BacktestConfig, "targets"),
        help="which events are test cases: click, purchase, positive (reviews at or above the threshold)",
    )
    add_setting(
        p,
        "--positive-threshold",
        type=float,
        env=False,
        default=default_of(BacktestConfig, "positive_threshold"),
        help="rating of a positive review",
    )
    add_setting(p, "--ks", type=integers, metavar="K,...", env=False, default=default_of(BacktestConfig, "ks"), help="cut-offs")
    p.add_argument(
        "--ease",
        action="store_true",
        default=default_of(BacktestConfig, "ease"),
        help="also score the recency-weighted EASE baseline, fit at --split on the "
        "interactions before it (seconds to minutes and GBs: it inverts an items x items matrix)",
    )
    renamed(p, "--json", p.add_argument("--json-file", metavar="FILE", help="write the full result as JSON"))
    renamed(
        p, "--html", p.add_argument("--html-file", metavar="FILE", help="write a report with plots (metrics per month, latency, baselines) as one HTML file")
    )
    g = p.add_argument_group(
        "side by side, offline (--dataset)",
        "Run recstream's engine here instead of a worker, once per "
        "method, over a dataset folder, and score every method and the baselines on the same cases. "
        "Without --dataset, the engine settings (--item-fields to --adapt-epoch) are passed to "
        "the replay's worker.",
    )
    g.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'): no broker, no replay")
    add_setting(
        g,
        "--partitions",
        type=int,
        metavar="N",
        env=False,
        default=default_of(BacktestSettings, "partitions"),
        help="with --dataset: key each user's events to one of N input partitions, as a worker's topics would; the adaptive weights are kept per partition",
    )
    g.add_argument(
        "--methods",
        type=names,
        metavar="METHOD,...",
        help=f"methods, in table order (default {','.join(m for m in _method_names() if m != 'learned')}, and learned with --user-model)",
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
        choices=RANKERS,
        help="without --dataset: the replay worker's ranker (default: the worker's, blend; learned with --user-model)",
    )
    engine_knobs(g)
    adapt_knobs(g)
    csv_options(p)
    p.set_defaults(func=cmd_backtest)
