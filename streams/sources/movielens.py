"""MovieLens (GroupLens) folders mapped onto the recstream contract.

Three layouts:

* ``movielens-csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m): ``movies.csv``
  ``movieId,title,genres``, ``ratings.csv`` ``userId,movieId,rating,timestamp``, optional
  ``tags.csv`` ``userId,movieId,tag,timestamp``; UTF-8 CSV with a header line.
* ``ml-1m`` (also ml-10m): ``::``-separated ``movies.dat`` ``MovieID::Title::Genres``,
  ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp`` and, when present (ml-10m),
  ``tags.dat`` ``UserID::MovieID::Tag::Timestamp``; ``users.dat`` is ignored.
* ``ml-100k``: tab-separated ``u.data`` ``user item rating timestamp`` and ``|``-separated
  ``u.item`` (id, title, release date, video release date, IMDb URL, 19 genre flags), genre
  names from ``u.genre`` when present.

Lines that are not UTF-8 are read as Latin-1 (ml-1m and ml-100k are Latin-1), one line at
a time, and counted in ``stats.adjusted``.

Mapping (see :func:`streams.sources.load_dataset`):

* catalog: one item per movie, id = the movie id as text, title as given, categories =
  genres (``(no genres listed)`` and ml-100k's ``unknown`` genre mean none), description
  ``""``, ts = the time of the movie's first rating or tag (0 when it has none);
* every rating -> a :class:`Click` (``ml-r-<line>``) and, when the rating is at least
  ``positive_threshold``, also a :class:`Purchase` with the same ts (``ml-p-<line>``);
* every tag -> a :class:`Review` (``ml-t-<line>``) whose text is the tag and whose rating is
  the same user's rating of the movie (its latest, when there are several) with 0.5 raised
  to 1.0, or 3.0 (neutral) when that user did not rate the movie;
* timestamps are epoch seconds in the files, milliseconds in the records.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ..records import MAX_TEXT_CHARS, Click, Purchase, Review
from .base import Builder, DatasetError, csv_rows, decode_lines, numbered, open_lines, trim, unique

__all__ = ["LAYOUTS", "ML100K_GENRES", "detect", "load"]

#: Layout -> (ratings file, movies file, optional tags file).
LAYOUTS: Final = {
    "movielens-csv": ("ratings.csv", "movies.csv", "tags.csv"),
    "ml-1m": ("ratings.dat", "movies.dat", "tags.dat"),
    "ml-100k": ("u.data", "u.item", None),
}
_EXPECTED: Final = {
    "movielens-csv": "a MovieLens CSV folder (ml-latest, ml-latest-small, ml-25m, ml-32m) needs ratings.csv and movies.csv (tags.csv optional)",
    "ml-1m": "a MovieLens ml-1m/ml-10m folder needs ratings.dat and movies.dat (tags.dat optional)",
    "ml-100k": "a MovieLens ml-100k folder needs u.data and u.item (u.genre optional)",
}
#: The 19 ml-100k genres, in flag order (what u.genre lists).
ML100K_GENRES: Final = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRE: Final = frozenset({"(no genres listed)", "unknown"})
_INTEGER: Final = re.compile(r"-?[0-9]+")
_RATINGS, _TAGS = 1, 2  # source ranks for the order of ties
NEUTRAL_RATING: Final = 3.0


def detect(folder: Path) -> str | None:
    """The MovieLens layout of ``folder`` (by its ratings file), or None."""
    for layout, (ratings, _, _) in LAYOUTS.items():
        if (folder / ratings).is_file():
            return layout
    return None


def load(folder: Path, layout: str, builder: Builder, *, positive_threshold: float) -> None:
    ratings_name, movies_name, tags_name = LAYOUTS[layout]
    ratings_path, movies_path = folder / ratings_name, folder / movies_name
    missing = [name for name, p in ((ratings_name, ratings_path), (movies_name, movies_path)) if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder}: {' and '.join(missing)} not found; {_EXPECTED[layout]}")
    tags_path = folder / tags_name if tags_name is not None and (folder / tags_name).is_file() else None

    reader = _Reader(builder, positive_threshold)
    if layout == "movielens-csv":
        reader.movies(_csv_rows(movies_path, builder, ("movieId", "title", "genres")), movies_name)
        if tags_path is not None:
            reader.tags(_csv_rows(tags_path, builder, ("userId", "movieId", "tag", "timestamp")), tags_path.name)
        reader.ratings(_csv_rows(ratings_path, builder, ("userId", "movieId", "rating", "timestamp")), ratings_name)
    elif layout == "ml-1m":
        reader.movies(_dat_rows(movies_path, builder, 3, title_at=1), movies_name)
        if tags_path is not None:
            reader.tags(_dat_rows(tags_path, builder, 4, title_at=2), tags_path.name)
        reader.ratings(_dat_rows(ratings_path, builder, 4), ratings_name)
    else:
        genres = _ml100k_genres(folder / "u.genre", builder)
        reader.movies(_u_item_rows(movies_path, builder, genres), movies_name)
        reader.ratings(_u_data_rows(ratings_path, builder), ratings_name)
    reader.emit_tags()


# --------------------------------------------------------------------------- row sources
#
# Each yields (line number, fields) for rows with the expected number of fields, counting
# every row read and skipping (with the reason) those that have another shape.


def _csv_rows(path: Path, builder: Builder, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    header, rows = csv_rows(path, builder, empty_header=f"expected a header line {','.join(columns)}")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetError(f"{path}: the header {','.join(header)!r} lacks {', '.join(missing)}; expected {','.join(columns)}")
    where = [header.index(c) for c in columns]
    for line, row in rows:
        yield line, [row[i] for i in where]


def _dat_rows(path: Path, builder: Builder, width: int, *, title_at: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """``::``-separated rows; the free-text field at ``title_at`` may itself hold ``::``."""
    file = path.name
    for line, text in numbered(decode_lines(open_lines(path), builder, file), builder, file):
        text = text.rstrip("\r\n")
        parts = text.split("::")
        if len(parts) != width:
            if len(parts) > width and title_at is not None:
                extra = len(parts) - width
                parts[title_at : title_at + extra + 1] = ["::".join(parts[title_at : title_at + extra + 1])]
            elif not text.strip():
                builder.skip(file, line, "empty line", "empty line")
                continue
            else:
                builder.skip(file, line, f"not {width} fields", f"expected {width} fields separated by '::', got {len(parts)}: {text[:120]!r}")
                continue
        yield line, parts


def _u_data_rows(path: Path, builder: Builder) -> Iterator[tuple[int, list[str]]]:
    file = path.name
    for line, raw in numbered(open_lines(path), builder, file):
        parts = raw.split()
        if len(parts) != 4:
            if not parts:
                builder.skip(file, line, "empty line", "empty line")
            else:
                builder.skip(file, line, "not 4 fields", f"expected 4 tab-separated fields (user item rating timestamp), got {len(parts)}: {raw[:120]!r}")
            continue
        yield line, [p.decode("latin-1") for p in parts]


def _ml100k_genres(path: Path, builder: Builder) -> tuple[str, ...]:
    """Genre names by flag position: from u.genre (``name|index`` lines), else the standard 19."""
    if not path.is_file():
        return ML100K_GENRES
    names: dict[int, str] = {}
    for text in decode_lines(open_lines(path), builder, path.name):
        text = text.strip()
        if not text:
            continue
        name, _, index = text.rpartition("|")
        if not name or not _INTEGER.fullmatch(index):
            raise DatasetError(f"{path}: expected lines 'name|index', got {text[:80]!r}")
        names[int(index)] = name
    if sorted(names) != list(range(len(names))) or not names:
        raise DatasetError(f"{path}: genre indexes must run 0..n-1, got {sorted(names)}")
    return tuple(names[i] for i in range(len(names)))


def _u_item_rows(path: Path, builder: Builder, genres: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """u.item rows as (line, [id, title, "genre|genre|..."]), the flags turned into names."""
    file = path.name
    n = len(genres)
    width = 5 + n
    for line, text in numbered(decode_lines(open_lines(path), builder, file), builder, file):
        text = text.rstrip("\r\n")
        if not text.strip():
            builder.skip(file, line, "empty line", "empty line")
            continue
        parts = text.split("|")
        if len(parts) < width:
            builder.skip(file, line, f"not {width} fields", f"expected {width} '|'-separated fields, got {len(parts)}: {text[:120]!r}")
            continue
        flags = parts[-n:]
        if any(f not in ("0", "1") for f in flags):
            builder.skip(file, line, "genre flag is not 0 or 1", f"genre flags must be 0 or 1, got {'|'.join(flags)!r}")
            continue
        title = "|".join(parts[1 : len(parts) - n - 3])  # a title holding '|' keeps it
        yield line, [parts[0], title, "|".join(g for g, f in zip(genres, flags) if f == "1")]


# --------------------------------------------------------------------------- mapping


class _Reader:
    def __init__(self, builder: Builder, positive_threshold: float) -> None:
        self.b = builder
        self.threshold = positive_threshold
        self.pending_tags: list[tuple[int, str, str, str, int]] = []  # (line, user, movie, tag, ts_ms)
        self.tags_file = ""
        self.wanted: set[tuple[str, str]] = set()  # (user, movie) pairs that have a tag
        self.rated: dict[tuple[str, str], tuple[int, int, float]] = {}  # pair -> (ts_ms, line, rating)

    def movies(self, rows: Iterator[tuple[int, list[str]]], file: str) -> None:
        b = self.b
        for line, (movie, title, genres) in rows:
            movie = movie.strip()
            names = genres.split("|") if genres else []
            cats = unique(g.strip() for g in names if g.strip() not in _NO_GENRE)
            b.add_item(movie, title, "", cats, file=file, line=line)

    def _ts(self, text: str, file: str, line: int) -> int | None:
        """Epoch seconds (text) as milliseconds, or None after skipping the row."""
        if text.isdigit() and text.isascii():
            ts_ms = int(text) * 1000
            if ts_ms <= self.b.max_ts:
                return ts_ms
        else:
            text = text.strip()
            if not _INTEGER.fullmatch(text):
                self.b.skip(file, line, "timestamp is not an integer", f"timestamp {text!r} is not an integer (epoch seconds)")
                return None
            ts_ms = int(text) * 1000
        return ts_ms if self.b.millis(ts_ms, file, line, shown=text) else None

    def _ids(self, user: str, movie: str, file: str, line: int) -> tuple[str, str] | None:
        b = self.b
        user_id = b.ident(user.strip(), file, line, "user id")
        if user_id is None:
            return None
        movie_id = b.ident(movie.strip(), file, line, "movie id")
        return None if movie_id is None else (user_id, movie_id)

    def tags(self, rows: Iterator[tuple[int, list[str]]], file: str) -> None:
        self.tags_file = file
        for line, (user, movie, tag, ts_text) in rows:
            ids = self._ids(user, movie, file, line)
            if ids is None:
                continue
            ts_ms = self._ts(ts_text, file, line)
            if ts_ms is None:
                continue
            self.pending_tags.append((line, ids[0], ids[1], tag, ts_ms))
            self.wanted.add(ids)

    def ratings(self, rows: Iterator[tuple[int, list[str]]], file: str) -> None:
        b, threshold, wanted, rated = self.b, self.threshold, self.wanted, self.rated
        first_ts, event, ids_of, ts_of = b.first_ts, b.event, self._ids, self._ts
        for line, (user, movie, rating_text, ts_text) in rows:
            ids = ids_of(user, movie, file, line)
            if ids is None:
                continue
            try:
                rating = float(rating_text)
            except ValueError:
                b.skip(file, line, "rating is not a number", f"rating {rating_text!r} is not a number")
                continue
            if not 0.5 <= rating <= 5.0:  # also false for nan
                b.skip(file, line, "rating is outside 0.5..5", f"rating {rating_text!r} is outside 0.5..5")
                continue
            ts_ms = ts_of(ts_text, file, line)
            if ts_ms is None:
                continue
            user, movie = ids
            first = first_ts.get(movie)
            if first is None or ts_ms < first:
                first_ts[movie] = ts_ms
            event(Click(user, movie, ts_ms, f"ml-r-{line}"), _RATINGS, line)
            if rating >= threshold:
                event(Purchase(user, movie, ts_ms, f"ml-p-{line}"), _RATINGS, line)
            if ids in wanted:
                before = rated.get(ids)
                if before is None or (ts_ms, line) > before[:2]:
                    rated[ids] = (ts_ms, line, rating)

    def emit_tags(self) -> None:
        b, file = self.b, self.tags_file
        for line, user, movie, tag, ts_ms in self.pending_tags:
            found = self.rated.get((user, movie))
            if found is None:
                rating = NEUTRAL_RATING
                b.adjust(f"{file}: tag by a user who did not rate the movie: review rating {NEUTRAL_RATING:g} (neutral)")
            else:
                rating = found[2]
                if rating < 1.0:
                    b.adjust(f"{file}: review rating {rating:g} (from the user's rating) raised to 1")
                    rating = 1.0
            b.seen(movie, ts_ms)
            text = trim(tag, MAX_TEXT_CHARS, b, "review text")
            b.event(Review(user, movie, rating, text, ts_ms, f"ml-t-{line}"), _TAGS, line)
        self.pending_tags = []
        self.rated = {}
