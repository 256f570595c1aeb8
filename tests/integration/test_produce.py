"""`recstream produce` against the real broker: a dataset in, contract records out."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer

from recstream.streams import topics as T
from recstream.streams.cli import main
from recstream.streams.records import parse_event, parse_item

pytestmark = pytest.mark.integration

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,Jumanji (1995),Adventure|Children|Fantasy
3,Heat (1995),Action|Crime|Thriller
"""
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,2.5,964981247
2,2,5.0,964982224
2,1,3.0,964983815
3,3,4.5,964982931
"""
TAGS = """userId,movieId,tag,timestamp
2,2,fun for kids,964982300
"""


def _read(settings, logical: str, n: int):
    consumer = KafkaConsumer(
        settings.topic(logical),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= n:
                break
    finally:
        consumer.close()
    return records


def test_produce_movielens_catalog_then_events_in_event_time(kafka_settings, tmp_path):
    (tmp_path / "movies.csv").write_text(MOVIES)
    (tmp_path / "ratings.csv").write_text(RATINGS)
    (tmp_path / "tags.csv").write_text(TAGS)
    assert main(["produce", str(tmp_path), "--broker", kafka_settings.broker, "--topic-prefix", kafka_settings.topic_prefix, "--partitions", "1"]) == 0

    items = _read(kafka_settings, T.ITEMS, 3)
    assert sorted(r.key for r in items) == [b"1", b"2", b"3"]
    parsed = {r.key: parse_item(r.key, r.value) for r in items}
    assert parsed[b"3"].title == "Heat (1995)" and parsed[b"3"].categories == ("Action", "Crime", "Thriller")

    clicks = _read(kafka_settings, T.CLICKS, 5)
    purchases = _read(kafka_settings, T.PURCHASES, 3)
    reviews = _read(kafka_settings, T.REVIEWS, 1)
    events = [parse_event("clicks", r.key, r.value) for r in clicks]
    assert len(events) == 5 and all(r.key.decode() == e.user_id for r, e in zip(clicks, events))
    # one partition: the log is in event-time order, and Kafka timestamps are event times
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert [r.timestamp for r in clicks] == [e.ts for e in events]
    assert events[0].ts == 964981247 * 1000
    # ratings >= 4 are also purchases
    assert sorted((e.user_id, e.item_id) for e in (parse_event("purchases", r.key, r.value) for r in purchases)) == [("1", "1"), ("2", "2"), ("3", "3")]
    review = parse_event("reviews", reviews[0].key, reviews[0].value)
    assert (review.user_id, review.item_id, review.text, review.rating) == ("2", "2", "fun for kids", 5.0)


def test_produce_reports_a_folder_that_holds_no_dataset(kafka_settings, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SystemExit) as exit_info:
        main(["produce", str(tmp_path), "--broker", kafka_settings.broker, "--topic-prefix", kafka_settings.topic_prefix])
    assert exit_info.value.code == 1
    assert "expected one of" in capsys.readouterr().err
    assert kafka_settings.topic(T.CLICKS) not in T.list_topics(kafka_settings)
