"""``recstream subscribe``: tail the recommendations topic, for people or for programs.

Human-readable output names items by title (read from the catalog table's changelog,
kept up to date while tailing), with scores and the ``because`` item; ``--json`` prints
one recommendation record per line, exactly as it is on the topic.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO, cast

from kafka import KafkaConsumer, TopicPartition

from . import topics as T
from .client import reader, tail
from .config import KafkaSettings
from .records import Recommendation, ValidationError, decode_recommendation
from .state import decode_item


class Titles:
    """Item id → title, from the catalog table's changelog, refreshed on every call to :meth:`refresh`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.titles: dict[str, str] = {}
        self.consumer: KafkaConsumer | None = None
        topic = settings.changelog(T.ITEMS_TABLE)
        consumer = reader(settings)
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            consumer.close()
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        self.consumer = consumer
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            self.refresh(500)

    def refresh(self, timeout_ms: int = 0) -> None:
        if self.consumer is None:
            return
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                item_id = record.key.decode(errors="replace")
                if record.value is None:
                    self.titles.pop(item_id, None)
                else:
                    self.titles[item_id] = decode_item(item_id, record.value).title

    def __call__(self, item_id: str | None) -> str:
        if item_id is None:
            return "-"
        return self.titles.get(item_id, item_id)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


def format_recommendation(rec: Recommendation, title: Callable[[str | None], str]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(rec.emitted_ts / 1000))
    lag = rec.emitted_ts - rec.event_ts
    head = (
        f"{when}  {rec.user_id}  after {rec.trigger.topic}@{rec.trigger.partition}:{rec.trigger.offset}"
        f"{' (' + rec.trigger.event_id + ')' if rec.trigger.event_id else ''}  [{rec.model}, {lag} ms after the event]"
    )
    lines = [head]
    for rank, item in enumerate(rec.items, 1):
        because = f"  because: {title(item.because)}" if item.because else ""
        lines.append(f"  {rank:2}. {title(item.item_id):40} {item.score:7.3f}{because}")
    if not rec.items:
        lines.append("  (no items: empty catalog)")
    return "\n".join(lines)


def subscribe(
    settings: KafkaSettings,
    *,
    from_beginning: bool = False,
    user: str | None = None,
    as_json: bool = False,
    limit: int | None = None,
    idle_exit_s: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print recommendations until Ctrl-C, ``limit`` records, or ``idle_exit_s`` without any."""
    topic = settings.topic(T.RECOMMENDATIONS)
    try:
        consumer = tail(settings, topic, from_beginning=from_beginning, key=None if user is None else user.encode())
    except ValueError as exc:
        print(f"recstream subscribe: {exc}", file=sys.stderr)
        return 1
    titles = None
    try:
        if not as_json:
            titles = Titles(settings)
        shown, last_seen = 0, time.monotonic()
        while limit is None or shown < limit:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if idle_exit_s is not None and time.monotonic() - last_seen > idle_exit_s:
                    break
                continue
            last_seen = time.monotonic()
            if titles is not None:
                titles.refresh()
            for records in batch.values():
                for record in records:
                    if user is not None and record.key != user.encode():
                        continue
                    if as_json:
                        out.write(record.value.decode() + "\n")
                    else:
                        try:
                            rec = decode_recommendation(record.value)
                        except ValidationError as exc:
                            out.write(f"(unreadable record at {record.topic}@{record.partition}:{record.offset}: {exc})\n")
                            continue
                        out.write(format_recommendation(rec, cast(Titles, titles)) + "\n")  # set unless as_json
                    out.flush()
                    shown += 1
                    if limit is not None and shown >= limit:
                        break
                if limit is not None and shown >= limit:
                    break
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if titles is not None:
            titles.close()
        consumer.close()
