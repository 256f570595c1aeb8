"""Your own export: a plain CSV of interactions (and optionally a catalog CSV) with a column mapping.

For a team whose data is not a public dataset and who would rather not write recstream's
JSON lines by hand. One interactions file (``.csv``, ``.tsv`` tab-separated, optionally
``.gz``), a header line naming its columns, and a mapping of recstream's fields onto them::

    --columns user=customer_id,item=sku,ts=created_at,rating=stars,kind=event_type

==============  ========  ==========================================================
field           required  column read as
==============  ========  ==========================================================
``user``        yes       the user id (text; numeric ids are kept as written)
``item``        yes       the item id
``ts``          yes       the event time: epoch seconds or milliseconds (a number below
                          10^11 is seconds, so milliseconds before March 1973 would be
                          misread), or an ISO 8601 date or date-time (``2024-03-01``,
                          ``2024-03-01T12:30:00Z``, ``2024-03-01 12:30:00+02:00``;
                          without a zone: UTC)
``rating``      no        a number; a review's rating (1 to 5)
``kind``        no        ``click``, ``purchase`` or ``review`` (also plural, any case)
``text``        no        a review's text (default empty)
``event_id``    no        the event's id (default ``csv-<line>``)
==============  ========  ==========================================================

A field left out of ``--columns`` is read from the column of its contract name when the
header has one (``user_id``, ``item_id``, ``ts``, ``rating``, ``kind``, ``text``,
``event_id``): a file with those headers needs no mapping at all.

Mapping onto events, as the MovieLens reader does:

* with a ``kind`` column: each row is the event its kind names; a review needs a rating
  from 1 to 5 (its text may be empty);
* without one: each row is a click and, when it has a rating at or above
  ``positive_threshold`` (4), also a purchase with the same time (``<id>-p``);
* event ids: the ``event_id`` column, else ``csv-<line>``.

The catalog (``--catalog-csv FILE --catalog-columns item=...,title=...,description=...,categories=...``):
``item`` required, at least one of ``title`` and ``description``; ``categories`` is split on
``|`` and ``;``. Defaults as above (``item_id``, ``title``, ``description``,
``categories``). An item's ts is the time of its first event; a repeated id keeps the
first row. Events on items without a catalog row still go out, and their ids are listed
in ``stats.missing_from_catalog``.

Validation is the other readers': a mapping that names a column the header lacks is a
:class:`~streams.sources.base.DatasetError` naming the field and the column, before any row
is read; a row that cannot be used (a missing or bad id, time, rating or kind, the wrong
number of fields) is skipped and counted with its line number and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, cast

from ..records import MAX_TEXT_CHARS, Click, Purchase, Review
from .base import Builder, DatasetError, csv_rows, trim, unique

__all__ = ["CATALOG_FIELDS", "EVENT_FIELDS", "CsvMapping", "is_csv_file", "load", "parse_columns", "parse_time"]

#: recstream's field -> the column read when the mapping does not name one
EVENT_FIELDS: Final = {"user": "user_id", "item": "item_id", "ts": "ts", "rating": "rating", "kind": "kind", "text": "text", "event_id": "event_id"}
CATALOG_FIELDS: Final = {"item": "item_id", "title": "title", "description": "description", "categories": "categories"}
_REQUIRED: Final = ("user", "item", "ts")
KINDS: Final = {"click": "click", "clicks": "click", "purchase": "purchase", "purchases": "purchase", "review": "review", "reviews": "review"}
_SUFFIXES: Final = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
#: a number below this is epoch seconds, at or above it milliseconds (10^11 s is the year 5138)
SECONDS_BELOW: Final = 10**11
_NUMBER: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_CATEGORY_SPLIT: Final = re.compile(r"[|;]")
_EVENTS, _CATALOG = 1, 0  # source ranks for the order of ties


def is_csv_file(path: Path) -> bool:
    return path.name.lower().endswith(_SUFFIXES)


def parse_columns(text: str | None, known: Mapping[str, str], option: str = "--columns") -> dict[str, str]:
    """``field=column,field=column`` as a dict; a ValueError naming the option and the entry
    for an unknown field, an entry without ``=`` or a field given twice."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, column = part.partition("=")
        name, column = name.strip().lower(), column.strip()
        if not eq or not name or not column:
            raise ValueError(f"{option}: expected field=column, got {part.strip()!r}")
        if name not in known:
            raise ValueError(f"{option}: unknown field {name!r}; the fields are {', '.join(known)}")
        if name in out:
            raise ValueError(f"{option}: {name} is mapped twice")
        out[name] = column
    return out


@dataclass(frozen=True)
class CsvMapping:
    """What ``--columns``, ``--catalog-csv`` and ``--catalog-columns`` say (syntax checked;
    the columns are checked against the headers when the files are read)."""

    columns: dict[str, str] = field(default_factory=dict)
    catalog: Path | None = None
    catalog_columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, columns: str | None = None, catalog_csv: str | Path | None = None, catalog_columns: str | None = None) -> CsvMapping:
        if catalog_columns and not catalog_csv:
            raise ValueError("--catalog-columns: needs --catalog-csv")
        return cls(
            parse_columns(columns, EVENT_FIELDS),
            Path(catalog_csv).expanduser() if catalog_csv else None,
            parse_columns(catalog_columns, CATALOG_FIELDS, "--catalog-columns"),
        )


