"""`recstream produce` -> `recstream backtest` on a slice of ml-latest-small, against the
real broker, checked against the offline computation of the same protocol on the same slice.

The slice (three months of 2017: every rating and tag in it, and the movies they touch) is
written in MovieLens' own CSV format from ``../shared/datasets/ml-latest-small``, so the
produce step runs the real parser.  The replay runs on one partition: the worker's
processing order is then the order of the recommendations topic, and the offline engine
is run in that order (``run_offline(order=...)``; see :func:`scoring.backtest.held_before`
for why a worker's order can differ from event time).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from recstream.encoders.text import TextEncoder
from recstream.scoring.backtest import BacktestConfig, run_offline
from recstream.scoring.blend import DEFAULT_WEIGHTS
from recstream.scoring.engine import EngineConfig
from recstream.streams import topics as T
from recstream.streams.backtest import read_replay
from recstream.streams.cli import main
from recstream.streams.app import WorkerConfig  # the worker's defaults: the blend adapts its weights
from recstream.streams.config import KafkaSettings
from recstream.streams.produce import parse_time
from recstream.streams.sources import load_dataset

pytestmark = pytest.mark.integration

ML_SMALL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-latest-small"
FROM, TO, SPLIT = "2017-01-01", "2017-04-01", "2017-03-01"


def write_slice(source: Path, target: Path, start_ms: int, end_ms: int) -> int:
    """MovieLens CSVs holding the ratings and tags of [start_ms, end_ms) and their movies."""
    target.mkdir()

    def rows(name: str) -> tuple[list[str], list[dict[str, str]]]:
        with open(source / name, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def write(name: str, fields: list[str], kept: list[dict[str, str]]) -> None:
        with open(target / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)

    movies: set[str] = set()
    n_ratings = 0
    for name in ("ratings.csv", "tags.csv"):
        fields, all_rows = rows(name)
        kept = [r for r in all_rows if start_ms <= int(r["timestamp"]) * 1000 < end_ms]
        movies.update(r["movieId"] for r in kept)
        write(name, fields, kept)
        n_ratings = n_ratings or len(kept)
    fields, all_movies = rows("movies.csv")
    write("movies.csv", fields, [m for m in all_movies if m["movieId"] in movies])
    return n_ratings


@pytest.mark.skipif(not ML_SMALL.is_dir(), reason=f"no {ML_SMALL} (the shared datasets)")
def test_backtest_of_a_movielens_slice_equals_the_offline_protocol(kafka_settings, tmp_path):
    start, end, split = parse_time(FROM), parse_time(TO), parse_time(SPLIT)
    sliced = tmp_path / "ml-slice"
    assert write_slice(ML_SMALL, sliced, start, end) > 500
    common = ["--broker", kafka_settings.broker, "--topic-prefix", kafka_settings.topic_prefix]
    assert main(["produce", str(sliced), *common, "--partitions", "1"]) == 0

    out_json, out_html = tmp_path / "bt.json", tmp_path / "bt.html"
    assert main(["backtest", *common, "--split", SPLIT, "--json-file", str(out_json), "--html-file", str(out_html)]) == 0
    doc = json.loads(out_json.read_text())
    replay = KafkaSettings(broker=kafka_settings.broker, topic_prefix=doc["replay_prefix"])
    try:
        contents = read_replay(replay)
    finally:
        T.delete_topics(replay, list(T.list_topics(replay)))

    dataset = load_dataset(sliced)
    assert len(contents.events) == len(dataset.events) and len(contents.recommendations) == len(dataset.events)
    assert contents.catalog_ids == {item.item_id for item in dataset.catalog}
    order = [r.trigger.event_id for r in contents.recommendations]  # one partition: the processing order
    config = BacktestConfig(split_ms=split, ks=(5, 10, 20))
    offline = run_offline(
        dataset.events,
        dataset.catalog,
        config,
        encoder=TextEncoder(),
        engine_config=EngineConfig(k=20, emit="per-event", blend=DEFAULT_WEIGHTS, adapt=WorkerConfig().adapt_config),
        order=order,
    )

    assert doc["counts"] == offline.counts
    assert offline.counts["cases"] > 200
    assert set(doc["methods"]) == {"recstream", "popularity", "item-knn"}
    for method, result in offline.methods.items():
        reported = doc["methods"][method]["metrics"]
        for key, value in result.metrics.flat().items():
            assert reported[key] == pytest.approx(value, abs=1e-9), (method, key)
        assert doc["methods"][method]["coverage"] == json.loads(json.dumps(offline.coverage(method)))

    # the worker's own latency is measured for every event, and the report shows it
    assert doc["latency_ms"]["count"] == len(dataset.events) and doc["latency_ms"]["p50"] >= 0
    html = out_html.read_text()
    for method in doc["methods"]:
        assert method in html
    assert "<svg" in html and "Latency" in html
