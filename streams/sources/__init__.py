"""Public datasets (and recstream JSON lines) read into contract records.

Pure data code, no Kafka I/O: :func:`load_dataset` reads a dataset folder (or file) and
returns a :class:`Dataset` whose ``catalog`` (:class:`~streams.records.Item`) and ``events``
(:class:`~streams.records.Click`, :class:`~streams.records.Purchase`,
:class:`~streams.records.Review`, in time order) all pass the contract's validation, plus
``stats`` saying what was read, made, skipped (with precise reasons), filtered and adjusted.

Formats (``fmt``; ``"auto"`` detects from the files present):

==================  =============================================================
``movielens-csv``   ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m: ratings.csv + movies.csv (+ tags.csv)
``ml-1m``           ml-1m, ml-10m: ratings.dat + movies.dat (+ tags.dat), ``::``-separated
``ml-100k``         u.data + u.item (+ u.genre)
``amazon-2018``     Amazon Review Data 2018: ``<Cat>.json(.gz)`` / ``<Cat>_5.json(.gz)`` + ``meta_<Cat>.json(.gz)``
``amazon-2023``     Amazon Reviews 2023: ``<Cat>.jsonl(.gz)`` + ``meta_<Cat>.jsonl(.gz)``
``jsonl``           recstream JSON lines: ``*.jsonl(.gz)`` objects with a ``"topic"`` field
``csv``             your own export: one CSV (``.csv``, ``.tsv``, ``.gz``) of interactions with a
                    column mapping (``csv=CsvMapping``), optionally a catalog CSV
==================  =============================================================

Aliases: ``movielens`` (any MovieLens layout), ``ml-latest``, ``ml-latest-small``, ``ml-20m``,
``ml-25m``, ``ml-32m``, ``ml-10m``, ``amazon`` (either release, by field names), ``recstream``,
``tsv``. The mappings are described in :mod:`.movielens`, :mod:`.amazon`, :mod:`.jsonl` and
:mod:`.csvfile`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from ..records import DEFAULT_MAX_FUTURE_MS
from . import amazon, csvfile, jsonl, movielens
from .base import KIND_TOPICS, Builder, Dataset, DatasetError, DatasetStats, Event, Progress
from .csvfile import CsvMapping

__all__ = [
    "FORMATS",
    "CsvMapping",
    "KIND_TOPICS",
    "Dataset",
    "DatasetError",
    "DatasetStats",
    "Event",
    "Progress",
    "detect_format",
    "load_dataset",
]

FORMATS: Final = ("movielens-csv", "ml-1m", "ml-100k", "amazon-2018", "amazon-2023", "jsonl", "csv")
_ALIASES: Final = {
    "auto": "auto",
    "movielens": "movielens",
    "ml-latest": "movielens-csv",
    "ml-latest-small": "movielens-csv",
    "ml-20m": "movielens-csv",
    "ml-25m": "movielens-csv",
    "ml-32m": "movielens-csv",
    "ml-10m": "ml-1m",
    "amazon": "amazon",
    "recstream": "jsonl",
    "tsv": "csv",
    **{f: f for f in FORMATS},
}
_EXPECTED: Final = (
    "expected one of: ratings.csv + movies.csv (MovieLens ml-latest/ml-25m/ml-32m), "
    "ratings.dat + movies.dat (ml-1m), u.data + u.item (ml-100k), "
    "an Amazon review file <Category>.json(l)(.gz) with meta_<Category>.json(l)(.gz), "
    'recstream *.jsonl files whose objects have a "topic" field, '
    "or a CSV of interactions (.csv, .tsv: --format csv, with --columns)"
)


def load_dataset(
    path: str | Path,
    *,
    fmt: str = "auto",
    positive_threshold: float = 4.0,
    start_ms: int | None = None,
    end_ms: int | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    now_ms: int | None = None,
    csv: CsvMapping | None = None,
) -> Dataset:
    """Read the dataset at ``path`` (a folder, or one of its files) into contract records.

    * ``fmt``: one of :data:`FORMATS`, an alias (see the module doc) or ``"auto"``.
    * ``positive_threshold``: a MovieLens rating at or above it is also a purchase.
    * ``start_ms`` (inclusive) / ``end_ms`` (exclusive): keep events in this time window;
      ``limit``: keep only the first ``limit`` events of the final order. Events left out
      are counted in ``stats.filtered``, not as errors; the catalog is always complete.
    * ``progress``: called now and then with the number of rows read *since the previous
      call* (an increment, so ``tqdm(...).update`` can be passed as is).
    * ``now_ms``: the clock that bounds timestamps (default: now); a row more than a day in
      the future is skipped, as the contract would reject it.
    * ``csv``: the column mapping (and catalog file) of a CSV of interactions
      (:class:`~.csvfile.CsvMapping`); implies ``fmt="csv"``.

    Raises :class:`DatasetError` when the path holds no known dataset or a file it needs is
    missing or unreadable; ``ValueError`` for a bad argument. Rows that cannot be used are
    never an exception: they are skipped and counted in ``stats.skipped``.
    """
    canonical = _canonical(fmt)
    if csv is not None:
        if canonical not in ("auto", "csv"):
            raise ValueError(f"a CSV column mapping (--columns, --catalog-csv) reads the csv format, not {fmt!r}")
        canonical = "csv"
    if isinstance(positive_threshold, bool) or not isinstance(positive_threshold, (int, float)) or not math.isfinite(positive_threshold):
        raise ValueError(f"positive_threshold must be a finite number, got {positive_threshold!r}")
    builder = Builder(start_ms=start_ms, end_ms=end_ms, limit=limit, progress=progress, now_ms=now_ms, max_future_ms=DEFAULT_MAX_FUTURE_MS)
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    plan = _plan(root, canonical)
    if plan.format in movielens.LAYOUTS:
        movielens.load(plan.files[0], plan.format, builder, positive_threshold=positive_threshold)
    elif plan.format in ("amazon-2018", "amazon-2023"):
        reviews, meta = plan.files
        amazon.load(reviews, meta, plan.format.removeprefix("amazon-"), builder)
    elif plan.format == "csv":
        csvfile.load(plan.files[0], csv or CsvMapping(), builder, positive_threshold=positive_threshold)
    else:
        jsonl.load(list(plan.files), builder)
    return builder.finish(plan.name, plan.format, root)


def detect_format(path: str | Path) -> str:
    """The format :func:`load_dataset` would read ``path`` as (one of :data:`FORMATS`)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    return _plan(root, "auto").format


