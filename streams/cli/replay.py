"""``recstream replay``: replay a time range through an isolated pipeline."""

from __future__ import annotations

import argparse
import sys

from .options import settings_from


def cmd_replay(args: argparse.Namespace) -> int:
    import time as _time

    from ..produce import parse_time
    from .. import topics
    from ..replay import copy_range, run_replay

    source = settings_from(args)
    prefix = args.target_prefix or f"{source.topic_prefix}replay-{int(_time.time())}."
    target = source.with_prefix(prefix)
    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    live = topics.list_topics(source)
    partitions = args.partitions or live.get(source.topic(topics.CLICKS))
    if not partitions:
        print(f"recstream replay: no topic {source.topic(topics.CLICKS)!r} on {source.broker} to replay", file=sys.stderr)
        return 1
    args.partitions = partitions
    if args.copy_only:
        stats = copy_range(source, target, start_ms=start, end_ms=end, partitions=args.partitions)
    else:
        worker_args = ["-k", str(args.k)] + (["--no-exclude-seen"] if not args.exclude_seen else [])
        stats = run_replay(source, target, start_ms=start, end_ms=end, partitions=args.partitions, worker_args=worker_args)
    print(
        f"replay into prefix {prefix!r} (app id {target.app_id!r}): {stats.items} catalog records, "
        f"{stats.events_total} events ({', '.join(f'{n} {t}' for t, n in stats.events.items())})"
        + ("" if args.copy_only else f", {stats.recommendations} recommendations, {stats.dead_letters} dead letters in {stats.seconds:.1f}s"),
        file=sys.stderr,
    )
    return 0


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay",
        parents=[kafka_opts],
        help="replay a time range through an isolated pipeline",
        description="Copy the catalog and the events of a time range (found by timestamp) from the topics "
        "named by --topic-prefix into a new namespace (--target-prefix, with its own application "
        "id, tables and recommendations topic), then run a worker there with per-event emission "
        "until every event has its recommendation. The live topics and state are only read.",
    )
    p.add_argument("--from", dest="from_", metavar="DATE", help="first event time (YYYY-MM-DD or ISO date-time, UTC; default: the beginning)")
    p.add_argument("--to", metavar="DATE", help="end of the range, exclusive (default: now)")
    p.add_argument("--target-prefix", help="topic prefix of the replay (default <prefix>replay-<unix time>.)")
    p.add_argument("--partitions", type=int, help="partitions of the replay topics (default: as many as the live event topics)")
    p.add_argument("-k", "--k", type=int, default=20, help="items per recommendation in the replay (default 20)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True, help="exclude seen items (default on)")
    p.add_argument("--copy-only", action="store_true", help="copy the range and stop (no worker)")
    p.set_defaults(func=cmd_replay)
