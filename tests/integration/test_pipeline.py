"""End to end: `recstream worker` against the real broker, as a user sees it.

Events go in with kafka-python, recommendations come out on the recommendations topic.
The catalog is the built-in demo catalog: ten items in each of five distinct topics.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import pytest

from recstream.streams import topics as T
from recstream.streams.client import RecommendationWatcher, WorkerProcess, poll_records, producer, send_records, tail, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog, topic_of
from recstream.streams.inspect import inspect_user
from recstream.streams.records import Click, Item, Purchase, Review, decode_dead_letter

pytestmark = pytest.mark.integration

K = 8
DEADLINE_S = 60


def _now() -> int:
    return int(time.time() * 1000)


class Pipeline:
    def __init__(self, broker: str, workdir: Path, emit: str = "per-event", extra_args: tuple[str, ...] = ()) -> None:
        self.emit = emit
        self.extra_args = extra_args
        self.settings = KafkaSettings(broker=broker, topic_prefix=f"e2e{uuid.uuid4().hex[:8]}.")
        self.workdir = workdir
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=2))
        self.catalog = load_catalog(ts=_now())
        self.titles = {i.item_id: i.title for i in self.catalog}
        self.producer = producer(self.settings)
        self.worker = self.new_worker(workdir / "state")

    def new_worker(self, data_dir: Path) -> WorkerProcess:
        # the text profile's behaviour is what these tests check (the default blend adds
        # co-occurrence and popularity: test_backtest_kafka, test_worker_equals_engine)
        return WorkerProcess(
            self.settings,
            data_dir,
            "--partitions",
            "2",
            "--emit",
            self.emit,
            "-k",
            str(K),
            "--ranker",
            "text",
            *self.extra_args,
            log_path=self.workdir / "worker.log",
        )

    def start(self) -> None:
        self.worker.start()
        self.worker.wait_ready()

    def send(self, *records) -> None:
        send_records(self.producer, self.settings, records)
        self.producer.flush()

    def load_catalog(self) -> None:
        self.send(*self.catalog)
        wait_catalog(self.settings, [i.item_id for i in self.catalog], timeout_s=DEADLINE_S)

    def close(self) -> None:
        self.worker.stop()
        self.producer.close()
        leftover = list(T.list_topics(self.settings))
        if leftover:
            T.delete_topics(self.settings, leftover)


@pytest.fixture(scope="module")
def pipeline(kafka_broker):
    workdir = Path(tempfile.mkdtemp(prefix="recstream-e2e-"))
    # This module's worker scores through the approximate index (scoring/ann.py), built as soon as
    # the catalog holds 10 items; probing all its lists keeps the answers exact, so the tests below
    # check the IVF path end to end (build, catalog updates, exclusions) with exact expectations.
    # The other workers here (restart, per-user) use the default, exact below 100k items.
    p = Pipeline(kafka_broker, workdir, extra_args=("--index", "ivf", "--index-min-items", "10", "--ivf-nprobe", "64"))
    try:
        p.start()
        p.load_catalog()
        yield p
    finally:
        p.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def watcher(pipeline):
    w = RecommendationWatcher(pipeline.settings)
    yield w
    w.close()


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_buyer_gets_recommendations_from_their_topic_and_never_what_they_bought(pipeline, watcher):
    user = _user()
    ts = _now()
    events = [
        Click(user, "scifi-01", ts, f"{user}-1"),
        Click(user, "scifi-02", ts + 1, f"{user}-2"),
        Purchase(user, "scifi-03", ts + 2, f"{user}-3", quantity=1),
    ]
    pipeline.send(*events)
    recs = [watcher.wait_event(e.event_id, DEADLINE_S) for e in events]
    # one recommendation per event, each after its own trigger
    assert [r.trigger.event_id for r in recs] == [e.event_id for e in events]
    final = recs[-1]
    ids = [i.item_id for i in final.items]
    assert len(ids) == K
    assert "scifi-03" not in ids  # bought
    assert not {"scifi-01", "scifi-02"} & set(ids)  # seen (excluded by default)
    assert [topic_of(i) for i in ids[:3]] == ["scifi"] * 3
    assert sum(topic_of(i) == "scifi" for i in ids) >= 6
    assert all(i.because in {"scifi-01", "scifi-02", "scifi-03"} for i in final.items if topic_of(i.item_id) == "scifi")
    assert final.event_ts == events[-1].ts and final.emitted_ts >= final.event_ts - 1000
    assert final.model.endswith("/decayed-sum")


def test_one_star_review_moves_recommendations_away_from_that_items_neighbours(pipeline, watcher):
    user = _user()
    ts = _now()
    likes = [Click(user, "cooking-01", ts, f"{user}-1"), Click(user, "jazz-01", ts + 1, f"{user}-2")]
    pipeline.send(*likes)
    before = watcher.wait_event(likes[-1].event_id, DEADLINE_S)
    review = Review(user, "jazz-02", 1.0, "Dull and badly recorded, not my thing at all.", ts + 2, f"{user}-3")
    pipeline.send(review)
    after = watcher.wait_event(review.event_id, DEADLINE_S)

    def jazz_ranks(rec):
        return [rank for rank, item in enumerate(rec.items) if topic_of(item.item_id) == "jazz"]

    assert jazz_ranks(before), "liking a jazz record should bring jazz into the recommendations"
    assert len(jazz_ranks(after)) < len(jazz_ranks(before))
    assert topic_of(after.items[0].item_id) == "cooking"
    assert all(item.because != "jazz-02" for item in after.items)


def test_new_catalog_item_is_recommendable_without_restart(pipeline, watcher):
    ts = _now()
    new_items = [
        Item("bees-01", "Beekeeping for Beginners", "Keep honey bees: hives, frames, smokers and your first colony.", ("Books", "Beekeeping"), ts),
        Item("bees-02", "The Honey Harvest Handbook", "Extract, filter and jar honey from your beehives; beeswax candles.", ("Books", "Beekeeping"), ts),
    ]
    pipeline.send(*new_items)
    wait_catalog(pipeline.settings, ["bees-01", "bees-02"], timeout_s=DEADLINE_S)
    user = _user()
    click = Click(user, "bees-01", _now(), f"{user}-1")
    pipeline.send(click)
    rec = watcher.wait_event(click.event_id, DEADLINE_S)
    assert rec.items[0].item_id == "bees-02"
    assert rec.items[0].because == "bees-01"


def test_malformed_events_go_to_the_dead_letter_topic_and_valid_ones_still_produce(pipeline, watcher):
    user = _user()
    ts = _now()
    dlq = tail(pipeline.settings, pipeline.settings.topic(T.DLQ), from_beginning=False)
    clicks = pipeline.settings.topic(T.CLICKS)
    valid = [Click(user, "garden-01", ts, f"{user}-ok1"), Click(user, "not-in-catalog", ts + 1, f"{user}-ok2")]
    bad = [
        (user.encode(), b"{not json"),
        (user.encode(), b"\xff\xfe binary"),
        (user.encode(), orjson.dumps({"user_id": user, "item_id": 42, "ts": ts})),
        (b"someone-else", orjson.dumps({"user_id": user, "item_id": "garden-02", "ts": ts})),
        (user.encode(), orjson.dumps({"user_id": user, "item_id": "garden-02", "ts": ts, "colour": "red"})),
    ]
    pipeline.producer.send(clicks, key=valid[0].user_id.encode(), value=orjson.dumps(valid[0].to_dict()))
    for key, value in bad:
        pipeline.producer.send(clicks, key=key, value=value)
    pipeline.producer.send(clicks, key=valid[1].user_id.encode(), value=orjson.dumps(valid[1].to_dict()))
    pipeline.producer.flush()

    first = watcher.wait_event(valid[0].event_id, DEADLINE_S)
    second = watcher.wait_event(valid[1].event_id, DEADLINE_S)
    assert topic_of(first.items[0].item_id) == "garden"
    # an item missing from the catalog still counts: the user's history keeps it
    assert second.items and topic_of(second.items[0].item_id) == "garden"

    letters = []
    try:
        for record in poll_records(dlq, DEADLINE_S):
            letter = decode_dead_letter(record.value)
            if letter.topic == clicks:
                letters.append(letter)
            if len(letters) >= len(bad):
                break
    finally:
        dlq.close()
    # one letter per bad record (the key "someone-else" lands on another partition, so
    # order across partitions is not defined), each with its original bytes and a reason
    reasons = {letter.original_value(): letter.error for letter in letters}
    assert sorted(reasons) == sorted(value for _, value in bad)
    assert "JSON" in reasons[bad[0][1]]
    assert "UTF-8" in reasons[bad[1][1]]
    assert reasons[bad[2][1]].startswith("item_id")
    assert "key" in reasons[bad[3][1]]
    assert "colour" in reasons[bad[4][1]]
    assert all(letter.offset >= 0 and letter.partition >= 0 for letter in letters)


def test_restarted_worker_recovers_profiles_and_catalog_from_changelogs(kafka_broker, tmp_path):
    p = Pipeline(kafka_broker, tmp_path)
    try:
        p.start()
        p.load_catalog()
        user = _user()
        ts = _now()
        before = [Click(user, "running-01", ts, f"{user}-1"), Purchase(user, "running-02", ts + 1, f"{user}-2")]
        p.send(*before)
        w = RecommendationWatcher(p.settings)
        try:
            w.wait_event(before[-1].event_id, DEADLINE_S)
            assert p.worker.stop() == 0

            # a new worker with an empty state folder: everything must come from the changelogs
            p.worker = p.new_worker(tmp_path / "fresh-state")
            p.start()
            after = Click(user, "running-03", _now(), f"{user}-3")
            p.send(after)
            rec = w.wait_event(after.event_id, DEADLINE_S)
        finally:
            w.close()
        ids = [i.item_id for i in rec.items]
        assert rec.model.endswith("/decayed-sum")  # a real profile, not the popularity fallback
        assert not {"running-01", "running-02", "running-03"} & set(ids)  # history survived the restart
        assert [topic_of(i) for i in ids[:3]] == ["running"] * 3
        view = inspect_user(p.settings, user)
        assert view.profile is not None and view.profile.applied == 3
        assert view.profile.purchased == {"running-02"}
    finally:
        p.close()


def test_the_module_worker_scores_through_the_ivf_index(pipeline):
    # built at the first catalog micro-batch that brings the catalog to 10 items or more (how the
    # 50 items split into micro-batches varies), rebuilt when the catalog doubles
    built = re.compile(r"IVF index built over (\d+) items")
    deadline = time.monotonic() + DEADLINE_S  # the catalog is in the table; the index follows it
    log = ""
    while not built.search(log) and time.monotonic() < deadline:
        log = (pipeline.workdir / "worker.log").read_text(errors="replace")
        time.sleep(0.1)
    assert "scoring index: IVF from 10 items" in log
    sizes = [int(n) for n in built.findall(log)]
    assert sizes and all(10 <= n <= len(pipeline.catalog) for n in sizes)


def test_a_large_binary_record_reaches_the_dead_letter_topic_intact(pipeline):
    """Base64 makes a dead letter a third larger than the record: the DLQ must still take it."""
    dlq = tail(pipeline.settings, pipeline.settings.topic(T.DLQ), from_beginning=False)
    user = _user()
    value = b"\xff" + bytes(range(256)) * 3500  # ~900 kB, not UTF-8
    pipeline.producer.send(pipeline.settings.topic(T.REVIEWS), key=user.encode(), value=value)
    pipeline.producer.flush()
    try:
        letter = next(
            (decode_dead_letter(r.value) for r in poll_records(dlq, DEADLINE_S) if r.key == user.encode()),
            None,
        )
    finally:
        dlq.close()
    assert letter is not None, "the dead letter never arrived"
    assert letter.encoding == "base64"
    assert letter.original_value() == value


def test_subscribe_shows_a_users_recommendations_with_titles(pipeline, watcher):
    import io

    from recstream.streams.subscribe import subscribe

    user = _user()
    click = Click(user, "jazz-03", _now(), f"{user}-1")
    pipeline.send(click)
    rec = watcher.wait_event(click.event_id, DEADLINE_S)
    text, lines = io.StringIO(), io.StringIO()
    assert subscribe(pipeline.settings, from_beginning=True, user=user, limit=1, idle_exit_s=DEADLINE_S, out=text) == 0
    assert subscribe(pipeline.settings, from_beginning=True, user=user, as_json=True, limit=1, idle_exit_s=DEADLINE_S, out=lines) == 0
    shown = text.getvalue()
    assert user in shown and f"({click.event_id})" in shown
    for item in rec.items:
        assert pipeline.titles[item.item_id] in shown
    assert f"because: {pipeline.titles['jazz-03']}" in shown
    assert [orjson.loads(line)["trigger"]["event_id"] for line in lines.getvalue().splitlines()] == [click.event_id]


def test_per_user_mode_publishes_each_touched_users_latest_state(kafka_broker, tmp_path):
    """Production mode: one record per touched user per micro-batch, reflecting the user's last event."""
    p = Pipeline(kafka_broker, tmp_path, emit="per-user")
    try:
        p.start()
        p.load_catalog()
        ts = _now()
        users = {_user(): topic for topic in ("scifi", "jazz", "garden")}
        events = [Click(user, f"{topic}-{i:02d}", ts + i, f"{user}-{i}") for i in range(1, 9) for user, topic in users.items()]
        w = RecommendationWatcher(p.settings)
        try:
            p.send(*events)
            last = {user: f"{user}-8" for user in users}
            w.wait_for(
                lambda w: all(any(r.trigger.event_id == last[u] for r in w.by_user.get(u, [])) for u in users),
                DEADLINE_S,
                "a recommendation after each user's last event",
            )
            recs = {user: w.by_user[user] for user in users}
        finally:
            w.close()
        total = sum(len(r) for r in recs.values())
        assert len(users) <= total <= len(events)
        for user, topic in users.items():
            assert all(r.trigger.event_id.startswith(user) for r in recs[user])
            final = recs[user][-1]
            assert final.trigger.event_id == last[user]
            ids = [i.item_id for i in final.items]
            assert not {f"{topic}-{i:02d}" for i in range(1, 9)} & set(ids)
            assert topic_of(ids[0]) == topic
    finally:
        p.close()
