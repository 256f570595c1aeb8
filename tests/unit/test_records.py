"""The event contract (streams.records): parsing, error reasons, encoding, JSON Schemas."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from recstream.streams.records import (
    DEFAULT_MAX_FUTURE_MS,
    EVENT_TOPICS,
    MAX_TEXT_CHARS,
    MAX_VALUE_BYTES,
    SCHEMA_KINDS,
    SCHEMA_VERSION,
    Click,
    DeadLetter,
    Item,
    ItemDeleted,
    Purchase,
    RecItem,
    Recommendation,
    Review,
    Trigger,
    ValidationError,
    dead_letter,
    decode_dead_letter,
    decode_recommendation,
    encode,
    parse_event,
    parse_item,
    record_key,
    schema_path,
)

NOW = 1_750_000_000_000  # a fixed clock for every parse: no test depends on the real time
TS = NOW - 60_000
KIND_OF = {Click: "clicks", Purchase: "purchases", Review: "reviews"}


def parse(kind: str, key: bytes | None, value: bytes | None) -> Any:
    """Parse a record of any input topic kind at the fixed clock."""
    if kind == "items":
        return parse_item(key, value, now_ms=NOW)
    return parse_event(kind, key, value, now_ms=NOW)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --------------------------------------------------------------------------- valid records


INPUT_RECORDS = [
    Item("i1", "Dune", "A desert planet.", ("books", "sci-fi"), TS),
    Item("i2", "", "description only", (), 0),
    Item("i3", "title only", ts=TS),
    Item("42", "numeric-looking id", ts=NOW + DEFAULT_MAX_FUTURE_MS),  # exactly at the future limit
    Click("u1", "i1", TS),
    Click("u1", "i1", TS, event_id="e-1"),
    Click("ユーザー", "é" * 256, 0),
    Purchase("u1", "i1", TS),
    Purchase("u1", "i1", TS, event_id="e-2", quantity=3, price=19.99),
    Purchase("u1", "i1", TS, quantity=1, price=0.0),
    Review("u1", "i1", 4.5, "Great book", TS),
    Review("u1", "i1", 1.0, "", TS, event_id="e-3"),
    Review("u1", "i1", 5.0, "x" * MAX_TEXT_CHARS, TS),
]


@pytest.mark.parametrize("record", INPUT_RECORDS, ids=repr)
def test_input_records_round_trip(record: Any) -> None:
    kind = "items" if isinstance(record, Item) else KIND_OF[type(record)]
    assert parse(kind, record_key(record), encode(record)) == record


def test_encode_writes_the_contract_fields() -> None:
    assert orjson.loads(encode(Item("i1", "T", ts=5))) == {
        "item_id": "i1",
        "title": "T",
        "description": "",
        "categories": [],
        "ts": 5,
    }
    assert orjson.loads(encode(Click("u1", "i1", 5))) == {"user_id": "u1", "item_id": "i1", "ts": 5}
    assert orjson.loads(encode(Purchase("u1", "i1", 5, quantity=2))) == {
        "user_id": "u1",
        "item_id": "i1",
        "ts": 5,
        "quantity": 2,
    }
    assert Click.kind == "click" and Purchase.kind == "purchase" and Review.kind == "review"
    assert Review("u", "i", 3.0, "t", 1).to_dict()["rating"] == 3.0


def test_optional_fields_may_be_null_or_carry_schema_1() -> None:
    value = {"schema": 1, "user_id": "u1", "item_id": "i1", "ts": TS, "event_id": None, "price": None}
    assert parse("purchases", b"u1", dumps(value)) == Purchase("u1", "i1", TS)
    item = {"schema": None, "item_id": "i1", "title": "T", "ts": TS, "description": None, "categories": None}
    assert parse("items", b"i1", dumps(item)) == Item("i1", "T", ts=TS)


def test_integer_rating_and_price_parse_as_floats() -> None:
    review = parse("reviews", b"u1", dumps({"user_id": "u1", "item_id": "i1", "rating": 4, "text": "", "ts": TS}))
    assert review.rating == 4.0 and isinstance(review.rating, float)
    purchase = parse("purchases", b"u1", dumps({"user_id": "u1", "item_id": "i1", "ts": TS, "price": 10}))
    assert isinstance(purchase.price, float)


def test_now_defaults_to_the_current_time() -> None:
    now = time.time_ns() // 1_000_000
    assert parse_event("clicks", b"u1", encode(Click("u1", "i1", now))) == Click("u1", "i1", now)
    with pytest.raises(ValidationError) as err:
        parse_event("clicks", b"u1", encode(Click("u1", "i1", now + 10 * DEFAULT_MAX_FUTURE_MS)))
    assert err.value.field == "ts"


def test_max_future_ms_is_configurable() -> None:
    value = encode(Click("u1", "i1", NOW + 10))
    assert parse_event("clicks", b"u1", value, now_ms=NOW, max_future_ms=10).ts == NOW + 10
    with pytest.raises(ValidationError, match="must not be more than 9 ms after now"):
        parse_event("clicks", b"u1", value, now_ms=NOW, max_future_ms=9)


def test_unknown_event_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kind: must be one of clicks, purchases, reviews") as err:
        parse_event("click", b"u1", b"{}")
    assert not isinstance(err.value, ValidationError)
    assert EVENT_TOPICS == ("clicks", "purchases", "reviews")


# --------------------------------------------------------------------------- invalid records

CLICK = {"user_id": "u1", "item_id": "i1", "ts": TS}
REVIEW = {"user_id": "u1", "item_id": "i1", "rating": 4, "text": "ok", "ts": TS}
ITEM = {"item_id": "i1", "title": "T", "ts": TS}


def with_(base: dict[str, Any], **changes: Any) -> bytes:
    return dumps({**base, **changes})


def without(base: dict[str, Any], *names: str) -> bytes:
    return dumps({k: v for k, v in base.items() if k not in names})


def review_with_raw_rating(raw: str) -> bytes:
    return b'{"user_id":"u1","item_id":"i1","text":"","ts":%d,"rating":%s}' % (TS, raw.encode())


# (kind, key, value, expected .field, a fragment of the expected message)
INVALID = [
    # the value as a whole
    ("clicks", b"u1", b'{"user_id": "u1",', None, "value is not valid JSON: unexpected end of data"),
    ("clicks", b"u1", b"", None, "value is not valid JSON"),
    ("clicks", b"u1", b'{"user_id": "u1"} trailing', None, "value is not valid JSON: unexpected content"),
    ("clicks", b"u1", b'{"user_id": NaN}', None, "value is not valid JSON"),
    ("clicks", b"u1", b'{"user_id": "\xff\xfe"}', None, "value is not valid UTF-8: byte 0xff at offset 13"),
    ("clicks", b"u1", b"[1, 2]", None, "value must be a JSON object, got array [1,2]"),
    ("clicks", b"u1", b"42", None, "value must be a JSON object, got integer 42"),
    ("clicks", b"u1", b"null", None, "value must be a JSON object, got null"),
    ("clicks", b"u1", b"[" * 5000, None, "value is not valid JSON: depth limit exceeded"),
    ("clicks", b"u1", b" " * (MAX_VALUE_BYTES + 1), None, f"value is {MAX_VALUE_BYTES + 1} bytes; the limit is"),
    ("clicks", b"u1", None, None, "value is null; tombstones are only meaningful on items"),
    # fields present or not
    ("clicks", b"u1", without(CLICK, "item_id"), "item_id", "item_id: required field is missing"),
    ("clicks", b"u1", without(CLICK, "item_id", "ts"), "item_id", "required field is missing (also missing: ts)"),
    ("clicks", b"u1", with_(CLICK, colour="red"), "colour", 'unknown field "colour"; allowed fields are schema, user_id'),
    ("reviews", b"u1", without(REVIEW, "text"), "text", "text: required field is missing"),
    ("items", b"i1", without(ITEM, "ts"), "ts", "ts: required field is missing"),
    # schema version
    ("clicks", b"u1", with_(CLICK, schema=7), "schema", "schema: unsupported schema version 7; this worker reads version 1"),
    ("clicks", b"u1", with_(CLICK, schema=2, new_field=1), "schema", "unsupported schema version 2"),
    ("items", b"i1", with_(ITEM, schema="1"), "schema", 'unsupported schema version "1"'),
    ("reviews", b"u1", with_(REVIEW, schema=True), "schema", "unsupported schema version true"),
    # ids
    ("clicks", b"u1", with_(CLICK, item_id=42), "item_id", 'must be a string, got integer 42 (ids are strings: send numeric ids as text, e.g. "42")'),
    ("clicks", b"42", with_(CLICK, user_id=42), "user_id", "ids are strings"),
    ("clicks", b"u1", with_(CLICK, item_id=None), "item_id", "item_id: must be a string, got null"),
    ("clicks", b"u1", with_(CLICK, item_id=["i1"]), "item_id", 'must be a string, got array ["i1"]'),
    ("clicks", b"u1", with_(CLICK, item_id=""), "item_id", "item_id: must not be empty"),
    ("clicks", b"u1", with_(CLICK, item_id="i" * 257), "item_id", "must be at most 256 characters, got 257"),
    ("clicks", b"u1", with_(CLICK, item_id="i1\n"), "item_id", "must not contain control characters, got U+000A at index 2"),
    ("clicks", b"u1", with_(CLICK, event_id="e\x00"), "event_id", "must not contain control characters, got U+0000"),
    ("clicks", b"u1", with_(CLICK, event_id=7), "event_id", "ids are strings"),
    # ts
    ("clicks", b"u1", with_(CLICK, ts=-1), "ts", "ts: must be at least 0, got -1"),
    ("clicks", b"u1", with_(CLICK, ts=1.5), "ts", "ts: must be an integer (epoch milliseconds), got number 1.5"),
    ("clicks", b"u1", with_(CLICK, ts=float(TS)), "ts", f"got number {float(TS)}"),
    ("clicks", b"u1", with_(CLICK, ts=str(TS)), "ts", f'got string "{TS}"'),
    ("clicks", b"u1", with_(CLICK, ts=True), "ts", "got boolean true"),
    ("clicks", b"u1", with_(CLICK, ts=NOW + DEFAULT_MAX_FUTURE_MS + 1), "ts", f"must not be more than {DEFAULT_MAX_FUTURE_MS} ms after now ({NOW})"),
    ("items", b"i1", with_(ITEM, ts=2**62), "ts", "ms ahead"),
    # rating
    ("reviews", b"u1", with_(REVIEW, rating=7.5), "rating", "rating: must be between 1 and 5, got 7.5"),
    ("reviews", b"u1", with_(REVIEW, rating=0), "rating", "must be between 1 and 5, got 0"),
    ("reviews", b"u1", with_(REVIEW, rating=6), "rating", "must be between 1 and 5, got 6"),
    ("reviews", b"u1", with_(REVIEW, rating=0.999), "rating", "got 0.999"),
    ("reviews", b"u1", with_(REVIEW, rating="5"), "rating", 'rating: must be a number, got string "5"'),
    ("reviews", b"u1", with_(REVIEW, rating=True), "rating", "must be a number, got boolean true"),
    ("reviews", b"u1", review_with_raw_rating("1e400"), "rating", "rating: must be a finite number, got inf"),
    ("reviews", b"u1", review_with_raw_rating("-1e400"), "rating", "must be a finite number, got -inf"),
    ("reviews", b"u1", review_with_raw_rating("NaN"), None, "value is not valid JSON"),
    ("reviews", b"u1", review_with_raw_rating("Infinity"), None, "value is not valid JSON"),
    # text and item fields
    ("reviews", b"u1", with_(REVIEW, text="x" * (MAX_TEXT_CHARS + 1)), "text", f"text: must be at most {MAX_TEXT_CHARS} characters, got {MAX_TEXT_CHARS + 1}"),
    ("reviews", b"u1", with_(REVIEW, text=None), "text", "text: must be a string, got null"),
    ("items", b"i1", with_(ITEM, title="", description=""), "title", "an item needs a non-empty title or description"),
    ("items", b"i1", with_(ITEM, title=""), "title", "an item needs a non-empty title or description"),
    ("items", b"i1", with_(ITEM, title="t" * 2001), "title", "must be at most 2000 characters"),
    ("items", b"i1", with_(ITEM, description="d" * 20_001), "description", "must be at most 20000 characters"),
    ("items", b"i1", with_(ITEM, categories="books"), "categories", 'must be an array, got string "books"'),
    ("items", b"i1", with_(ITEM, categories=["ok", 3]), "categories[1]", "categories[1]: must be a string, got integer 3"),
    ("items", b"i1", with_(ITEM, categories=["c"] * 101), "categories", "must have at most 100 entries, got 101"),
    ("items", b"i1", with_(ITEM, categories=["c" * 201]), "categories[0]", "must be at most 200 characters"),
    # purchases
    ("purchases", b"u1", with_(CLICK, quantity=0), "quantity", "quantity: must be at least 1, got 0"),
    ("purchases", b"u1", with_(CLICK, quantity=1.5), "quantity", "quantity: must be an integer, got number 1.5"),
    ("purchases", b"u1", with_(CLICK, price=-0.01), "price", "price: must be at least 0, got -0.01"),
    ("purchases", b"u1", with_(CLICK, price="9.99"), "price", 'must be a number, got string "9.99"'),
    ("purchases", b"u1", b'{"user_id":"u1","item_id":"i1","ts":1,"price":1%s}' % (b"0" * 400), "price", "must be a finite number"),
    # keys
    ("clicks", None, dumps(CLICK), "key", "key: is required (null key given); it must be the record's user_id"),
    ("clicks", b"u2", dumps(CLICK), "key", 'key: must equal user_id "u1", got "u2"'),
    ("clicks", b"\xff", dumps(CLICK), "key", "key: is not valid UTF-8"),
    ("reviews", b"i1", dumps(REVIEW), "key", 'must equal user_id "u1", got "i1"'),
    ("items", None, dumps(ITEM), "key", "it must be the record's item_id"),
    ("items", b"u1", dumps(ITEM), "key", 'key: must equal item_id "i1", got "u1"'),
    ("items", None, None, "key", "key: is required (null key given)"),
    ("items", b"", None, "key", "key: must not be empty"),
]


@pytest.mark.parametrize(("kind", "key", "value", "field", "message"), INVALID, ids=[f"{c[0]}-{c[4][:40]}" for c in INVALID])
def test_invalid_records_are_rejected_precisely(kind: str, key: bytes | None, value: bytes | None, field: str | None, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(kind, key, value)
    assert err.value.field == field
    assert message in str(err.value)
    assert str(err.value) == (f"{field}: {err.value.reason}" if field else err.value.reason)


def test_messages_truncate_what_was_given() -> None:
    with pytest.raises(ValidationError) as err:
        parse("clicks", b"u1", with_(CLICK, user_id="u" * 100_000))
    assert len(str(err.value)) < 200
    assert str(err.value).startswith('user_id: must be at most 256 characters, got 100000: "uuu')
    assert str(err.value).endswith("...")


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(ValidationError) as err:
        parse("clicks", b"u1", with_(CLICK, a=1, b=2))
    assert err.value.field == "a"
    assert 'unknown fields "a", "b"' in err.value.reason


# --------------------------------------------------------------------------- tombstones


def test_tombstone_parses_to_item_deleted() -> None:
    deleted = parse_item(b"i1", None)
    assert deleted == ItemDeleted("i1")
    assert record_key(deleted) == b"i1"
    with pytest.raises(TypeError, match="tombstone"):
        encode(deleted)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- recommendations


RECOMMENDATION = Recommendation(
    user_id="u1",
    items=[RecItem("i2", 0.93, "i1"), RecItem("i3", -0.5, None)],
    trigger=Trigger("prod.clicks", 3, 1234, "e-1"),
    event_ts=TS,
    emitted_ts=NOW,
    model="two-tower-v2",
)


def test_recommendation_round_trips() -> None:
    value = encode(RECOMMENDATION)
    assert orjson.loads(value) == {
        "schema": 1,
        "user_id": "u1",
        "items": [{"item_id": "i2", "score": 0.93, "because": "i1"}, {"item_id": "i3", "score": -0.5, "because": None}],
        "trigger": {"topic": "prod.clicks", "partition": 3, "offset": 1234, "event_id": "e-1"},
        "event_ts": TS,
        "emitted_ts": NOW,
        "model": "two-tower-v2",
    }
    assert decode_recommendation(value) == RECOMMENDATION
    empty = Recommendation("u1", [], Trigger("clicks", 0, 0, None), 0, 0, "popularity")
    assert decode_recommendation(encode(empty)) == empty
    assert record_key(RECOMMENDATION) == b"u1"


def test_the_reception_time_is_optional_in_the_trigger() -> None:
    stamped = replace(RECOMMENDATION, trigger=Trigger("prod.clicks", 3, 1234, "e-1", NOW - 7))
    value = encode(stamped)
    assert orjson.loads(value)["trigger"]["received_ts"] == NOW - 7
    assert decode_recommendation(value) == stamped
    assert decode_recommendation(encode(RECOMMENDATION)).trigger.received_ts is None
    bad = orjson.loads(value)
    bad["trigger"]["received_ts"] = -1
    with pytest.raises(ValidationError, match="trigger.received_ts"):
        decode_recommendation(orjson.dumps(bad))


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"schema": 2}, "schema", "unsupported schema version 2; this worker reads version 1"),
        ({"schema": None}, "schema", "unsupported schema version null"),
        ({"items": [{"item_id": "i2", "score": "high", "because": None}]}, "items[0].score", "must be a number"),
        ({"items": [{"item_id": "i2", "score": 1.0}]}, "items[0].because", "required field is missing"),
        ({"trigger": {"topic": "clicks", "partition": -1, "offset": 0, "event_id": None}}, "trigger.partition", "at least 0"),
        ({"model": ""}, "model", "must not be empty"),
    ],
)
def test_invalid_recommendations_are_rejected(changes: dict[str, Any], field: str, message: str) -> None:
    value = dumps({**RECOMMENDATION.to_dict(), **changes})
    with pytest.raises(ValidationError) as err:
        decode_recommendation(value)
    assert err.value.field == field
    assert message in err.value.reason


def test_recommendation_schema_is_required() -> None:
    value = RECOMMENDATION.to_dict()
    del value["schema"]
    with pytest.raises(ValidationError, match="schema: required field is missing"):
        decode_recommendation(dumps(value))


# --------------------------------------------------------------------------- dead letters

ORIGINAL_BYTES = [
    b'{"user_id": "u1", "rating": 9}',
    "café ☕ 𝄞".encode(),
    b"",
    b"\x00\x01 nul is valid UTF-8",
    b"\xff\xfe\x00binary",
    b"\xed\xa0\x80",  # an encoded surrogate is not valid UTF-8
    bytes(range(256)),
    None,
]


@pytest.mark.parametrize("original", ORIGINAL_BYTES, ids=repr)
def test_dead_letters_keep_the_original_bytes(original: bytes | None) -> None:
    letter = dead_letter("prod.reviews", 2, 77, "rating: must be between 1 and 5, got 9", original, original)
    decoded = decode_dead_letter(encode(letter))
    assert decoded == letter
    assert decoded.original_value() == original
    assert decoded.original_key() == original
    wire = orjson.loads(encode(letter))
    assert set(wire) == {"topic", "partition", "offset", "error", "value", "encoding", "key", "key_encoding"}
    if original is None:
        assert wire["value"] is None and wire["encoding"] == "utf-8"
    elif letter.encoding == "utf-8":
        assert wire["value"] == original.decode("utf-8")  # readable as is
    else:
        assert base64.b64decode(wire["value"]) == original


def test_dead_letter_encodes_key_and_value_independently() -> None:
    letter = dead_letter("clicks", 0, 1, "key: is not valid UTF-8", b"\xff", b'{"a": 1}')
    assert (letter.key_encoding, letter.encoding) == ("base64", "utf-8")
    assert letter.value == '{"a": 1}'
    assert letter.original_key() == b"\xff"


def test_dead_letter_from_a_rejected_record() -> None:
    key, value = b"u1", with_(REVIEW, rating=9)
    with pytest.raises(ValidationError) as err:
        parse("reviews", key, value)
    letter = decode_dead_letter(encode(dead_letter("reviews", 0, 5, str(err.value), key, value)))
    assert letter.error == "rating: must be between 1 and 5, got 9"
    assert (letter.original_key(), letter.original_value()) == (key, value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"encoding": "base64", "value": "not base64!"}, "value"),
        ({"key_encoding": "latin-1"}, "key_encoding"),
        ({"offset": -1}, "offset"),
        ({"schema": 3}, "schema"),
    ],
)
def test_invalid_dead_letters_are_rejected(changes: dict[str, Any], field: str) -> None:
    value = dumps({**dead_letter("clicks", 0, 1, "e", b"k", b"v").to_dict(), **changes})
    with pytest.raises(ValidationError) as err:
        decode_dead_letter(value)
    assert err.value.field == field


def test_encode_rejects_non_records() -> None:
    with pytest.raises(TypeError, match="cannot encode dict"):
        encode({"user_id": "u1"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        record_key(dead_letter("clicks", 0, 0, "e", None, None))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JSON Schemas


def load_schema(kind: str) -> dict[str, Any]:
    return json.loads(schema_path(kind).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> Any:
    """jsonschema's draft 2020-12 validator class (a dev dependency; only these tests need it)."""
    return pytest.importorskip("jsonschema").Draft202012Validator


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_schema_files_are_valid_draft_2020_12(kind: str, validator: Any) -> None:
    schema = load_schema(kind)
    validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False


