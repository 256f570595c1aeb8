"""The demo's data: a hand-written 50-item catalog and a *generated* event stream.

The catalog (``catalog.jsonl``) holds ten items in each of five clearly distinct topics
(science fiction, Italian cooking, vegetable gardening, jazz records, trail running).
The event stream is generated, not observed: each demo user has one taste, clicks and
buys items of that topic, and one of them writes a 1-star review.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import orjson

from ..records import Click, Event, Item, Purchase, Review


def load_catalog(ts: int = 0) -> list[Item]:
    """The built-in catalog, every item stamped with ``ts``."""
    text = resources.files(__package__).joinpath("catalog.jsonl").read_text(encoding="utf-8")
    items = []
    for line in text.splitlines():
        if line.strip():
            d = orjson.loads(line)
            items.append(Item(d["item_id"], d["title"], d["description"], tuple(d["categories"]), ts))
    return items


def topic_of(item_id: str) -> str:
    """The demo topic of a built-in item (``scifi-03`` → ``scifi``)."""
    return item_id.rsplit("-", 1)[0]


@dataclass(frozen=True, slots=True)
class DemoUser:
    user_id: str
    taste: str


DEMO_USERS = (
    DemoUser("alice", "scifi"),
    DemoUser("bruno", "cooking"),
    DemoUser("chen", "garden"),
    DemoUser("dana", "jazz"),
    DemoUser("emeka", "running"),
)


def generate_events(
    catalog: Sequence[Item],
    users: Sequence[DemoUser] = DEMO_USERS,
    *,
    events_per_user: int = 4,
    start_ts: int = 0,
    seed: int = 7,
) -> list[Event]:
    """A generated, interleaved stream: per user, clicks on their topic, then a purchase.

    The last user also reviews one of their items with 1 star ("not for me").
    Event ids are ``demo-<n>``; timestamps rise by one second per event.
    """
    rng = random.Random(seed)
    by_topic: dict[str, list[Item]] = {}
    for item in catalog:
        by_topic.setdefault(topic_of(item.item_id), []).append(item)
    plans: list[list[tuple[str, Item]]] = []
    for user in users:
        picks = rng.sample(by_topic[user.taste], k=min(events_per_user, len(by_topic[user.taste])))
        plan = [("click", item) for item in picks[:-1]] + [("purchase", picks[-1])]
        plans.append(plan)
    if users:
        # the last user dislikes one item of another topic: the review pushes that topic away
        other = next(t for t in by_topic if t != users[-1].taste)
        plans[-1].insert(1, ("review", by_topic[other][0]))
    events: list[Event] = []
    ts = start_ts
    for step in range(max(len(p) for p in plans) if plans else 0):
        for user, plan in zip(users, plans):
            if step >= len(plan):
                continue
            kind, item = plan[step]
            event_id = f"demo-{len(events) + 1}"
            ts += 1000
            if kind == "click":
                events.append(Click(user.user_id, item.item_id, ts, event_id))
            elif kind == "purchase":
                events.append(Purchase(user.user_id, item.item_id, ts, event_id, quantity=1))
            else:
                events.append(Review(user.user_id, item.item_id, 1.0, "Not for me at all, boring and badly made.", ts, event_id))
    return events
