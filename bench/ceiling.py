#!/usr/bin/env python
"""The ceiling reference of the pipeline benchmark: a plain aiokafka consume-and-produce loop.

It subscribes to the event topics of a prefix (``clicks``, ``purchases``, ``reviews``) with a
consumer group and, for every event, produces one record to the prefix's ``recommendations``
topic, keyed by the user id, with the size and shape of a real recstream recommendation: a
fixed template of ``k`` items with the event's user, topic/partition/offset, ``event_id`` and
timestamps filled in (:func:`ceiling_record`). It does no other work: no model, no state.
The benchmark harness matches its records on ``trigger.event_id`` exactly like the worker's.

Like a decent aiokafka program it fetches in batches (``getmany``), sends every record of a
batch without awaiting each one, awaits the batch's deliveries, then commits the batch's
offsets (at-least-once). The producer uses the worker's settings: ``acks=all``, linger 2 ms.

SIGTERM or SIGINT stop it cleanly (the current batch is delivered and committed first).
It prints ``ceiling: ready`` once partitions are assigned and a stats line every
``--stats-interval`` seconds.

    .venv/bin/python bench/ceiling.py --broker 127.0.0.1:9092 --topic-prefix bench-xyz.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from recstream.streams import topics as T  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402
from recstream.streams.records import SCHEMA_VERSION  # noqa: E402

#: The model name a recstream worker writes (all-MiniLM-L6-v2 + the decayed-sum profile);
#: the template uses a marker of the same length so that records have the same size.
RECSTREAM_MODEL_NAME = "all-MiniLM-L6-v2/decayed-sum"
CEILING_MODEL = "bench-ceiling/no-model".ljust(len(RECSTREAM_MODEL_NAME), "-")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def template_items(k: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """``k`` recommended items as a worker writes them: catalog-style ids (``I000123``),
    float32 cosine scores widened to float (so as many digits as real ones), and a
    ``because`` history item."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=2 * k, replace=False)
    scores = np.sort(rng.uniform(0.45, 0.85, size=k).astype(np.float32))[::-1]
    return [{"item_id": f"I{ids[i]:06d}", "score": float(scores[i]), "because": f"I{ids[k + i]:06d}"} for i in range(k)]


def ceiling_record(
    items: Sequence[dict[str, Any]],
    *,
    user_id: str,
    topic: str,
    partition: int,
    offset: int,
    event_id: str | None,
    event_ts: int,
    received_ts: int,
    emitted_ts: int,
    model: str = CEILING_MODEL,
) -> bytes:
    """One recommendation record for an event, from the template ``items`` (same keys and
    order as :meth:`streams.records.Recommendation.to_dict`)."""
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            "user_id": user_id,
            "items": items,
            "trigger": {"topic": topic, "partition": partition, "offset": offset, "event_id": event_id, "received_ts": received_ts},
            "event_ts": event_ts,
            "emitted_ts": emitted_ts,
            "model": model,
        }
    )


def answer(
    items: Sequence[dict[str, Any]], topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, received_ts: int
) -> tuple[bytes | None, bytes]:
    """The (key, value) to produce for one consumed event. Reads only ``event_id`` and ``ts``
    from the event; anything unreadable still gets a record (with ``event_id`` null)."""
    event_id, event_ts = None, received_ts
    try:
        v = orjson.loads(value) if value is not None else None
        if isinstance(v, dict):
            eid = v.get("event_id")
            event_id = eid if isinstance(eid, str) else None
            ts = v.get("ts")
            if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0:
                event_ts = ts
    except orjson.JSONDecodeError:
        pass
    try:
        user_id = key.decode("utf-8") if key is not None else "unknown"
    except UnicodeDecodeError:
        user_id = "unknown"
    return key, ceiling_record(
        items,
        user_id=user_id,
        topic=topic,
        partition=partition,
        offset=offset,
        event_id=event_id,
        event_ts=event_ts,
        received_ts=received_ts,
        emitted_ts=now_ms(),
    )


async def run(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = KafkaSettings(broker=args.broker, topic_prefix=args.topic_prefix)
    in_topics = [settings.topic(t) for t in T.EVENT_TOPICS]
    out_topic = settings.topic(T.RECOMMENDATIONS)
    items = template_items(args.k)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    group = args.group or f"{settings.topic_prefix}ceiling"
    consumer = AIOKafkaConsumer(
        *in_topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        client_id="recstream-bench-ceiling",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        key_deserializer=None,
        value_deserializer=None,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, client_id="recstream-bench-ceiling", acks="all", linger_ms=args.linger_ms)
    await producer.start()
    await consumer.start()
    print(f"ceiling: consuming {', '.join(in_topics)} -> {out_topic}, group {group}, k {args.k}, acks all, linger {args.linger_ms} ms", flush=True)
    events = batches = 0
    ready = False
    next_stats = time.monotonic() + args.stats_interval
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100, max_records=args.max_records)
            if not ready and consumer.assignment():
                ready = True
                print(f"ceiling: ready ({len(consumer.assignment())} partitions assigned)", flush=True)
            if fetched:
                received = now_ms()
                futures = []
                for tp, records in fetched.items():
                    for r in records:
                        key, value = answer(items, r.topic, r.partition, r.offset, r.key, r.value, received)
                        futures.append(await producer.send(out_topic, value=value, key=key))
                        events += 1
                await asyncio.gather(*futures)  # every answer of the batch delivered ...
                await consumer.commit()  # ... before its offsets are committed
                batches += 1
            if time.monotonic() >= next_stats:
                next_stats += args.stats_interval
                print(f"ceiling: events {events}, recommendations {events}, batches {batches}", flush=True)
    finally:
        try:
            await producer.flush()
            await consumer.commit()
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            print(f"ceiling: final commit failed: {exc!r}", file=sys.stderr, flush=True)
        await consumer.stop()
        await producer.stop()
        print(f"ceiling: stopped after {events} events, {batches} batches", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Plain aiokafka consume-and-produce loop: the ceiling reference of bench/pipeline.py (one template recommendation per event, no work)."
    )
    p.add_argument("--broker", default="127.0.0.1:9092", help="bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", default="", help="prefix of the event and recommendations topics")
    p.add_argument("--group", help="consumer group (default <prefix>ceiling)")
    p.add_argument("-k", "--k", type=int, default=10, help="items per template recommendation (default 10)")
    p.add_argument("--linger-ms", type=int, default=2, help="producer linger, as the worker's (default 2)")
    p.add_argument("--max-records", type=int, default=1000, help="most records per fetched batch (default 1000)")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between stats lines (default 10)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.k < 1 or args.max_records < 1:
        build_parser().error("--k and --max-records must be at least 1")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
