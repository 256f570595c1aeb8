"""``recstream profile USER``: what the pipeline holds for one user, read from Kafka.

A running worker owns its RocksDB files, so this reads the same state from the topics
that back it: the user's entry in the ``profiles`` changelog, the user's latest record
on the recommendations topic, the adaptive blend weights of the user's partition (the
``blend-weights`` changelog), and item titles from the catalog table's changelog. It
works whether or not a worker runs, from any machine that reaches the cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import TopicPartition

from recstream.encoders.profile import UserProfile
from recstream.scoring.adapt import AdaptFormatError, WeightAdapter

from . import topics as T
from .client import partition_for, read_to_end, read_topic, reader
from .config import KafkaSettings
from .records import Recommendation, decode_recommendation
from .state import decode_item

RECENT_RECOMMENDATIONS_SCAN = 20_000


@dataclass(slots=True)
class UserView:
    user_id: str
    profile: UserProfile | None
    recommendation: Recommendation | None
    titles: dict[str, str]
    #: the user's partition and, when the blend adapts its weights, that partition's state
    partition: int | None = None
    weights: WeightAdapter | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.profile
        return {
            "user_id": self.user_id,
            "profile": None
            if p is None
            else {
                "applied": p.applied,
                "updated_ts": p.updated_ts,
                "ref_ts": p.ref_ts,
                "vector_norm": float(np.linalg.norm(p.vector)),
                "purchased": sorted(p.purchased),
                "offsets": p.offsets,
                "history": [{"item_id": h.item_id, "title": self.titles.get(h.item_id), "ts": h.ts, "kind": h.kind, "rating": h.rating} for h in p.history],
            },
            "partition": self.partition,
            "blend_weights": None
            if self.weights is None
            else {
                **dict(zip(("text", "cooccurrence", "popularity"), map(float, self.weights.weights))),
                "epochs": self.weights.epochs,
            },
            "recommendation": None
            if self.recommendation is None
            else {
                **self.recommendation.to_dict(),
                "titles": {i.item_id: self.titles.get(i.item_id) for i in self.recommendation.items},
            },
        }


def inspect_user(settings: KafkaSettings, user_id: str) -> UserView:
    key = user_id.encode()
    consumer = reader(settings)
    try:
        changelog = settings.changelog(T.PROFILES_TABLE)
        partitions = consumer.partitions_for_topic(changelog)
        if not partitions:
            raise ValueError(f"no profiles changelog {changelog!r} on {settings.broker}: has a worker with app id {settings.app_id!r} run?")
        partition = partition_for(key, len(partitions))
        tp = TopicPartition(changelog, partition)
        raw = None
        for record in read_to_end(consumer, [tp]):
            if record.key == key:
                raw = record.value
        profile = UserProfile.from_bytes(raw) if raw is not None else None

        weights = None
        weights_changelog = settings.changelog(T.WEIGHTS_TABLE)
        if partition in (consumer.partitions_for_topic(weights_changelog) or ()):
            stored = None
            for record in read_to_end(consumer, [TopicPartition(weights_changelog, partition)]):
                if record.key == str(partition).encode():
                    stored = record.value
            try:
                weights = WeightAdapter.from_bytes(stored) if stored is not None else None
            except AdaptFormatError:
                weights = None

        recommendation = None
        recs_topic = settings.topic(T.RECOMMENDATIONS)
        rec_partitions = consumer.partitions_for_topic(recs_topic)
        if rec_partitions:
            rtp = TopicPartition(recs_topic, partition_for(key, len(rec_partitions)))
            end = consumer.end_offsets([rtp])[rtp]
            for record in read_to_end(consumer, [rtp], start=end - RECENT_RECOMMENDATIONS_SCAN):
                if record.key == key:
                    recommendation = decode_recommendation(record.value)

        wanted = set()
        if profile is not None:
            wanted |= {h.item_id for h in profile.history} | profile.purchased
        if recommendation is not None:
            wanted |= {i.item_id for i in recommendation.items} | {i.because for i in recommendation.items if i.because}
        titles: dict[str, str] = {}
        items_changelog = settings.changelog(T.ITEMS_TABLE)
        if wanted:
            for record in read_topic(consumer, items_changelog):
                item_id = record.key.decode()
                if item_id in wanted:
                    if record.value is None:
                        titles.pop(item_id, None)
                    else:
                        titles[item_id] = decode_item(item_id, record.value).title
        return UserView(user_id, profile, recommendation, titles, partition, weights)
    finally:
        consumer.close()


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1000)) + " UTC" if ts else "-"


def format_view(view: UserView) -> str:
    lines = [f"user {view.user_id}"]
    p = view.profile
    if p is None:
        lines.append("  no profile: the pipeline has applied no event of this user")
    else:
        lines += [
            f"  events applied: {p.applied}   last event: {_when(p.updated_ts)}   profile vector norm: {float(np.linalg.norm(p.vector)):.3f}",
            f"  purchased ({len(p.purchased)}): " + (", ".join(view.titles.get(i, i) for i in sorted(p.purchased)) or "-"),
            "  last offsets: " + (", ".join(f"{k}@{v}" for k, v in sorted(p.offsets.items())) or "-"),
            f"  recent history ({len(p.history)}, most recent last):",
        ]
        for h in p.history[-15:]:
            rating = f" {h.rating:g}*" if h.rating is not None else ""
            lines.append(f"    {_when(h.ts)}  {h.kind:8}{rating:5}  {view.titles.get(h.item_id, h.item_id + ' (not in catalog)')}")
    if view.weights is not None:
        t, c, pop = view.weights.weights
        lines.append(
            f"  blend weights of partition {view.partition}: text {t:.3f}, co-occurrence {c:.3f}, popularity {pop:.3f} "
            f"(adapted online over {view.weights.epochs} epochs)"
        )
    r = view.recommendation
    if r is None:
        lines.append("  no recommendation found on the recommendations topic")
    else:
        lines.append(f"  latest recommendations ({_when(r.emitted_ts)}, model {r.model}, after {r.trigger.topic}@{r.trigger.partition}:{r.trigger.offset}):")
        for rank, item in enumerate(r.items, 1):
            because = f"  because: {view.titles.get(item.because, item.because)}" if item.because else ""
            lines.append(f"    {rank:2}. {view.titles.get(item.item_id, item.item_id):40} {item.score:7.3f}{because}")
    return "\n".join(lines)