def _canonical(fmt: str) -> str:
    canonical = _ALIASES.get(fmt.strip().lower()) if isinstance(fmt, str) else None
    if canonical is None:
        raise ValueError(
            f"fmt must be 'auto', one of {', '.join(FORMATS)} or an alias ({', '.join(sorted(set(_ALIASES) - set(FORMATS) - {'auto'}))}), got {fmt!r}"
        )
    return canonical


@dataclass(frozen=True)
class _Plan:
    """What to read: ``files`` is (folder,) for MovieLens, (reviews, metadata) for Amazon,
    the files in order for recstream JSON lines."""

    format: str
    files: tuple[Path, ...]
    name: str


def _plan(root: Path, fmt: str) -> _Plan:
    if fmt == "csv":
        if not root.is_file():
            raise DatasetError(f"{root}: the csv format reads one file of interactions; give its path, not a folder")
        return _Plan("csv", (root,), _stem(root))
    if root.is_file():
        return _plan_file(root, fmt)
    folder, name = root, root.name
    if fmt in movielens.LAYOUTS:
        return _Plan(fmt, (folder,), name)
    if fmt in ("auto", "movielens"):
        layout = movielens.detect(folder)
        if layout is not None:
            return _Plan(layout, (folder,), name)
        if fmt == "movielens":
            raise DatasetError(
                f"{folder}: no MovieLens ratings file; expected ratings.csv + movies.csv (ml-latest, ml-25m, ml-32m), "
                "ratings.dat + movies.dat (ml-1m) or u.data + u.item (ml-100k)"
            )
    files = sorted(p for p in folder.iterdir() if amazon.is_json_file(p))
    metas = [p for p in files if p.name.startswith("meta_")]
    others = [p for p in files if not p.name.startswith("meta_")]
    firsts = {p: amazon.peek(p) for p in others}
    if fmt == "jsonl" or (fmt == "auto" and not metas and any(o and "topic" in o for o in firsts.values())):
        chosen = [p for p in others if (firsts[p] and "topic" in cast("dict[str, object]", firsts[p])) or (firsts[p] is None and ".jsonl" in p.name)]
        if not chosen:
            raise DatasetError(f'{folder}: no recstream JSON-lines file (*.jsonl objects with a "topic" field)')
        return _Plan("jsonl", tuple(chosen), name)
    reviews = [p for p in others if amazon.review_year(firsts[p]) is not None]
    if not reviews and fmt in ("amazon-2018", "amazon-2023") and len(others) == 1:
        reviews = others  # the release is given; its first line need not tell
    if fmt == "auto" and not metas and not reviews:
        names = sorted(p.name for p in folder.iterdir())
        found = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") if names else "nothing"
        raise DatasetError(f"{folder}: not a dataset this reader knows ({_EXPECTED}); found: {found}")
    if not reviews:
        raise DatasetError(
            f"{folder}: found {', '.join(p.name for p in metas) or 'no metadata file'} but no Amazon review file "
            "(<Category>.json.gz or <Category>_5.json.gz for 2018, <Category>.jsonl.gz for 2023, "
            "one review object a line)"
        )
    if len(reviews) > 1:
        raise DatasetError(f"{folder}: several Amazon review files ({', '.join(p.name for p in reviews)}); give the path of the one to read")
    return _plan_amazon(reviews[0], fmt, firsts[reviews[0]], metas, name)


