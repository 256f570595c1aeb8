"""Co-occurrence and popularity are global across workers (streams/evidence.py).

Two workers share four partitions.  Every event that links item A to items B and C, and
every click on the six more popular decoys, comes from users on worker *a*'s partitions.
A probe user on worker *b*'s partitions then clicks A: only if *b* follows *a*'s partitions'
co-occurrence (their changelogs) can its blend rank B and C, which nothing else links to
A; the decoys' popularity reaches it the same way.  Then *b* is SIGKILLed and restarted on
the same state folder (which it discards): it must follow *a*'s partitions again from the
start of their changelogs, and a new probe gets B and C again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from recstream.scoring.blend import BlendWeights
from recstream.streams import topics as T
from recstream.streams.client import partition_for, producer, read_topic, reader, send_records, wait_catalog
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click, Purchase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)
from faults import Deadline, Outputs, WorkerGroup, now_ms, send_events  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS, K = 4, 5
WEIGHTS = BlendWeights(0.2, 0.6, 0.2, "zscore")
A, B, C = "scifi-01", "garden-05", "jazz-07"
DECOYS = ("running-01", "running-02", "running-03", "cooking-01", "cooking-02", "cooking-03")
START_S = 600.0


def _users(prefix: str, partitions: set[int], n: int) -> list[str]:
    out, k = [], 0
    while len(out) < n:
        name = f"{prefix}{k}"
        if partition_for(name.encode(), PARTITIONS) in partitions:
            out.append(name)
        k += 1
    return out


def _probe_until(prod, settings, user_prefix: str, partitions: set[int], ts: int, alive, timeout_s: float) -> list[str]:
    """Probe users on ``partitions`` click A, one after another, until a recommendation holds
    B and C (the other worker's evidence has arrived); returns the last list."""
    deadline = Deadline(timeout_s)
    items: list[str] = []
    for n, user in enumerate(_users(user_prefix, partitions, 1000)):
        (coord,) = send_events(prod, settings, [Click(user, A, ts + n, f"{user}-probe")])
        out = Outputs(settings)
        try:
            out.wait_for([coord], [], timeout_s=120, alive=alive)
            items = [i.item_id for i in out.recs_by_coord()[coord][-1].items]
        finally:
            out.close()
        if {B, C} <= set(items):
            return items
        deadline.check(lambda: f"a probe recommendation with {B} and {C}; the last was {items}")
        time.sleep(1.0)  # the follower applies what it read once a second: let the next probe come after it
    return items


def _changelog_stamps(settings, table: str) -> dict[str, int]:
    """The timestamp of each key's latest record on ``table``'s changelog."""
    consumer = reader(settings)
    try:
        return {r.key.decode(): r.timestamp for r in read_topic(consumer, settings.changelog(table))}
    finally:
        consumer.close()


@pytest.mark.timeout(1500)
def test_a_worker_ranks_with_the_other_workers_partitions_evidence_and_keeps_it_through_a_sigkill(kafka_broker, tmp_path):
    settings = faults.fresh_settings(kafka_broker, "ev")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    wfile = WEIGHTS.save(tmp_path / "blend.json")
    group = WorkerGroup(
        settings, tmp_path, ("a", "b"), ("--partitions", str(PARTITIONS), "--emit", "per-event", "-k", str(K), "--blend", str(wfile), "--metrics-port", "0")
    )
    prod = producer(settings)
    try:
        group.start("a", "b", timeout_s=START_S)
        catalog = load_catalog(ts=now_ms())
        send_records(prod, settings, catalog)
        prod.flush()
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=120)
        shares = group.wait_balanced(settings.topic(T.CLICKS), PARTITIONS, timeout_s=300)
        on_a, on_b = shares["a"], shares["b"]

        start = now_ms() - 3_600_000
        ts = start
        events: list[Click | Purchase] = []
        for u, user in enumerate(_users("fan", on_a, 8)):
            for item in (A, B, C):
                ts += 1000
                events.append((Purchase if u % 2 else Click)(user, item, ts, f"{user}-{item}"))
        for user in _users("other", on_a, 12):
            for item in DECOYS:
                ts += 1000
                events.append(Click(user, item, ts, f"{user}-{item}"))
        coords = send_events(prod, settings, events)
        assert {p for _, p, _ in coords} <= on_a
        out = Outputs(settings)
        try:
            out.wait_for(coords, [], timeout_s=180, alive=group.alive)
        finally:
            out.close()
        # each count row's changelog record carries the latest event time its value includes
        # (the other worker takes it once its own stream time has reached that): popularity
        # rows count the item's events; an event changes the co-occurrence rows of its item
        # and of every item earlier in its user's history
        pop_ref: dict[str, int] = {}
        cooc_ref: dict[str, int] = {}
        histories: dict[str, list[str]] = {}
        for ev, (_, p, _) in zip(events, coords):
            pop_ref[f"{p}:{ev.item_id}"] = max(pop_ref.get(f"{p}:{ev.item_id}", 0), ev.ts)
            history = histories.setdefault(ev.user_id, [])
            for item in {ev.item_id, *history}:
                cooc_ref[f"{p}:{item}"] = max(cooc_ref.get(f"{p}:{item}", 0), ev.ts)
            history.append(ev.item_id)
        popularity = _changelog_stamps(settings, T.POPULARITY_TABLE)
        progress = {key: ts for key, ts in popularity.items() if key.endswith(":")}  # "<partition>:"
        assert {key: ts for key, ts in popularity.items() if key not in progress} == pop_ref
        assert _changelog_stamps(settings, T.COOCCURRENCE_TABLE) == cooc_ref
        assert not progress  # only workers in step (--max-skew-ms) write progress rows

        items = _probe_until(prod, settings, "probe", on_b, ts + 10**6, group.alive, timeout_s=120)
        assert {B, C} <= set(items)

        group.kill("b")
        group.start("b", timeout_s=START_S)
        shares = group.wait_balanced(settings.topic(T.CLICKS), PARTITIONS, timeout_s=300)
        assert shares["b"] != set(range(PARTITIONS))
        items = _probe_until(prod, settings, "again", shares["b"], ts + 2 * 10**6, group.alive, timeout_s=180)
        assert {B, C} <= set(items)
    finally:
        group.close()
        prod.close()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
