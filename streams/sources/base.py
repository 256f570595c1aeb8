"""What every dataset reader shares: the result types, skip accounting, filters and ordering.

Pure code, no Kafka I/O. A reader (``movielens``, ``amazon``, ``jsonl``) walks its files
once, hands every valid record to a :class:`Builder` and reports every row it cannot use
with :meth:`Builder.skip`; :meth:`Builder.finish` applies the time window and the limit,
orders the events and returns a :class:`Dataset`.

Everything a reader emits satisfies the contract in :mod:`streams.records` by construction:
ids are checked with the contract's id rules, timestamps are integer epoch milliseconds
(not in the future), ratings lie in [1, 5], and over-long texts, titles and categories are
trimmed to the contract limits (and counted in :attr:`DatasetStats.adjusted`).
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

from ..records import (
    DEFAULT_MAX_FUTURE_MS,
    MAX_CATEGORIES,
    MAX_CATEGORY_CHARS,
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    KIND_RANK,
    KIND_TOPICS,
    Click,
    Event,
    Item,
    Purchase,
    Review,
)

__all__ = [
    "KIND_TOPICS",
    "Builder",
    "Dataset",
    "DatasetError",
    "DatasetStats",
    "Event",
    "Progress",
    "clean_text",
    "open_lines",
]

T = TypeVar("T")
Progress: TypeAlias = Callable[[int], None]

_KIND_RANK: Final = {cls: KIND_RANK[cls.kind] for cls in (Click, Purchase, Review)}
#: How many precise messages are kept per skip reason (the count is always exact).
MAX_EXAMPLES: Final = 20
_PROGRESS_EVERY: Final = 10_000
#: Readers count rows locally and report them to the builder in chunks of this size.
ROW_CHUNK: Final = 4096
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # the contract's id rule (Unicode Cc)


class DatasetError(ValueError):
    """The path holds no dataset of a known format, or a file the format needs is missing or unreadable."""


# --------------------------------------------------------------------------- results


@dataclass
class DatasetStats:
    """What happened while loading; nothing is dropped without being counted here.

    * ``rows_read``: data rows read per file name (header lines excluded, skipped rows included).
    * ``items``: catalog entries made; ``events``: events made per kind (``click``,
      ``purchase``, ``review``), after the time window and the limit.
    * ``skipped``: rows that could not be used, per reason (``"ratings.csv: rating is not a
      number"``); ``skipped_examples`` keeps, per reason, the first :data:`MAX_EXAMPLES`
      precise messages (``"ratings.csv line 17: rating 'x' is not a number"``).
    * ``filtered``: valid events left out by ``start_ms``/``end_ms``/``limit`` (not errors).
    * ``adjusted``: records kept but changed to fit the contract or the mapping (a trimmed
      text, a MovieLens 0.5 rating raised to 1, a tag review without a rating), per change.
    * ``missing_from_catalog``: item ids (sorted) that events refer to but that have no
      catalog entry; their events are still in :attr:`Dataset.events`.
    """

    rows_read: dict[str, int] = field(default_factory=dict)
    items: int = 0
    events: dict[str, int] = field(default_factory=lambda: {"click": 0, "purchase": 0, "review": 0})
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    adjusted: dict[str, int] = field(default_factory=dict)
    missing_from_catalog: list[str] = field(default_factory=list)

    @property
    def rows_total(self) -> int:
        return sum(self.rows_read.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def filtered_total(self) -> int:
        return sum(self.filtered.values())

    @property
    def events_total(self) -> int:
        return sum(self.events.values())

    def summary(self) -> list[str]:
        """Human-readable lines for a command-line report."""
        lines = [
            f"read {self.rows_total} rows (" + ", ".join(f"{name}: {n}" for name, n in self.rows_read.items()) + ")",
            f"made {self.items} items, " + ", ".join(f"{n} {kind}s" for kind, n in self.events.items()),
        ]
        if self.filtered:
            lines.append(f"left out {self.filtered_total} events: " + ", ".join(f"{n} {why}" for why, n in self.filtered.items()))
        if self.skipped:
            lines.append(f"skipped {self.skipped_total} rows:")
            for reason, n in self.skipped.items():
                lines.append(f"  {n} × {reason}")
                lines.extend(f"      {example}" for example in self.skipped_examples.get(reason, [])[:3])
        else:
            lines.append("skipped no rows")
        if self.adjusted:
            lines.append("adjusted:")
            lines.extend(f"  {n} × {what}" for what, n in self.adjusted.items())
        if self.missing_from_catalog:
            shown = ", ".join(self.missing_from_catalog[:5])
            more = ", ..." if len(self.missing_from_catalog) > 5 else ""
            lines.append(f"{len(self.missing_from_catalog)} items have events but no catalog entry: {shown}{more}")
        return lines


@dataclass
class Dataset:
    """A dataset mapped onto the contract: the catalog and the time-ordered event stream.

    ``events`` is sorted by ``(ts, user_id, item_id, kind, source)`` with kind order
    click < purchase < review and source = (file, line number) of the row the event came
    from, so the order is the same on every run.
    """

    name: str
    format: str
    path: Path
    catalog: list[Item]
    events: list[Event]
    stats: DatasetStats

    def records(self) -> Iterator[tuple[str, Item | Event]]:
        """``(logical topic, record)`` pairs: the whole catalog first, then the events in order."""
        for item in self.catalog:
            yield "items", item
        for event in self.events:
            yield KIND_TOPICS[event.kind], event


# --------------------------------------------------------------------------- text helpers

_TAGS: Final = re.compile(
    r"<!--.*?(?:-->|$)"  # a comment
    r"|<(script|style)\b.*?(?:</\1\s*>|$)"  # code that is not text
    r"|</?([A-Za-z][A-Za-z0-9]*)\b[^<>]*>",  # a start or end tag
    re.IGNORECASE | re.DOTALL,
)
_ALT: Final = re.compile(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
#: Tags that start or end a block of text (a space stands for them); other tags (a, b,
#: span, font, ...) sit inside words and vanish.
_BLOCK_TAGS: Final = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)


def _tag_replacement(match: re.Match[str]) -> str:
    name = (match.group(2) or "").lower()
    if name == "img":
        alt = _ALT.search(match.group())
        if alt is not None:
            return f" {alt.group(1) if alt.group(1) is not None else alt.group(2)} "
        return " "
    return " " if name in _BLOCK_TAGS or not name else ""


def clean_text(value: str) -> str:
    """Text of a store field: HTML tags removed (a block tag such as ``<br>`` or ``<p>``
    becomes a space, an inline one such as ``<a>`` or ``<b>`` nothing, an image its alt
    text), comments, scripts and styles dropped, entities unescaped, runs of whitespace
    (newlines included) collapsed to one space, ends stripped."""
    if "<" in value:
        value = _TAGS.sub(_tag_replacement, value)
    if "&" in value:
        value = html.unescape(value)
    return " ".join(value.split())


def id_problem(value: Any, what: str) -> tuple[str, str] | None:
    """Why ``value`` cannot be a contract id, as ``(reason, precise message)``; None when it can."""
    if not isinstance(value, str):
        if value is None:
            return f"{what} is missing", f"{what} is missing"
        return f"{what} is not a string", f"{what} {value!r} is not a string"
    if not value:
        return f"{what} is empty", f"{what} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{what} is too long", f"{what} is longer than {MAX_ID_CHARS} characters ({len(value)}): {value[:40]!r}..."
    if (m := _CONTROL.search(value)) is not None:
        return (
            f"{what} contains a control character",
            f"{what} {value[:80]!r} contains the control character U+{ord(m.group()):04X}",
        )
    return None


def utf8_safe(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates, which Python
    literals can hold, are paired or replaced); lists and dicts are walked."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, list):
        return [utf8_safe(v) for v in value]
    if isinstance(value, tuple):
        return tuple(utf8_safe(v) for v in value)
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    return value


def literal_object(line: bytes) -> dict[str, Any]:
    """A Python-literal dict line (``{'asin': 'B00', ...}``, as in some Amazon 2018 metadata
    files), read with :func:`ast.literal_eval` (never ``eval``). Raises ValueError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at offset {exc.start})") from None
    try:
        obj = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"neither JSON nor a Python literal ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a Python literal but not an object: {type(obj).__name__}")
    return utf8_safe(obj)