def test_schema_path_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="topic_kind"):
        schema_path("users")


def python_accepts(kind: str, obj: Any) -> bool:
    """Whether streams.records accepts the value, with the key and clock rules satisfied."""
    value = dumps(obj)
    try:
        if kind == "recommendations":
            decode_recommendation(value)
        elif kind == "dlq":
            decode_dead_letter(value)
        else:
            key_field = "item_id" if kind == "items" else "user_id"
            key = obj.get(key_field) if isinstance(obj, dict) else None
            parse(kind, key.encode() if isinstance(key, str) else b"k", value)
    except ValidationError:
        return False
    return True


PURCHASE = {**CLICK, "event_id": "e1", "quantity": 2, "price": 9.5}
REC = RECOMMENDATION.to_dict()
DLQ = dead_letter("clicks", 0, 7, "boom", b"\xff", b"{}").to_dict()


def rec_item(**changes: Any) -> dict[str, Any]:
    return {**REC, "items": [{"item_id": "i2", "score": 1.0, "because": None, **changes}]}


def rec_trigger(**changes: Any) -> dict[str, Any]:
    return {**REC, "trigger": {**REC["trigger"], **changes}}


def drop(base: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != name}


# (kind, value, valid?) -- value-level rules only: keys always match and ts is in the past.
SAMPLES: list[tuple[str, Any, bool]] = [
    ("items", ITEM, True),
    ("items", {**ITEM, "description": "d", "categories": ["a", "b"], "schema": 1}, True),
    ("items", {**ITEM, "title": "", "description": "d"}, True),
    ("items", {**ITEM, "description": None, "categories": None, "schema": None}, True),
    ("items", {**ITEM, "title": "t" * 2000, "categories": ["c" * 200] * 100}, True),
    ("items", {**ITEM, "title": ""}, False),
    ("items", {**ITEM, "title": "", "description": ""}, False),
    ("items", {**ITEM, "title": "t" * 2001}, False),
    ("items", {**ITEM, "description": "d" * 20_001}, False),
    ("items", {**ITEM, "categories": ["c"] * 101}, False),
    ("items", {**ITEM, "categories": ["c" * 201]}, False),
    ("items", {**ITEM, "categories": [1]}, False),
    ("items", {**ITEM, "item_id": 5}, False),
    ("items", {**ITEM, "schema": 2}, False),
    ("items", {**ITEM, "extra": 1}, False),
    ("items", drop(ITEM, "title"), False),
    ("items", ["not", "an", "object"], False),
    ("clicks", CLICK, True),
    ("clicks", {**CLICK, "event_id": "e" * 256, "schema": 1}, True),
    ("clicks", {**CLICK, "event_id": None}, True),
    ("clicks", {**CLICK, "user_id": "ü" * 256, "ts": 0}, True),
    ("clicks", {**CLICK, "event_id": "e" * 257}, False),
    ("clicks", {**CLICK, "event_id": ""}, False),
    ("clicks", {**CLICK, "item_id": "a\nb"}, False),
    ("clicks", {**CLICK, "item_id": "ab\n"}, False),
    ("clicks", {**CLICK, "item_id": "a\x7f"}, False),
    ("clicks", {**CLICK, "item_id": "a\x85"}, False),
    ("clicks", {**CLICK, "user_id": 1}, False),
    ("clicks", {**CLICK, "ts": -1}, False),
    ("clicks", {**CLICK, "ts": "1"}, False),
    ("clicks", {**CLICK, "ts": True}, False),
    ("clicks", {**CLICK, "ts": 1.5}, False),
    ("clicks", {**CLICK, "schema": True}, False),
    ("clicks", {**CLICK, "schema": "1"}, False),
    ("clicks", {**CLICK, "quantity": 1}, False),
    ("clicks", drop(CLICK, "ts"), False),
    ("purchases", PURCHASE, True),
    ("purchases", {**PURCHASE, "price": 0, "quantity": 1}, True),
    ("purchases", {**PURCHASE, "price": None, "quantity": None}, True),
    ("purchases", {**PURCHASE, "quantity": 0}, False),
    ("purchases", {**PURCHASE, "quantity": 2.5}, False),
    ("purchases", {**PURCHASE, "quantity": True}, False),
    ("purchases", {**PURCHASE, "price": -1}, False),
    ("purchases", {**PURCHASE, "price": "1"}, False),
    ("purchases", {**PURCHASE, "rating": 3}, False),
    ("reviews", REVIEW, True),
    ("reviews", {**REVIEW, "rating": 1, "text": ""}, True),
    ("reviews", {**REVIEW, "rating": 5.0, "text": "t" * 20_000}, True),
    ("reviews", {**REVIEW, "rating": 2.5, "event_id": "e"}, True),
    ("reviews", {**REVIEW, "rating": 0}, False),
    ("reviews", {**REVIEW, "rating": 6}, False),
    ("reviews", {**REVIEW, "rating": 5.0001}, False),
    ("reviews", {**REVIEW, "rating": "4"}, False),
    ("reviews", {**REVIEW, "rating": None}, False),
    ("reviews", {**REVIEW, "text": "t" * 20_001}, False),
    ("reviews", {**REVIEW, "text": 5}, False),
    ("reviews", drop(REVIEW, "rating"), False),
    ("recommendations", REC, True),
    ("recommendations", {**REC, "items": []}, True),
    ("recommendations", rec_item(score=-3), True),
    ("recommendations", rec_trigger(event_id=None), True),
    ("recommendations", drop(REC, "schema"), False),
    ("recommendations", {**REC, "schema": 2}, False),
    ("recommendations", {**REC, "schema": None}, False),
    ("recommendations", {**REC, "extra": 1}, False),
    ("recommendations", {**REC, "model": ""}, False),
    ("recommendations", {**REC, "emitted_ts": -1}, False),
    ("recommendations", rec_item(score="1"), False),
    ("recommendations", rec_item(because=""), False),
    ("recommendations", rec_item(extra=1), False),
    ("recommendations", {**REC, "items": [drop(REC["items"][0], "because")]}, False),
    ("recommendations", rec_trigger(partition=-1), False),
    ("recommendations", rec_trigger(topic=""), False),
    ("recommendations", {**REC, "trigger": drop(REC["trigger"], "event_id")}, False),
    ("dlq", DLQ, True),
    ("dlq", {**DLQ, "value": None, "key": None}, True),
    ("dlq", {**DLQ, "schema": 1}, True),
    ("dlq", {**DLQ, "encoding": "hex"}, False),
    ("dlq", {**DLQ, "offset": -1}, False),
    ("dlq", {**DLQ, "error": None}, False),
    ("dlq", {**DLQ, "value": 5}, False),
    ("dlq", drop(DLQ, "key_encoding"), False),
    ("dlq", {**DLQ, "extra": 1}, False),
]


