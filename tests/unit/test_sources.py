"""Dataset readers (streams.sources): MovieLens, Amazon 2018/2023, recstream JSON lines.

Small inputs written here give exact catalogs, events, skips and adjustments; the public
datasets in ../shared/datasets (when present) give the published counts. Every record a
reader makes must pass the contract's own validation.
"""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path

import pytest

from recstream.streams.records import (
    MAX_TEXT_CHARS,
    Click,
    Item,
    Purchase,
    Review,
    encode,
    parse_event,
    parse_item,
    record_key,
)
from recstream.streams.sources import (
    FORMATS,
    Dataset,
    DatasetError,
    detect_format,
    load_dataset,
)
from recstream.streams.sources.base import clean_text

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
ML_SMALL = DATASETS / "ml-latest-small"
GIFT_CARDS = DATASETS / "amazon-2018-gift-cards"

_KIND_RANK = {"click": 0, "purchase": 1, "review": 2}
_TOPIC = {"click": "clicks", "purchase": "purchases", "review": "reviews"}


def assert_valid(ds: Dataset) -> None:
    """Every record passes the contract's validation and comes back equal; events are ordered."""
    for item in ds.catalog:
        assert parse_item(record_key(item), encode(item)) == item
    for event in ds.events:
        assert parse_event(_TOPIC[event.kind], record_key(event), encode(event)) == event
    keys = [(e.ts, e.user_id, e.item_id, _KIND_RANK[e.kind]) for e in ds.events]
    assert keys == sorted(keys)
    assert ds.stats.items == len(ds.catalog)
    assert ds.stats.events_total == len(ds.events)
    for kind, n in ds.stats.events.items():
        assert n == sum(1 for e in ds.events if e.kind == kind)


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def jsonl_text(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# --------------------------------------------------------------------------- MovieLens CSV

ML_MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children
2,"American President, The (1995)",Comedy|Drama|Romance
3,Empty Genres (2000),(no genres listed)
1,Duplicate Toy Story,Comedy
4,,Drama
5,Too Few Fields
"""
ML_RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,3.5,964981247
2,1,0.5,964982224
2,3,5.0,964982224
3,9,4.5,964980000
3,1,x,964982703
3,2,7,964982703
3,3,4.0,later
3,3,4.0
,1,4.0,964982703
"""
ML_TAGS = """userId,movieId,tag,timestamp
1,1,pixar,964982800
2,1,"too long, boring",964982900
2,2,classic,964983000
"""


@pytest.fixture
def ml_csv(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(folder / "movies.csv", ML_MOVIES)
    write(folder / "ratings.csv", ML_RATINGS)
    write(folder / "tags.csv", ML_TAGS)
    write(folder / "links.csv", "movieId,imdbId,tmdbId\n1,0114709,862\n")
    return folder


def test_movielens_csv_exact(ml_csv: Path) -> None:
    ds = load_dataset(ml_csv)
    assert (ds.name, ds.format, ds.path) == ("ml-latest-small", "movielens-csv", ml_csv)
    assert ds.catalog == [
        Item("1", "Toy Story (1995)", "", ("Adventure", "Animation", "Children"), 964982224000),
        Item("2", "American President, The (1995)", "", ("Comedy", "Drama", "Romance"), 964981247000),
        Item("3", "Empty Genres (2000)", "", (), 964982224000),
    ]
    assert ds.events == [
        Click("3", "9", 964980000000, "ml-r-6"),
        Purchase("3", "9", 964980000000, "ml-p-6"),
        Click("1", "2", 964981247000, "ml-r-3"),
        Click("2", "1", 964982224000, "ml-r-4"),
        Click("2", "3", 964982224000, "ml-r-5"),
        Purchase("2", "3", 964982224000, "ml-p-5"),
        Click("1", "1", 964982703000, "ml-r-2"),
        Purchase("1", "1", 964982703000, "ml-p-2"),
        Review("1", "1", 4.0, "pixar", 964982800000, "ml-t-2"),
        Review("2", "1", 1.0, "too long, boring", 964982900000, "ml-t-3"),  # rated 0.5 -> 1
        Review("2", "2", 3.0, "classic", 964983000000, "ml-t-4"),  # not rated -> neutral
    ]
    st = ds.stats
    assert st.rows_read == {"movies.csv": 6, "tags.csv": 3, "ratings.csv": 10}
    assert st.events == {"click": 5, "purchase": 3, "review": 3}
    assert st.skipped == {
        "movies.csv: duplicate item id (the first entry is kept)": 1,
        "movies.csv: item has no title and no description": 1,
        "movies.csv: not 3 fields": 1,
        "ratings.csv: rating is not a number": 1,
        "ratings.csv: rating is outside 0.5..5": 1,
        "ratings.csv: timestamp is not an integer": 1,
        "ratings.csv: not 4 fields": 1,
        "ratings.csv: user id is empty": 1,
    }
    assert st.skipped_examples["ratings.csv: rating is not a number"] == ["ratings.csv line 7: rating 'x' is not a number"]
    assert st.skipped_examples["ratings.csv: rating is outside 0.5..5"] == ["ratings.csv line 8: rating '7' is outside 0.5..5"]
    assert st.skipped_examples["ratings.csv: timestamp is not an integer"] == ["ratings.csv line 9: timestamp 'later' is not an integer (epoch seconds)"]
    assert st.skipped_examples["movies.csv: duplicate item id (the first entry is kept)"] == ["movies.csv line 5: item '1' appears again"]
    assert st.skipped_examples["movies.csv: not 3 fields"] == ["movies.csv line 7: expected 3 fields (movieId,title,genres), got 2: '5,Too Few Fields'"]
    assert st.adjusted == {
        "tags.csv: review rating 0.5 (from the user's rating) raised to 1": 1,
        "tags.csv: tag by a user who did not rate the movie: review rating 3 (neutral)": 1,
    }
    assert st.filtered == {}
    assert st.missing_from_catalog == ["9"]
    assert st.skipped_total == 8 and st.rows_total == 19
    assert any("skipped 8 rows" in line for line in st.summary())
    assert_valid(ds)


def test_movielens_positive_threshold_and_without_tags(ml_csv: Path) -> None:
    (ml_csv / "tags.csv").unlink()
    ds = load_dataset(ml_csv, positive_threshold=4.5)
    assert [e.event_id for e in ds.events if isinstance(e, Purchase)] == ["ml-p-6", "ml-p-5"]
    assert ds.stats.events == {"click": 5, "purchase": 2, "review": 0}
    assert "tags.csv" not in ds.stats.rows_read
    assert_valid(ds)


def test_movielens_time_window_and_limit(ml_csv: Path) -> None:
    full = load_dataset(ml_csv)
    window = load_dataset(ml_csv, start_ms=964981247000, end_ms=964982800000)
    assert window.events == [e for e in full.events if 964981247000 <= e.ts < 964982800000]
    assert window.stats.filtered == {"before start_ms": 2, "at or after end_ms": 3}
    assert window.catalog == full.catalog  # the catalog does not depend on the window
    assert window.stats.skipped == full.stats.skipped
    limited = load_dataset(ml_csv, limit=4)
    assert limited.events == full.events[:4]
    assert limited.stats.filtered == {"beyond limit": len(full.events) - 4}
    assert load_dataset(ml_csv, limit=0).events == []
    with pytest.raises(ValueError, match="limit"):
        load_dataset(ml_csv, limit=-1)
    with pytest.raises(ValueError, match="start_ms"):
        load_dataset(ml_csv, start_ms=10, end_ms=5)


def test_limit_keeps_the_earliest_events_of_a_large_file(tmp_path: Path) -> None:
    """The limit buffer is cut many times while reading; the result is still the prefix."""
    rows = ["userId,movieId,rating,timestamp"]
    rows += [f"{u},{m},{(u * 7 + m) % 10 / 2 + 0.5},{1_000_000_000 - (u * 131 + m * 17) % 50_000}" for u in range(60) for m in range(500)]
    write(tmp_path / "ratings.csv", "\n".join(rows) + "\n")
    write(tmp_path / "movies.csv", "movieId,title,genres\n1,One,Drama\n")
    full = load_dataset(tmp_path)
    limited = load_dataset(tmp_path, limit=1000)
    assert len(full.events) > 30_000
    assert limited.events == full.events[:1000]
    assert limited.stats.filtered == {"beyond limit": len(full.events) - 1000}


def test_progress_reports_every_row(ml_csv: Path) -> None:
    calls: list[int] = []
    ds = load_dataset(ml_csv, progress=calls.append)
    assert sum(calls) == ds.stats.rows_total == 19
    assert all(n > 0 for n in calls)


def test_future_and_negative_timestamps_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "movies.csv", "movieId,title,genres\n1,One,Drama\n")
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,100\n1,1,4,1800000000\n1,1,4,-5\n")
    ds = load_dataset(tmp_path, now_ms=1_700_000_000_000)
    assert [e.event_id for e in ds.events] == ["ml-r-2", "ml-p-2"]
    assert ds.stats.skipped == {"ratings.csv: timestamp is in the future": 1, "ratings.csv: timestamp is negative": 1}
    assert ds.stats.skipped_examples["ratings.csv: timestamp is negative"] == ["ratings.csv line 4: timestamp -5 is negative"]


def test_movielens_header_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,100\n")
    with pytest.raises(DatasetError, match=r"movies\.csv not found.*ml-latest"):
        load_dataset(tmp_path)
    write(tmp_path / "movies.csv", "id,name,genres\n1,One,Drama\n")
    with pytest.raises(DatasetError, match=r"lacks movieId, title"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"ratings\.dat and movies\.dat not found"):
        load_dataset(tmp_path, fmt="ml-1m")


# --------------------------------------------------------------------------- MovieLens ml-1m, ml-100k


def test_ml_1m_latin1(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    write(
        folder / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama|War\n3::Odd::Title (1999)::Comedy\n".encode("latin-1"),
    )
    write(folder / "ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n2::2::4\n")
    write(folder / "users.dat", "1::F::1::10::48067\n")
    assert detect_format(folder) == "ml-1m"
    ds = load_dataset(folder)
    assert ds.format == "ml-1m"
    assert ds.catalog == [
        Item("1", "Toy Story (1995)", "", ("Animation", "Children's", "Comedy"), 978300760000),
        Item("2", "Misérables, Les (1995)", "", ("Drama", "War"), 978301968000),
        Item("3", "Odd::Title (1999)", "", ("Comedy",), 0),
    ]
    assert ds.events == [
        Click("1", "1", 978300760000, "ml-r-1"),
        Purchase("1", "1", 978300760000, "ml-p-1"),
        Click("2", "2", 978301968000, "ml-r-3"),
        Purchase("2", "2", 978301968000, "ml-p-3"),
        Click("1", "2", 978302109000, "ml-r-2"),
    ]
    assert ds.stats.rows_read == {"movies.dat": 3, "ratings.dat": 4}
    assert ds.stats.skipped == {"ratings.dat: not 4 fields": 1}
    assert ds.stats.skipped_examples["ratings.dat: not 4 fields"] == ["ratings.dat line 4: expected 4 fields separated by '::', got 3: '2::2::4'"]
    assert ds.stats.adjusted == {"movies.dat: line not UTF-8, read as Latin-1": 1}
    assert_valid(ds)


def test_ml_10m_tags_dat(tmp_path: Path) -> None:
    write(tmp_path / "movies.dat", "1::Toy Story (1995)::(no genres listed)\n")
    write(tmp_path / "ratings.dat", "5::1::4.5::1000\n")
    write(tmp_path / "tags.dat", "5::1::a::b tag::2000\n6::1::neutral::3000\n")
    ds = load_dataset(tmp_path, fmt="ml-10m")
    assert ds.catalog == [Item("1", "Toy Story (1995)", "", (), 1000000)]
    assert ds.events == [
        Click("5", "1", 1000000, "ml-r-1"),
        Purchase("5", "1", 1000000, "ml-p-1"),
        Review("5", "1", 4.5, "a::b tag", 2000000, "ml-t-1"),
        Review("6", "1", 3.0, "neutral", 3000000, "ml-t-2"),
    ]
    assert_valid(ds)


def test_id_rules(tmp_path: Path) -> None:
    write(tmp_path / "movies.csv", f"movieId,title,genres\n1,One,Drama\n{'9' * 300},Long id,Drama\n")
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\nu\x01,1,4,100\n2,1,4,100\n")
    ds = load_dataset(tmp_path)
    assert [i.item_id for i in ds.catalog] == ["1"]
    assert [e.user_id for e in ds.events] == ["2", "2"]
    assert ds.stats.skipped == {
        "movies.csv: item id is too long": 1,
        "ratings.csv: user id contains a control character": 1,
    }
    assert ds.stats.skipped_examples["ratings.csv: user id contains a control character"] == [
        "ratings.csv line 2: user id 'u\\x01' contains the control character U+0001"
    ]
    assert_valid(ds)


ML100K_GENRE = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\nDrama|8\n"
    "Fantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\n"
    "Western|18\n\n"
)


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_ml_100k(tmp_path: Path, with_genre_file: bool) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(
        folder / "u.item",
        (
            "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
            "2|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0\n"
            "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
            "5|Bad Flags|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|2|0|0|0|0|0|0|0|0|1|0\n"
        ).encode("latin-1"),
    )
    write(folder / "u.data", "1\t1\t5\t874965758\n2\t2\t4\t876893171\n3\t1\t2\t878542960\n")
    if with_genre_file:
        write(folder / "u.genre", ML100K_GENRE)
    assert detect_format(folder) == "ml-100k"
    ds = load_dataset(folder)
    assert ds.catalog == [
        Item("1", "Toy Story (1995)", "", ("Animation", "Children's", "Comedy"), 874965758000),
        Item("2", "Misérables, Les (1995)", "", ("Drama", "War"), 876893171000),
        Item("267", "unknown", "", (), 0),  # the "unknown" genre means none
    ]
    assert ds.events == [
        Click("1", "1", 874965758000, "ml-r-1"),
        Purchase("1", "1", 874965758000, "ml-p-1"),
        Click("2", "2", 876893171000, "ml-r-2"),
        Purchase("2", "2", 876893171000, "ml-p-2"),
        Click("3", "1", 878542960000, "ml-r-3"),
    ]
    assert ds.stats.skipped == {"u.item: genre flag is not 0 or 1": 1}
    assert ds.stats.rows_read == {"u.item": 4, "u.data": 3}
    assert_valid(ds)


# --------------------------------------------------------------------------- Amazon 2018

A18_REVIEWS = jsonl_text(
    {"overall": 5.0, "verified": True, "reviewerID": "U1", "asin": "A1", "reviewText": "Great <br />gift &amp; fast",
     "summary": "Five Stars", "unixReviewTime": 1529193600, "reviewTime": "06 17, 2018"},
    {"overall": 4.0, "verified": False, "reviewerID": "U2", "asin": "A2", "summary": "Nice!", "unixReviewTime": 1528934400},
    {"overall": 3.0, "verified": True, "reviewerID": "U3", "asin": "A9", "reviewText": "ok", "summary": "Fine.",
     "unixReviewTime": 1528934400},
    {"overall": 7.0, "verified": True, "reviewerID": "U3", "asin": "A1", "unixReviewTime": 1528934400},
    "not json",
    {"overall": 5.0, "verified": True, "asin": "A1", "reviewText": "x", "unixReviewTime": 1},
    {"overall": 2.0, "verified": True, "reviewerID": "U1", "asin": "A2", "summary": "", "reviewText": "",
     "reviewTime": "06 14, 2018"},
    {"overall": 5.0, "verified": True, "reviewerID": "U4", "asin": "A1", "summary": "Long",
     "reviewText": "a" * 25_000, "unixReviewTime": 1529280000},
)  # fmt: skip
A18_META = jsonl_text(
    {"asin": "A1", "title": " Maggiano&#39;s Gift Card",
     "description": ['<div class="aplus"> <br>Good for <a href="x">dinner</a>.<br/></div>', "Second paragraph &amp; more"],
     "category": ["Gift Cards", "Gift Cards", "</span></span></span>"],
     "main_cat": '<img src="x.png" class="nav-categ-image" alt="AMAZON FASHION"/>', "price": "$25.00"},
    "{'asin': 'A2', 'title': 'Second card', 'description': 'A plain string description', 'category': ['Gift Cards'], "
    "'main_cat': 'Gift Cards', 'price': None}",
    {"asin": "A1", "title": "dup"},
    {"asin": "A3", "title": "", "description": []},
    {"asin": "A4", "title": "", "description": ["Only a description"], "category": []},
    "{'asin': __import__('os').system('echo pwned')}",
)  # fmt: skip


@pytest.fixture
def amazon_2018(tmp_path: Path) -> Path:
    folder = tmp_path / "gift-cards"
    folder.mkdir()
    write(folder / "Gift_Cards_5.json.gz", A18_REVIEWS)
    write(folder / "meta_Gift_Cards.json.gz", A18_META)
    return folder


def test_amazon_2018_exact(amazon_2018: Path) -> None:
    assert detect_format(amazon_2018) == "amazon-2018"
    ds = load_dataset(amazon_2018)
    assert (ds.name, ds.format) == ("gift-cards", "amazon-2018")
    assert ds.catalog == [
        Item("A1", "Maggiano's Gift Card", "Good for dinner.\nSecond paragraph & more", ("Gift Cards", "AMAZON FASHION"), 1529193600000),
        Item("A2", "Second card", "A plain string description", ("Gift Cards",), 1528934400000),
        Item("A4", "", "Only a description", (), 0),
    ]
    long_text = ("Long. " + "a" * 25_000)[:MAX_TEXT_CHARS]
    assert ds.events == [
        Purchase("U1", "A2", 1528934400000, "amz-p-7"),
        Review("U1", "A2", 2.0, "", 1528934400000, "amz-r-7"),
        Review("U2", "A2", 4.0, "Nice!", 1528934400000, "amz-r-2"),
        Purchase("U3", "A9", 1528934400000, "amz-p-3"),
        Review("U3", "A9", 3.0, "Fine. ok", 1528934400000, "amz-r-3"),
        Purchase("U1", "A1", 1529193600000, "amz-p-1"),
        Review("U1", "A1", 5.0, "Five Stars. Great gift & fast", 1529193600000, "amz-r-1"),
        Purchase("U4", "A1", 1529280000000, "amz-p-8"),
        Review("U4", "A1", 5.0, long_text, 1529280000000, "amz-r-8"),
    ]
    st = ds.stats
    assert st.rows_read == {"meta_Gift_Cards.json.gz": 6, "Gift_Cards_5.json.gz": 8}
    assert st.events == {"click": 0, "purchase": 4, "review": 5}
    assert st.skipped == {
        "meta_Gift_Cards.json.gz: duplicate item id (the first entry is kept)": 1,
        "meta_Gift_Cards.json.gz: item has no title and no description": 1,
        "meta_Gift_Cards.json.gz: not a JSON object": 1,
        "Gift_Cards_5.json.gz: overall is outside 1..5": 1,
        "Gift_Cards_5.json.gz: not a JSON object": 1,
        "Gift_Cards_5.json.gz: reviewerID is missing": 1,
    }
    assert st.skipped_examples["Gift_Cards_5.json.gz: overall is outside 1..5"] == ["Gift_Cards_5.json.gz line 4: overall 7.0 is outside 1..5"]
    [unsafe] = st.skipped_examples["meta_Gift_Cards.json.gz: not a JSON object"]
    assert unsafe.startswith("meta_Gift_Cards.json.gz line 6: not valid JSON (") and "neither JSON nor a Python literal" in unsafe
    assert st.adjusted == {
        "meta_Gift_Cards.json.gz: Python-literal line read with ast.literal_eval": 1,
        "Gift_Cards_5.json.gz: unixReviewTime missing, time taken from reviewTime": 1,
        "review text trimmed to 20000 characters": 1,
    }
    assert st.missing_from_catalog == ["A9"]
    assert_valid(ds)


def test_amazon_file_path_and_errors(amazon_2018: Path) -> None:
    ds = load_dataset(amazon_2018 / "Gift_Cards_5.json.gz")
    assert (ds.name, ds.format, len(ds.events)) == ("Gift_Cards_5", "amazon-2018", 9)
    with pytest.raises(DatasetError, match="metadata file; give the review file"):
        load_dataset(amazon_2018 / "meta_Gift_Cards.json.gz")
    write(amazon_2018 / "Gift_Cards.json.gz", A18_REVIEWS)
    with pytest.raises(DatasetError, match="several Amazon review files"):
        load_dataset(amazon_2018)
    (amazon_2018 / "meta_Gift_Cards.json.gz").unlink()
    with pytest.raises(DatasetError, match=r"no metadata file beside it; expected meta_Gift_Cards\.json\.gz"):
        load_dataset(amazon_2018 / "Gift_Cards.json.gz")
    only_meta = amazon_2018 / "only-meta"
    only_meta.mkdir()
    write(only_meta / "meta_Gift_Cards.json.gz", A18_META)
    with pytest.raises(DatasetError, match=r"found meta_Gift_Cards\.json\.gz but no Amazon review file"):
        load_dataset(only_meta)


# --------------------------------------------------------------------------- Amazon 2023


def test_amazon_2023(tmp_path: Path) -> None:
    write(
        tmp_path / "All_Beauty.jsonl",
        jsonl_text(
            {"rating": 5.0, "title": "Such a lovely scent", "text": "This spray is really nice.<br />Smells great",
             "images": [], "asin": "B00YQ6X8EO", "parent_asin": "P1", "user_id": "U1", "timestamp": 1588687728923,
             "helpful_vote": 0, "verified_purchase": True},
            {"rating": 4.0, "title": "", "text": "ok", "asin": "B2", "user_id": "U2", "timestamp": 1588687728000,
             "verified_purchase": False},
            {"rating": 3, "title": "t", "text": "", "asin": "x", "parent_asin": "P2", "user_id": "U1",
             "timestamp": 1588687728.5, "verified_purchase": True},
        ),
    )  # fmt: skip
    write(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        jsonl_text(
            {"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner", "description": [],
             "categories": [], "parent_asin": "P1", "features": ["x"], "price": None},
            {"main_category": "All Beauty", "title": "Other", "description": ["Desc &amp; more"],
             "categories": ["Beauty", "Skin"], "parent_asin": "P2"},
        ),
    )  # fmt: skip
    assert detect_format(tmp_path) == "amazon-2023"
    ds = load_dataset(tmp_path)
    assert ds.catalog == [
        Item("P1", "Howard LC0008 Leather Conditioner", "", ("All Beauty",), 1588687728923),
        Item("P2", "Other", "Desc & more", ("Beauty", "Skin", "All Beauty"), 0),
    ]
    assert ds.events == [
        Review("U2", "B2", 4.0, "ok", 1588687728000, "amz-r-2"),
        Purchase("U1", "P1", 1588687728923, "amz-p-1"),
        Review("U1", "P1", 5.0, "Such a lovely scent. This spray is really nice. Smells great", 1588687728923, "amz-r-1"),
    ]
    assert ds.stats.skipped == {"All_Beauty.jsonl: timestamp is not an integer": 1}
    assert ds.stats.skipped_examples["All_Beauty.jsonl: timestamp is not an integer"] == ["All_Beauty.jsonl line 3: timestamp 1588687728.5 is not an integer"]
    assert ds.stats.missing_from_catalog == ["B2"]
    assert_valid(ds)
    with pytest.raises(DatasetError, match="not Amazon 2018 metadata"):
        load_dataset(tmp_path, fmt="amazon-2018")


# --------------------------------------------------------------------------- recstream JSON lines


def test_jsonl_valid_and_invalid_lines(tmp_path: Path) -> None:
    write(
        tmp_path / "replay.jsonl",
        jsonl_text(
            {"topic": "items", "item_id": "i1", "title": "Dune", "description": "Desert", "categories": ["books"], "ts": 1700000000000},
            {"topic": "clicks", "user_id": "u1", "item_id": "i1", "ts": 1700000000500, "event_id": "c1"},
            {"topic": "purchases", "user_id": "u1", "item_id": "i1", "ts": 1700000000500, "quantity": 2, "price": 9.5},
            {"topic": "reviews", "user_id": "u2", "item_id": "i1", "rating": 4.5, "text": "Great", "ts": 1700000000100, "schema": 1},
            {"topic": "clicks", "user_id": "u1", "item_id": "i1", "ts": "yesterday"},
            {"topic": "reviews", "user_id": "u2", "item_id": "i1", "rating": 6, "text": "x", "ts": 1},
            {"topic": "likes", "user_id": "u1", "item_id": "i1", "ts": 1},
            {"user_id": "u1"},
            "not json",
            "",
            {"topic": "clicks", "user_id": 42, "item_id": "i1", "ts": 1},
            {"topic": "items", "item_id": "i1", "title": "Dune (2nd ed.)", "ts": 1700000001000},
            {"topic": "clicks", "user_id": "u3", "item_id": "i1", "ts": 1, "colour": "red"},
        ),
    )  # fmt: skip
    assert detect_format(tmp_path) == "jsonl"
    ds = load_dataset(tmp_path)
    assert ds.format == "jsonl"
    assert ds.catalog == [
        Item("i1", "Dune", "Desert", ("books",), 1700000000000),
        Item("i1", "Dune (2nd ed.)", "", (), 1700000001000),  # an update, kept in order
    ]
    assert ds.events == [
        Review("u2", "i1", 4.5, "Great", 1700000000100),
        Click("u1", "i1", 1700000000500, "c1"),
        Purchase("u1", "i1", 1700000000500, quantity=2, price=9.5),
    ]
    st = ds.stats
    assert st.skipped == {
        "replay.jsonl: invalid clicks record (ts)": 1,
        "replay.jsonl: invalid reviews record (rating)": 1,
        "replay.jsonl: unknown topic": 1,
        "replay.jsonl: topic is missing": 1,
        "replay.jsonl: not valid JSON": 1,
        "replay.jsonl: empty line": 1,
        "replay.jsonl: invalid clicks record (user_id)": 1,
        "replay.jsonl: invalid clicks record (colour)": 1,
    }
    assert st.skipped_examples["replay.jsonl: invalid clicks record (ts)"] == [
        'replay.jsonl line 5: invalid clicks record: ts: must be an integer (epoch milliseconds), got string "yesterday"'
    ]
    assert st.skipped_examples["replay.jsonl: invalid reviews record (rating)"] == [
        "replay.jsonl line 6: invalid reviews record: rating: must be between 1 and 5, got 6"
    ]
    assert st.skipped_examples["replay.jsonl: unknown topic"] == ["replay.jsonl line 7: topic 'likes' is not one of items, clicks, purchases, reviews"]
    assert st.missing_from_catalog == []
    assert_valid(ds)
    assert load_dataset(tmp_path / "replay.jsonl").events == ds.events


# --------------------------------------------------------------------------- detection and helpers


def test_detection_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"not a dataset this reader knows \(expected one of: ratings\.csv \+ movies\.csv"):
        load_dataset(tmp_path)
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(DatasetError, match="found: notes.txt"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="fmt must be"):
        load_dataset(tmp_path, fmt="netflix")
    with pytest.raises(DatasetError, match="no MovieLens ratings file"):
        load_dataset(tmp_path, fmt="movielens")
    assert "movielens-csv" in FORMATS


