"""The recstream event contract: record types, validation and encoding.

Pure code, no Kafka I/O. Every topic carries a JSON object encoded with orjson; ids are
strings and timestamps are integer epoch milliseconds. This module is the one place where
the contract is enforced:

* :func:`parse_item` and :func:`parse_event` turn a raw Kafka ``(key, value)`` pair from an
  input topic into a typed record, or raise :class:`ValidationError` naming the field, what
  was wrong and what was given (the caller dead-letters it with :func:`dead_letter`).
* :func:`encode` turns any record into the bytes to produce; :func:`record_key` gives its key.
* :func:`decode_recommendation` and :func:`decode_dead_letter` read the output topics back.

Constructing the dataclasses directly does not validate; parsing does. The rules live in a
single table of field specs per topic kind (``_SHAPES``), and the JSON Schema files next to
this module (:func:`schema_path`) describe the same value-level rules for other languages.
The human-readable contract is ``docs/contract.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, NoReturn, TypeAlias

import orjson

# The record types themselves live at the bottom of the layers (scoring/records.py, no
# Kafka, no imports from this repository) so that scoring/ and encoders/ need not import
# streams/; this module re-exports them with the contract it enforces on them.
from recstream.scoring.records import (
    DAY_MS,
    EVENT_TOPICS,
    KIND_RANK,
    KIND_TOPICS,
    SCHEMA_VERSION,
    Click,
    Event,
    Item,
    Purchase,
    RecItem,
    Recommendation,
    Review,
    Trigger,
    _without_none,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_MAX_FUTURE_MS",
    "EVENT_TOPICS",
    "KIND_RANK",
    "KIND_TOPICS",
    "MAX_CATEGORIES",
    "MAX_CATEGORY_CHARS",
    "MAX_ID_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_TITLE_CHARS",
    "MAX_VALUE_BYTES",
    "SCHEMA_KINDS",
    "SCHEMA_VERSION",
    "Click",
    "DeadLetter",
    "Event",
    "Forget",
    "Item",
    "ItemDeleted",
    "Purchase",
    "RecItem",
    "Recommendation",
    "Record",
    "Review",
    "Trigger",
    "ValidationError",
    "dead_letter",
    "decode_dead_letter",
    "decode_recommendation",
    "encode",
    "encode_emitted",
    "parse_event",
    "parse_input",
    "parse_item",
    "record_key",
    "schema_path",
]

#: Topic kinds that have a JSON Schema file (see :func:`schema_path`).
SCHEMA_KINDS: Final = ("items", "clicks", "purchases", "reviews", "recommendations", "dlq", "forget")
#: ``type`` of a forget request, a control record on an event topic (see :class:`Forget`).
FORGET_TYPE: Final = "forget"

MAX_VALUE_BYTES: Final = 1_000_000  # an input value, encoded
MAX_ID_CHARS: Final = 256  # user_id, item_id, event_id, because
MAX_TITLE_CHARS: Final = 2_000
MAX_TEXT_CHARS: Final = 20_000  # review text and item description
MAX_CATEGORY_CHARS: Final = 200
MAX_CATEGORIES: Final = 100
MAX_MODEL_CHARS: Final = 256
MAX_TOPIC_CHARS: Final = 249  # Kafka's own limit on topic names
DEFAULT_MAX_FUTURE_MS: Final = 86_400_000  # how far ahead of the reader's clock a ts may be

_SCHEMA_DIR: Final = Path(__file__).resolve().parent / "schemas"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_PREVIEW_CHARS: Final = 80


class ValidationError(ValueError):
    """A record that breaks the contract.

    ``field`` names the offending field (``"rating"``, ``"items[2].score"``, ``"key"``) or is
    None when the value as a whole is wrong (not JSON, not an object, too large). ``reason``
    says what was wrong and what was given; ``str(error)`` is ``"field: reason"``.
    """

    field: str | None
    reason: str

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------- records
# Item, Click, Purchase, Review, RecItem, Trigger and Recommendation: scoring/records.py.


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    """A tombstone on ``items``: the key names the item, the value is null."""

    item_id: str


@dataclass(frozen=True, slots=True)
class Forget:
    """A request to forget a user (``recstream forget``, ``DELETE /v1/users/{user_id}``).

    A control record on an event topic (``clicks`` by default), key = user_id, so that it is
    ordered with the user's events and applied by the worker holding the user's partition,
    in the same micro-batch transaction as the events around it.  On the wire:
    ``{"type": "forget", "user_id", "ts", "request_id"?}`` (``schema`` 1 optional).  A worker
    older than this record type dead-letters it (``unknown field "type"``): it is never
    misread, and can be replayed from the dead-letter topic once the workers are upgraded.
    """

    kind: ClassVar[str] = "forget"
    user_id: str
    ts: int
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"type": FORGET_TYPE, "user_id": self.user_id, "ts": self.ts, "request_id": self.request_id})


def _to_text(raw: bytes | None) -> tuple[str | None, str]:
    """Original bytes as JSON-safe text: UTF-8 text as is, anything else as base64."""
    if raw is None:
        return None, "utf-8"
    try:
        return bytes(raw).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _from_text(text: str | None, encoding: str) -> bytes | None:
    if text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, on ``recstream-dlq``, with its original bytes.

    ``value``/``key`` hold the original bytes as text when they are valid UTF-8
    (``encoding``/``key_encoding`` ``"utf-8"``), else as base64 (``"base64"``); None for a
    null value/key. Build one with :func:`dead_letter`; get the bytes back with
    :meth:`original_value` and :meth:`original_key`.
    """

    topic: str
    partition: int
    offset: int
    error: str
    value: str | None
    key: str | None
    encoding: str = "utf-8"
    key_encoding: str = "utf-8"

    def original_value(self) -> bytes | None:
        return _from_text(self.value, self.encoding)

    def original_key(self) -> bytes | None:
        return _from_text(self.key, self.key_encoding)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "value": self.value,
            "encoding": self.encoding,
            "key": self.key,
            "key_encoding": self.key_encoding,
        }