def _plan_file(path: Path, fmt: str) -> _Plan:
    folder = path.parent
    for layout, (ratings, movies, tags) in movielens.LAYOUTS.items():
        if path.name in (ratings, movies, tags) and fmt in ("auto", "movielens", layout):
            return _Plan(layout, (folder,), folder.name)
    if fmt == "auto" and csvfile.is_csv_file(path):
        return _Plan("csv", (path,), _stem(path))
    if not amazon.is_json_file(path):
        raise DatasetError(f"{path}: not a dataset file this reader knows ({_EXPECTED})")
    stem = _stem(path)
    if path.name.startswith("meta_"):
        raise DatasetError(f"{path}: is an Amazon metadata file; give the review file ({stem}.json(l).gz) or the folder")
    first = amazon.peek(path)
    if fmt == "jsonl" or (fmt == "auto" and first is not None and "topic" in first):
        return _Plan("jsonl", (path,), stem)
    if fmt in ("auto", "amazon", "amazon-2018", "amazon-2023"):
        metas = sorted(p for p in folder.iterdir() if amazon.is_json_file(p) and p.name.startswith("meta_"))
        return _plan_amazon(path, fmt, first, metas, stem)
    raise DatasetError(f"{path}: a single {path.suffix} file cannot be read as {fmt}")


def _stem(path: Path) -> str:
    stem = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv"):
        stem = stem.removesuffix(suffix)
    return stem


def _plan_amazon(reviews: Path, fmt: str, first: dict[str, object] | None, metas: list[Path], name: str) -> _Plan:
    year = fmt.removeprefix("amazon-") if fmt in ("amazon-2018", "amazon-2023") else amazon.review_year(first)
    if year is None:
        raise DatasetError(
            f"{reviews}: not an Amazon review file: expected objects with reviewerID/asin/overall/unixReviewTime (2018) "
            "or user_id/parent_asin/rating/timestamp (2023)"
        )
    category = amazon.category_of(reviews)
    same = [p for p in metas if amazon.category_of(p) == category]
    meta = same[0] if same else metas[0] if len(metas) == 1 else None
    if meta is None:
        ext = ".json.gz" if year == "2018" else ".jsonl.gz"
        raise DatasetError(
            f"{reviews}: no metadata file beside it; expected meta_{category}{ext}" + (f" (found {', '.join(p.name for p in metas)})" if metas else "")
        )
    id_field = "asin" if year == "2018" else "parent_asin"
    meta_first = amazon.peek(meta)
    if meta_first is not None and id_field not in meta_first:
        raise DatasetError(f"{meta}: the first object has no {id_field!r}: not Amazon {year} metadata")
    return _Plan(f"amazon-{year}", (reviews, meta), name)
