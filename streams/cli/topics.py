"""``recstream topics``: create, list or delete recstream's topics."""

from __future__ import annotations

import argparse
import sys

from .options import settings_from


def cmd_topics(args: argparse.Namespace) -> int:
    from .. import topics

    settings = settings_from(args)
    if args.action == "create":
        specs = topics.topic_specs(settings, partitions=args.partitions, replication_factor=args.replication_factor)
        statuses = topics.ensure_topics(settings, specs)
        for s in statuses:
            print(f"{s.outcome:9} {s.name}  {s.detail}")
        return 1 if any(s.outcome == "mismatch" for s in statuses) else 0
    if args.action == "list":
        for name, partitions in sorted(topics.list_topics(settings).items()):
            print(f"{name}\t{partitions}")
        return 0
    if args.action == "delete":
        if not args.yes:
            print("refusing to delete without --yes", file=sys.stderr)
            return 2
        names = sorted(topics.list_topics(settings))
        if names:
            topics.delete_topics(settings, names)
        print("deleted: " + (", ".join(names) or "nothing (no topic of this deployment exists)"))
        return 0
    raise AssertionError(args.action)


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "topics",
        parents=[kafka_opts],
        help="create, list or delete recstream's topics",
        description="Create recstream's topics (idempotent), list or delete them.",
    )
    p.add_argument("action", choices=["create", "list", "delete"])
    p.add_argument("--partitions", type=int, default=4, help="partitions of the event, catalog, output and changelog topics (default 4)")
    p.add_argument("--replication-factor", type=int, default=1, help="replication factor (default 1, the local broker)")
    p.add_argument("--yes", action="store_true", help="confirm 'delete'")
    p.set_defaults(func=cmd_topics)