def test_format_aliases(ml_csv: Path) -> None:
    for fmt in ("auto", "movielens", "ml-latest-small", "ml-32m", "MovieLens-CSV"):
        assert load_dataset(ml_csv, fmt=fmt).format == "movielens-csv"
    assert load_dataset(ml_csv / "ratings.csv").format == "movielens-csv"


def test_records_pairs(ml_csv: Path) -> None:
    ds = load_dataset(ml_csv)
    pairs = list(ds.records())
    assert [t for t, _ in pairs[:3]] == ["items"] * 3
    assert {t for t, _ in pairs[3:]} == {"clicks", "purchases", "reviews"}
    assert len(pairs) == len(ds.catalog) + len(ds.events)


def test_clean_text() -> None:
    assert clean_text('<div class="aplus"> <br>Box as <a href="http://x">individual cards</a>.<br/>') == "Box as individual cards."
    assert clean_text('<img src="x.png" alt="AMAZON FASHION"/>') == "AMAZON FASHION"
    assert clean_text("</span></span>") == ""
    assert clean_text("a < b and c > d, I <3 it") == "a < b and c > d, I <3 it"
    assert clean_text("<b>Bold</b>face<p>para</p><!-- c --><script>var x = 1;</script>end") == "Boldface para end"
    assert clean_text("&lt;b&gt; AT&amp;T  \n x") == "<b> AT&T x"


