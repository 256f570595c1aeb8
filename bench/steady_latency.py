"""Latency of one worker under a steady click load, and where it goes.

Starts ``python -m recstream worker`` (per-event emission, one partition) on fresh topics of
the broker, loads a generated catalog, sends clicks at ``--rate`` per second for
``--seconds`` and reads the recommendations back.  Each record says when the worker's
consumer received its event (``received_ts``) and when it went out (``emitted_ts``), so the
latency splits into produce -> the worker's consumer, and consumer -> emitted (batching and
processing).  Prints one JSON document (percentiles over the events after the first
``--warmup`` seconds, and per-interval p50s to show a backlog building up).

To compare two versions of the code in one session, run it from each tree with that
tree on ``PYTHONPATH`` (the worker is started from the current directory)::

    cd /tmp/before && PYTHONPATH=$PWD ~/recstream/.venv/bin/python bench/steady_latency.py --rate 200
    cd ~/recstream  && .venv/bin/python bench/steady_latency.py --rate 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import orjson
from kafka import KafkaConsumer

from recstream.streams import topics as T
from recstream.streams.client import producer, send_records, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.records import Click, Item

WORDS = "jazz rock garden space travel cooking running cat dog river night city book film game piano".split()


def pct(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": len(values), "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "max_ms": round(float(max(values)), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"))
    p.add_argument("--rate", type=float, default=200.0, help="clicks per second (default 200)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of sending (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="first seconds left out of the percentiles (default 5)")
    p.add_argument("--items", type=int, default=1000, help="generated catalog items (default 1000)")
    p.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARGS", help="more flags for the worker (repeatable)")
    a = p.parse_args(argv)

    prefix = f"steady-{uuid.uuid4().hex[:8]}."
    settings = KafkaSettings(broker=a.broker, topic_prefix=prefix)
    T.ensure_topics(settings, T.topic_specs(settings, partitions=1))
    state = tempfile.mkdtemp(prefix="steady-")
    log = open(os.path.join(state, "worker.log"), "w")
    extra = [x for arg in a.worker_arg for x in arg.split()]
    worker = subprocess.Popen(
        [sys.executable, "-m", "recstream", "worker", "--broker", a.broker, "--topic-prefix", prefix, "--emit", "per-event",
         "--partitions", "1", "--metrics-port", "0", "--data-dir", state, *extra],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    rng = random.Random(1)
    now = int(time.time() * 1000)
    items = [Item(f"i{i}", " ".join(rng.choices(WORDS, k=4)), " ".join(rng.choices(WORDS, k=12)), (rng.choice(WORDS),), now) for i in range(a.items)]
    prod = producer(settings, linger_ms=1)
    samples: list[tuple[float, float, float, float]] = []  # (event ts, total ms, to consumer ms, consumer to emitted ms)
    stop, ready = threading.Event(), threading.Event()

    def consume() -> None:
        c = KafkaConsumer(settings.topic(T.RECOMMENDATIONS), bootstrap_servers=a.broker, auto_offset_reset="latest", fetch_max_wait_ms=5)
        c.poll(timeout_ms=1000)
        ready.set()
        while not stop.is_set():
            for records in c.poll(timeout_ms=100).values():
                t = time.time() * 1000
                for r in records:
                    v = orjson.loads(r.value)
                    got = v["trigger"].get("received_ts") or v["emitted_ts"]
                    samples.append((v["event_ts"], t - v["event_ts"], got - v["event_ts"], v["emitted_ts"] - got))
        c.close()

    sent = 0
    try:
        send_records(prod, settings, items)
        prod.flush()
        wait_catalog(settings, [i.item_id for i in items], timeout_s=1200)
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        ready.wait(30)
        t0 = time.time()
        while (elapsed := time.time() - t0) < a.seconds:
            while sent < int(elapsed * a.rate):
                user = f"u{rng.randrange(a.users)}"
                click = Click(user, f"i{rng.randrange(a.items)}", int(time.time() * 1000), f"e{sent}")
                prod.send(settings.topic(T.CLICKS), key=user.encode(), value=orjson.dumps(click.to_dict()))
                sent += 1
            time.sleep(0.002)
        prod.flush()
        deadline = time.time() + 60
        while len(samples) < sent and time.time() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join()
    finally:
        worker.terminate()
        worker.wait(60)
        prod.close()
        T.delete_topics(settings, list(T.list_topics(settings)))
    if not samples:
        print(json.dumps({"error": "no recommendation came back", "worker_log": log.name}))
        return 1
    first = min(s[0] for s in samples)
    steady = [s for s in samples if s[0] >= first + a.warmup * 1000]
    step = max(1, int(a.seconds) // 10)
    timeline = []
    for start in range(0, int(a.seconds), step):
        part = [s[1] for s in samples if first + start * 1000 <= s[0] < first + (start + step) * 1000]
        if part:
            timeline.append({"from_s": start, "events": len(part), "p50_ms": round(float(np.median(part)), 1)})
    print(json.dumps({
        "rate": a.rate, "seconds": a.seconds, "items": a.items, "sent": sent, "answered": len(samples),
        "latency": pct([s[1] for s in steady]),
        "to_consumer": pct([s[2] for s in steady]),
        "consumer_to_emitted": pct([s[3] for s in steady]),
        "timeline": timeline,
        "worker_args": extra,
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
