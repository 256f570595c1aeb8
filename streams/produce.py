"""``recstream produce``: public datasets (and recstream JSON lines) onto the topics.

The catalog goes first, then the events in event-time order (the dataset's deterministic
order), each Kafka record stamped with its event time. Pacing: as fast as possible, at a
fixed rate (``--rate`` events/s), or at X times the original pace (``--speedup``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from kafka.errors import KafkaError
from tqdm import tqdm

from . import topics as T
from .client import producer, send_records
from .config import KafkaSettings
from .sources import Dataset


def parse_time(text: str) -> int:
    """``YYYY-MM-DD`` or an ISO date-time (UTC unless it says otherwise) → epoch ms."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def format_time(ms: int) -> str:
    """Epoch ms as :func:`parse_time` reads it back: ``YYYY-MM-DD`` at midnight UTC, else an
    ISO date-time in UTC."""
    value = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return value.strftime("%Y-%m-%d") if value == value.replace(hour=0, minute=0, second=0, microsecond=0) else value.isoformat()


@dataclass(slots=True)
class Pacer:
    """Sleeps so that events go out at ``rate`` per second or ``speedup`` × their original pace."""

    rate: float | None = None
    speedup: float | None = None
    _start: float = 0.0
    _first_ts: int | None = None
    _sent: int = 0

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("give --rate or --speedup, not both")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate: must be positive, got {self.rate}")
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError(f"speedup: must be positive, got {self.speedup}")

    def wait(self, ts: int) -> None:
        now = time.monotonic()
        if self._first_ts is None:
            self._start, self._first_ts = now, ts
        if self.rate is not None:
            due = self._start + self._sent / self.rate
        elif self.speedup is not None:
            due = self._start + (ts - self._first_ts) / 1000.0 / self.speedup
        else:
            due = now
        self._sent += 1
        if due > now:
            time.sleep(due - now)


def produce_dataset(
    settings: KafkaSettings,
    dataset: Dataset,
    *,
    partitions: int = T.DEFAULT_PARTITIONS,
    catalog: bool = True,
    pacer: Pacer | None = None,
    show_progress: bool = True,
) -> dict[str, int]:
    """Send the catalog and the events; returns counts. Raises on a delivery failure."""
    T.ensure_topics(settings, T.topic_specs(settings, partitions=partitions))
    pacer = pacer or Pacer()
    failures: list[BaseException] = []
    prod = producer(settings, linger_ms=20, batch_size=256 * 1024)

    def sent(records, label: str, paced: bool) -> int:
        n = 0
        with tqdm(total=len(records), desc=label, unit="rec", file=sys.stderr, disable=not show_progress) as bar:
            for record in records:
                if paced:
                    pacer.wait(record.ts)
                for future in send_records(prod, settings, [record]):
                    future.add_errback(failures.append)
                n += 1
                bar.update(1)
                if failures:
                    raise RuntimeError(f"Kafka refused a record: {failures[0]}")
        return n

    try:
        counts = {"items": sent(dataset.catalog, "catalog", paced=False) if catalog else 0}
        prod.flush()
        counts["events"] = sent(dataset.events, "events", paced=True)
        prod.flush()
    except KafkaError as exc:
        raise RuntimeError(f"producing to {settings.broker} failed: {exc}") from exc
    finally:
        prod.close()
    if failures:
        raise RuntimeError(f"Kafka refused {len(failures)} records, the first: {failures[0]}")
    return counts