# --------------------------------------------------------------------------- the public datasets


@pytest.fixture(scope="module")
def ml_small() -> Dataset:
    if not (ML_SMALL / "ratings.csv").is_file():
        pytest.skip(f"{ML_SMALL} not present")
    return load_dataset(ML_SMALL)


def test_ml_latest_small(ml_small: Dataset) -> None:
    with open(ML_SMALL / "ratings.csv", newline="", encoding="utf-8") as fh:
        ratings = list(csv.DictReader(fh))
    positives = sum(1 for r in ratings if float(r["rating"]) >= 4.0)
    st = ml_small.stats
    assert len(ml_small.catalog) == 9_742
    assert st.events == {"click": 100_836, "purchase": positives, "review": 3_683}
    assert len(ratings) == 100_836
    assert st.rows_read == {"movies.csv": 9_742, "tags.csv": 3_683, "ratings.csv": 100_836}
    assert st.skipped == {} and st.filtered == {}
    assert st.missing_from_catalog == []
    rated_movies = {r["movieId"] for r in ratings}
    assert len(rated_movies) == 9_724
    assert sum(1 for item in ml_small.catalog if item.ts > 0) >= len(rated_movies)


def test_ml_latest_small_records_are_valid(ml_small: Dataset) -> None:
    assert_valid(ml_small)


def test_amazon_gift_cards() -> None:
    if not (GIFT_CARDS / "Gift_Cards_5.json.gz").is_file():
        pytest.skip(f"{GIFT_CARDS} not present")
    with gzip.open(GIFT_CARDS / "Gift_Cards_5.json.gz", "rt", encoding="utf-8") as fh:
        reviews = [json.loads(line) for line in fh]
    verified = sum(1 for r in reviews if r.get("verified") is True)
    started = time.perf_counter()
    ds = load_dataset(GIFT_CARDS)
    assert time.perf_counter() - started < 30
    assert ds.format == "amazon-2018"
    assert ds.stats.events == {"click": 0, "purchase": verified, "review": 2_972}
    assert ds.stats.skipped == {}
    assert ds.stats.missing_from_catalog == []
    assert len(ds.catalog) == 1_547
    for item in ds.catalog:
        text = item.title + item.description + "".join(item.categories)
        assert "<br" not in text and "&#39;" not in text and "</span>" not in text
    assert_valid(ds)
