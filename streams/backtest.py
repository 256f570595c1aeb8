"""``recstream backtest``: replay a time range, then score what the pipeline recommended.

The replay (:mod:`streams.replay`) runs an isolated worker with per-event emission; this
module reads the replayed catalog, events and recommendation records back from Kafka and
hands them to the pure protocol in :mod:`scoring.backtest`, which also runs the baselines
on exactly the same test cases.
"""

from __future__ import annotations

from dataclasses import dataclass


from scoring.backtest import BacktestConfig, BacktestResult, evaluate_records

from . import topics as T
from .client import read_topic, reader
from .config import KafkaSettings
from .records import Item, ItemDeleted, Recommendation, ValidationError, decode_recommendation, parse_event, parse_item


@dataclass(slots=True)
class ReplayContents:
    catalog_ids: set[str]
    events: list
    recommendations: list[Recommendation]
    invalid: int


def read_replay(settings: KafkaSettings) -> ReplayContents:
    """The catalog ids, valid events and recommendation records of a (finished) replay namespace."""
    consumer = reader(settings)
    try:
        catalog: set[str] = set()
        invalid = 0
        for r in read_topic(consumer, settings.topic(T.ITEMS)):
            try:
                item = parse_item(r.key, r.value)
            except ValidationError:
                invalid += 1
                continue
            if isinstance(item, ItemDeleted):
                catalog.discard(item.item_id)
            elif isinstance(item, Item):
                catalog.add(item.item_id)
        events = []
        for logical in T.EVENT_TOPICS:
            for r in read_topic(consumer, settings.topic(logical)):
                try:
                    events.append(parse_event(logical, r.key, r.value))
                except ValidationError:
                    invalid += 1
        recs = [decode_recommendation(r.value) for r in read_topic(consumer, settings.topic(T.RECOMMENDATIONS))]
        return ReplayContents(catalog, events, recs, invalid)
    finally:
        consumer.close()


def backtest_replay(
    settings: KafkaSettings,
    config: BacktestConfig,
    *,
    exclude_seen: bool = True,
    history_len: int = 50,
) -> tuple[BacktestResult, ReplayContents]:
    contents = read_replay(settings)
    missing_ids = [e for e in contents.events if e.event_id is None]
    if missing_ids:
        raise ValueError(f"{len(missing_ids)} replayed events have no event_id: the backtest pairs events with recommendations by it")
    result = evaluate_records(contents.events, contents.recommendations, contents.catalog_ids, config,
                              exclude_seen=exclude_seen, history_len=history_len)
    return result, contents
