"""A CSV of your own interactions (and a catalog CSV) read with a column mapping
(streams/sources/csvfile.py): the mapping, the time formats, the kinds, mapping errors in
one line naming the column, bad rows counted with their line numbers; and ``produce``,
``tune``, ``train`` and ``backtest --dataset`` taking the flags."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from recstream.streams.cli import build_parser, main
from recstream.streams.records import Click, Purchase, Review
from recstream.streams.sources import CsvMapping, DatasetError, load_dataset
from recstream.streams.sources.csvfile import parse_time

NOW = 1_800_000_000_000  # 2027-01-15
T = 1_700_000_000  # 2023-11-14T22:13:20Z, epoch seconds


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def mapping(columns: str | None = None, catalog: Path | None = None, catalog_columns: str | None = None) -> CsvMapping:
    return CsvMapping.parse(columns, catalog, catalog_columns)


def test_columns_are_mapped_and_times_kinds_and_ratings_read(tmp_path: Path) -> None:
    events = write_csv(
        tmp_path / "export.csv",
        ["customer", "sku", "when", "stars", "what", "comment", "id"],
        [
            ["c1", "p1", T, "", "view", "", ""],  # unknown kind: skipped
            ["c1", "p1", T, "", "click", "", "e-1"],  # epoch seconds
            ["c1", "p2", T * 1000 + 5, "", "Purchases", "", ""],  # epoch ms, plural, any case
            ["c2", "p2", "2023-11-15", "5", "review", "Great", "e-3"],  # ISO date: midnight UTC
            ["c2", "p3", "2023-11-15T10:00:00Z", "", "CLICK", "", ""],  # ISO date-time
        ],
    )
    items = write_csv(
        tmp_path / "items.csv",
        ["sku", "name", "about", "tags"],
        [
            ["p1", "Desk lamp", "A lamp for the desk", "home|lighting"],
            ["p2", "Chair", "", "home; furniture;home"],
        ],
    )
    ds = load_dataset(
        events,
        csv=mapping(
            "user=customer,item=sku,ts=when,rating=stars,kind=what,text=comment,event_id=id", items, "item=sku,title=name,description=about,categories=tags"
        ),
        now_ms=NOW,
    )
    assert ds.format == "csv" and ds.name == "export"
    assert ds.events == [
        Click("c1", "p1", T * 1000, "e-1"),
        Purchase("c1", "p2", T * 1000 + 5, "csv-4"),
        Review("c2", "p2", 5.0, "Great", 1_700_006_400_000, "e-3"),
        Click("c2", "p3", 1_700_042_400_000, "csv-6"),
    ]
    assert [(i.item_id, i.title, i.description, i.categories, i.ts) for i in ds.catalog] == [
        ("p1", "Desk lamp", "A lamp for the desk", ("home", "lighting"), T * 1000),
        ("p2", "Chair", "", ("home", "furniture"), T * 1000 + 5),
    ]
    assert ds.stats.skipped == {"export.csv: unknown kind": 1}
    assert ds.stats.skipped_examples["export.csv: unknown kind"] == ["export.csv line 2: kind 'view' is not click, purchase or review"]
    assert ds.stats.missing_from_catalog == ["p3"]
    assert ds.stats.rows_read == {"items.csv": 2, "export.csv": 5}


def test_without_a_kind_column_a_rating_at_the_threshold_is_also_a_purchase(tmp_path: Path) -> None:
    # the contract's column names need no mapping; as MovieLens: a click per row, a purchase at >= threshold
    events = write_csv(
        tmp_path / "ratings.tsv",
        ["user_id", "item_id", "ts", "rating"],
        [["u1", "i1", T, "4"], ["u1", "i2", T + 1, "3.5"], ["u2", "i1", T + 2, ""]],
        delimiter="\t",
    )
    ds = load_dataset(events, fmt="csv", now_ms=NOW)
    assert ds.events == [
        Click("u1", "i1", T * 1000, "csv-2"),
        Purchase("u1", "i1", T * 1000, "csv-2-p"),
        Click("u1", "i2", (T + 1) * 1000, "csv-3"),
        Click("u2", "i1", (T + 2) * 1000, "csv-4"),
    ]
    assert load_dataset(events, fmt="csv", now_ms=NOW, positive_threshold=3.5).stats.events["purchase"] == 2
    assert load_dataset(events, now_ms=NOW).format == "csv"  # a .csv/.tsv file is detected


def test_a_bad_row_is_counted_with_its_line_number_never_dropped_silently(tmp_path: Path) -> None:
    events = write_csv(
        tmp_path / "events.csv",
        ["user_id", "item_id", "ts", "kind", "rating"],
        [
            ["u1", "i1", T, "click", ""],
            ["u1", "i1", "yesterday", "click", ""],  # line 3
            ["", "i1", T, "click", ""],  # line 4
            ["u1", "i1", T, "review", ""],  # line 5
            ["u1", "i1", T, "review", "7"],  # line 6
            ["u1", "i1", T, "click", "many"],  # line 7
            ["u1", "i1", -5, "click", ""],  # line 8
            ["u1", "i1", T * 10, "click", ""],  # line 9: ms, 2509: in the future
            ["u1", "i1", T],  # line 10
        ],
    )
    ds = load_dataset(events, now_ms=NOW)
    assert len(ds.events) == 1
    assert ds.stats.skipped == {
        "events.csv: ts is not a time": 1,
        "events.csv: user id is empty": 1,
        "events.csv: review without a rating": 1,
        "events.csv: review rating is outside 1..5": 1,
        "events.csv: rating is not a number": 1,
        "events.csv: ts is negative": 1,
        "events.csv: ts is in the future": 1,
        "events.csv: not 5 fields": 1,
    }
    lines = {reason: examples[0].split(":")[0] for reason, examples in ds.stats.skipped_examples.items()}
    assert lines == {
        "events.csv: ts is not a time": "events.csv line 3",
        "events.csv: user id is empty": "events.csv line 4",
        "events.csv: review without a rating": "events.csv line 5",
        "events.csv: review rating is outside 1..5": "events.csv line 6",
        "events.csv: rating is not a number": "events.csv line 7",
        "events.csv: ts is negative": "events.csv line 8",
        "events.csv: ts is in the future": "events.csv line 9",
        "events.csv: not 5 fields": "events.csv line 10",
    }
    assert ds.stats.rows_read == {"events.csv": 9}
    assert any("skipped 8 rows" in line for line in ds.stats.summary())


@pytest.mark.parametrize(
    ("columns", "catalog_columns", "message"),
    [
        ("user=customer", None, r"events\.csv: --columns maps user to column 'customer', which the header lacks \(it has: uid, item_id, ts\)$"),
        (None, None, r"events\.csv: --columns does not map user and the header has no 'user_id' column \(it has: uid, item_id, ts\); add user=COLUMN$"),
        ("user=uid", "title=name", r"items\.csv: --catalog-columns maps title to column 'name', which the header lacks \(it has: item_id, label\)$"),
        ("user=uid", "", r"items\.csv: --catalog-columns maps neither title nor description .* \(it has: item_id, label\); an item needs a text$"),
    ],
)
def test_a_column_mapping_error_is_one_line_naming_the_column(tmp_path: Path, columns, catalog_columns, message) -> None:
    events = write_csv(tmp_path / "events.csv", ["uid", "item_id", "ts"], [["u1", "i1", T]])
    catalog = write_csv(tmp_path / "items.csv", ["item_id", "label"], [["i1", "x"]]) if catalog_columns is not None else None
    with pytest.raises(DatasetError, match=message) as exc:
        load_dataset(events, csv=mapping(columns, catalog, catalog_columns or None), now_ms=NOW)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("usr=uid", "--columns: unknown field 'usr'; the fields are user, item, ts, rating, kind, text, event_id"),
        ("user", "--columns: expected field=column, got 'user'"),
        ("user=a,user=b", "--columns: user is mapped twice"),
    ],
)
def test_a_mapping_that_does_not_parse_says_why(columns: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        CsvMapping.parse(columns)
    assert str(exc.value) == message


def test_iso_and_epoch_times() -> None:
    assert parse_time("1700000000") == 1_700_000_000_000
    assert parse_time("1700000000.25") == 1_700_000_000_250
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2024-03-01") == 1_709_251_200_000
    assert parse_time("2024-03-01T02:00:00+02:00") == 1_709_251_200_000
    assert parse_time("2024-03-01 00:00:00.5Z") == 1_709_251_200_500
    assert parse_time("last week") is None and parse_time("nan") is None


def test_the_commands_take_the_flags_and_report_errors_in_one_line(tmp_path: Path, capsys) -> None:
    events = write_csv(tmp_path / "events.csv", ["uid", "item_id", "ts"], [["u1", "i1", T], ["u1", "i2", "bad"]])
    parser = build_parser()
    for argv in (
        ["produce", "x.csv"],
        ["tune", "--dataset", "x.csv"],
        ["train", "--dataset", "x.csv", "--validation-from", "2024-01-01", "-o", "c"],
        ["backtest", "--dataset", "x.csv", "--split", "2024-01-01"],
    ):
        args = parser.parse_args([*argv, "--columns", "user=uid", "--catalog-csv", "i.csv", "--catalog-columns", "title=t"])
        assert (args.columns, args.catalog_csv, args.catalog_columns) == ("user=uid", "i.csv", "title=t")

    assert main(["produce", str(events), "--columns", "user=uid", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "made 0 items, 1 clicks" in err and "events.csv line 3: ts 'bad' is neither" in err

    for argv, line, status in (
        (
            ["produce", str(events), "--columns", "user=customer", "--dry-run"],
            f"recstream: error: {events}: --columns maps user to column 'customer', which the header lacks (it has: uid, item_id, ts)\n",
            1,
        ),
        (
            ["produce", str(events), "--format", "jsonl", "--columns", "user=uid", "--dry-run"],
            "recstream: error: a CSV column mapping (--columns, --catalog-csv) reads the csv format, not 'jsonl'\n",
            1,
        ),
        # a settings error, of produce as of tune, train and backtest (exit status 2)
        (["produce", str(events), "--columns", "user", "--dry-run"], "recstream: error: --columns: expected field=column, got 'user'\n", 2),
        (["tune", "--columns", "user=uid"], "recstream: error: --columns, --catalog-csv and --catalog-columns describe a CSV given with --dataset\n", 2),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == status
        assert capsys.readouterr().err.endswith(line)


def test_backtest_dataset_reads_a_csv_export_as_it_reads_the_same_movielens_folder(tmp_path: Path, monkeypatch) -> None:
    """End to end through ``backtest --dataset``: ratings written as a MovieLens folder and
    as a CSV export (other column names, ISO times, a catalog CSV) backtest to the same figures."""
    import random
    from datetime import datetime, timezone

    import orjson

    monkeypatch.chdir(tmp_path)  # the embeddings' cache
    rng = random.Random(3)
    movies = [(m + 1, f"Movie number {m} ({1980 + m})", ["Comedy", "Drama", "Horror", "Sci-Fi"][m % 4]) for m in range(20)]
    ratings = []
    for u in range(30):
        t = T + rng.randint(0, 10 * 86400)
        for _ in range(5):
            a = 2 * rng.randrange(10)
            for m in (a, a + 1):  # whoever rates movie 2j rates 2j + 1 next
                t += rng.randint(3600, 2 * 86400)
                ratings.append((u + 1, m + 1, rng.choice([3.0, 4.0, 5.0]), t))
    ratings.sort(key=lambda r: r[3])
    ml = tmp_path / "ml"
    ml.mkdir()
    write_csv(ml / "movies.csv", ["movieId", "title", "genres"], movies)
    write_csv(ml / "ratings.csv", ["userId", "movieId", "rating", "timestamp"], ratings)
    export = write_csv(
        tmp_path / "export.csv",
        ["customer", "product", "at", "stars"],
        [[u, m, datetime.fromtimestamp(t, timezone.utc).isoformat(), r] for u, m, r, t in ratings],
    )
    catalog = write_csv(tmp_path / "products.csv", ["product", "name", "genres"], movies)
    split = datetime.fromtimestamp(ratings[int(len(ratings) * 0.8)][3], timezone.utc).strftime("%Y-%m-%d")

    common = ["--split", split, "--methods", "blend", "--ks", "10"]
    assert main(["backtest", "--dataset", str(ml), *common, "--json-file", "ml.json"]) == 0
    assert (
        main(
            [
                "backtest",
                "--dataset",
                str(export),
                *common,
                "--json-file",
                "csv.json",
                "--columns",
                "user=customer,item=product,ts=at,rating=stars",
                "--catalog-csv",
                str(catalog),
                "--catalog-columns",
                "item=product,title=name,categories=genres",
            ]
        )
        == 0
    )
    ml_doc, csv_doc = orjson.loads(Path("ml.json").read_bytes()), orjson.loads(Path("csv.json").read_bytes())
    assert csv_doc["dataset"] == str(export)
    assert csv_doc["counts"] == ml_doc["counts"] and csv_doc["counts"]["cases"] > 10
    assert csv_doc["methods"] == ml_doc["methods"]
