"""The HTTP API of a real worker, against the real broker, with a real HTTP client (urllib).

One exactly-once worker (two partitions, a bearer token) on the demo catalog (five distinct
topics).  Checked, in order:

* lookups equal the last record on the recommendations topic for the same user; an unknown
  user gets the popularity list, marked ``popularity``; auth on: 401 without the token,
  /health and /metrics without it;
* a query ranks the query-matching items first (a science-fiction reader asking for jazz
  gets jazz), semantic search without a user too, exclusions hold;
* fuzzed request bodies (hypothesis) are each answered with a 4xx JSON error or a 200, and
  the worker keeps serving; the API's Prometheus counters count them;
* forgetting (``DELETE`` for one user, ``recstream forget`` for another): the lookups fall
  back to popularity, the profiles and latest-recommendations changelogs end with a
  tombstone, no live value of any of the app's changelogs names the users, and after a
  SIGKILL and restart (state restored from the changelogs) the users are still unknown; their
  next event starts a profile from nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st
from kafka import TopicPartition

from recstream.encoders.profile import UserProfile
from recstream.streams import topics as T
from recstream.streams.client import RecommendationWatcher, WorkerProcess, producer, read_to_end, reader, send_records, wait_catalog
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS, K = 2, 5
TOKEN = "api-test-token-7731"
DEADLINE_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """A tiny JSON client over urllib."""

    def __init__(self, port: int, token: str | None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(
        self, method: str, path: str, body: bytes | None = None, *, token: str | None = "default", content_type: str | None = "application/json"
    ) -> tuple[int, dict, dict]:
        headers = {}
        tok = self.token if token == "default" else token
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        if body is not None and content_type is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                raw, status, hdrs = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        if hdrs.get("Content-Type", "").startswith("application/json"):
            return status, orjson.loads(raw), hdrs
        return status, {"_text": raw.decode(errors="replace")}, hdrs

    def latest(self, user: str, **kw) -> tuple[int, dict, dict]:
        return self.call("GET", f"/v1/users/{urllib.parse.quote(user, safe='')}/recommendations", **kw)

    def recommend(self, doc: dict) -> tuple[int, dict, dict]:
        return self.call("POST", "/v1/recommend", orjson.dumps(doc))


def last_values(settings, topic: str) -> dict[bytes, bytes | None]:
    """The last value per key of every partition of ``topic`` (read_committed)."""
    consumer = reader(settings)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        out: dict[bytes, bytes | None] = {}
        for record in read_to_end(consumer, tps, timeout_s=60):
            out[record.key] = record.value
        return out
    finally:
        consumer.close()


def metric(text: str, series: str) -> float:
    """The value of one series (name and labels as exposed) in a Prometheus exposition."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    assert len(values) == 1, (series, values)
    return values[0]


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started that are still running (Linux)."""
    return sorted(int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split())


def wait_until(condition, timeout_s: float, what: str, alive) -> None:
    deadline = faults.Deadline(timeout_s)
    while not condition():
        alive()
        deadline.check(what)
        time.sleep(0.2)  # between two HTTP polls


def test_api_against_a_real_worker(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "api")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=PARTITIONS))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    args = (
        "--partitions",
        str(PARTITIONS),
        "-k",
        str(K),
        "--metrics-port",
        str(port),
        "--api-token-file",
        str(token_file),
        "--processing-guarantee",
        "exactly_once",
    )
    worker = WorkerProcess(settings, tmp_path / "state", *args, log_path=tmp_path / "worker.log")
    prod = producer(settings)
    http = Http(port, TOKEN)

    def alive() -> None:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.proc.returncode}:\n{worker.log_text()[-3000:]}")

    try:
        worker.start()
        worker.wait_ready()
        now = faults.now_ms()
        catalog = load_catalog(ts=now)
        send_records(prod, settings, catalog)
        prod.flush()
        wait_catalog(settings, [i.item_id for i in catalog], timeout_s=DEADLINE_S)

        reader_u, cook_u, gardener = (f"{name}-{faults.uuid.uuid4().hex[:6]}" for name in ("reader", "cook", "gardener"))
        events = [Click(reader_u, f"scifi-0{n}", now + n, f"r{n}") for n in range(1, 5)]
        events += [Click(cook_u, f"cooking-0{n}", now + 10 + n, f"c{n}") for n in range(1, 4)]
        events += [Click(gardener, "garden-01", now + 20, "g1")]
        watcher = RecommendationWatcher(settings)
        try:
            send_records(prod, settings, events)
            prod.flush()
            # per-user emission: wait for the record of each user's last event
            for user in (reader_u, cook_u, gardener):
                last_event = [e for e in events if e.user_id == user][-1]
                watcher.wait_for(
                    lambda w: any(r.trigger.event_id == last_event.event_id for r in w.by_user.get(user, ())),
                    DEADLINE_S,
                    f"the record of {last_event.event_id}",
                )
            watcher.poll(500)

            # --- lookups equal the last record on the topic
            for user in (reader_u, cook_u, gardener):
                status, doc, headers = http.latest(user)
                assert status == 200, doc
                assert doc == watcher.latest(user).to_dict() | {"trigger": doc["trigger"]}, (doc, watcher.latest(user))
                assert doc["trigger"]["event_id"] == watcher.latest(user).trigger.event_id
                assert headers["X-Recstream-Served-By"] == f"http://127.0.0.1:{port}"
                status, two, _ = http.call("GET", f"/v1/users/{user}/recommendations?k=2")
                assert status == 200 and two["items"] == doc["items"][:2]
        finally:
            watcher.close()

        # --- the lookups above were answered by the API's front process, from the worker's
        # store: so they are answered while the worker's own process is stopped too
        front = metric(http.call("GET", "/metrics", token=None)[1]["_text"], 'recstream_api_front_lookups_total{answered_by="front"}')
        assert front >= 6, front
        expected = http.latest(gardener)
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            assert http.latest(gardener)[:2] == expected[:2]
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        # the front process killed: the worker starts another on the same socket (requests
        # wait in the socket's backlog meanwhile), which answers lookups again
        (front_pid,) = child_pids(worker.proc.pid)
        os.kill(front_pid, signal.SIGKILL)
        wait_until(lambda: child_pids(worker.proc.pid) not in ([], [front_pid]), DEADLINE_S, "a new front process", alive)
        assert http.latest(gardener)[:2] == expected[:2]  # by the worker until the new front has read its partitions

        def answered_by_front() -> bool:
            assert http.latest(gardener)[:2] == expected[:2]
            text = http.call("GET", "/metrics", token=None)[1]["_text"]
            series = 'recstream_api_front_lookups_total{answered_by="front"}'
            return series in text and metric(text, series) >= 1

        wait_until(answered_by_front, DEADLINE_S, "a lookup answered by the new front", alive)

        status, doc, _ = http.latest("never-seen-user")
        assert status == 200 and doc["model"] == "popularity" and doc["trigger"] is None and len(doc["items"]) == K
        # auth
        status, doc, headers = http.latest(reader_u, token=None)
        assert (status, doc["code"]) == (401, "unauthorized") and headers["WWW-Authenticate"].startswith("Bearer")
        status, doc, _ = http.latest(reader_u, token="wrong")
        assert (status, doc["code"]) == (401, "unauthorized")
        assert http.call("GET", "/health", token=None)[0] == 200
        assert http.call("GET", "/metrics", token=None)[0] == 200
        status, doc, _ = http.call("GET", "/v1/openapi.json")
        assert status == 200 and doc["info"]["title"] == "recstream API"

        # --- a query ranks the matching items first
        status, doc, _ = http.recommend({"user_id": reader_u, "query": "smooth jazz saxophone records on vinyl", "k": 3})
        assert status == 200, doc
        assert [i["item_id"].split("-")[0] for i in doc["items"]] == ["jazz"] * 3, doc
        assert doc["model"].endswith("+query")
        status, plain, _ = http.recommend({"user_id": reader_u, "k": 3})
        assert status == 200 and not any(i["item_id"].startswith("jazz") for i in plain["items"]), plain
        assert not {i["item_id"] for i in plain["items"]} & {f"scifi-0{n}" for n in range(1, 5)}  # seen: excluded
        status, doc, _ = http.recommend({"query": "growing vegetables in a raised bed garden", "k": 3, "exclude": ["garden-01"]})
        assert status == 200 and doc["user_id"] is None and doc["model"].endswith("semantic-search")
        assert [i["item_id"].split("-")[0] for i in doc["items"]] == ["garden"] * 3 and "garden-01" not in str(doc["items"])

        # --- fuzzed bodies: each a JSON 4xx (or a 200), never a 500; the worker keeps serving
        # (integers within 64 bits: orjson, which writes the bodies, encodes no larger ones)
        answered: list[int] = []

        @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            body=st.one_of(
                st.binary(max_size=120),
                st.dictionaries(
                    st.sampled_from(["user_id", "query", "k", "exclude", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.text(max_size=20), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)),
                    max_size=4,
                ).map(orjson.dumps),
            )
        )
        def fuzz(body: bytes) -> None:
            status, doc, _ = http.call("POST", "/v1/recommend", body)
            answered.append(status)
            assert status == 200 or (400 <= status < 500 and doc.get("code") and doc.get("message")), (body, status, doc)

        fuzz()
        alive()
        assert http.latest(cook_u)[0] == 200
        samples = http.call("GET", "/metrics", token=None)[1]["_text"]
        assert 'recstream_api_requests_total{method="POST",route="/v1/recommend",status="400"}' in samples

        # --- forget: one user by DELETE, one by the CLI
        status, doc, _ = http.call("DELETE", f"/v1/users/{reader_u}")
        assert status == 202 and doc["status"] == "accepted" and doc["topic"] == settings.topic(T.CLICKS), doc
        cli = subprocess.run(
            [sys.executable, "-m", "recstream", "forget", cook_u, "--json", "--broker", settings.broker, "--topic-prefix", settings.topic_prefix],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ},
        )
        assert cli.returncode == 0, cli.stderr
        assert orjson.loads(cli.stdout)["user_id"] == cook_u
        for user in (reader_u, cook_u):
            wait_until(lambda: http.latest(user)[1].get("model") == "popularity", DEADLINE_S, f"{user} forgotten", alive)
        assert http.latest(gardener)[1]["model"] != "popularity"  # the others stay

        def assert_forgotten() -> None:
            gone = {reader_u.encode(), cook_u.encode()}
            for table in T.TABLES:
                values = last_values(settings, settings.changelog(table))
                for key, value in values.items():
                    if value is None:
                        continue
                    assert key not in gone, (table, key)
                    assert reader_u.encode() not in value and cook_u.encode() not in value, (table, key)
                if table in (T.PROFILES_TABLE, T.LATEST_TABLE):
                    assert all(key in values and values[key] is None for key in gone), table  # a tombstone each
            assert gardener.encode() in last_values(settings, settings.changelog(T.PROFILES_TABLE))

        assert_forgotten()

        # --- a restart from the changelogs (SIGKILL: the local state is discarded) does not bring them back
        worker.kill()
        worker.start()
        worker.wait_ready()
        wait_until(lambda: http.latest(gardener)[0] == 200, DEADLINE_S, "the API after the restart", alive)
        for user in (reader_u, cook_u):
            status, doc, _ = http.latest(user)
            assert (status, doc["model"]) == (200, "popularity"), doc
        assert http.latest(gardener)[1]["model"] != "popularity"
        assert_forgotten()
        # the next event starts from nothing
        send_records(prod, settings, [Click(reader_u, "running-01", faults.now_ms(), "after")])
        prod.flush()
        wait_until(lambda: http.latest(reader_u)[1].get("trigger") is not None, DEADLINE_S, "a new list", alive)
        profile = UserProfile.from_bytes(last_values(settings, settings.changelog(T.PROFILES_TABLE))[reader_u.encode()])
        assert profile.applied == 1 and [h.item_id for h in profile.history] == ["running-01"]
    finally:
        prod.close()
        worker.stop()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    forgot = [line for line in log.splitlines() if "forgot a user" in line]
    assert len(forgot) == 2 and not any(reader_u in line or cook_u in line for line in forgot), forgot
