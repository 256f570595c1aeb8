"""Bad input: thousands of malformed records, interleaved with valid ones, never hurt the pipeline.

Issue "Bad input". Hypothesis generates about 2,000 malformed and 500 valid records, which are
produced, shuffled together, to the real ``clicks``, ``purchases`` and ``reviews`` topics of a
running ``recstream worker`` (2 partitions, ``--emit per-event``, the demo catalog). Kinds of
malformation, one per record, each a category of its own:

invalid JSON, non-UTF-8 bytes, wrong types, missing fields, unknown (extra) fields, bad numbers
(NaN, ±Infinity and ±1e400 ratings and prices, out-of-range ratings and quantities), bad
timestamps (negative, far future, fractional, beyond 64 bits), bad ids (empty, too long, control
characters), texts over ``MAX_TEXT_CHARS``, values over ``MAX_VALUE_BYTES``, unknown schema
versions, values that are not JSON objects (and Kafka null values), null keys, and keys that
disagree with ``user_id`` (or are not UTF-8).

The valid records cover the contract's edges too: unknown items (valid: the history keeps them),
timestamps from 10 years back to an hour ahead, ratings 1 to 5 with fractions, empty and maximal
review texts, optional fields absent or null, ``"schema": 1``, ids with any printable Unicode.

Proven, for every record, from outside the worker:

* the generator's intent and the contract's validator (``streams.records.parse_event``, the
  documented contract) agree: every malformed record is invalid, naming the field its
  category broke, and every valid record is valid; so the test fails if the validator accepts
  garbage, not only if the worker mishandles it;
* every invalid record is on the dead-letter topic exactly once, at its topic/partition/offset,
  with its original key and value bytes and the validator's reason (the field first), and got
  no recommendation; no record failed in processing (no "processing failed" letter, no failed
  micro-batch in the worker log);
* every valid record got exactly one recommendation (matched by topic/partition/offset) for
  its user, with its event id and time, and no dead letter;
* each user's profile (the ``profiles`` changelog ``recstream profile`` reads) counts exactly
  the valid events sent for the user; users who only sent garbage have no profile;
* the worker never stopped: it is alive at the end, and valid events produced after all the
  garbage (one on every partition of every event topic) got their recommendations.

Generation is deterministic (``derandomize=True``); a one-line summary gives the records tried per
category and where they went.

A second test pins a production bug found here, since fixed: a valid event from long ago
(1970), of a user on the popularity fallback, got a recommendation whose scores were infinite,
written as JSON null, which broke the recommendations contract; its scores must be finite.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402
from faults import Worker, key_on_partition, now_ms, send_raw  # noqa: E402

from recstream.streams.records import (  # noqa: E402
    DEFAULT_MAX_FUTURE_MS,
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_VALUE_BYTES,
    Review,
    ValidationError,
    decode_recommendation,
    parse_event,
)

pytestmark = pytest.mark.integration

KINDS = ("clicks", "purchases", "reviews")
PER_CATEGORY = 154  # x 13 categories, + TOO_LARGE: about 2,000 malformed records
TOO_LARGE = 3  # values over MAX_VALUE_BYTES: 1 MB each, so only a few
VALID = 494  # + 6 sentinels: 500 valid records
DEADLINE_S = 150
HOUR_MS = 3_600_000
#: Valid events go back to the epoch (ts >= 0 is valid): a popularity fallback for an event
#: decades older than the counts must still be a finite score.

#: Users of the valid records (and of most malformed ones): printable Unicode of every sort.
USERS = (
    "alice",
    "bob",
    "carol",
    "u-42",
    "42",
    "ümlaut-üser",
    "用户七",
    "emoji-🎧-fan",
    "with space",
    "colon:user:1",
    'quote"user',
    "back\\slash",
    "line\u2028sep",
    "zero\u200bwidth",
    "rtl\u202eltr",
    "x" * MAX_ID_CHARS,
    "Ω",
    "tab-free-\u00a0nbsp",
    "دانا",
    "🙂",
    "MiXeD-Case",
    "dots.and-dashes_",
    "ß",
    "ǅ",
)
#: Users who only ever send garbage: they must end with no profile.
GHOSTS = ("ghost-1", "ghost-👻", "ghost-three")
PRINTABLE = st.characters(exclude_categories=("Cs", "Cc"))


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True, slots=True)
class Raw:
    """A JSON token written verbatim: orjson cannot write NaN, Infinity, 1e400 or 10**30."""

    text: str


def to_json(fields: dict[str, Any]) -> bytes:
    """orjson, with :class:`Raw` values spliced in as written."""
    raws: dict[str, str] = {}

    def sub(v: Any) -> Any:
        if isinstance(v, Raw):
            token = f"@@raw-{uuid.uuid4().hex}@@"
            raws[token] = v.text
            return token
        return v

    doc = orjson.dumps({k: sub(v) for k, v in fields.items()})
    for token, text in raws.items():
        doc = doc.replace(orjson.dumps(token), text.encode())
    return doc


@dataclass(frozen=True, slots=True)
class Case:
    """One generated record and what must become of it.

    ``field``/``fragment``: for a malformed record, the field the reason must name (None when the
    value as a whole is wrong) and text the reason must contain.
    """

    category: str
    kind: str
    key: bytes | None
    value: bytes | None
    user: str | None = None
    field: str | None = None
    fragment: str = ""

    @property
    def valid(self) -> bool:
        return self.category.startswith("valid")


def ids() -> st.SearchStrategy[str]:
    return st.text(PRINTABLE, min_size=1, max_size=40)


def json_scalars() -> st.SearchStrategy[Any]:
    return st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)


def wrong_for(field: str) -> st.SearchStrategy[Any]:
    """JSON values of a type the field does not take (null only where the field is required)."""
    small = st.integers(-(2**63), 2**63 - 1)
    finite = st.floats(allow_nan=False, allow_infinity=False)
    containers = st.lists(json_scalars(), max_size=3) | st.dictionaries(st.text(max_size=5), json_scalars(), max_size=2)
    return {
        "user_id": st.none() | small | finite | st.booleans() | containers,
        "item_id": st.none() | small | finite | st.booleans() | containers,
        "event_id": small | finite | st.booleans() | containers,
        "ts": st.none() | finite | st.booleans() | st.text(max_size=15) | containers,
        "rating": st.none() | st.booleans() | st.text(max_size=5) | containers,
        "text": st.none() | small | finite | st.booleans() | containers,
        "quantity": finite | st.booleans() | st.text(max_size=5) | containers,
        "price": st.booleans() | st.text(max_size=5) | containers,
    }[field]


@st.composite
def event_fields(draw: st.DrawFn, kind: str, now: int, users: tuple[str, ...], items: tuple[str, ...]) -> dict[str, Any]:
    """A valid value of ``kind``, as a dict in a drawn field order."""
    item = draw(st.sampled_from(items) | st.sampled_from(items) | st.sampled_from(items) | ids())
    oldest = 0
    ts = draw(st.integers(now - 30 * 24 * HOUR_MS, now + HOUR_MS) | st.integers(oldest, now) | st.sampled_from([oldest, now]))
    fields: dict[str, Any] = {"user_id": draw(st.sampled_from(users)), "item_id": item, "ts": ts}
    if kind == "reviews":
        fields["rating"] = draw(st.floats(1, 5) | st.integers(1, 5) | st.sampled_from([1, 5, 1.0, 5.0, 4.5]))
        length = draw(st.sampled_from(["short"] * 8 + ["empty", "maximal"]))
        fields["text"] = {
            "short": lambda: draw(st.text(max_size=200)),
            "empty": lambda: "",
            "maximal": lambda: draw(st.sampled_from(["é", "a", " ", "😀"])) * MAX_TEXT_CHARS,
        }[length]()
    optional: dict[str, st.SearchStrategy[Any]] = {"event_id": ids(), "schema": st.just(1)}
    if kind == "purchases":
        optional |= {"quantity": st.integers(1, 10**6), "price": st.floats(0, 1e9) | st.integers(0, 10**6)}
    for name, values in optional.items():
        how = draw(st.sampled_from(["absent", "null", "set"]))
        if how != "absent":
            fields[name] = None if how == "null" else draw(values)
    order = draw(st.permutations(list(fields)))
    return {name: fields[name] for name in order}


REQUIRED = {"clicks": ("user_id", "item_id", "ts"), "purchases": ("user_id", "item_id", "ts"), "reviews": ("user_id", "item_id", "ts", "rating", "text")}
ALLOWED = {"clicks": {"schema", "user_id", "item_id", "ts", "event_id"}}
ALLOWED["purchases"] = ALLOWED["clicks"] | {"quantity", "price"}
ALLOWED["reviews"] = ALLOWED["clicks"] | {"rating", "text"}
BAD_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xc3",
)


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def malformed(category: str, now: int, items: tuple[str, ...]) -> st.SearchStrategy[Case]:
    """Records of one malformation category: a valid record with exactly one thing broken."""

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        only = {"bad_number": ("purchases", "reviews"), "bad_text": ("reviews",), "too_large": ("reviews",)}
        kind = draw(st.sampled_from(only.get(category, KINDS)))
        fields = draw(event_fields(kind, now, USERS + GHOSTS, items))
        user = fields["user_id"]
        key: bytes | None = user.encode()
        doc = to_json(fields)

        def case(value: bytes | None, field: str | None, fragment: str, *, key_: bytes | None = key) -> Case:
            return Case(category, kind, key_, value, None, field, fragment)

        def with_field(name: str, value: Any) -> bytes:
            return to_json({**fields, name: value})

        if category == "invalid_json":
            text = doc.decode()
            how = draw(st.sampled_from(["truncated", "trailing", "repr", "bom", "empty", "twice"]))
            value = {
                "truncated": lambda: text[: draw(st.integers(1, len(text) - 1))].encode(),
                "trailing": lambda: doc + draw(st.sampled_from([b"}", b",", b"x", b"]", b"{}", b" 1", b"//c", b"\x00"])),
                "repr": lambda: repr(fields).encode(),
                "bom": lambda: "\ufeff".encode() + doc,
                "empty": lambda: b"",
                "twice": lambda: doc + doc,
            }[how]()
            return case(value, None, "value is not valid JSON")
        if category == "non_utf8":
            if draw(st.booleans()):
                text = doc.decode()
                at = draw(st.integers(0, len(text)))
                value = text[:at].encode() + draw(st.sampled_from(BAD_UTF8)) + text[at:].encode()
            else:
                value = draw(st.tuples(st.binary(max_size=40), st.sampled_from(BAD_UTF8), st.binary(max_size=40)).map(b"".join).filter(_not_utf8))
            return case(value, None, "value is not valid UTF-8")
        if category == "wrong_type":
            name = draw(st.sampled_from(sorted(ALLOWED[kind] - {"schema"})))
            return case(with_field(name, draw(wrong_for(name))), name, "must be")
        if category == "missing_field":
            name = draw(st.sampled_from(REQUIRED[kind]))
            return case(to_json({k: v for k, v in fields.items() if k != name}), name, "required field is missing")
        if category == "extra_field":
            name = draw(
                (
                    st.sampled_from(["colour", "userId", "item", "timestamp", "rating", "text", "quantity", "price", "Schema", "ts ", ""])
                    | st.text(max_size=12)
                ).filter(lambda n: n not in ALLOWED[kind])
            )
            extra = dict(fields)
            extra[name] = draw(json_scalars())
            order = draw(st.permutations(list(extra)))
            return case(to_json({k: extra[k] for k in order}), name or None, "unknown field")
        if category == "bad_number":
            if kind == "reviews":
                name = "rating"
                value = draw(
                    st.floats(max_value=1, exclude_max=True, allow_nan=False, allow_infinity=False)
                    | st.floats(min_value=5, exclude_min=True, allow_nan=False, allow_infinity=False)
                    | st.integers(-(2**63), 0)
                    | st.integers(6, 2**63 - 1)
                    | st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e400"), Raw("1" + "0" * 400), Raw("1e30")])
                )
            else:
                name = draw(st.sampled_from(["quantity", "price"]))
                value = draw(
                    st.integers(-(2**63), 0)
                    if name == "quantity"
                    else st.floats(max_value=-math.ulp(0.0), allow_nan=False, allow_infinity=False)
                    | st.integers(-(2**63), -1)
                    | st.sampled_from([Raw("NaN"), Raw("-Infinity"), Raw("Infinity"), Raw("1e400")])
                )
            if isinstance(value, Raw) and value.text in ("NaN", "Infinity", "-Infinity"):
                return case(with_field(name, value), None, "value is not valid JSON")
            return case(with_field(name, value), name, "")
        if category == "bad_ts":
            value = draw(
                st.integers(-(2**63), -1)
                | st.integers(now + DEFAULT_MAX_FUTURE_MS + HOUR_MS, 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from([float(now), Raw(str(10**30)), Raw(str(-(10**30))), Raw("1.7e12")])
            )
            return case(with_field("ts", value), "ts", "ts: must")
        if category == "bad_id":
            name = draw(st.sampled_from(["user_id", "item_id", "event_id"]))
            how = draw(st.sampled_from(["empty", "long", "control"]))
            if how == "empty":
                return case(with_field(name, ""), name, "must not be empty")
            if how == "long":
                return case(
                    with_field(name, draw(st.text(PRINTABLE, min_size=MAX_ID_CHARS + 1, max_size=MAX_ID_CHARS + 300))),
                    name,
                    f"at most {MAX_ID_CHARS} characters",
                )
            base = draw(st.text(PRINTABLE, max_size=30))
            at = draw(st.integers(0, len(base)))
            bad = base[:at] + draw(st.characters(categories=["Cc"])) + base[at:]
            return case(with_field(name, bad), name, "must not contain control characters")
        if category == "bad_text":
            n = draw(st.integers(MAX_TEXT_CHARS + 1, 2 * MAX_TEXT_CHARS))
            return case(with_field("text", draw(st.sampled_from(["x", "é", "😀", " ", "\n"])) * n), "text", f"at most {MAX_TEXT_CHARS} characters")
        if category == "too_large":
            target = draw(st.integers(MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES + 40_000))
            filler = target - len(with_field("text", ""))
            return case(with_field("text", "y" * filler), None, f"the limit is {MAX_VALUE_BYTES} bytes")
        if category == "unknown_schema":
            version = draw(
                st.integers(2, 2**63 - 1) | st.integers(-(2**63), 0) | st.sampled_from(["1", 1.0, 2.0, True, False, [1], {"v": 1}, "", Raw("1e400")])
            )
            return case(with_field("schema", version), "schema", "unsupported schema version")
        if category == "not_object":
            value = draw(
                st.sampled_from(
                    [b"null", b"[]", b"[1,2]", b"42", b"-0.5", b'"text"', b"true", b"false", orjson.dumps(list(fields.values())), orjson.dumps(user), None]
                )
            )
            if value is None:
                return case(None, None, "value is null")
            return case(value, None, "value must be a JSON object")
        if category == "null_key":
            return case(doc, "key", "null key given", key_=None)
        if category == "key_mismatch":
            others = [u for u in USERS + GHOSTS if u != user]
            how = draw(st.sampled_from(["other", "suffix", "empty", "not_utf8", "case"]))
            if how == "case" and user.swapcase() == user:
                how = "other"
            key_ = {
                "other": lambda: draw(st.sampled_from(others)).encode(),
                "suffix": lambda: (user + draw(st.sampled_from([" ", "\n", "x", "\u200b"]))).encode(),
                "empty": lambda: b"",
                "not_utf8": lambda: b"\xff" + user.encode(),
                "case": lambda: user.swapcase().encode(),
            }[how]()
            return case(doc, "key", "is not valid UTF-8" if how == "not_utf8" else "must equal user_id", key_=key_)
        raise AssertionError(f"unknown category {category}")

    return build()


CATEGORIES = (
    "invalid_json",
    "non_utf8",
    "wrong_type",
    "missing_field",
    "extra_field",
    "bad_number",
    "bad_ts",
    "bad_id",
    "bad_text",
    "unknown_schema",
    "not_object",
    "null_key",
    "key_mismatch",
)


def valid_cases(now: int, items: tuple[str, ...]) -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: st.DrawFn) -> Case:
        kind = draw(st.sampled_from(KINDS))
        fields = draw(event_fields(kind, now, USERS, items))
        return Case("valid", kind, fields["user_id"].encode(), to_json(fields), fields["user_id"])

    return build()


def draw_examples(strategy: st.SearchStrategy[Case], n: int, per_example: int = 10) -> list[Case]:
    """``n`` examples of ``strategy``, the same on every run.

    Hypothesis draws ``per_example`` records per example: one example of all 2,500 records
    would overrun its per-example choice budget, and one record per example spends most of
    the time in Hypothesis's per-example bookkeeping.
    """
    out: list[Case] = []

    @settings(
        max_examples=-(-n // per_example), derandomize=True, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(st.lists(strategy, min_size=per_example, max_size=per_example, unique_by=lambda c: (c.key, c.value)))
    def collect(cases: list[Case]) -> None:
        out.extend(cases)

    collect()
    assert len(out) >= n, f"Hypothesis stopped after {len(out)} of {n} examples"
    return out[:n]


def generate(now: int, items: tuple[str, ...]) -> list[Case]:
    cases = [c for category in CATEGORIES for c in draw_examples(malformed(category, now, items), PER_CATEGORY)]
    cases += draw_examples(malformed("too_large", now, items), TOO_LARGE, per_example=1)
    cases += draw_examples(valid_cases(now, items), VALID)
    random.Random(20240601).shuffle(cases)
    return cases


# --------------------------------------------------------------------------- the oracle


def oracle(case: Case, now: int) -> str | None:
    """The contract's verdict: None for a valid record, else the reason; and a check that a
    malformed record fails for the reason its category intends."""
    try:
        parse_event(case.kind, case.key, case.value, now_ms=now)
    except ValidationError as exc:
        if case.valid:
            raise AssertionError(f"a valid record was rejected: {exc} ({case.key!r}, {case.value[:200]!r})") from None
        field = exc.field or None
        if field != case.field or case.fragment not in str(exc):
            raise AssertionError(
                f"{case.category}: the validator said {str(exc)[:300]!r} (field {exc.field!r}), expected field "
                f"{case.field!r} and {case.fragment!r}, for key {case.key!r} value {(case.value or b'')[:300]!r}"
            ) from None
        return str(exc)
    if not case.valid:
        raise AssertionError(f"{case.category}: the validator accepted {case.key!r} {(case.value or b'')[:300]!r}")
    return None


def _normalized(reason: str) -> str:
    """A reason with its numbers blanked: the future bound quotes the reader's clock."""
    return re.sub(r"\d+", "N", reason)


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def worker(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(faults.fresh_settings(kafka_broker, "bad"), tmp_path_factory.mktemp("bad-input"), ["--emit", "per-event", "-k", "5"])
    try:
        w.start()
        yield w
    finally:
        w.stop()


def _sentinels(now: int) -> list[Case]:
    """One valid event on every partition of every event topic, produced after everything else."""
    cases = []
    for partition in range(faults.PARTITIONS):
        user = key_on_partition("sentinel", partition)
        for i, kind in enumerate(KINDS):
            fields: dict[str, Any] = {"user_id": user, "item_id": "jazz-01", "ts": now + i, "event_id": f"{user}-{kind}"}
            if kind == "reviews":
                fields |= {"rating": 5, "text": "After all that garbage, still here."}
            cases.append(Case("valid_sentinel", kind, user.encode(), to_json(fields), user))
    return cases


def test_malformed_records_are_dead_lettered_once_and_valid_ones_applied_once(worker: Worker) -> None:
    started = time.monotonic()
    now = now_ms()
    items = tuple(i.item_id for i in worker.catalog)
    cases = generate(now, items)
    reasons = [oracle(c, now) for c in cases]
    generated_s = time.monotonic() - started

    outputs = faults.Outputs(worker.settings)
    try:
        assert worker.producer is not None
        sent = send_raw(worker.producer, worker.settings, [(c.kind, c.key, c.value) for c in cases])
        sentinels = _sentinels(now_ms())
        sent_sentinels = send_raw(worker.producer, worker.settings, [(c.kind, c.key, c.value) for c in sentinels])
        assert {(s.topic, s.partition) for s in sent_sentinels} == {(worker.settings.topic(k), p) for k in KINDS for p in range(faults.PARTITIONS)}
        cases += sentinels
        reasons += [oracle(c, now_ms()) for c in sentinels]
        sent += sent_sentinels

        valid = [(c, s) for c, s in zip(cases, sent) if c.valid]
        invalid = [(c, s, r) for c, s, r in zip(cases, sent, reasons) if not c.valid]
        outputs.wait_for((s.coord for _, s in valid), (s.coord for _, s, _ in invalid), DEADLINE_S, worker.assert_alive)
        expected_applied = Counter(c.user for c, _ in valid)
        expected_applied.update({ghost: 0 for ghost in GHOSTS})
        profiles = faults.wait_applied(worker.settings, dict(expected_applied), DEADLINE_S, worker.assert_alive)
        outputs.read_to_end()
        worker.assert_alive()

        recs, letters = outputs.recs_by_coord(), outputs.letters_by_coord()
        problems: list[str] = [
            f"a recommendation that breaks the contract, for {coord}: {errors[0]}" for coord, errors in outputs.rejected_recs_by_coord().items()
        ]
        problems += [f"a dead letter that breaks the contract: {exc}" for _, exc in outputs.dlq.rejected]
        for case, s, reason in invalid:
            got = letters.get(s.coord, [])
            if len(got) != 1:
                problems.append(f"{case.category} at {s.coord}: {len(got)} dead letters")
                continue
            letter = got[0]
            if letter.original_key() != case.key or letter.original_value() != case.value:
                problems.append(f"{case.category} at {s.coord}: the dead letter does not carry the original bytes")
            assert reason is not None
            if not letter.error or _normalized(letter.error) != _normalized(reason):
                problems.append(f"{case.category} at {s.coord}: reason {letter.error[:200]!r}, expected {reason[:200]!r}")
            if s.coord in recs:
                problems.append(f"{case.category} at {s.coord}: got a recommendation")
        for case, s in valid:
            got_recs = recs.get(s.coord, [])
            if len(got_recs) != 1:
                problems.append(f"valid record at {s.coord}: {len(got_recs)} recommendations")
                continue
            event = parse_event(case.kind, case.key, case.value, now_ms=now_ms())
            rec = got_recs[0]
            if (rec.user_id, rec.trigger.event_id, rec.event_ts) != (event.user_id, event.event_id, event.ts):
                problems.append(f"valid record at {s.coord}: recommendation for {rec.user_id!r}/{rec.trigger.event_id!r}/{rec.event_ts}")
            if s.coord in letters:
                problems.append(f"valid record at {s.coord}: dead-lettered: {letters[s.coord][0].error[:200]}")
        ours = {s.coord for s in sent}
        problems += [f"a dead letter for a record never sent: {c}" for c in letters if c not in ours]
        problems += [f"a recommendation for a record never sent: {c}" for c in recs if c not in ours]
        problems += [f"processing failed: {letter.error[:200]}" for letter in outputs.dlq.entries if letter.error.startswith("processing failed")]
        if worker.failed_batch_sizes():
            problems.append(f"micro-batches failed in processing: {worker.failed_batch_sizes()}")
        assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:25])
        for ghost in GHOSTS:
            assert ghost not in profiles, f"{ghost!r} sent only garbage but has a profile"
        worker.assert_alive()

        _print_summary(cases, sent, letters, recs, generated_s, time.monotonic() - started, items)
    finally:
        outputs.close()


