"""``recstream demo``: the whole pipeline on built-in data, in a few minutes, on a laptop.

Starts the local broker (unless one answers), creates a private set of topics, starts a
worker, loads the built-in catalog, streams a *generated* event stream and prints each
event with the recommendations it produced; then stops everything it started.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from tqdm import tqdm

from .. import localkafka
from .. import topics as T
from ..client import RecommendationWatcher, WorkerProcess, producer, send_records, wait_catalog
from ..config import KafkaSettings
from ..records import Review
from .data import DEMO_USERS, generate_events, load_catalog


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(settings: KafkaSettings, *, pace_s: float = 0.5, keep: bool = False, events_per_user: int = 4) -> int:
    started_broker = False
    if not localkafka.answers(settings.broker):
        if settings.broker != "127.0.0.1:9092":
            _say(f"recstream demo: no broker answers at {settings.broker}")
            return 1
        _say("== starting the local Apache Kafka broker (KRaft, 127.0.0.1:9092)")
        if localkafka.run("start") != 0:
            return 1
        started_broker = True
    if not settings.topic_prefix:
        settings = settings.with_prefix(f"demo-{int(time.time())}.")
    workdir = Path(tempfile.mkdtemp(prefix="recstream-demo-"))
    worker = WorkerProcess(settings, workdir / "state", "--partitions", "2", "--emit", "per-event", "-k", "5", log_path=workdir / "worker.log")
    watcher = None
    prod = None
    try:
        _say(f"== topics with prefix {settings.topic_prefix!r}")
        T.ensure_topics(settings, T.topic_specs(settings, partitions=2))
        _say(f"== starting a worker (log: {worker.log_path})")
        worker.start()
        worker.wait_ready()

        now = int(time.time() * 1000)
        catalog = load_catalog(ts=now)
        titles = {item.item_id: item.title for item in catalog}
        prod = producer(settings)
        send_records(prod, settings, catalog)
        prod.flush()
        with tqdm(total=len(catalog), desc="embedding the built-in catalog", unit="item", file=sys.stdout) as bar:
            wait_catalog(settings, [item.item_id for item in catalog], progress=bar)

        events = generate_events(catalog, events_per_user=events_per_user, start_ts=now)
        _say()
        _say(f"== streaming {len(events)} GENERATED events for {len(DEMO_USERS)} users ({', '.join(f'{u.user_id}: {u.taste}' for u in DEMO_USERS)})")
        watcher = RecommendationWatcher(settings)
        for event in events:
            sent = time.time()
            event = dataclasses.replace(event, ts=int(sent * 1000))  # generated events happen now
            send_records(prod, settings, [event])
            prod.flush()
            event_id = cast(str, event.event_id)  # the generated events all have one
            rec = watcher.wait_event(event_id, timeout_s=60)
            latency_ms = (watcher.received_at[event_id] - sent) * 1000
            what = event.kind if not isinstance(event, Review) else f"review ({event.rating:g} star{'' if event.rating == 1 else 's'})"
            _say(f"\n{event.user_id} {what}: {titles.get(event.item_id, event.item_id)!r}   [recommendations in {latency_ms:.0f} ms, model {rec.model}]")
            for rank, item in enumerate(rec.items, 1):
                because = f"   because: {titles.get(item.because, item.because)}" if item.because else ""
                _say(f"   {rank}. {titles.get(item.item_id, item.item_id):32} {item.score:6.3f}{because}")
            time.sleep(pace_s)
        _say(f"\n== done: every event produced a recommendation record on {settings.topic(T.RECOMMENDATIONS)!r}")
        return 0
    finally:
        if watcher is not None:
            watcher.close()
        if prod is not None:
            prod.close()
        code = worker.stop()
        _say(f"== worker stopped (exit {code})")
        if not keep:
            leftover = list(T.list_topics(settings))
            if leftover:
                T.delete_topics(settings, leftover)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"== kept topics {settings.topic_prefix}* and {workdir}")
        if started_broker:
            localkafka.run("stop")
