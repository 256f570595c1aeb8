"""Amazon Review Data (UCSD; 2018 and 2023 releases) mapped onto the recstream contract.

Files: one review file (one JSON object a line, optionally gzip-compressed) and its
metadata file ``meta_<Category>...`` beside it.

* **2018** (``<Category>.json.gz``, ``<Category>_5.json.gz``; ``meta_<Category>.json.gz``):
  reviews carry ``reviewerID``, ``asin``, ``overall`` (1..5), ``verified``, ``summary``,
  ``reviewText`` (may be missing), ``unixReviewTime`` (epoch seconds; when absent,
  ``reviewTime`` ``"06 17, 2018"`` is read as that day, UTC); metadata ``asin``, ``title``,
  ``description`` (list of strings or a string), ``category`` (list), ``main_cat``.
  Some 2018 files are Python literals rather than JSON (``{'asin': ...}``): such lines are
  read with :func:`ast.literal_eval` (never ``eval``) and counted in ``stats.adjusted``.
* **2023** (``<Category>.jsonl(.gz)``; ``meta_<Category>.jsonl(.gz)``): reviews carry
  ``user_id``, ``parent_asin`` (``asin`` when missing), ``rating``, ``verified_purchase``,
  ``title``, ``text``, ``timestamp`` (epoch milliseconds); metadata ``parent_asin``,
  ``title``, ``description`` (list), ``categories`` (list), ``main_category``. The item id
  is the ``parent_asin`` (the product, not one of its variants).

Mapping (see :func:`streams.sources.load_dataset`):

* catalog: every metadata entry with a title or a description; text fields have HTML tags
  stripped (an ``<img>`` becomes its alt text), entities unescaped and whitespace collapsed;
  description = the description paragraphs, duplicates dropped, joined with newlines;
  categories = the category list then the main category, empty and duplicate values
  dropped; ts = the time of the item's first review (0 when it has none). A reviewed item
  without metadata gets no entry (there is no product text to show for it): its events still
  go out and its id is listed in ``stats.missing_from_catalog``;
* each review -> a :class:`Review` (``amz-r-<line>``), rating as given, text = summary (2018)
  or title (2023) and the review text joined with ``". "`` (just a space when the summary
  already ends in ``.``, ``!`` or ``?``), cleaned like the metadata texts and trimmed to
  20,000 characters; may be empty;
* a verified review (``verified`` / ``verified_purchase`` true) -> also a :class:`Purchase`
  with the same ts (``amz-p-<line>``).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

import orjson

from ..records import MAX_TEXT_CHARS, Purchase, Review
from .base import Builder, DatasetError, clean_text, literal_object, numbered, open_lines, trim, unique

__all__ = ["YEARS", "category_of", "is_json_file", "load", "peek", "review_year"]

YEARS: Final = ("2018", "2023")
_JSON_SUFFIXES: Final = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
_META, _REVIEWS = 0, 1  # source ranks for the order of ties

#: Per release: the field names of the review and metadata files.
_FIELDS: Final = {
    "2018": {
        "user": "reviewerID", "item": ("asin",), "rating": "overall", "verified": "verified",
        "headline": "summary", "text": "reviewText", "ts": "unixReviewTime", "ts_scale": 1000,
        "meta_item": "asin", "categories": "category", "main": "main_cat",
    },
    "2023": {
        "user": "user_id", "item": ("parent_asin", "asin"), "rating": "rating", "verified": "verified_purchase",
        "headline": "title", "text": "text", "ts": "timestamp", "ts_scale": 1,
        "meta_item": "parent_asin", "categories": "categories", "main": "main_category",
    },
}  # fmt: skip


def is_json_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_JSON_SUFFIXES)


def category_of(path: Path) -> str:
    """``meta_Gift_Cards.json.gz`` and ``Gift_Cards_5.json.gz`` -> ``Gift_Cards``."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    name = name.removeprefix("meta_")
    return name.removesuffix("_5")


def peek(path: Path) -> dict[str, Any] | None:
    """The first object of a JSON-lines file (None when the first non-empty line is not one)."""
    try:
        for raw in open_lines(path):
            if raw.strip():
                obj, _ = _parse(raw)
                return obj
    except DatasetError:
        return None
    return None


