"""recstream JSON lines: records already in the contract's shape, one per line.

Each line is one JSON object: a ``"topic"`` field (``items``, ``clicks``, ``purchases`` or
``reviews``) plus the fields of that topic's value, e.g.
``{"topic": "clicks", "user_id": "u1", "item_id": "i9", "ts": 1700000000000}``.
Every line is validated with the contract's own parser (:func:`streams.records.parse_item`
/ :func:`streams.records.parse_event`, the key built from the value's ``item_id`` /
``user_id``); an invalid line is skipped and counted with the validation message.
Items keep their own ``ts`` and their file order; a repeated ``item_id`` is kept as an
update (as on the compacted ``items`` topic). Events keep their own ``event_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, cast

import orjson

from ..records import Item, ValidationError, parse_event, parse_item
from .base import Builder, numbered, open_lines

__all__ = ["TOPICS", "load"]

TOPICS: Final = ("items", "clicks", "purchases", "reviews")


def load(paths: list[Path], builder: Builder) -> None:
    for source, path in enumerate(paths):
        _load_file(path, source, builder)


def _load_file(path: Path, source: int, builder: Builder) -> None:
    file = path.name
    for line, raw in numbered(open_lines(path), builder, file):
        if not raw.strip():
            builder.skip(file, line, "empty line", "empty line")
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            builder.skip(file, line, "not valid JSON", f"not valid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            builder.skip(file, line, "not a JSON object", f"not a JSON object but {type(obj).__name__}")
            continue
        topic = obj.pop("topic", None)
        if topic not in TOPICS:
            if topic is None:
                builder.skip(file, line, "topic is missing", f"topic is missing; expected one of {', '.join(TOPICS)}")
            else:
                builder.skip(file, line, "unknown topic", f"topic {topic!r} is not one of {', '.join(TOPICS)}")
            continue
        key_field = "item_id" if topic == "items" else "user_id"
        key_value = obj.get(key_field)
        # A key that cannot match makes the value check report the real problem first.
        key = key_value.encode("utf-8") if isinstance(key_value, str) else b""
        value = orjson.dumps(obj)
        try:
            if topic == "items":
                # cast: mypy forgets the assert's narrowing after the try
                item = cast(Item, parse_item(key, value, now_ms=builder.now_ms, max_future_ms=builder.max_future_ms))
                assert isinstance(item, Item)  # a value is never null here
            else:
                event = parse_event(topic, key, value, now_ms=builder.now_ms, max_future_ms=builder.max_future_ms)
        except ValidationError as exc:
            where = f" ({exc.field})" if exc.field else ""
            builder.skip(file, line, f"invalid {topic} record{where}", f"invalid {topic} record: {exc}")
            continue
        if topic == "items":
            builder.add_item(
                item.item_id, item.title, item.description, item.categories,
                file=file, line=line, ts=item.ts, dedupe=False, blank_is_text=True,
            )  # fmt: skip
        else:
            builder.event(event, source, line)
