"""The record types every layer shares, and the constants that go with them.

Pure code with no imports from this repository and none of Kafka: the catalog item, the
three user events, a recommended item and the recommendation record that carries a list of
them.  :mod:`scoring`, :mod:`encoders` and :mod:`streams` all import from here (the bottom
of the layers); :mod:`streams.records` re-exports every name with the wire contract
(validation, decoding, encoding) that it enforces on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias

__all__ = [
    "DAY_MS",
    "EVENT_TOPICS",
    "KIND_RANK",
    "KIND_TOPICS",
    "SCHEMA_VERSION",
    "Click",
    "Event",
    "Item",
    "Purchase",
    "RecItem",
    "Recommendation",
    "Review",
    "Trigger",
]

SCHEMA_VERSION: Final = 1
#: Logical kinds of the user-event topics (before any deployment prefix).
EVENT_TOPICS: Final = ("clicks", "purchases", "reviews")
#: Ties at one time: a click before a purchase before a review (as MovieLens' rating = click
#: + purchase is produced).
KIND_RANK: Final = {"click": 0, "purchase": 1, "review": 2}
#: Event kind -> the (logical) topic it is produced to.
KIND_TOPICS: Final = dict(zip(KIND_RANK, EVENT_TOPICS))
#: Milliseconds in a day (timestamps are epoch milliseconds).
DAY_MS: Final = 24 * 3600 * 1000


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog entry on the compacted ``items`` topic (key = item_id)."""

    item_id: str
    title: str
    description: str = ""
    categories: tuple[str, ...] = ()
    ts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "description": self.description,
            "categories": list(self.categories),
            "ts": self.ts,
        }


@dataclass(frozen=True, slots=True)
class Click:
    """A user clicked (viewed) an item. Topic ``clicks``, key = user_id."""

    kind: ClassVar[str] = "click"
    user_id: str
    item_id: str
    ts: int
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none({"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts, "event_id": self.event_id})


@dataclass(frozen=True, slots=True)
class Purchase:
    """A user bought an item. Topic ``purchases``, key = user_id."""

    kind: ClassVar[str] = "purchase"
    user_id: str
    item_id: str
    ts: int
    event_id: str | None = None
    quantity: int | None = None
    price: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(
            {
                "user_id": self.user_id,
                "item_id": self.item_id,
                "ts": self.ts,
                "event_id": self.event_id,
                "quantity": self.quantity,
                "price": self.price,
            }
        )


@dataclass(frozen=True, slots=True)
class Review:
    """A user rated (1 to 5) and reviewed an item. Topic ``reviews``, key = user_id."""

    kind: ClassVar[str] = "review"
    user_id: str
    item_id: str
    rating: float
    text: str
    ts: int
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(
            {
                "user_id": self.user_id,
                "item_id": self.item_id,
                "rating": self.rating,
                "text": self.text,
                "ts": self.ts,
                "event_id": self.event_id,
            }
        )


Event: TypeAlias = Click | Purchase | Review


class RecItem(NamedTuple):
    """One recommended item; ``because`` is the history item that most explains it, if any.

    An immutable named tuple ``(item_id, score, because)`` (the worker builds ``k`` of them
    per event; a tuple is built several times faster than a frozen dataclass).
    """

    item_id: str
    score: float
    because: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "score": self.score, "because": self.because}


@dataclass(frozen=True, slots=True)
class Trigger:
    """The input record a recommendation answers (its real topic name, with any prefix).

    ``received_ts`` is when the worker received it (epoch ms, the worker's clock; ``None``
    when not known): ``emitted_ts - received_ts`` is the time the event spent in the worker.
    """

    topic: str
    partition: int
    offset: int
    event_id: str | None
    received_ts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
        }
        if self.received_ts is not None:
            out["received_ts"] = self.received_ts
        return out


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A ranked list for one user on ``recommendations`` (key = user_id)."""

    user_id: str
    items: list[RecItem]
    trigger: Trigger
    event_ts: int
    emitted_ts: int
    model: str
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "user_id": self.user_id,
            "items": [item.to_dict() for item in self.items],
            "trigger": self.trigger.to_dict(),
            "event_ts": self.event_ts,
            "emitted_ts": self.emitted_ts,
            "model": self.model,
        }
