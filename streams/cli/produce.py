"""``recstream produce``: produce a dataset to the topics."""

from __future__ import annotations

import argparse
import sys

from .options import Problems, _env_int, csv_options, dataset_options, settings_from


def cmd_produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..produce import Pacer, parse_time, produce_dataset
    from ..sources import load_dataset

    pacer = Pacer(rate=args.rate, speedup=args.speedup)
    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    problems = Problems()  # a bad --columns mapping is a settings error (exit 2), as for tune, train and backtest
    options = problems.check(lambda: dataset_options(args, args.path)) or {}
    problems.raise_any()
    with tqdm(desc=f"reading {args.path}", unit="row", file=sys.stderr) as bar:
        dataset = load_dataset(
            args.path, fmt=args.format, positive_threshold=args.positive_threshold, start_ms=start, end_ms=end, limit=args.limit, progress=bar.update, **options
        )
    print(f"{dataset.name} ({dataset.format}):", file=sys.stderr)
    for line in dataset.stats.summary():
        print(f"  {line}", file=sys.stderr)
    if args.dry_run:
        return 0
    settings = settings_from(args)
    counts = produce_dataset(settings, dataset, partitions=args.partitions, catalog=not args.no_catalog, pacer=pacer)
    print(
        f"produced {counts['items']} catalog records to {settings.topic('items')!r} and {counts['events']} events "
        f"to {', '.join(repr(settings.topic(t)) for t in ('clicks', 'purchases', 'reviews'))}",
        file=sys.stderr,
    )
    return 0


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "produce",
        parents=[kafka_opts],
        help="produce a public dataset (or recstream JSON lines) to the topics",
        description="Read MovieLens (ml-latest, ml-latest-small, ml-25m, ml-32m, ml-1m, ml-100k), Amazon Review "
        "Data (2018 or 2023, with its metadata file), recstream JSON lines or a CSV of your own interactions "
        "(--columns) from PATH, and produce "
        "the catalog, then the events in event-time order, with Kafka timestamps set to event time. "
        "Rows that cannot be used are skipped and reported with the reason, never silently.",
    )
    p.add_argument("path", help="dataset folder (or file)")
    p.add_argument("--format", default="auto", help="auto (default), movielens, ml-1m, ml-100k, amazon-2018, amazon-2023, jsonl or csv")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N", help="events per second (default: as fast as possible)")
    pace.add_argument("--speedup", type=float, metavar="X", help="X times the original pace of the events")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N events (in event-time order)")
    p.add_argument("--from", dest="from_", metavar="DATE", help="only events at or after DATE (YYYY-MM-DD or ISO date-time, UTC)")
    p.add_argument("--to", metavar="DATE", help="only events before DATE")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="MovieLens and CSV: a rating at or above it is also a purchase (default 4)")
    p.add_argument("--partitions", type=int, default=_env_int("PARTITIONS", 4), help="partitions for topics created here (default 4)")
    p.add_argument("--no-catalog", action="store_true", help="skip the catalog (already produced)")
    p.add_argument("--dry-run", action="store_true", help="read and report, produce nothing")
    csv_options(p)
    p.set_defaults(func=cmd_produce)
