"""Two workers of one group answer the API for each other's users.

Workers A and B (4 partitions, split between them) each serve the API on their own port.
Users on every partition click; then every user's lookup, asked of either worker, equals the
last record on the recommendations topic, and is served by the worker holding the user's
partition (``X-Recstream-Served-By``: requests for the other worker's users are forwarded
to it, as Faust's table router does).  ``POST /v1/recommend`` for a user is forwarded the
same way, and a ``DELETE`` sent to the worker that does not hold the user forgets the user on
both.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from recstream.streams import topics as T
from recstream.streams.client import RecommendationWatcher, partition_for, producer, send_records, wait_catalog
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402
from faults import WorkerGroup  # noqa: E402
from test_api import Http, free_port  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS, K = 4, 5
DEADLINE_S = 120.0
START_S = 600.0


def test_two_workers_answer_for_each_others_users(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "api2")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    ports = {"a": free_port(), "b": free_port()}
    group = WorkerGroup(settings, tmp_path, (), ())
    from recstream.streams.client import WorkerProcess

    # a answers lookups from its front process (the default), b from the worker itself
    for name, port in ports.items():
        own = ("--no-api-process",) if name == "b" else ()
        group.workers[name] = WorkerProcess(
            settings, tmp_path / name, "--partitions", str(PARTITIONS), "-k", str(K), "--metrics-port", str(port), *own, log_path=tmp_path / f"{name}.log"
        )
    http = {name: Http(port, None) for name, port in ports.items()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    prod = producer(settings)
    try:
        group.start("a", "b", timeout_s=START_S)
        now = faults.now_ms()
        catalog = load_catalog(ts=now)
        send_records(prod, settings, catalog)
        prod.flush()
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=DEADLINE_S)
        shares = group.wait_balanced(settings.topic(T.CLICKS), PARTITIONS, DEADLINE_S)
        owner_of = {p: name for name, share in shares.items() for p in share}

        users = [faults.key_on_partition(f"u{p}x{n}-", p, PARTITIONS) for p in range(PARTITIONS) for n in range(2)]
        events = [Click(u, f"jazz-0{1 + n}", now + 10 * i + n, f"{u}-e{n}") for i, u in enumerate(users) for n in range(2)]
        watcher = RecommendationWatcher(settings)
        try:
            send_records(prod, settings, events)
            prod.flush()
            for u in users:
                watcher.wait_for(lambda w: any(r.trigger.event_id == f"{u}-e1" for r in w.by_user.get(u, ())), DEADLINE_S, f"the record of {u}-e1")
            watcher.poll(500)
            served_by: set[str] = set()
            for u in users:
                owner = owner_of[partition_for(u.encode(), PARTITIONS)]
                expected = watcher.latest(u).to_dict()
                for name in ("a", "b"):
                    status, doc, headers = http[name].latest(u)
                    assert status == 200, (name, u, doc)
                    assert doc["items"] == expected["items"] and doc["trigger"]["offset"] == expected["trigger"]["offset"], (name, u)
                    assert doc["model"] == expected["model"] and doc["event_ts"] == expected["event_ts"]
                    assert headers["X-Recstream-Served-By"] == urls[owner], (name, u, headers)
                    served_by.add(headers["X-Recstream-Served-By"])
                    status, rec, headers = http[name].recommend({"user_id": u, "query": "jazz on vinyl", "k": 3})
                    assert status == 200 and headers["X-Recstream-Served-By"] == urls[owner], rec
                    assert not {i["item_id"] for i in rec["items"]} & {"jazz-01", "jazz-02"}  # their history, excluded
            assert served_by == set(urls.values())
        finally:
            watcher.close()

        # a DELETE sent to the worker that does not hold the user
        victim = users[0]
        owner = owner_of[partition_for(victim.encode(), PARTITIONS)]
        other = "b" if owner == "a" else "a"
        status, doc, _ = http[other].call("DELETE", f"/v1/users/{victim}")
        assert status == 202, doc
        deadline = faults.Deadline(DEADLINE_S)
        while any(http[name].latest(victim)[1].get("model") != "popularity" for name in ("a", "b")):
            group.alive()
            deadline.check(f"{victim} forgotten")
            time.sleep(0.2)  # between two HTTP polls
        assert http[other].latest(users[1])[1]["model"] != "popularity"
    finally:
        prod.close()
        group.close()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