#: Everything :func:`encode` accepts.
Record: TypeAlias = Item | Click | Purchase | Review | Forget | Recommendation | DeadLetter
_ENCODABLE: Final = (Item, Click, Purchase, Review, Forget, Recommendation, DeadLetter)


# --------------------------------------------------------------------------- field checks
#
# A check takes (raw value, field path, clock) and returns the value to store, or raises
# ValidationError. An object is a table {name: _Field}; _object() turns a table into a check.


@dataclass(slots=True)
class _Clock:
    now_ms: int
    max_future_ms: int


Check: TypeAlias = Callable[[Any, str, "_Clock | None"], Any]


@dataclass(frozen=True, slots=True)
class _Field:
    check: Check
    required: bool = True
    default: Any = None  # an optional field that is absent or null takes this value


def _fail(path: str, reason: str) -> NoReturn:
    raise ValidationError(path or None, reason)


def _preview(v: Any) -> str:
    """A short JSON-like rendering of a given value for error messages."""
    if isinstance(v, str) and len(v) > _PREVIEW_CHARS:
        v = v[: _PREVIEW_CHARS + 1]
    if isinstance(v, float) and not math.isfinite(v):
        text = repr(v)
    else:
        try:
            text = orjson.dumps(v).decode("utf-8")
        except (TypeError, ValueError):
            text = repr(v)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def json_type(v: Any) -> str:
    """The JSON type name of a decoded value (``null``, ``boolean``, ``integer``, ...), for
    error messages (the records' and the HTTP API's)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _describe(v: Any) -> str:
    return "null" if v is None else f"{json_type(v)} {_preview(v)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_id(v: Any, path: str, clock: _Clock | None = None) -> str:
    if not isinstance(v, str):
        if _is_number(v):
            _fail(path, f'must be a string, got {_describe(v)} (ids are strings: send numeric ids as text, e.g. "{v}")')
        _fail(path, f"must be a string, got {_describe(v)}")
    if not v:
        _fail(path, "must not be empty")
    if len(v) > MAX_ID_CHARS:
        _fail(path, f"must be at most {MAX_ID_CHARS} characters, got {len(v)}: {_preview(v)}")
    if (m := _CONTROL.search(v)) is not None:
        _fail(path, f"must not contain control characters, got U+{ord(m.group()):04X} at index {m.start()} in {_preview(v)}")
    return v


def _string(max_chars: int | None = None, *, non_empty: bool = False) -> Check:
    def check(v: Any, path: str, clock: _Clock | None) -> str:
        if not isinstance(v, str):
            _fail(path, f"must be a string, got {_describe(v)}")
        if non_empty and not v:
            _fail(path, "must not be empty")
        if max_chars is not None and len(v) > max_chars:
            _fail(path, f"must be at most {max_chars} characters, got {len(v)}: {_preview(v)}")
        return v

    return check


def _integer(minimum: int, unit: str = "") -> Check:
    what = f"an integer ({unit})" if unit else "an integer"

    def check(v: Any, path: str, clock: _Clock | None) -> int:
        if not _is_int(v):
            _fail(path, f"must be {what}, got {_describe(v)}")
        if v < minimum:
            _fail(path, f"must be at least {minimum}, got {v}")
        return int(v)

    return check


def _number(minimum: float | None = None, maximum: float | None = None) -> Check:
    def check(v: Any, path: str, clock: _Clock | None) -> float:
        if not _is_number(v):
            _fail(path, f"must be a number, got {_describe(v)}")
        try:
            number = float(v)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            _fail(path, f"must be a finite number, got {_preview(v)}")
        if minimum is not None and maximum is not None and not minimum <= number <= maximum:
            _fail(path, f"must be between {minimum:g} and {maximum:g}, got {_preview(v)}")
        if minimum is not None and number < minimum:
            _fail(path, f"must be at least {minimum:g}, got {_preview(v)}")
        return number

    return check


_check_millis = _integer(0, "epoch milliseconds")


def _check_event_ts(v: Any, path: str, clock: _Clock | None) -> int:
    ts = _check_millis(v, path, clock)
    if clock is not None and ts > clock.now_ms + clock.max_future_ms:
        _fail(
            path,
            f"must not be more than {clock.max_future_ms} ms after now ({clock.now_ms}), got {ts} ({ts - clock.now_ms} ms ahead)",
        )
    return ts


def _check_schema(v: Any, path: str, clock: _Clock | None) -> int:
    if _is_int(v) and v == SCHEMA_VERSION:
        return SCHEMA_VERSION
    _fail(path, f"unsupported schema version {_preview(v)}; this worker reads version {SCHEMA_VERSION}")


def _one_of(*options: str) -> Check:
    def check(v: Any, path: str, clock: _Clock | None) -> str:
        if not isinstance(v, str) or v not in options:
            _fail(path, f"must be one of {', '.join(map(_preview, options))}, got {_describe(v)}")
        return v

    return check


def _nullable(inner: Check) -> Check:
    def check(v: Any, path: str, clock: _Clock | None) -> Any:
        return None if v is None else inner(v, path, clock)

    return check


def _array(element: Check, *, max_items: int | None = None, into: Callable[[list[Any]], Any] = tuple) -> Check:
    def check(v: Any, path: str, clock: _Clock | None) -> Any:
        if not isinstance(v, (list, tuple)):
            _fail(path, f"must be an array, got {_describe(v)}")
        if max_items is not None and len(v) > max_items:
            _fail(path, f"must have at most {max_items} entries, got {len(v)}")
        return into([element(x, f"{path}[{i}]", clock) for i, x in enumerate(v)])

    return check


def _object(fields: Mapping[str, _Field], build: Callable[..., Any]) -> Check:
    """A check for a JSON object with exactly these fields, building ``build(**values)``."""
    allowed = ", ".join(fields)
    known = frozenset(fields)
    required = [name for name, f in fields.items() if f.required]
    required_set = frozenset(required)
    table = tuple((name, f.check, f.required, f.default) for name, f in fields.items())
    schema_check = fields["schema"].check if "schema" in fields else None

    def check(v: Any, path: str, clock: _Clock | None) -> Any:
        prefix = f"{path}." if path else ""
        if not isinstance(v, dict):
            _fail(path, f"{'must' if path else 'value must'} be a JSON object, got {_describe(v)}")
        # The version first: a record from a newer producer is reported as such, not as
        # having unknown fields.
        if schema_check is not None and v.get("schema") is not None:
            schema_check(v["schema"], prefix + "schema", clock)
        if not known.issuperset(v):
            unknown = [name for name in v if name not in known]
            names = ", ".join(map(_preview, unknown))
            plural = "s" if len(unknown) > 1 else ""
            _fail(prefix + str(unknown[0]), f"unknown field{plural} {names}; allowed fields are {allowed}")
        if not required_set.issubset(v):
            missing = [name for name in required if name not in v]
            also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            _fail(prefix + missing[0], f"required field is missing{also}")
        values = {}
        for name, field_check, is_required, default in table:
            raw = v.get(name)
            if raw is None and not is_required:
                values[name] = default
            else:
                values[name] = field_check(raw, prefix + name, clock)
        return build(**values)

    return check


def _drop_schema(cls: Callable[..., Any]) -> Callable[..., Any]:
    """Input records carry ``schema`` on the wire only; the dataclasses do not keep it."""

    def build(schema: int, **values: Any) -> Any:
        return cls(**values)

    return build


def _build_item(**values: Any) -> Item:
    item: Item = _drop_schema(Item)(**values)
    if not item.title and not item.description:
        _fail("title", "an item needs a non-empty title or description; both are empty")
    return item


def _build_dead_letter(schema: int, **values: Any) -> DeadLetter:
    letter = DeadLetter(**values)
    for path, text, encoding in (("value", letter.value, letter.encoding), ("key", letter.key, letter.key_encoding)):
        if text is not None and encoding == "base64":
            try:
                base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                _fail(path, f"is not valid base64 ({exc}): {_preview(text)}")
    return letter


_ID: Final = _Field(_check_id)
_OPTIONAL_ID: Final = _Field(_check_id, required=False)
_EVENT_TS: Final = _Field(_check_event_ts)
_MILLIS: Final = _Field(_check_millis)
_OPTIONAL_SCHEMA: Final = _Field(_check_schema, required=False, default=SCHEMA_VERSION)
_ENCODING: Final = _Field(_one_of("utf-8", "base64"))

_EVENT_FIELDS: Final = {
    "schema": _OPTIONAL_SCHEMA,
    "user_id": _ID,
    "item_id": _ID,
    "ts": _EVENT_TS,
    "event_id": _OPTIONAL_ID,
}

#: Topic kind -> check of a whole value (already parsed from JSON).
_SHAPES: Final[dict[str, Check]] = {
    "items": _object(
        {
            "schema": _OPTIONAL_SCHEMA,
            "item_id": _ID,
            "title": _Field(_string(MAX_TITLE_CHARS)),
            "description": _Field(_string(MAX_TEXT_CHARS), required=False, default=""),
            "categories": _Field(_array(_string(MAX_CATEGORY_CHARS), max_items=MAX_CATEGORIES), required=False, default=()),
            "ts": _EVENT_TS,
        },
        _build_item,
    ),
    "clicks": _object(_EVENT_FIELDS, _drop_schema(Click)),
    "purchases": _object(
        {
            **_EVENT_FIELDS,
            "quantity": _Field(_integer(1), required=False),
            "price": _Field(_number(0), required=False),
        },
        _drop_schema(Purchase),
    ),
    "reviews": _object(
        {
            "schema": _OPTIONAL_SCHEMA,
            "user_id": _ID,
            "item_id": _ID,
            "rating": _Field(_number(1, 5)),
            "text": _Field(_string(MAX_TEXT_CHARS)),
            "ts": _EVENT_TS,
            "event_id": _OPTIONAL_ID,
        },
        _drop_schema(Review),
    ),
    "forget": _object(
        {
            "schema": _OPTIONAL_SCHEMA,
            "type": _Field(_one_of(FORGET_TYPE)),
            "user_id": _ID,
            "ts": _EVENT_TS,
            "request_id": _OPTIONAL_ID,
        },
        lambda schema, type, **values: Forget(**values),
    ),
    "recommendations": _object(
        {
            "schema": _Field(_check_schema),
            "user_id": _ID,
            "items": _Field(
                _array(
                    _object(
                        {"item_id": _ID, "score": _Field(_number()), "because": _Field(_nullable(_check_id))},
                        RecItem,
                    ),
                    into=list,
                )
            ),
            "trigger": _Field(
                _object(
                    {
                        "topic": _Field(_string(MAX_TOPIC_CHARS, non_empty=True)),
                        "partition": _Field(_integer(0)),
                        "offset": _Field(_integer(0)),
                        "event_id": _Field(_nullable(_check_id)),
                        "received_ts": _Field(_check_millis, required=False),
                    },
                    Trigger,
                )
            ),
            "event_ts": _MILLIS,
            "emitted_ts": _MILLIS,
            "model": _Field(_string(MAX_MODEL_CHARS, non_empty=True)),
        },
        Recommendation,
    ),
    "dlq": _object(
        {
            "schema": _OPTIONAL_SCHEMA,
            "topic": _Field(_string(MAX_TOPIC_CHARS, non_empty=True)),
            "partition": _Field(_integer(0)),
            "offset": _Field(_integer(0)),
            "error": _Field(_string()),
            "value": _Field(_nullable(_string())),
            "encoding": _ENCODING,
            "key": _Field(_nullable(_string())),
            "key_encoding": _ENCODING,
        },
        _build_dead_letter,
    ),
}


# --------------------------------------------------------------------------- decoding


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _loads(value: bytes) -> tuple[Any, ValidationError | None]:
    """Parse JSON; on failure, also return a best-effort parse to locate the bad field.

    orjson refuses some documents that are well-formed JSON text, e.g. a number such as
    ``1e400`` that overflows a double. The stdlib parser reads those (as ``inf``), so the
    field checks can still name the offending field; the returned error is raised when
    they find nothing more precise.
    """
    try:
        return orjson.loads(value), None
    except orjson.JSONDecodeError as exc:
        error = exc
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            None,
            f"value is not valid UTF-8: byte 0x{value[exc.start]:02x} at offset {exc.start} ({exc.reason}) in {_preview(bytes(value))}",
        ) from None
    invalid = ValidationError(None, f"value is not valid JSON: {error}")
    try:
        salvaged = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise invalid from error
    return salvaged, invalid


def _decode(kind: str, value: bytes, clock: _Clock | None) -> Any:
    obj, pending = _loads(value)
    record = _SHAPES[kind](obj, "", clock)
    if pending is not None:
        raise pending
    return record


def _clock(now_ms: int | None, max_future_ms: int) -> _Clock:
    return _Clock(time.time_ns() // 1_000_000 if now_ms is None else now_ms, max_future_ms)


def _key_text(key: bytes | None, field: str) -> str:
    if key is None:
        _fail("key", f"is required (null key given); it must be the record's {field}")
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        _fail("key", f"is not valid UTF-8: {_preview(bytes(key))}")


def _check_size(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        _fail("", f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES} bytes")


def parse_item(
    key: bytes | None,
    value: bytes | None,
    *,
    now_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Item | ItemDeleted:
    """Validate an ``items`` record; a null value is a tombstone (:class:`ItemDeleted`).

    ``now_ms`` (default: the current time) and ``max_future_ms`` bound ``ts``. The key is
    required and must equal ``item_id``. Raises :class:`ValidationError`.
    """
    key_text = _key_text(key, "item_id")
    if value is None:
        return ItemDeleted(_check_id(key_text, "key"))
    _check_size(value)
    item: Item = _decode("items", value, _clock(now_ms, max_future_ms))
    if key_text != item.item_id:
        _fail("key", f"must equal item_id {_preview(item.item_id)}, got {_preview(key_text)}")
    return item


def parse_event(
    kind: str,
    key: bytes | None,
    value: bytes | None,
    *,
    now_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Event:
    """Validate a record of an event topic; ``kind`` is one of :data:`EVENT_TOPICS`.

    ``now_ms`` (default: the current time) and ``max_future_ms`` bound ``ts``. The key is
    required and must equal ``user_id``. Raises :class:`ValidationError`; an unknown
    ``kind`` is a programming error and raises a plain :class:`ValueError`.
    """
    if kind not in EVENT_TOPICS:
        raise ValueError(f"kind: must be one of {', '.join(EVENT_TOPICS)}, got {kind!r}")
    key_text = _key_text(key, "user_id")
    if value is None:
        _fail("", f"value is null; tombstones are only meaningful on items, a {kind} record needs a JSON object")
    _check_size(value)
    event: Event = _decode(kind, value, _clock(now_ms, max_future_ms))
    if key_text != event.user_id:
        _fail("key", f"must equal user_id {_preview(event.user_id)}, got {_preview(key_text)}")
    return event


def parse_input(
    kind: str,
    key: bytes | None,
    value: bytes | None,
    *,
    now_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Event | Forget:
    """:func:`parse_event`, or a :class:`Forget` request when the value is a JSON object
    whose ``type`` is ``"forget"`` (on any event topic).  The same rules: key required and
    equal to ``user_id``, exactly the listed fields, ``ts`` bounded.  Raises
    :class:`ValidationError`."""
    if value is None or b'"type"' not in value:  # no JSON object with a "type" key: not a control record
        return parse_event(kind, key, value, now_ms=now_ms, max_future_ms=max_future_ms)
    if kind not in EVENT_TOPICS:
        raise ValueError(f"kind: must be one of {', '.join(EVENT_TOPICS)}, got {kind!r}")
    key_text = _key_text(key, "user_id")
    _check_size(value)
    obj, pending = _loads(value)
    if not (isinstance(obj, dict) and obj.get("type") == FORGET_TYPE):
        return parse_event(kind, key, value, now_ms=now_ms, max_future_ms=max_future_ms)
    forget: Forget = _SHAPES["forget"](obj, "", _clock(now_ms, max_future_ms))
    if pending is not None:
        raise pending
    if key_text != forget.user_id:
        _fail("key", f"must equal user_id {_preview(forget.user_id)}, got {_preview(key_text)}")
    return forget


def decode_recommendation(value: bytes) -> Recommendation:
    """Read a ``recommendations`` value back (for consumers and tests). Raises :class:`ValidationError`."""
    return _decode("recommendations", value, None)


def decode_dead_letter(value: bytes) -> DeadLetter:
    """Read a ``recstream-dlq`` value back. Raises :class:`ValidationError`."""
    return _decode("dlq", value, None)


# --------------------------------------------------------------------------- encoding


def encode(record: Record) -> bytes:
    """The JSON value to produce for a record (optional input fields omitted when None).

    Does not validate. An :class:`ItemDeleted` has no value: produce ``record_key(record)``
    with a null value instead.
    """
    if isinstance(record, ItemDeleted):
        raise TypeError("an ItemDeleted is a tombstone: produce key=record_key(record) with a null value")
    if not isinstance(record, _ENCODABLE):
        raise TypeError(f"cannot encode {type(record).__name__}; expected one of {', '.join(c.__name__ for c in _ENCODABLE)}")
    return orjson.dumps(record.to_dict())


def encode_emitted(rec: Recommendation, *, emitted_ts: int, received_ts: int | None) -> bytes:
    """``encode(rec)`` with ``emitted_ts`` and the trigger's ``received_ts`` set, as the worker
    stamps a recommendation when it goes out; the same bytes as encoding the record with
    both replaced (:func:`dataclasses.replace`), without copying it."""
    t = rec.trigger
    trigger = {"topic": t.topic, "partition": t.partition, "offset": t.offset, "event_id": t.event_id}
    if received_ts is not None:
        trigger["received_ts"] = received_ts
    # the same document as rec.to_dict() (same keys, same order), built without a call per item
    return orjson.dumps(
        {
            "schema": rec.schema,
            "user_id": rec.user_id,
            "items": [{"item_id": i, "score": s, "because": b} for i, s, b in rec.items],
            "trigger": trigger,
            "event_ts": rec.event_ts,
            "emitted_ts": emitted_ts,
            "model": rec.model,
        }
    )


def record_key(record: Item | ItemDeleted | Event | Forget | Recommendation) -> bytes:
    """The Kafka key of a record: item_id on ``items``, user_id everywhere else."""
    if isinstance(record, (Item, ItemDeleted)):
        return record.item_id.encode("utf-8")
    if isinstance(record, (Click, Purchase, Review, Forget, Recommendation)):
        return record.user_id.encode("utf-8")
    raise TypeError(f"{type(record).__name__} has no contract key (a dead letter keeps the original key)")


def dead_letter(topic: str, partition: int, offset: int, error: str, key: bytes | None, value: bytes | None) -> DeadLetter:
    """A dead letter for the record at ``topic``/``partition``/``offset``, keeping its bytes."""
    value_text, encoding = _to_text(value)
    key_text, key_encoding = _to_text(key)
    return DeadLetter(topic, partition, offset, error, value_text, key_text, encoding, key_encoding)


def schema_path(topic_kind: str) -> Path:
    """The JSON Schema (draft 2020-12) file of a topic kind, one of :data:`SCHEMA_KINDS`."""
    if topic_kind not in SCHEMA_KINDS:
        raise ValueError(f"topic_kind: must be one of {', '.join(SCHEMA_KINDS)}, got {topic_kind!r}")
    return _SCHEMA_DIR / f"{topic_kind}.schema.json"
