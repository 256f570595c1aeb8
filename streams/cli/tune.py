"""``recstream tune``: pick blend weights on a validation window and write the ``--blend`` file
(its flags, and the :class:`streams.tune.TuneSettings` they make; the run is
:func:`streams.tune.run_tune`)."""

from __future__ import annotations

import argparse

from .options import (
    Problems,
    add_setting,
    csv_options,
    dataset_options,
    date_ms,
    default_of,
    engine_knobs,
    knob_settings,
    names,
    settings_from,
    text_model_option,
)


def tune_settings(args: argparse.Namespace):
    """The :class:`streams.tune.TuneSettings` of ``recstream tune``'s flags; every problem with
    them is listed in one ConfigError (one line, exit status 2)."""
    from recstream.scoring.protocol import interactions_from_events

    from ..app import WorkerConfig
    from ..tune import TuneSettings

    problems = Problems()
    engine = problems.check(lambda: WorkerConfig(model=args.model, **knob_settings(args)))
    options = problems.check(lambda: dataset_options(args, args.dataset))
    kafka = None if args.dataset else problems.check(lambda: settings_from(args))
    if args.split is not None and args.validation_from is not None and args.validation_from >= args.split:
        problems.add("--validation-from must be before --split")
    problems.check(lambda: interactions_from_events((), kinds=args.kinds))  # the kinds' own check
    settings = TuneSettings(
        engine=engine or WorkerConfig(),  # the defaults, to check the rest when the engine settings are refused
        kafka=kafka,
        dataset=args.dataset,
        dataset_options=options,
        split_ms=args.split,
        validation_from_ms=args.validation_from,
        output=args.output,
        k=args.k,
        grid_step=args.grid_step,
        normalizations=args.normalizations,
        kinds=args.kinds,
        positive_threshold=args.positive_threshold,
    )
    problems.check(settings.protocol_config)
    problems.check(settings.grid)
    problems.raise_any()
    return settings


def cmd_tune(args: argparse.Namespace) -> int:
    from ..tune import run_tune

    return run_tune(tune_settings(args))


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    from ..tune import TuneSettings

    def default(name: str):
        return default_of(TuneSettings, name)

    p = sub.add_parser(
        "tune",
        parents=[kafka_opts],
        help="pick blend weights on a validation window, write the --blend file",
        description="Replay the interactions before --split (a dataset folder with --dataset, else the "
        "deployment's topics), score every positive interaction of the validation window under a "
        "grid of blend weights (text similarity, item co-occurrence, popularity; z-score and rank "
        "normalisations) and write the best, by NDCG@k then HR@k, as the weights file that "
        "'recstream worker --blend' and 'recstream backtest --blend' read. Nothing at or after "
        "--split is read: tune before the period you report on.",
    )
    p.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'; default: read the topics)")
    p.add_argument(
        "--split", metavar="DATE", type=date_ms, help="start of the test period: nothing from it on is read (default: the 80%% point of the interactions)"
    )
    p.add_argument(
        "--validation-from", metavar="DATE", type=date_ms, help="start of the validation window (default: the last eighth of the interactions before --split)"
    )
    add_setting(p, "-o", "--output", metavar="FILE", env=False, default=default("output"), help="weights file to write")
    add_setting(p, "-k", "--k", type=int, env=False, default=default("k"), help="list length of the metric")
    step = default("grid_step")
    add_setting(
        p,
        "--grid-step",
        type=float,
        env=False,
        default=step,
        help="weight grid step on the simplex",
        default_text=f"{step:g}: {len(TuneSettings(grid_step=step, normalizations=('zscore',)).grid())} points per normalisation",
    )
    add_setting(p, "--normalizations", type=names, metavar="NAME,...", env=False, default=default("normalizations"), help="normalisations tried")
    add_setting(p, "--kinds", type=names, metavar="KIND,...", env=False, default=default("kinds"), help="event kinds that make interactions")
    add_setting(p, "--positive-threshold", type=float, env=False, default=default("positive_threshold"), help="rating of a positive review")
    text_model_option(p)
    engine_knobs(p)
    csv_options(p)
    p.set_defaults(func=cmd_tune)