@pytest.mark.parametrize(("kind", "value", "valid"), SAMPLES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SAMPLES)])
def test_json_schema_agrees_with_the_python_validator(kind: str, value: Any, valid: bool, validator: Any) -> None:
    schema_says = validator(load_schema(kind)).is_valid(value)
    assert python_accepts(kind, value) is valid
    assert schema_says is valid


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("clicks", {**CLICK, "ts": float(TS)}),  # JSON Schema cannot tell 5 from 5.0
        ("clicks", {**CLICK, "schema": 1.0}),
        ("clicks", {**CLICK, "ts": NOW + DEFAULT_MAX_FUTURE_MS + 1}),  # needs a clock
        ("dlq", {**DLQ, "encoding": "base64", "value": "not base64!"}),
    ],
)
def test_rules_only_the_python_validator_enforces(kind: str, value: Any, validator: Any) -> None:
    """Documented in each schema's description: the schema accepts these, streams.records does not."""
    assert validator(load_schema(kind)).is_valid(value)
    assert not python_accepts(kind, value)


def test_schema_version_constant() -> None:
    assert SCHEMA_VERSION == 1
    assert isinstance(RECOMMENDATION, Recommendation) and RECOMMENDATION.schema == SCHEMA_VERSION
    assert isinstance(dead_letter("t", 0, 0, "e", None, None), DeadLetter)