def parse_time(text: str) -> int | None:
    """Epoch milliseconds of a ``ts`` cell (see the module doc), or None when it is neither a
    number nor an ISO date; may be negative (the builder rejects it with the reason)."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        value = float(text)
        if not math.isfinite(value):
            return None
        return int(value) if abs(value) >= SECONDS_BELOW else int(round(value * 1000))
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(round(when.timestamp() * 1000))


def load(path: Path, mapping: CsvMapping, builder: Builder, *, positive_threshold: float) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: not a file; the CSV format reads one interactions file")
    if mapping.catalog is not None:
        if not mapping.catalog.is_file():
            raise DatasetError(f"{mapping.catalog}: --catalog-csv: no such file")
        _catalog(mapping.catalog, mapping.catalog_columns, builder)
    _events(path, mapping.columns, builder, positive_threshold)


def _resolve(path: Path, header: list[str], given: Mapping[str, str], defaults: Mapping[str, str], required: tuple[str, ...], option: str) -> dict[str, int]:
    """field -> column index; a DatasetError naming the field and the column when the header lacks it."""
    where: dict[str, int] = {}
    shown = ", ".join(header)
    for name, default in defaults.items():
        column = given.get(name)
        if column is not None:
            if column not in header:
                raise DatasetError(f"{path}: {option} maps {name} to column {column!r}, which the header lacks (it has: {shown})")
            where[name] = header.index(column)
        elif default in header:
            where[name] = header.index(default)
        elif name in required:
            raise DatasetError(f"{path}: {option} does not map {name} and the header has no {default!r} column (it has: {shown}); add {name}=COLUMN")
    return where


def _rows(path: Path, builder: Builder) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and an iterator of (line, fields) of the rows that have the header's width;
    every other row is skipped with the reason and its line, every row counted."""
    return csv_rows(path, builder, delimiter="\t" if ".tsv" in path.name.lower() else ",", empty_header="expected a header line naming the columns")


def _catalog(path: Path, given: Mapping[str, str], builder: Builder) -> None:
    header, rows = _rows(path, builder)
    where = _resolve(path, header, given, CATALOG_FIELDS, ("item",), "--catalog-columns")
    if "title" not in where and "description" not in where:
        raise DatasetError(
            f"{path}: --catalog-columns maps neither title nor description and the header has no 'title' "
            f"or 'description' column (it has: {', '.join(header)}); an item needs a text"
        )
    file = path.name
    item_at, title_at, desc_at, cats_at = (where.get(n) for n in ("item", "title", "description", "categories"))
    for line, row in rows:
        title = row[title_at].strip() if title_at is not None else ""
        description = row[desc_at].strip() if desc_at is not None else ""
        cats = unique(c.strip() for c in _CATEGORY_SPLIT.split(row[cats_at])) if cats_at is not None else []
        builder.add_item(row[cast(int, item_at)].strip(), title, description, cats, file=file, line=line)  # "item" is required


def _events(path: Path, given: Mapping[str, str], builder: Builder, threshold: float) -> None:
    header, rows = _rows(path, builder)
    where = _resolve(path, header, given, EVENT_FIELDS, _REQUIRED, "--columns")
    file = path.name
    b = builder
    user_at, item_at, ts_at = where["user"], where["item"], where["ts"]
    rating_at, kind_at, text_at, id_at = (where.get(n) for n in ("rating", "kind", "text", "event_id"))
    for line, row in rows:
        user = b.ident(row[user_at].strip(), file, line, "user id")
        if user is None:
            continue
        item = b.ident(row[item_at].strip(), file, line, "item id")
        if item is None:
            continue
        ts_text = row[ts_at].strip()
        ts_ms = parse_time(ts_text)
        if ts_ms is None:
            b.skip(file, line, "ts is not a time", f"ts {ts_text!r} is neither epoch seconds or milliseconds nor an ISO date")
            continue
        if not b.millis(ts_ms, file, line, what="ts", shown=repr(ts_text)):
            continue
        kind = "click"
        if kind_at is not None:
            kind_text = row[kind_at].strip()
            kind = KINDS.get(kind_text.lower(), "")
            if not kind:
                b.skip(file, line, "unknown kind", f"kind {kind_text!r} is not click, purchase or review")
                continue
        rating: float | None = None
        rating_text = row[rating_at].strip() if rating_at is not None else ""
        if rating_text:
            try:
                rating = float(rating_text)
            except ValueError:
                rating = math.nan
            if not math.isfinite(rating):
                b.skip(file, line, "rating is not a number", f"rating {rating_text!r} is not a number")
                continue
        event_id = None
        if id_at is not None and row[id_at].strip():
            event_id = b.ident(row[id_at].strip(), file, line, "event id")
            if event_id is None:
                continue
        event_id = event_id or f"csv-{line}"
        if kind == "review":
            if rating is None:
                b.skip(file, line, "review without a rating", "a review needs a rating (1 to 5)")
                continue
            if not 1.0 <= rating <= 5.0:
                b.skip(file, line, "review rating is outside 1..5", f"review rating {rating_text!r} is outside 1..5")
                continue
            text = trim(row[text_at].strip(), MAX_TEXT_CHARS, b, "review text") if text_at is not None else ""
            b.seen(item, ts_ms)
            b.event(Review(user, item, rating, text, ts_ms, event_id), _EVENTS, line)
        elif kind == "purchase":
            b.seen(item, ts_ms)
            b.event(Purchase(user, item, ts_ms, event_id), _EVENTS, line)
        else:
            b.seen(item, ts_ms)
            b.event(Click(user, item, ts_ms, event_id), _EVENTS, line)
            if kind_at is None and rating is not None and rating >= threshold:
                b.event(Purchase(user, item, ts_ms, f"{event_id}-p"), _EVENTS, line)
