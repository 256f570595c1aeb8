"""``recstream subscribe``: tail the recommendations topic."""

from __future__ import annotations

import argparse

from .options import settings_from


def cmd_subscribe(args: argparse.Namespace) -> int:
    from ..subscribe import subscribe

    return subscribe(settings_from(args), from_beginning=args.from_beginning, user=args.user, as_json=args.json, limit=args.limit, idle_exit_s=args.idle_exit)


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "subscribe",
        parents=[kafka_opts],
        help="tail the recommendations topic",
        description="Print recommendations as they are published: with titles, scores and 'because' items, "
        "or as JSON lines (--json). Stops on Ctrl-C, after --limit records, or after --idle-exit "
        "seconds without a record.",
    )
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record instead of now")
    p.add_argument("--user", help="only this user's recommendations")
    p.add_argument("--json", action="store_true", help="one JSON record per line, as on the topic")
    p.add_argument("--limit", type=int, help="stop after this many records")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS", help="stop after this long without a record")
    p.set_defaults(func=cmd_subscribe)
