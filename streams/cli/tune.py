"""``recstream tune``: pick blend weights on a validation window and write the ``--blend`` file."""

from __future__ import annotations

import argparse

from .options import _env, csv_options, dataset_options, engine_knobs, parse_time_opt, settings_from


def cmd_tune(args: argparse.Namespace) -> int:
    from recstream.scoring.blend import BlendWeights

    from ..tune import catalog_embeddings, load_source, parse_grid, protocol_config, tune_weights

    options = dataset_options(args, args.dataset)
    split_ms = parse_time_opt(args.split)
    validation_from_ms = parse_time_opt(args.validation_from)
    if split_ms is not None and validation_from_ms is not None and validation_from_ms >= split_ms:
        raise ValueError("--validation-from must be before --split")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    config = protocol_config(
        k=args.k,
        positive_threshold=args.positive_threshold,
        popularity_half_life_days=args.popularity_half_life_days,
        half_life_days=args.half_life_days,
        history_len=args.history_len,
        cooc_neighbours=args.cooc_neighbours,
        cooc_history_len=args.cooc_history_len,
        cooc_half_life_days=args.cooc_half_life_days,
        cooc_pair_decay=args.cooc_pair_decay,
        cooc_recency=args.cooc_recency,
    )
    grid = parse_grid(args.grid_step, args.normalizations)
    src = load_source(
        args.dataset, None if args.dataset else settings_from(args), end_ms=split_ms, positive_threshold=args.positive_threshold, dataset_options=options
    )
    fields = tuple(f.strip() for f in args.item_fields.split(",") if f.strip())
    emb, info = catalog_embeddings(src.catalog, fields=fields, model=args.model)
    weights, meta = tune_weights(src, emb, split_ms=split_ms, validation_from_ms=validation_from_ms, kinds=kinds, config=config, grid=grid)
    meta["embeddings"] = {"model": info["model"], "item_fields": list(fields)}
    BlendWeights.save(weights, args.output, meta=meta)
    v = meta["validation"]
    k = args.k
    print(
        f"{weights.label()}: HR@{k} {v[f'best_hr@{k}']:.4f}, NDCG@{k} {v[f'best_ndcg@{k}']:.4f} on {v['cases']} validation "
        f"cases (interactions {v['interactions'][0]}-{v['interactions'][1]}); wrote {args.output}"
    )
    return 0


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
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
    p.add_argument("--split", metavar="DATE", help="start of the test period: nothing from it on is read (default: the 80%% point of the interactions)")
    p.add_argument("--validation-from", metavar="DATE", help="start of the validation window (default: the last eighth of the interactions before --split)")
    p.add_argument("-o", "--output", default="blend.json", help="weights file to write (default blend.json)")
    p.add_argument("-k", "--k", type=int, default=10, help="list length of the metric (default 10)")
    p.add_argument("--grid-step", type=float, default=0.1, help="weight grid step on the simplex (default 0.1: 66 points per normalisation)")
    p.add_argument("--normalizations", default="zscore,rank", help="normalisations tried (default zscore,rank)")
    p.add_argument("--kinds", default="click,purchase,review", help="event kinds that make interactions (default all three)")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="rating of a positive review (default 4)")
    p.add_argument("--model", default=_env("MODEL"), help="text model directory (default the packaged all-MiniLM-L6-v2)")
    engine_knobs(p)
    csv_options(p)
    p.set_defaults(func=cmd_tune)