def _print_summary(cases: list[Case], sent: list, letters: dict, recs: dict, generated_s: float, total_s: float, items: tuple[str, ...]) -> None:
    tried: Counter[str] = Counter()
    to_dlq: Counter[str] = Counter()
    to_recs: Counter[str] = Counter()
    for case, s in zip(cases, sent):
        label = "valid" if case.valid else case.category
        tried[label] += 1
        to_dlq[label] += len(letters.get(s.coord, []))
        to_recs[label] += len(recs.get(s.coord, []))
    valid_events = [parse_event(c.kind, c.key, c.value, now_ms=now_ms()) for c in cases if c.valid]
    unknown_items = sum(e.item_id not in items for e in valid_events)
    empty_texts = sum(isinstance(e, Review) and not e.text for e in valid_events)
    parts = [f"{label} {tried[label]} (dlq {to_dlq[label]}, recs {to_recs[label]})" for label in sorted(tried)]
    print(
        f"\nbad input: {sum(tried.values())} records, {sum(n for k, n in tried.items() if k != 'valid')} malformed "
        f"-> dead-letter topic, {tried['valid']} valid ({unknown_items} with unknown items, {empty_texts} empty review texts) "
        f"-> recommendations; " + "; ".join(parts) + f"; generation {generated_s:.1f}s, total {total_s:.1f}s"
    )


