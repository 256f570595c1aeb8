"""Three workers share six partitions; every user is answered by exactly one worker at a time.

Workers A, B and C (at-least-once, per-event emission, 6 partitions, one consumer group)
start together and settle on two partitions each. Clicks of many users stream; then C is
stopped while clicks are in flight, and A and B take C's partitions over. Afterwards:

(a) every event has exactly one recommendation (nothing lost, nothing doubled) and every
    user's profile applied each of its events once;
(b) every recommendation was emitted while one worker, and only one, held its partition,
    and no user's answers interleave: once a later owner of the user's partition has
    answered, no earlier owner answers again (A, B, A never happens);
(c) each stable assignment covers the six partitions with no overlap, and no two workers'
    holdings of a partition overlap in time.

Recommendation records carry no worker field (``docs/contract.md``), so the emitter of a
record is told from the workers' own logs: each logs every assignment it gets and when it
gives its partitions up (:func:`faults.holdings`), and a record names its partition
(``trigger.partition``) and when it was emitted (``emitted_ts``, same clock, same machine).
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
from faults import Outputs, WorkerGroup, count, describe_coords, now_ms, partitions_split, random_clicks, send_events  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS, USERS, PHASE = 6, 600, 1_200
DEADLINE_S = 300.0
START_S = 600.0  # three model loads at once on a shared 2-core machine


def test_three_workers_answer_every_user_from_one_worker_at_a_time(kafka_broker: str, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = faults.fresh_settings(kafka_broker, "thw")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    group = WorkerGroup(settings, tmp_path, ("a", "b", "c"), ("--partitions", str(PARTITIONS), "--emit", "per-event", "-k", "5", "--metrics-port", "0"))
    prod = producer(settings)
    outputs = Outputs(settings)
    clicks = settings.topic(T.CLICKS)
    sent, coords = [], []

    def stream(tag: str, n: int) -> list[faults.Coord]:
        events = random_clicks(n, USERS, ids, now_ms() - 3_600_000, tag)
        placed = send_events(prod, settings, events)
        sent.extend(events)
        coords.extend(placed)
        return placed

    try:
        group.start("a", "b", "c", timeout_s=START_S)
        catalog = load_catalog(ts=now_ms())
        ids = [i.item_id for i in catalog]
        send_records(prod, settings, catalog)
        prod.flush()
        wait_catalog(settings, ids, timeout_s=120)
        balanced = group.wait_balanced(clicks, PARTITIONS, DEADLINE_S)
        assert all(len(share) == 2 for share in balanced.values()), balanced  # (c)

        outputs.wait_for(stream("one-", PHASE), (), DEADLINE_S, group.alive)

        # C leaves while its partitions have events in flight
        in_flight = stream("two-", PHASE // 2)
        assert group.stop("c") == 0
        t0 = time.monotonic()
        outputs.wait_for(in_flight + stream("three-", PHASE // 2), (), DEADLINE_S, group.alive)
        takeover_s = time.monotonic() - t0
        after = group.shares(clicks)
        assert partitions_split(after, PARTITIONS) and set(after) == {"a", "b"}, after  # (c)
        assert balanced["a"] <= after["a"] and balanced["b"] <= after["b"], (balanced, after)

        faults.wait_applied(settings, count(e.user_id for e in sent), DEADLINE_S, group.alive)  # (a)
        outputs.read_to_end()
    finally:
        outputs.close()
        prod.close()
        group.close()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)

    # (a) exactly one recommendation per event
    by_coord = outputs.recs_by_coord()
    missing = [c for c in coords if c not in by_coord]
    doubled = [c for c in coords if len(by_coord.get(c, ())) > 1]
    assert not missing and not doubled, (
        f"missing: {len(missing)} ({describe_coords(missing)}); answered more than once: {len(doubled)} ({describe_coords(doubled)})"
    )
    assert not outputs.recs.rejected

    # (c) over time: no partition held by two workers at once
    held = group.holdings(clicks)
    for p in range(PARTITIONS):
        spans = sorted((h.start_ms, h.end_ms if h.end_ms is not None else float("inf"), name) for name, hs in held.items() for h in hs if p in h.partitions)
        for (s1, e1, n1), (s2, e2, n2) in zip(spans, spans[1:]):
            assert e1 <= s2, f"partition {p} held by {n1} until {e1} and by {n2} from {s2}"

    # (b) each answer from the one worker holding its partition when it was emitted, and per
    # user, owners in order (answers are in emission order on the user's one partition)
    owner_since: dict[str, list[tuple[str, int]]] = {}
    orphans = []
    for rec in outputs.recs.entries:
        p, t = rec.trigger.partition, rec.emitted_ts
        owners = [(name, h.start_ms) for name, hs in held.items() for h in hs if h.holds(p, t)]
        if len(owners) != 1:
            orphans.append((rec.user_id, p, t, [n for n, _ in owners]))
            continue
        owner_since.setdefault(rec.user_id, []).append(owners[0])
    assert not orphans, f"{len(orphans)} answers not from exactly one holder of their partition, e.g. {orphans[:5]}"
    interleaved = {user: [n for n, _ in seq] for user, seq in owner_since.items() if any(b[1] < a[1] for a, b in zip(seq, seq[1:]))}
    assert not interleaved, f"answers of {len(interleaved)} users interleave between workers, e.g. {dict(list(interleaved.items())[:3])}"
    moved = sum(1 for seq in owner_since.values() if len({n for n, _ in seq}) > 1)
    assert all(len({n for n, _ in seq}) <= 2 for seq in owner_since.values())  # one handover, at most one move

    print(
        f"\nthree workers: {len(sent)} events of {len(owner_since)} users over 6 partitions, each answered once, "
        f"every answer from the one worker holding its partition; {moved} users moved when C stopped, "
        f"answered again within {takeover_s:.1f}s; {time.monotonic() - started:.0f}s in all"
    )
