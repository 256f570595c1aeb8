#!/usr/bin/env python
"""The naive reference of the pipeline benchmark: a Faust agent that handles one event at a time.

The straightforward per-event design, with recstream's own models and record contract:
for every event of the prefix's ``clicks``, ``purchases`` and ``reviews`` topics the agent

1. parses and validates it (:func:`streams.records.parse_event`; an invalid record goes to
   the dead-letter topic);
2. encodes the review text, if any, with the same :class:`encoders.text.TextEncoder`
   (a batch of one);
3. reads the user's profile from a Faust table (RocksDB + changelog, like the worker),
   applies the event with the same pure profile code (:mod:`encoders.profile`) and writes it
   back;
4. scores the profile's query against the item embeddings with the same
   :func:`scoring.topk.score_topk` (one query); a user without a usable profile gets the most
   popular items (:class:`scoring.popularity.DecayedPopularity`, kept in memory only);
5. publishes one recommendation record (:class:`streams.records.Recommendation`, same
   schema and key as the worker's) and awaits the send before the next event.

Item embeddings are not computed one item at a time: at start-up they are loaded from an
``item-embeddings`` changelog topic that a recstream worker filled (``--items-changelog``,
decoded with :func:`streams.state.decode_item`), or, with ``--encode-catalog``, the prefix's
``items`` topic is read to its end and encoded in batches with the same encoder and fields.

It starts and stops like the worker (SIGTERM = clean stop) and prints ``naive agent: ...``
lines, including a stats line every ``--stats-interval`` seconds.

    .venv/bin/python bench/naive_agent.py --topic-prefix bench-xyz. --partitions 1 \\
        --items-changelog bench-abc.recstream-item-embeddings-changelog --data-dir /tmp/naive
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recstream.streams import topics as T  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402
from recstream.streams.records import DAY_MS  # noqa: E402

POPULARITY_MODEL = "popularity"


def say(msg: str) -> None:
    print(f"naive agent: {msg}", flush=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------------------ item embeddings


def read_topic_to_end(broker: list[str], topic: str, timeout_s: float) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a one-partition topic, from the beginning to its end offset now."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=broker, group_id=None, enable_auto_commit=False, client_id="recstream-bench-naive-load", max_poll_records=5000, check_crcs=False
    )  # pure-Python CRC-32C in kafka-python: slow, and the broker checked them
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise SystemExit(f"naive agent: topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise SystemExit(f"naive agent: reading {topic} took more than {timeout_s:.0f} s")
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def load_item_changelog(broker: list[str], topic: str, timeout_s: float) -> dict[str, np.ndarray]:
    """Latest embedding per item id on a recstream ``item-embeddings`` changelog (tombstones delete)."""
    from recstream.streams.state import decode_item

    vectors: dict[str, np.ndarray] = {}
    for key, value in read_topic_to_end(broker, topic, timeout_s):
        if key is None:
            continue
        item_id = key.decode()
        if value is None:
            vectors.pop(item_id, None)
        else:
            vectors[item_id] = decode_item(item_id, value).vector
    return vectors


def encode_catalog(broker: list[str], topic: str, encoder, fields: tuple[str, ...], timeout_s: float) -> dict[str, np.ndarray]:
    """The latest record per item of an ``items`` topic, encoded in batches (the encoder's batch size)."""
    from recstream.encoders.text import item_text
    from recstream.streams.records import Item, ValidationError, parse_item

    latest: dict[str, Item] = {}
    for key, value in read_topic_to_end(broker, topic, timeout_s):
        try:
            rec = parse_item(key, value)
        except ValidationError:
            continue
        if isinstance(rec, Item):
            latest[rec.item_id] = rec
        else:
            latest.pop(rec.item_id, None)
    items = list(latest.values())
    texts = [item_text(it.title, it.categories, it.description, fields=fields) for it in items]
    vectors: dict[str, np.ndarray] = {}
    chunk = 512
    for start in range(0, len(items), chunk):
        vecs = encoder.encode_numpy(texts[start : start + chunk])
        vectors.update((it.item_id, vecs[i]) for i, it in enumerate(items[start : start + chunk]))
        say(f"encoded {min(start + chunk, len(items))} of {len(items)} catalog items")
    return vectors


# ------------------------------------------------------------------------------ per-event logic


def exclusions(profile, exclude_seen: bool) -> frozenset[str]:
    """Items never recommended to the user: purchases, and with ``exclude_seen`` the recent history
    (the worker's rule)."""
    if exclude_seen:
        return frozenset(profile.purchased).union(h.item_id for h in profile.history)
    return frozenset(profile.purchased)


def liked_history(profile) -> list[str]:
    """History items that can explain a recommendation: not one whose latest review is 3 stars or
    less (the worker's rule)."""
    latest_rating: dict[str, float] = {}
    for h in profile.history:
        if h.rating is not None:
            latest_rating[h.item_id] = h.rating
    return [h.item_id for h in profile.history if latest_rating.get(h.item_id, 5.0) > 3]


class NaiveAgent:
    """The models and per-event step; the Faust wiring is in :func:`build_app`."""

    def __init__(self, args: argparse.Namespace) -> None:
        from recstream.encoders.profile import DecayedProfileModel, ProfileConfig
        from recstream.encoders.text import TextEncoder, resolve_device
        from recstream.scoring.popularity import DecayedPopularity
        from recstream.scoring.topk import ItemMatrix

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.args = args
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        self.device = resolve_device(args.device)
        self.encoder = TextEncoder(args.model, device=str(self.device), max_length=args.max_length)
        self.matrix = ItemMatrix(self.encoder.dim, self.device)
        self.model = DecayedProfileModel(ProfileConfig(half_life_ms=int(args.half_life_days * DAY_MS), history_len=args.history_len), dim=self.encoder.dim)
        self.popularity = DecayedPopularity(int(args.popularity_half_life_days * DAY_MS))
        self.model_name = f"{self.encoder.name}/{self.model.name}"
        self.counts = {"events": 0, "applied": 0, "duplicates": 0, "recommendations": 0, "fallbacks": 0, "dead_letters": 0, "texts_encoded": 0}

    def load_items(self, vectors: dict[str, np.ndarray]) -> None:
        if vectors:
            ids = list(vectors)
            self.matrix.upsert(ids, np.stack([vectors[i] for i in ids]))

    def step(self, kind: str, topic: str, partition: int, offset: int, raw_profile: bytes | None, record, received_ts: int) -> tuple[bytes | None, Any]:
        """Apply one parsed event; returns (profile bytes to store or None, the Recommendation)."""
        from recstream.encoders.profile import UserProfile
        from recstream.streams.records import RecItem, Recommendation, Review, Trigger
        from recstream.scoring.topk import score_topk

        self.counts["events"] += 1
        text_vec = None
        if isinstance(record, Review) and record.text:
            text_vec = self.encoder.encode_numpy([record.text])[0]
            self.counts["texts_encoded"] += 1
        profile = UserProfile.from_bytes(raw_profile) if raw_profile is not None else self.model.new_profile(record.user_id)
        source = f"{topic}:{partition}"
        new_bytes = None
        if profile.is_duplicate(source, offset):
            self.counts["duplicates"] += 1
        else:
            self.model.apply(
                profile,
                kind=record.kind,
                item_id=record.item_id,
                ts=record.ts,
                item_vec=self.matrix.vector(record.item_id),
                text_vec=text_vec,
                rating=record.rating if isinstance(record, Review) else None,
                source=source,
                offset=offset,
            )
            self.popularity.add(record.item_id, record.ts)
            new_bytes = profile.to_bytes()
            self.counts["applied"] += 1
        exclude = exclusions(profile, self.args.exclude_seen)
        query = self.model.query(profile)
        if query is None:
            top = self.popularity.top(self.args.k, exclude=exclude, allowed=self.matrix, now_ms=record.ts)
            items, model = [RecItem(i, float(s), None) for i, s in top], POPULARITY_MODEL
            self.counts["fallbacks"] += 1
        else:
            (res,) = score_topk(self.matrix, query[None, :], self.args.k, exclude=[exclude], history=[liked_history(profile)])
            items, model = [RecItem(r.item_id, r.score, r.because) for r in res], self.model_name
        rec = Recommendation(
            user_id=record.user_id,
            items=items,
            trigger=Trigger(topic, partition, offset, record.event_id, received_ts),
            event_ts=record.ts,
            emitted_ts=now_ms(),
            model=model,
        )
        self.counts["recommendations"] += 1
        return new_bytes, rec

    def stats(self) -> str:
        c = self.counts
        return (
            f"events {c['events']} (applied {c['applied']}, duplicates {c['duplicates']}), recommendations "
            f"{c['recommendations']}, popularity fallbacks {c['fallbacks']}, dead letters {c['dead_letters']}, "
            f"texts encoded {c['texts_encoded']}; {len(self.matrix)} items"
        )


def build_app(agent: NaiveAgent, settings: KafkaSettings, args: argparse.Namespace):
    import faust

    from recstream.streams.records import ValidationError, dead_letter, encode, parse_event

    datadir = Path(args.data_dir) / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers],
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=args.partitions,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=2,
        stream_wait_empty=False,
    )
    raw_args = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    kinds = {settings.topic(t): t for t in T.EVENT_TOPICS}
    events_topic = app.topic(*kinds, partitions=args.partitions, **raw_args)
    recs_topic = app.topic(settings.topic(T.RECOMMENDATIONS), partitions=args.partitions, **raw_args)
    dlq_topic = app.topic(settings.topic(T.DLQ), partitions=1, **raw_args)
    profiles = app.Table(T.PROFILES_TABLE, partitions=args.partitions, schema=faust.Schema(**raw_args))
    profiles.key_serializer = "raw"  # bytes in, bytes out, as the worker's tables
    profiles.value_serializer = "raw"

    @app.agent(events_topic, name="naive.events")
    async def handle(stream):  # pragma: no cover - exercised by the benchmark
        async for event in stream.events():
            msg = event.message
            received = now_ms()
            try:
                record = parse_event(kinds[msg.topic], msg.key, msg.value)
            except ValidationError as exc:
                letter = dead_letter(msg.topic, msg.partition, msg.offset, str(exc), msg.key, msg.value)
                await dlq_topic.send(key=msg.key, value=encode(letter), partition=0)
                agent.counts["dead_letters"] += 1
                continue
            key = record.user_id.encode()
            new_profile, rec = agent.step(kinds[msg.topic], msg.topic, msg.partition, msg.offset, profiles.get(key), record, received)
            if new_profile is not None:
                profiles[key] = new_profile
            await recs_topic.send(key=key, value=encode(rec))

    @app.timer(args.stats_interval)
    async def stats() -> None:  # pragma: no cover
        say(agent.stats())

    @app.task
    async def started() -> None:  # pragma: no cover
        say("ready (Faust worker started; partitions are assigned next)")

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Naive per-event Faust agent: the reference of bench/pipeline.py (one event at a time, recstream's models and record contract)."
    )
    p.add_argument("--broker", default="127.0.0.1:9092", help="bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", default="", help="prefix of the event, recommendations and dead-letter topics")
    p.add_argument("--app-id", help="Faust application id (default <prefix>naive)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the event topics and profiles table")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--items-changelog", metavar="TOPIC", help="load item embeddings from this recstream item-embeddings changelog topic")
    src.add_argument("--encode-catalog", action="store_true", help="read the prefix's items topic and encode it in batches at start-up")
    p.add_argument("--data-dir", default=".naive-agent", help="RocksDB state folder")
    p.add_argument("-k", "--k", type=int, default=10, help="items per recommendation (default 10)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True, help="exclude the recent history too, as the worker (default on)")
    p.add_argument("--half-life-days", type=float, default=30.0, help="profile half-life (default 30, the worker's)")
    p.add_argument("--popularity-half-life-days", type=float, default=7.0, help="popularity half-life (default 7)")
    p.add_argument("--history-len", type=int, default=50, help="recent events kept per user (default 50)")
    p.add_argument("--model", help="local model directory (default: the worker's default model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: one event's matrix-vector product and top-k are too small to "
        "share, and a team of OpenMP threads mostly waits at barriers while the broker and the "
        "benchmark's clients use the other core; 0 = torch's default, one per core)",
    )
    p.add_argument("--max-length", type=int, default=256, help="token limit per text (default 256, the worker's)")
    p.add_argument("--item-fields", default="title,categories,description", help="item fields embedded with --encode-catalog (default the worker's)")
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds to read the item source (default 600)")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between stats lines (default 10)")
    p.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"], help="Faust log level (default warning)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.partitions < 1 or args.k < 1 or args.torch_threads < 0:
        build_parser().error("--partitions and --k must be at least 1, --torch-threads at least 0")
    base = KafkaSettings(broker=args.broker, topic_prefix=args.topic_prefix)
    settings = KafkaSettings(broker=args.broker, topic_prefix=args.topic_prefix, app_id=args.app_id or f"{args.topic_prefix}naive")
    t0 = time.perf_counter()
    agent = NaiveAgent(args)
    import torch

    say(f"model {agent.encoder.name} on {agent.device} loaded in {time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} torch threads")
    t1 = time.perf_counter()
    if args.items_changelog:
        vectors = load_item_changelog(settings.bootstrap_servers, args.items_changelog, args.load_timeout)
        source = f"changelog {args.items_changelog}"
    else:
        fields = tuple(f.strip() for f in args.item_fields.split(",") if f.strip())
        vectors = encode_catalog(settings.bootstrap_servers, base.topic(T.ITEMS), agent.encoder, fields, args.load_timeout)
        source = f"{base.topic(T.ITEMS)}, encoded in batches"
    agent.load_items(vectors)
    say(f"{len(agent.matrix)} item embeddings loaded from {source} in {time.perf_counter() - t1:.1f} s")
    if not len(agent.matrix):
        say("WARNING: no item embeddings: every recommendation will be a popularity fallback")

    import faust

    app = build_app(agent, settings, args)
    say(f"app {settings.app_id}, {args.partitions} partitions, one event at a time")
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    say(f"stopped; {agent.stats()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
