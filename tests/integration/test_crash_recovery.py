"""Crashes: a worker SIGKILLed at random points loses nothing and applies nothing twice.

The worker (at-least-once, per-event emission, 2 partitions) embeds a catalog, then
20,000 clicks and purchases of 200 users are produced at once; the worker is killed with
SIGKILL three times at random points of the stream and restarted each time, once on its
own state folder (which it discards, since its previous run was killed:
``streams.worker.claim_state``) and twice on a new one, so every restart restores the
tables from their changelogs.  Afterwards:

* every user's profile equals the profile the same pure engine computes offline from the
  full event log (float tolerance), with ``applied`` equal to the user's events: nothing
  lost, nothing applied twice, although Kafka redelivered the events after each crash;
* every event has at least one recommendation (at-least-once: a redelivered event is
  answered again; the test prints how many were).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, producer, read_topic, reader, send_records, topic_size, wait_catalog
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click, Purchase, decode_recommendation

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

USERS, EVENTS, KILLS = 200, 20_000, 3
DEADLINE_S = 600.0


def _events(catalog_ids: list[str], start_ms: int) -> list[Click | Purchase]:
    rng = random.Random(17)
    events: list[Click | Purchase] = []
    for n in range(EVENTS):
        user = f"u{rng.randrange(USERS)}"
        item = rng.choice(catalog_ids)
        ts = start_ms + n * 1000  # distinct times: a profile does not depend on arrival order
        cls = Purchase if rng.random() < 0.2 else Click
        events.append(cls(user, item, ts, f"e{n}"))
    return events


def _records(settings, topic: str) -> list:
    consumer = reader(settings)
    try:
        return list(read_topic(consumer, topic))
    finally:
        consumer.close()


def _answered(settings) -> int:
    """Distinct events with a recommendation."""
    return len({decode_recommendation(r.value).trigger.event_id for r in _records(settings, settings.topic(T.RECOMMENDATIONS))})


def test_sigkilled_worker_loses_and_doubles_nothing(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings
    T.ensure_topics(settings, T.topic_specs(settings, partitions=2))
    now = int(time.time() * 1000)
    catalog = load_catalog(ts=now - 86_400_000)
    events = _events([i.item_id for i in catalog], now - 30 * 86_400_000)
    prod = producer(settings, linger_ms=20, batch_size=256 * 1024)
    for f in send_records(prod, settings, catalog):
        f.get(timeout=60)

    args = ("--partitions", "2", "--emit", "per-event", "-k", "5")
    rng = random.Random(5)
    kill_points = sorted(rng.sample(range(EVENTS // 10, EVENTS * 9 // 10), KILLS))
    state_dirs = [tmp_path / "state-0", tmp_path / "state-0", tmp_path / "state-1", tmp_path / "state-2"]
    recoveries: list[float] = []
    worker = WorkerProcess(settings, state_dirs[0], *args, log_path=tmp_path / "worker.log")
    try:
        worker.start()
        worker.wait_ready()
        # the catalog is embedded first (as a replay does): every event then finds its item
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=DEADLINE_S)
        futures = send_records(prod, settings, events)
        prod.flush()
        placed = []
        for ev, f in zip(events, futures):
            meta = f.get(timeout=60)
            placed.append((ev, meta.topic, meta.partition, meta.offset))
        prod.close()
        for n, point in enumerate(kill_points):
            deadline = time.monotonic() + DEADLINE_S
            while (done := topic_size(settings, T.RECOMMENDATIONS)) < point:
                assert worker.proc.poll() is None, worker.log_text()[-3000:]
                assert time.monotonic() < deadline, f"stuck at {done} of {point} events"
                time.sleep(0.2)
            worker.kill()
            # the same folder after the first crash, empty ones after the others: the state
            # then comes back from the changelogs
            worker = WorkerProcess(settings, state_dirs[n + 1], *args, log_path=tmp_path / "worker.log")
            t0 = time.monotonic()
            worker.start()
            worker.wait_ready()
            before = topic_size(settings, T.RECOMMENDATIONS)
            while topic_size(settings, T.RECOMMENDATIONS) == before:
                assert worker.proc.poll() is None, worker.log_text()[-3000:]
                assert time.monotonic() - t0 < DEADLINE_S
                time.sleep(0.2)
            recoveries.append(time.monotonic() - t0)
        deadline = time.monotonic() + DEADLINE_S
        while (done := _answered(settings)) < EVENTS:
            assert worker.proc.poll() is None, worker.log_text()[-3000:]
            assert time.monotonic() < deadline, f"stuck at {done} of {EVENTS} events"
            time.sleep(2.0)
    finally:
        worker.stop()

    recs = [decode_recommendation(r.value) for r in _records(settings, settings.topic(T.RECOMMENDATIONS))]
    per_event = Counter(r.trigger.event_id for r in recs)
    assert set(per_event) == {ev.event_id for ev in events}
    answered_again = sum(1 for n in per_event.values() if n > 1)

    expected = faults.offline_profiles(catalog, placed)
    got = faults.read_profiles(settings)
    assert got.keys() == expected.keys()
    counts = Counter(ev.user_id for ev in events)
    for user, want in expected.items():
        have = got[user]
        assert have.applied == counts[user] == want.applied, user
        assert have.offsets == want.offsets, user
        assert have.purchased == want.purchased, user
        assert [(h.item_id, h.ts, h.kind) for h in have.history] == [(h.item_id, h.ts, h.kind) for h in want.history], user
        assert have.ref_ts == want.ref_ts, user
        np.testing.assert_allclose(have.vector, want.vector, rtol=1e-4, atol=1e-5, err_msg=user)
    print(
        f"\n{EVENTS} events, {KILLS} SIGKILLs at {kill_points}: 0 lost, 0 applied twice; "
        f"{answered_again} redelivered events answered again; "
        f"restart-to-first-recommendation {', '.join(f'{s:.1f}s' for s in recoveries)}"
    )