def open_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file (gzip-compressed when the name ends in ``.gz``), as bytes."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                yield from fh
        else:
            with open(path, "rb") as fh:
                yield from fh
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot be read: {exc}") from exc


def decode_lines(lines: Iterable[bytes], builder: Builder, file: str) -> Iterator[str]:
    """Decode lines as UTF-8, falling back to Latin-1 per line (old MovieLens files are
    Latin-1); each fallback is counted in ``adjusted``."""
    for raw in lines:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            builder.adjust(f"{file}: line not UTF-8, read as Latin-1")
            yield raw.decode("latin-1")


def _show(row: list[str]) -> str:
    text = ",".join(row)
    return repr(text if len(text) <= 120 else text[:120] + "...")


def csv_rows(
    path: Path, builder: Builder, *, delimiter: str = ",", empty_header: str = "expected a header line"
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A CSV file's header (stripped, without a byte-order mark) and an iterator of
    ``(line number, fields)`` of the rows that have the header's width; every other row is
    skipped with the reason and its line, and
    every row is counted as read (in chunks).  ``empty_header`` ends the error for an
    empty file."""
    file = path.name
    rows = csv.reader(decode_lines(open_lines(path), builder, file), delimiter=delimiter)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(rows)]
    except StopIteration:
        raise DatasetError(f"{path}: the file is empty; {empty_header}") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} line 1: not readable as CSV: {exc}") from exc

    def body() -> Iterator[tuple[int, list[str]]]:
        width = len(header)
        count = 0
        try:
            for row in rows:
                count += 1
                if count == ROW_CHUNK:
                    builder.rows(file, count)
                    count = 0
                line = rows.line_num
                if len(row) != width:
                    if not row:
                        builder.skip(file, line, "empty line", "empty line")
                    else:
                        builder.skip(file, line, f"not {width} fields", f"expected {width} fields ({','.join(header)}), got {len(row)}: {_show(row)}")
                    continue
                yield line, row
        except csv.Error as exc:  # a NUL byte, an unterminated quote at the end
            raise DatasetError(f"{path} line {rows.line_num}: not readable as CSV: {exc}") from exc
        finally:
            builder.rows(file, count)

    return header, body()


def numbered(lines: Iterable[T], builder: Builder, file: str) -> Iterator[tuple[int, T]]:
    """``(line number from 1, line)``, each line counted as a row read of ``file`` (in chunks)."""
    line = 0
    try:
        for line, text in enumerate(lines, start=1):
            if not line % ROW_CHUNK:
                builder.rows(file, ROW_CHUNK)
            yield line, text
    finally:
        builder.rows(file, line % ROW_CHUNK)


def trim(value: str, limit: int, builder: Builder, what: str) -> str:
    if len(value) > limit:
        builder.adjust(f"{what} trimmed to {limit} characters")
        return value[:limit]
    return value


def unique(values: Iterable[str]) -> list[str]:
    """Non-empty values, duplicates dropped, first occurrence order."""
    seen: dict[str, None] = {}
    for v in values:
        if v and v not in seen:
            seen[v] = None
    return list(seen)


# --------------------------------------------------------------------------- the builder


@dataclass(slots=True)
class _PendingItem:
    item_id: str
    title: str
    description: str
    categories: tuple[str, ...]
    ts: int | None  # None: the item's first event time (0 when it has none)


SortKey: TypeAlias = tuple[int, str, str, int, int, int, Event]


class Builder:
    """Collects a reader's output, counting every row, skip, adjustment and filtered event.

    ``start_ms`` (inclusive) and ``end_ms`` (exclusive) bound event times; ``limit`` keeps
    the first ``limit`` events in the final order (memory stays O(limit) while reading).
    """

    def __init__(
        self,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        progress: Progress | None = None,
        now_ms: int | None = None,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    ) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        for name, bound in (("start_ms", start_ms), ("end_ms", end_ms)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
                raise ValueError(f"{name} must be an integer (epoch milliseconds) or None, got {bound!r}")
        if start_ms is not None and end_ms is not None and start_ms > end_ms:
            raise ValueError(f"start_ms ({start_ms}) is after end_ms ({end_ms})")
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.limit = limit
        self.progress = progress
        self.now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self.max_future_ms = max_future_ms
        #: The latest acceptable timestamp (the contract rejects a ts more than a day ahead).
        self.max_ts = self.now_ms + max_future_ms
        self.stats = DatasetStats()
        self._skipped: Counter[str] = Counter()
        self._adjusted: Counter[str] = Counter()
        self._filtered: Counter[str] = Counter()
        self._buffer: list[SortKey] = []
        self._items: list[_PendingItem] = []
        self._item_ids: set[str] = set()
        #: item id -> the time of its first (valid, unfiltered) event; see :meth:`seen`.
        self.first_ts: dict[str, int] = {}
        self._ids: dict[str, str] = {}
        self._unreported = 0
        self._lo = -1 if start_ms is None else start_ms
        self._hi = (1 << 63) if end_ms is None else end_ms
        self._cut_at = None if limit is None else 2 * limit + 10_000

    # ---- rows and problems

    def rows(self, file: str, n: int = 1) -> None:
        """Count ``n`` rows read from ``file`` (and report progress)."""
        self.stats.rows_read[file] = self.stats.rows_read.get(file, 0) + n
        if self.progress is not None:
            self._unreported += n
            if self._unreported >= _PROGRESS_EVERY:
                self.progress(self._unreported)
                self._unreported = 0

    def flush_progress(self) -> None:
        if self.progress is not None and self._unreported:
            self.progress(self._unreported)
            self._unreported = 0

    def skip(self, file: str, line: int, reason: str, detail: str) -> None:
        """A row of ``file`` at ``line`` is not used: counted under ``"file: reason"``."""
        key = f"{file}: {reason}"
        self._skipped[key] += 1
        examples = self.stats.skipped_examples.setdefault(key, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{file} line {line}: {detail}")

    def adjust(self, what: str, n: int = 1) -> None:
        self._adjusted[what] += n

    # ---- values

    def millis(self, ts_ms: int, file: str, line: int, what: str = "timestamp", shown: Any = None) -> bool:
        """True when ``ts_ms`` is an acceptable event time; otherwise the row is skipped."""
        shown = ts_ms if shown is None else shown
        if ts_ms < 0:
            self.skip(file, line, f"{what} is negative", f"{what} {shown} is negative")
            return False
        if ts_ms > self.max_ts:
            self.skip(file, line, f"{what} is in the future", f"{what} {shown} is in the future ({ts_ms} ms > {self.max_ts})")
            return False
        return True

    def check_id(self, value: Any, file: str, line: int, what: str) -> bool:
        """True when ``value`` is a valid contract id; otherwise the row is skipped."""
        return self.ident(value, file, line, what) is not None

    def ident(self, value: Any, file: str, line: int, what: str) -> str | None:
        """``value`` as a valid contract id (one shared string object per distinct id), or
        None after skipping the row with the reason."""
        if type(value) is str:
            known = self._ids.get(value)
            if known is not None:
                return known
        problem = id_problem(value, what)
        if problem is not None:
            self.skip(file, line, *problem)
            return None
        self._ids[value] = value
        return value

    # ---- catalog

    def has_item(self, item_id: str) -> bool:
        return item_id in self._item_ids

    def add_item(
        self,
        item_id: str,
        title: str,
        description: str,
        categories: Iterable[str],
        *,
        file: str,
        line: int,
        ts: int | None = None,
        dedupe: bool = True,
        blank_is_text: bool = False,
    ) -> bool:
        """Add a catalog entry (texts trimmed to the contract limits).

        ``ts`` None means "the item's first event time". With ``dedupe`` a second entry for
        the same id is skipped (the first is kept); without it both are kept, in order, as
        updates of a compacted topic would be. An entry needs a title or a description that
        is not just whitespace (``blank_is_text``: not empty, the contract's own rule).
        """
        if not self.check_id(item_id, file, line, "item id"):
            return False
        if dedupe and item_id in self._item_ids:
            self.skip(file, line, "duplicate item id (the first entry is kept)", f"item {item_id!r} appears again")
            return False
        if (not title and not description) if blank_is_text else (not title.strip() and not description.strip()):
            self.skip(file, line, "item has no title and no description", f"item {item_id!r} has no title and no description")
            return False
        title = trim(title, MAX_TITLE_CHARS, self, "item title")
        description = trim(description, MAX_TEXT_CHARS, self, "item description")
        cats = [trim(c, MAX_CATEGORY_CHARS, self, "item category") for c in categories]
        if len(cats) > MAX_CATEGORIES:
            self.adjust(f"item categories cut to the first {MAX_CATEGORIES}")
            cats = cats[:MAX_CATEGORIES]
        self._items.append(_PendingItem(item_id, title, description, tuple(cats), ts))
        self._item_ids.add(item_id)
        return True

    # ---- events

    def seen(self, item_id: str, ts: int) -> None:
        """Note an (unfiltered, valid) event time of an item: its catalog ts is the earliest."""
        first = self.first_ts.get(item_id)
        if first is None or ts < first:
            self.first_ts[item_id] = ts

    def event(self, event: Event, source: int, line: int) -> None:
        """Keep a valid event unless the window or the limit leaves it out.

        ``source`` numbers the file the row came from (tie-break after the kind, before the
        line), so rows of different files never compare equal.
        """
        ts = event.ts
        if not self._lo <= ts < self._hi:
            self._filtered["before start_ms" if ts < self._lo else "at or after end_ms"] += 1
            return
        self._buffer.append((ts, event.user_id, event.item_id, _KIND_RANK[type(event)], source, line, event))
        if self._cut_at is not None and len(self._buffer) >= self._cut_at:
            self._cut()

    def _cut(self) -> None:
        assert self.limit is not None
        self._buffer.sort()
        if len(self._buffer) > self.limit:
            self._filtered["beyond limit"] += len(self._buffer) - self.limit
            del self._buffer[self.limit :]

    # ---- result

    def finish(self, name: str, fmt: str, path: Path) -> Dataset:
        self.flush_progress()
        if self.limit is not None:
            self._cut()
        else:
            self._buffer.sort()  # the keys are unique before the event, which is never compared
        events: list[Event] = [entry[-1] for entry in self._buffer]
        self._buffer = []
        first_ts = self.first_ts
        catalog = [Item(p.item_id, p.title, p.description, p.categories, first_ts.get(p.item_id, 0) if p.ts is None else p.ts) for p in self._items]
        stats = self.stats
        stats.items = len(catalog)
        kinds: Counter[str] = Counter(e.kind for e in events)
        stats.events = {kind: kinds.get(kind, 0) for kind in KIND_TOPICS}
        stats.skipped = dict(self._skipped)
        stats.adjusted = dict(self._adjusted)
        stats.filtered = dict(self._filtered)
        catalog_ids = self._item_ids
        stats.missing_from_catalog = sorted({e.item_id for e in events} - catalog_ids)
        return Dataset(name=name, format=fmt, path=path, catalog=catalog, events=events, stats=stats)
