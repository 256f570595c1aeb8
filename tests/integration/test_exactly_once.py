"""Exactly-once: a worker SIGKILLed at random points commits each event's effects once.

The worker (``--processing-guarantee exactly_once``, per-event emission, 2 partitions) embeds
a catalog, then 20,000 clicks and purchases of 200 users, with 200 malformed records among
them, are produced at once; the worker is killed with SIGKILL three times at random points of
the stream and restarted each time, on its own state folder after the first kill (which it
discards: ``streams.worker.claim_state``) and on new ones after the others.  Each kill lands
while a transaction is open with records on the broker (the recommendations topic's end is
past its last stable offset): a commit takes milliseconds, so the worker's commits are
delayed by 0.2 s (a ``sitecustomize`` in its environment, as in test_poison_batches.py) to
make that window easy to hit.  Afterwards, reading committed records only (``read_committed``,
as ``recstream subscribe`` does):

* exactly one recommendation per valid event, and one dead letter per malformed record:
  nothing from an aborted attempt is visible, nothing is missing;
* every user's profile (the ``profiles`` changelog) equals the profile the same pure engine
  computes offline from the full event log, ``applied`` equal to the user's valid events.

The recommendations of the killed attempts are on the broker, aborted: a ``read_uncommitted``
reader sees them, and the test checks there are some (it prints how many).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from recstream.encoders.profile import UserProfile
from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, producer, read_to_end, reader, topic_size, wait_catalog
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click, Purchase, decode_dead_letter, decode_recommendation, encode, record_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

USERS, EVENTS, BAD_EVERY, KILLS = 200, 20_000, 100, 3
DEADLINE_S = 600.0
COMMIT_DELAY_S = 0.2

SITECUSTOMIZE = """
import asyncio, os
import aiokafka

_commit = aiokafka.AIOKafkaProducer.commit_transaction


async def commit_transaction(self):
    await asyncio.sleep(float(os.environ["RECSTREAM_TEST_COMMIT_DELAY_S"]))
    return await _commit(self)


