"""Two workers in one group share the partitions, and take them over from each other.

Workers A and B (at-least-once, per-event emission, 4 partitions, one consumer group)
stream clicks.  A is stopped: B takes A's partitions, restores their profiles from the
changelogs and answers what A left.  A starts again (on its own state folder): the
partitions rebalance back, and both answer.  Afterwards every event has a recommendation
and every user's profile has applied each of its events once.  The times from A's stop to
B's answers, and from A's return to both answering, are printed.  Nothing is answered twice:
a handover waits for the micro-batch in flight and commits it.

Each phase is sent right after the worker change, while the group rebalances: B still holds
its own partitions when it receives the first events of a phase, and keeps them through the
rebalance (the case that lost events before ``streams.worker.RebalanceSafeConsumer``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from recstream.streams import topics as T
from recstream.streams.client import producer, send_records, wait_catalog
from recstream.streams.demo.data import load_catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)
from faults import Outputs, WorkerGroup, count, now_ms, partitions_split, random_clicks, send_events  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS, USERS, PHASE = 4, 120, 1_500
DEADLINE_S = 300.0
START_S = 600.0  # three model loads at once on a shared 2-core machine


def test_two_workers_share_partitions_and_take_them_over(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "tw")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    group = WorkerGroup(settings, tmp_path, ("a", "b"), ("--partitions", str(PARTITIONS), "--emit", "per-event", "-k", "5", "--metrics-port", "0"))
    prod = producer(settings)
    outputs = Outputs(settings)
    sent = []
    clicks = settings.topic(T.CLICKS)

    def stream(tag: str) -> list[faults.Coord]:
        events = random_clicks(PHASE, USERS, ids, now_ms() - 3_600_000, tag)
        sent.extend(events)
        return send_events(prod, settings, events)

    try:
        group.start("a", timeout_s=START_S)
        catalog = load_catalog(ts=now_ms())
        ids = [i.item_id for i in catalog]
        send_records(prod, settings, catalog)
        prod.flush()
        wait_catalog(settings, ids, timeout_s=120)
        group.start("b", timeout_s=START_S)
        outputs.wait_for(stream("one-"), (), DEADLINE_S, group.alive)
        assert partitions_split(group.shares(clicks), PARTITIONS), group.shares(clicks)

        assert group.stop("a") == 0
        t0 = time.monotonic()
        outputs.wait_for(stream("two-"), (), DEADLINE_S, group.alive)
        takeover_s = time.monotonic() - t0
        assert group.shares(clicks) == {"b": set(range(PARTITIONS))}

        group.start("a", timeout_s=START_S)
        t1 = time.monotonic()
        outputs.wait_for(stream("three-"), (), DEADLINE_S, group.alive)
        back_s = time.monotonic() - t1
        assert partitions_split(group.shares(clicks), PARTITIONS), group.shares(clicks)
        faults.wait_applied(settings, count(e.user_id for e in sent), DEADLINE_S, group.alive)
        outputs.read_to_end()
        doubled = [c for c, recs in outputs.recs_by_coord().items() if len(recs) > 1]
        assert not doubled, f"{len(doubled)} events answered more than once: {faults.describe_coords(doubled)}"
    finally:
        outputs.close()
        prod.close()
        group.close()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
    print(
        f"\ntwo workers: {len(sent)} events over 3 phases, each answered and applied once; "
        f"B took over within {takeover_s:.1f}s; after A restarted, {PHASE} more answered within {back_s:.1f}s"
    )
