"""Broker restart: the broker stops and starts again mid-stream; the worker resumes by itself.

A worker (at-least-once, per-event emission, 2 partitions) is streaming 3,000 clicks when
the local broker is stopped; it is started again on the same data, and 1,000 more clicks
are produced.  The worker, never restarted, answers every event, and every user's profile
has applied each of its events once.

The test restarts the broker the session uses, so it runs only against the local broker
that ``deploy/kafka/kafka.sh`` manages (as ``make test`` and CI run it).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402
from faults import Outputs, Worker, count, now_ms  # noqa: E402

from recstream.streams import localkafka  # noqa: E402
from recstream.streams.client import producer, send_records  # noqa: E402
from recstream.streams.records import Click  # noqa: E402

pytestmark = pytest.mark.integration

BEFORE, AFTER, USERS = 3_000, 1_000, 100
DEADLINE_S = 300.0


def _port(broker: str) -> int:
    return int(broker.split(",")[0].rpartition(":")[2])


def _clicks(catalog_ids: list[str], n: int, start: int, tag: str) -> list[Click]:
    rng = random.Random(len(tag) + n)
    return [Click(f"u{rng.randrange(USERS)}", rng.choice(catalog_ids), start + i, f"{tag}{i}") for i in range(n)]


def test_worker_resumes_by_itself_after_a_broker_restart(kafka_broker: str, tmp_path: Path) -> None:
    port = _port(kafka_broker)
    if localkafka.run("status", port=port) != 0:
        pytest.skip(f"the broker at {kafka_broker} is not the local one kafka.sh manages: not restarting it")
    worker = Worker(faults.fresh_settings(kafka_broker, "br"), tmp_path, ["--emit", "per-event", "-k", "5"]).start()
    outputs = Outputs(worker.settings)
    try:
        ids = [i.item_id for i in worker.catalog]
        first = _clicks(ids, BEFORE, now_ms() - 3_600_000, "a")
        futures = send_records(worker.producer, worker.settings, first)
        worker.producer.flush()
        placed = [f.get(timeout=60) for f in futures]
        coords = [(m.topic, m.partition, m.offset) for m in placed]

        # the broker goes away while the worker is busy with the stream
        deadline = faults.Deadline(DEADLINE_S)
        while len(outputs.recs_by_coord()) < BEFORE // 3:
            worker.assert_alive()
            deadline.check("a third of the first events answered")
            outputs.poll()
        worker.producer.close()
        worker.producer = None
        t0 = time.monotonic()
        assert localkafka.run("stop", port=port) == 0
        assert not localkafka.answers(kafka_broker)
        assert localkafka.run("start", port=port) == 0
        down_s = time.monotonic() - t0

        # new events after the restart, through a new producer
        worker.producer = producer(worker.settings)
        second = _clicks(ids, AFTER, now_ms() - 1_800_000, "b")
        futures = send_records(worker.producer, worker.settings, second)
        worker.producer.flush()
        coords += [(m.topic, m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]

        outputs.wait_for(coords, (), DEADLINE_S, worker.assert_alive)
        resumed_s = time.monotonic() - t0
        worker.assert_alive()
        faults.wait_applied(worker.settings, count(e.user_id for e in first + second), DEADLINE_S, worker.assert_alive)
    finally:
        outputs.close()
        worker.stop()
    print(
        f"\nbroker restart: down and up again in {down_s:.1f}s; all {BEFORE + AFTER} events answered "
        f"{resumed_s:.1f}s after the stop, each applied once; the worker was never restarted"
    )