aiokafka.AIOKafkaProducer.commit_transaction = commit_transaction
print("recstream-test: commits delayed", flush=True)
"""


def _stream(catalog_ids: list[str], start_ms: int) -> list[tuple[str, bytes, bytes, Click | Purchase | None]]:
    """(logical topic, key, value, event or None for a malformed record), in production order."""
    rng = random.Random(23)
    out = []
    for n in range(EVENTS):
        user = f"u{rng.randrange(USERS)}"
        ts = start_ms + n * 1000  # distinct times: a profile does not depend on arrival order
        event = (Purchase if rng.random() < 0.2 else Click)(user, rng.choice(catalog_ids), ts, f"e{n}")
        out.append((T.PURCHASES if isinstance(event, Purchase) else T.CLICKS, record_key(event), encode(event), event))
        if n % BAD_EVERY == BAD_EVERY // 2:
            out.append((T.CLICKS, user.encode(), b'{"not": "a click"' + str(n).encode(), None))
    return out


def _all(settings, logical: str, *, committed: bool = True) -> list:
    consumer = reader(settings) if committed else KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None)
    try:
        topic = settings.topic(logical) if logical in (T.RECOMMENDATIONS, T.DLQ) else logical
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return list(read_to_end(consumer, tps, timeout_s=120))
    finally:
        consumer.close()


def _committed_profiles(settings) -> dict[str, UserProfile]:
    latest: dict[bytes, bytes | None] = {}
    for record in _all(settings, settings.changelog(T.PROFILES_TABLE)):
        latest[record.key] = record.value
    return {k.decode(): UserProfile.from_bytes(v) for k, v in latest.items() if v is not None}


def test_sigkilled_exactly_once_worker_commits_each_effect_once(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings
    T.ensure_topics(settings, T.topic_specs(settings, partitions=2))
    now = int(time.time() * 1000)
    catalog = load_catalog(ts=now - 86_400_000)
    stream = _stream([i.item_id for i in catalog], now - 30 * 86_400_000)
    valid = [event for _, _, _, event in stream if event is not None]
    prod = producer(settings, linger_ms=20, batch_size=256 * 1024)
    faults.send_events(prod, settings, catalog)

    args = ("--partitions", "2", "--emit", "per-event", "-k", "5", "--processing-guarantee", "exactly_once")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])), "RECSTREAM_TEST_COMMIT_DELAY_S": str(COMMIT_DELAY_S)}
    ends = OpenTransaction(settings, settings.topic(T.RECOMMENDATIONS))
    rng = random.Random(11)
    kill_points = sorted(rng.sample(range(EVENTS // 10, EVENTS * 9 // 10), KILLS))
    state_dirs = [tmp_path / "state-0", tmp_path / "state-0", *(tmp_path / f"state-{n}" for n in range(1, KILLS))]
    recoveries: list[float] = []
    worker = WorkerProcess(settings, state_dirs[0], *args, log_path=tmp_path / "worker.log", env=env)
    try:
        worker.start()
        worker.wait_ready()
        assert "recstream-test: commits delayed" in worker.log_text(), "the sitecustomize did not run in the worker"
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=DEADLINE_S)
        futures = [prod.send(settings.topic(kind), key=key, value=value) for kind, key, value, _ in stream]
        prod.flush()
        placed, bad = [], set()
        for (_, _, _, event), future in zip(stream, futures):
            meta = future.get(timeout=60)
            if event is None:
                bad.add((meta.topic, meta.partition, meta.offset))
            else:
                placed.append((event, meta.topic, meta.partition, meta.offset))
        prod.close()
        for n, point in enumerate(kill_points):
            deadline = faults.Deadline(DEADLINE_S)
            while (done := topic_size(settings, T.RECOMMENDATIONS)) < point:
                worker_alive(worker)
                deadline.check(lambda: f"{done} of {point} recommendations before kill {n + 1}")
                time.sleep(0.2)  # poll interval
            deadline = faults.Deadline(60)
            while not ends.open():  # until a transaction holds recommendations not yet committed
                worker_alive(worker)
                deadline.check(f"an open transaction before kill {n + 1}")
            worker.kill()
            worker = WorkerProcess(settings, state_dirs[n + 1], *args, log_path=tmp_path / "worker.log", env=env)
            t0 = time.monotonic()
            worker.start()
            worker.wait_ready()
            before = topic_size(settings, T.RECOMMENDATIONS)
            while topic_size(settings, T.RECOMMENDATIONS) == before:
                worker_alive(worker)
                assert time.monotonic() - t0 < DEADLINE_S, "no committed recommendation after the restart"
                time.sleep(0.2)
            recoveries.append(time.monotonic() - t0)
        committed = CommittedCount(settings, settings.topic(T.RECOMMENDATIONS))
        deadline = faults.Deadline(DEADLINE_S)
        while committed.poll() < len(valid):
            worker_alive(worker)
            deadline.check(lambda: f"{committed.count} of {len(valid)} committed recommendations")
        committed.close()
        assert worker.stop() == 0, worker.log_text()[-3000:]
    finally:
        worker.stop()
        ends.close()

    recs = [decode_recommendation(r.value) for r in _all(settings, T.RECOMMENDATIONS)]
    per_event = Counter(r.trigger.event_id for r in recs)
    assert set(per_event) == {ev.event_id for ev in valid}
    doubled = {e: n for e, n in per_event.items() if n > 1}
    assert not doubled, f"{len(doubled)} events with several committed recommendations, e.g. {list(doubled.items())[:5]}"
    assert len(recs) == len(valid)
    aborted = len(_all(settings, T.RECOMMENDATIONS, committed=False)) - len(recs)
    assert aborted > 0, "no kill landed in an open transaction"

    letters = Counter((d.topic, d.partition, d.offset) for d in (decode_dead_letter(r.value) for r in _all(settings, T.DLQ)))
    assert set(letters) == bad and set(letters.values()) == {1}, faults.describe_coords(set(letters) ^ bad)

    expected = faults.offline_profiles(catalog, placed)
    got = _committed_profiles(settings)
    assert got.keys() == expected.keys()
    counts = Counter(ev.user_id for ev in valid)
    for user, want in expected.items():
        have = got[user]
        assert have.applied == counts[user] == want.applied, user
        assert have.offsets == want.offsets, user
        assert have.purchased == want.purchased, user
        assert [(h.item_id, h.ts, h.kind) for h in have.history] == [(h.item_id, h.ts, h.kind) for h in want.history], user
        assert have.ref_ts == want.ref_ts, user
        np.testing.assert_allclose(have.vector, want.vector, rtol=1e-4, atol=1e-5, err_msg=user)
    print(
        f"\n{len(valid)} events and {len(bad)} malformed records, {KILLS} SIGKILLs at {kill_points}: "
        f"0 lost, 0 applied twice, 0 answered twice; {aborted} recommendations of killed transactions aborted; "
        f"restart-to-first-committed-recommendation {', '.join(f'{s:.1f}s' for s in recoveries)}"
    )


class OpenTransaction:
    """Whether a topic has records in an open transaction: its end offset (read_uncommitted)
    is past its last stable offset (what a read_committed reader can reach)."""

    def __init__(self, settings, topic: str) -> None:
        self.committed = reader(settings)
        self.any = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None)
        self.tps = [TopicPartition(topic, p) for p in sorted(self.committed.partitions_for_topic(topic) or ())]

    def open(self) -> bool:
        stable = self.committed.end_offsets(self.tps)
        end = self.any.end_offsets(self.tps)
        return any(end[tp] > stable[tp] for tp in self.tps)

    def close(self) -> None:
        self.committed.close()
        self.any.close()


class CommittedCount:
    """Counts the committed records of a topic as they arrive (``read_committed``)."""

    def __init__(self, settings, topic: str) -> None:
        self.consumer = reader(settings)
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.count = 0

    def poll(self) -> int:
        self.count += sum(len(records) for records in self.consumer.poll(timeout_ms=500).values())
        return self.count

    def close(self) -> None:
        self.consumer.close()


def worker_alive(worker: WorkerProcess) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_text()[-3000:]
