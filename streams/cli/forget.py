"""``recstream forget``: forget a user (a forget request on the clicks topic)."""

from __future__ import annotations

import argparse

from .options import settings_from


def cmd_forget(args: argparse.Namespace) -> int:
    import time
    import uuid

    import orjson

    from .. import topics as T
    from ..client import partition_for, producer
    from ..records import Forget, encode

    settings = settings_from(args)
    user = args.user
    if not user or len(user) > 256 or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user):
        raise ValueError("user: must have 1 to 256 characters and no control characters")
    record = Forget(user, int(time.time() * 1000), args.request_id or uuid.uuid4().hex)
    topic = settings.topic(T.CLICKS)
    prod = producer(settings)
    try:
        partitions = prod.partitions_for(topic)
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist on {settings.broker}")
        meta = prod.send(topic, key=user.encode(), value=encode(record), partition=partition_for(user.encode(), len(partitions))).get(timeout=60)
    finally:
        prod.close()
    out = {"status": "accepted", "user_id": user, "request_id": record.request_id, "topic": topic, "partition": meta.partition, "offset": meta.offset}
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        print(
            f"forget request {record.request_id} for user {user!r} written to {topic}[{meta.partition}] at offset "
            f"{meta.offset}; the worker holding that partition deletes the user's profile and latest "
            f"recommendations when it reaches it (docs/api.md)"
        )
    return 0


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "forget",
        parents=[kafka_opts],
        help="forget a user: delete their profile and latest recommendations",
        description="Write a forget request for USER to the clicks topic (keyed by the user, so it is applied "
        "in order with the user's events). The worker holding the user's partition deletes the "
        "user's profile and latest recommendations, with tombstones on their changelogs, when it "
        "reaches it; aggregate counts remain (docs/api.md: Forgetting a user). The same as "
        "DELETE /v1/users/{user_id}.",
    )
    p.add_argument("user", help="user id")
    p.add_argument("--request-id", help="an id for the request, for tracing (default: a random one)")
    p.add_argument("--json", action="store_true", help="print the acknowledgement as JSON")
    p.set_defaults(func=cmd_forget)
