"""``recstream profile``: show what the pipeline holds for a user."""

from __future__ import annotations

import argparse

from .options import settings_from


def cmd_profile(args: argparse.Namespace) -> int:
    import orjson

    from ..inspect import format_view, inspect_user

    view = inspect_user(settings_from(args), args.user)
    if args.json:
        print(orjson.dumps(view.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_view(view))
    return 0 if view.profile is not None else 3


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "profile",
        parents=[kafka_opts],
        help="show what the pipeline holds for a user",
        description="Print a user's profile (events applied, last offsets, recent history, purchases) and latest "
        "recommendations, read from the profiles changelog and the recommendations topic. "
        "Exit status 3 when the pipeline holds no profile for the user.",
    )
    p.add_argument("user", help="user id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_profile)