def review_year(obj: dict[str, Any] | None) -> str | None:
    """Which release an Amazon review object comes from, by its field names."""
    if not obj:
        return None
    if "reviewerID" in obj or "overall" in obj or "unixReviewTime" in obj:
        return "2018"
    if "user_id" in obj and "rating" in obj and ("parent_asin" in obj or "asin" in obj):
        return "2023"
    return None


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """A line as an object: JSON, else a Python literal. Returns (object, how) or (None, why not)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return literal_object(raw), "literal"
        except ValueError as literal_error:
            return None, f"not valid JSON ({exc}) and {literal_error}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object but {type(obj).__name__}"
    return obj, "json"


def _objects(path: Path, builder: Builder) -> Iterator[tuple[int, dict[str, Any]]]:
    file = path.name
    for line, raw in numbered(open_lines(path), builder, file):
        if not raw.strip():
            builder.skip(file, line, "empty line", "empty line")
            continue
        obj, how = _parse(raw)
        if obj is None:
            builder.skip(file, line, "not a JSON object", how)
            continue
        if how == "literal":
            builder.adjust(f"{file}: Python-literal line read with ast.literal_eval")
        yield line, obj


def _text(value: Any) -> str:
    """A text field (string, or list of strings) cleaned; anything else counts as empty."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return "\n".join(unique(clean_text(v) for v in value if isinstance(v, str)))
    return ""


def load(reviews: Path, meta: Path, year: str, builder: Builder) -> None:
    fields = _FIELDS[year]
    _load_meta(meta, fields, builder)
    _load_reviews(reviews, fields, builder)


def _load_meta(path: Path, fields: dict[str, Any], builder: Builder) -> None:
    file = path.name
    id_field, cat_field, main_field = fields["meta_item"], fields["categories"], fields["main"]
    for line, obj in _objects(path, builder):
        item_id = obj.get(id_field)
        if not builder.check_id(item_id, file, line, id_field):
            continue
        raw_cats = obj.get(cat_field)
        cats = [clean_text(c) for c in raw_cats if isinstance(c, str)] if isinstance(raw_cats, list) else []
        main = obj.get(main_field)
        if isinstance(main, str):
            cats.append(clean_text(main))
        builder.add_item(cast(str, item_id), _text(obj.get("title")), _text(obj.get("description")), unique(cats), file=file, line=line)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _day_2018(value: Any) -> int | None:
    """``reviewTime`` ``"06 17, 2018"`` (month day, year) as epoch seconds at 00:00 UTC."""
    if not isinstance(value, str):
        return None
    try:
        return calendar.timegm(time.strptime(" ".join(value.split()), "%m %d, %Y"))
    except ValueError:
        return None


def _load_reviews(path: Path, fields: dict[str, Any], builder: Builder) -> None:
    file = path.name
    user_field, rating_field, ts_field, scale = fields["user"], fields["rating"], fields["ts"], fields["ts_scale"]
    item_fields, verified_field = fields["item"], fields["verified"]
    headline_field, text_field = fields["headline"], fields["text"]
    for line, obj in _objects(path, builder):
        user = builder.ident(obj.get(user_field), file, line, user_field)
        if user is None:
            continue
        item_field = next((f for f in item_fields if obj.get(f) is not None), item_fields[0])
        item = builder.ident(obj.get(item_field), file, line, item_field)
        if item is None:
            continue
        raw_rating = obj.get(rating_field)
        rating = _number(raw_rating)
        if rating is None:
            reason = f"{rating_field} is missing" if raw_rating is None else f"{rating_field} is not a number"
            builder.skip(file, line, reason, f"{rating_field} {raw_rating!r} is not a number" if raw_rating is not None else reason)
            continue
        if not 1.0 <= rating <= 5.0:
            builder.skip(file, line, f"{rating_field} is outside 1..5", f"{rating_field} {raw_rating!r} is outside 1..5")
            continue
        raw_ts = obj.get(ts_field)
        if raw_ts is None and ts_field == "unixReviewTime":
            raw_ts = _day_2018(obj.get("reviewTime"))
            if raw_ts is not None:
                builder.adjust(f"{file}: unixReviewTime missing, time taken from reviewTime")
        if isinstance(raw_ts, float) and raw_ts.is_integer():
            raw_ts = int(raw_ts)
        if isinstance(raw_ts, bool) or not isinstance(raw_ts, int):
            reason = f"{ts_field} is missing" if raw_ts is None else f"{ts_field} is not an integer"
            builder.skip(file, line, reason, reason if raw_ts is None else f"{ts_field} {raw_ts!r} is not an integer")
            continue
        ts_ms = raw_ts * scale
        if not builder.millis(ts_ms, file, line, ts_field, shown=raw_ts):
            continue
        text = _review_text(_text(obj.get(headline_field)), _text(obj.get(text_field)))
        text = trim(text, MAX_TEXT_CHARS, builder, "review text")
        builder.seen(item, ts_ms)
        builder.event(Review(user, item, rating, text, ts_ms, f"amz-r-{line}"), _REVIEWS, line)
        if obj.get(verified_field) is True:
            builder.event(Purchase(user, item, ts_ms, f"amz-p-{line}"), _REVIEWS, line)


def _review_text(headline: str, body: str) -> str:
    if not headline or not body:
        return headline or body
    joiner = " " if headline[-1] in ".!?" else ". "
    return headline + joiner + body
