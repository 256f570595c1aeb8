"""``recstream demo``: the pipeline on built-in data."""

from __future__ import annotations

import argparse

from .options import settings_from


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo

    return run_demo(settings_from(args), pace_s=args.pace, keep=args.keep)


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[kafka_opts],
        help="run the pipeline on built-in data and show recommendations arriving",
        description="Start the local broker (unless one answers), create private topics, start a worker, load the "
        "built-in 50-item catalog, stream a generated event stream, print each event's recommendations, "
        "then stop everything it started.",
    )
    p.add_argument("--pace", type=float, default=0.5, help="seconds between generated events (default 0.5)")
    p.add_argument("--keep", action="store_true", help="keep the demo's topics and state afterwards")
    p.set_defaults(func=cmd_demo)