def test_an_old_event_of_a_user_on_the_popularity_fallback_gets_a_valid_recommendation(worker: Worker) -> None:
    """A click from 1970 (valid: ts >= 0) on an item outside the catalog, from a new user: no
    profile vector, so the recommendation comes from popularity, which counts recent events."""
    now = now_ms()
    recent = Case("valid", "clicks", b"popular-fan", to_json({"user_id": "popular-fan", "item_id": "garden-01", "ts": now}), "popular-fan")
    old = Case("valid", "clicks", b"old-timer", to_json({"user_id": "old-timer", "item_id": "not-in-catalog", "ts": 0, "event_id": "old-1"}), "old-timer")
    for case in (recent, old):
        assert oracle(case, now) is None
    outputs = faults.Outputs(worker.settings)
    try:
        assert worker.producer is not None
        sent = send_raw(worker.producer, worker.settings, [(c.kind, c.key, c.value) for c in (recent, old)])
        outputs.wait_for((s.coord for s in sent), (), 60, worker.assert_alive)
        broken = outputs.rejected_recs_by_coord().get(sent[1].coord)
        if broken:
            raw = next(raw for raw, _ in outputs.recs.rejected if orjson.loads(raw)["trigger"]["event_id"] == "old-1")
            decode_recommendation(raw)  # raises the contract's error
        rec = outputs.recs_by_coord()[sent[1].coord][0]
        assert rec.model == "popularity" and rec.items and all(math.isfinite(i.score) for i in rec.items)
    finally:
        outputs.close()
