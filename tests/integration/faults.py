"""Helpers shared by the fault-injection integration tests (bad input, poison batches,
broker restarts, the hard faults) and the multi-worker tests (two and three workers in one
group): among them the exactly-once accounting (:func:`assert_answered_once`,
:func:`assert_profiles_offline`) and a broker of a test's own (:class:`PrivateBroker`), for
the tests that stop or kill it.

Everything here observes the pipeline from outside, as an operator would: raw records are
produced with kafka-python, and the outcome is read back from the output topics (the
recommendations and the dead-letter topic) and from the ``profiles`` changelog (the same
source ``recstream profile`` reads). Nothing here reaches into the worker process.

The test modules import this file by path (the test tree is not a package and pytest runs
in ``importlib`` mode), see :func:`load`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Sequence

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from recstream.encoders.profile import UserProfile
from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, partition_for, producer, read_to_end, send_records, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog
from recstream.streams.records import Click, DeadLetter, Purchase, Item, Recommendation, ValidationError, decode_dead_letter, decode_recommendation

#: A topic/partition/offset triple: where a record lives, and how outputs point back at it.
Coord = tuple[str, int, int]

PARTITIONS = 2
BATCH_FAILED = re.compile(r"a micro-batch of (\d+) records failed")


class Deadline:
    """A bounded wait: ``while not done: deadline.check(what)``; never a fixed sleep."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s

    def expired(self) -> bool:
        return time.monotonic() > self.end

    def check(self, what: Callable[[], str] | str) -> None:
        if self.expired():
            raise AssertionError(f"timed out after {self.timeout_s:.0f}s waiting for {what() if callable(what) else what}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Sent:
    """A raw record as produced, and where the broker put it."""

    kind: str  # logical topic: clicks, purchases or reviews
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int

    @property
    def coord(self) -> Coord:
        return (self.topic, self.partition, self.offset)


def send_raw(prod: KafkaProducer, settings: KafkaSettings, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> list[Sent]:
    """Produce ``(kind, key, value)`` byte records in order, flush, and return where each landed."""
    pending = []
    for kind, key, value in records:
        pending.append((kind, key, value, prod.send(settings.topic(kind), key=key, value=value)))
    prod.flush()
    sent = []
    for kind, key, value, future in pending:
        meta = future.get(timeout=60)
        sent.append(Sent(kind, key, value, meta.topic, meta.partition, meta.offset))
    return sent


def key_on_partition(prefix: str, partition: int, partitions: int = PARTITIONS) -> str:
    """A user id starting with ``prefix`` whose key the default partitioner puts on ``partition``."""
    for i in range(10_000):
        candidate = f"{prefix}-{i}"
        if partition_for(candidate.encode(), partitions) == partition:
            return candidate
    raise AssertionError("no key found")  # pragma: no cover - murmur2 spreads keys


def describe_coords(coords: Iterable[Coord], limit: int = 12) -> str:
    """Coords as offset ranges per topic partition, for failure messages:
    ``"clicks:2@310-337, clicks:3@12"`` (the topic's prefix dropped)."""
    by_tp: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in coords:
        by_tp.setdefault((topic.rsplit(".", 1)[-1], partition), []).append(offset)
    parts = []
    for (topic, partition), offsets in sorted(by_tp.items()):
        offsets.sort()
        runs, start = [], offsets[0]
        for prev, cur in zip(offsets, offsets[1:] + [None]):
            if cur != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        parts.append(f"{topic}:{partition}@{','.join(runs)}")
    return ", ".join(parts[:limit]) + (f", ... {len(parts) - limit} more partitions" if len(parts) > limit else "") if parts else "none"


class TopicLog:
    """Every record of an output topic from the beginning, decoded as read.

    ``poll`` reads what has arrived; ``read_to_end`` reads up to the topic's end as it is now,
    so counts taken after it include everything written before the call. A value the contract's
    decoder rejects is kept in ``rejected`` with the error, not raised: the tests report it.
    """

    def __init__(self, settings: KafkaSettings, topic: str, decode: Callable[[bytes], object], *, committed: bool = False) -> None:
        # committed: only records of committed transactions (read_committed, as `recstream
        # subscribe` reads); else every record appended, aborted attempts' included
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed" if committed else "read_uncommitted",
        )
        partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            self.consumer.close()
            raise ValueError(f"topic {topic!r} does not exist")
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.decode = decode
        self.entries: list = []
        self.rejected: list[tuple[bytes, ValidationError]] = []

    def poll(self, timeout_ms: int = 200) -> int:
        got = 0
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).values():
            for record in records:
                try:
                    self.entries.append(self.decode(record.value))
                except ValidationError as exc:
                    self.rejected.append((record.value, exc))
                got += 1
        return got

    def read_to_end(self, timeout_s: float = 60.0) -> None:
        end = self.consumer.end_offsets(self.tps)
        deadline = Deadline(timeout_s)
        while any(self.consumer.position(tp) < end[tp] for tp in self.tps):
            deadline.check(f"the end of {self.tps[0].topic}")
            self.poll()

    def close(self) -> None:
        self.consumer.close()


class Outputs:
    """The pipeline's two output topics, indexed by the input record each entry points at
    (``committed``: as a ``read_committed`` reader sees them, for exactly-once)."""

    def __init__(self, settings: KafkaSettings, *, committed: bool = False) -> None:
        self.recs = TopicLog(settings, settings.topic(T.RECOMMENDATIONS), decode_recommendation, committed=committed)
        self.dlq = TopicLog(settings, settings.topic(T.DLQ), decode_dead_letter, committed=committed)

    def poll(self) -> None:
        self.recs.poll(100)
        self.dlq.poll(100)

    def read_to_end(self) -> None:
        self.recs.read_to_end()
        self.dlq.read_to_end()

    def recs_by_coord(self) -> dict[Coord, list[Recommendation]]:
        out: dict[Coord, list[Recommendation]] = {}
        for rec in self.recs.entries:
            t = rec.trigger
            out.setdefault((t.topic, t.partition, t.offset), []).append(rec)
        return out

    def rejected_recs_by_coord(self) -> dict[Coord, list[str]]:
        """Recommendations that break the contract, by the trigger they name (read leniently)."""
        out: dict[Coord, list[str]] = {}
        for raw, exc in self.recs.rejected:
            trigger = orjson.loads(raw).get("trigger", {})
            out.setdefault((trigger.get("topic"), trigger.get("partition"), trigger.get("offset")), []).append(f"{exc} in {raw[:300]!r}")
        return out

    def letters_by_coord(self) -> dict[Coord, list[DeadLetter]]:
        out: dict[Coord, list[DeadLetter]] = {}
        for letter in self.dlq.entries:
            out.setdefault((letter.topic, letter.partition, letter.offset), []).append(letter)
        return out

    def wait_for(self, recs: Iterable[Coord], letters: Iterable[Coord], timeout_s: float, alive: Callable[[], None]) -> None:
        """Poll until every coord in ``recs`` has a recommendation and every one in ``letters`` a
        dead letter; ``alive`` is called on each round (to fail fast if the worker died)."""
        want_recs, want_letters = set(recs), set(letters)
        deadline = Deadline(timeout_s)
        while True:
            missing_recs = want_recs - self.recs_by_coord().keys() - self.rejected_recs_by_coord().keys()
            missing_letters = want_letters - self.letters_by_coord().keys()
            if not missing_recs and not missing_letters:
                return
            alive()
            deadline.check(
                lambda: (
                    f"{len(missing_recs)} of {len(want_recs)} recommendations "
                    f"({describe_coords(missing_recs)}) and {len(missing_letters)} of "
                    f"{len(want_letters)} dead letters ({describe_coords(missing_letters)})"
                )
            )
            self.poll()

    def close(self) -> None:
        self.recs.close()
        self.dlq.close()


def read_profiles(settings: KafkaSettings, timeout_s: float = 60.0, *, committed: bool = False) -> dict[str, UserProfile]:
    """Every user's latest profile, from the ``profiles`` changelog (what ``recstream profile``
    reads, for all users at once; ``committed``: committed transactions' records only)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    try:
        changelog = settings.changelog(T.PROFILES_TABLE)
        partitions = consumer.partitions_for_topic(changelog) or set()
        latest: dict[bytes, bytes | None] = {}
        tps = [TopicPartition(changelog, p) for p in sorted(partitions)]
        for record in read_to_end(consumer, tps, timeout_s=timeout_s):
            latest[record.key] = record.value
        return {k.decode(): UserProfile.from_bytes(v) for k, v in latest.items() if v is not None}
    finally:
        consumer.close()


def wait_applied(
    settings: KafkaSettings, expected: dict[str, int], timeout_s: float, alive: Callable[[], None], *, committed: bool = False
) -> dict[str, UserProfile]:
    """Re-read the profiles changelog until each user's ``applied`` count is as ``expected``
    (0: no profile at all), or the deadline passes; returns the last profiles read."""
    deadline = Deadline(timeout_s)
    while True:
        profiles = read_profiles(settings, committed=committed)
        got = {user: profiles[user].applied if user in profiles else 0 for user in expected}
        if got == expected:
            return profiles
        alive()
        if deadline.expired():
            diff = {u: (got[u], n) for u, n in expected.items() if got[u] != n}
            raise AssertionError(f"profile 'applied' counts (got, expected) differ for {len(diff)} users: {dict(list(diff.items())[:10])}")
        time.sleep(0.5)  # between two full reads of the changelog: a poll interval, not a wait for an outcome


@dataclass
class Worker:
    """A ``recstream worker`` subprocess in its own topic namespace, with the demo catalog loaded."""

    settings: KafkaSettings
    workdir: Path
    args: Sequence[str]
    env: dict[str, str] | None = None
    catalog: list[Item] = field(default_factory=list)
    process: WorkerProcess | None = None
    producer: KafkaProducer | None = None

    def start(self) -> "Worker":
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=PARTITIONS))
        # 1.1 MB: room for values just over the contract's 1,000,000-byte limit
        self.producer = producer(self.settings, max_request_size=1_100_000)
        self.process = WorkerProcess(
            self.settings,
            self.workdir / "state",
            "--partitions",
            str(PARTITIONS),
            *self.args,
            log_path=self.workdir / "worker.log",
            env=self.env,
        )
        self.process.start()
        self.process.wait_ready()
        self.catalog = load_catalog(ts=now_ms())
        send_records(self.producer, self.settings, self.catalog)
        self.producer.flush()
        wait_catalog(self.settings, [i.item_id for i in self.catalog], timeout_s=120)
        return self

    def assert_alive(self) -> None:
        assert self.process is not None
        code = self.process.proc.poll() if self.process.proc is not None else None
        if code is not None:
            raise AssertionError(f"the worker exited with status {code}:\n{self.process.log_text()[-3000:]}")

    def log(self) -> str:
        return self.process.log_text() if self.process is not None else ""

    def failed_batch_sizes(self) -> list[int]:
        """Sizes of the micro-batches the worker logged as failed (and retried one by one)."""
        return [int(n) for n in BATCH_FAILED.findall(self.log())]

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.close()
        if self.process is not None:
            self.process.stop()
        leftovers = list(T.list_topics(self.settings))
        if leftovers:
            T.delete_topics(self.settings, leftovers)


def fresh_settings(broker: str, tag: str) -> KafkaSettings:
    return KafkaSettings(broker=broker, topic_prefix=f"{tag}{uuid.uuid4().hex[:8]}.")


def count(items: Iterable[str]) -> dict[str, int]:
    return dict(Counter(items))


# --------------------------------------------------------------------------- several workers

_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _log_ms(line: str) -> int | None:
    """Epoch ms of a Faust text log line (its time is the machine's local time), else None."""
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    return int(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000)


def _partition_set(text: str) -> set[int]:
    """``"0-1, 3"`` (how Faust prints a partition set) as {0, 1, 3}."""
    out: set[int] = set()
    for part in text.split(","):
        if part.strip():
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _table_row(topic: str) -> re.Pattern[str]:
    return re.compile(rf"^\| {re.escape(topic)} +\| \{{([^}}]*)\}} +\|")


def assignments(log: str, topic: str) -> list[tuple[int, set[int]]]:
    """Every assignment the worker logged, as (epoch ms, partitions of ``topic``).

    Faust logs "Setting newly assigned partitions" with the partitions as a table on the
    following lines (``| topic | {0-1, 3} |``), or inline as ``TopicPartition(topic='...',
    partition=3)`` items when the log formatter renders the arguments itself.
    """
    row = _table_row(topic)
    inline = re.compile(rf"TopicPartition\(topic='{re.escape(topic)}', partition=(\d+)\)")
    out: list[tuple[int, set[int]]] = []
    in_table = False
    last_ms = 0
    for line in log.splitlines():
        ms = _log_ms(line)
        if ms is not None:
            last_ms = ms
        if in_table:
            m = row.match(line)
            if m is not None:
                out[-1][1].update(_partition_set(m.group(1)))
            if "for group" in line:
                in_table = False
        elif "Setting newly assigned partitions" in line:
            out.append((last_ms, {int(p) for p in inline.findall(line)}))
            in_table = "for group" not in line
    return out


def assigned_partitions(log: str, topic: str) -> set[int]:
    """The partitions of ``topic`` in the worker's latest logged assignment."""
    found = assignments(log, topic)
    return found[-1][1] if found else set()


@dataclass(frozen=True, slots=True)
class Holding:
    """A worker held ``partitions`` of a topic from ``start_ms`` to ``end_ms`` (None: still)."""

    partitions: frozenset[int]
    start_ms: int
    end_ms: int | None

    def holds(self, partition: int, ms: int) -> bool:
        return partition in self.partitions and self.start_ms <= ms and (self.end_ms is None or ms <= self.end_ms)


def holdings(log: str, topic: str) -> list[Holding]:
    """The worker's partitions of ``topic`` over time, read from its log.

    A holding starts at "Setting newly assigned partitions" (before the worker processes
    anything of the new assignment) and ends when the worker gives the partitions up: after
    its revocation handler ran ("(Re-)joining group" follows "Revoking previously assigned
    partitions"), or when it left the group on stop ("LeaveGroup request succeeded", or at
    the latest when its process ended). An answer the worker emitted for a partition outside
    its holdings was emitted by a worker that no longer owned that partition.
    """
    starts = iter(assignments(log, topic))
    out: list[Holding] = []
    current: tuple[frozenset[int], int] | None = None
    revoking = False
    last_ms = 0

    def close(at: int) -> None:
        nonlocal current
        if current is not None:
            out.append(Holding(current[0], current[1], at))
            current = None

    for line in log.splitlines():
        ms = _log_ms(line)
        if ms is not None:
            last_ms = ms
        if "Setting newly assigned partitions" in line:
            close(last_ms)  # a worker killed without leaving: its next start takes over
            at, partitions = next(starts)
            current = (frozenset(partitions), at)
        elif "Revoking previously assigned partitions" in line:
            revoking = True
        elif "(Re-)joining group" in line and revoking:
            revoking = False
            close(last_ms)
        elif "LeaveGroup request succeeded" in line or "[^Worker]: Closing event loop" in line:
            close(last_ms)
    if current is not None:
        out.append(Holding(current[0], current[1], None))
    return [h for h in out if h.partitions]


class WorkerGroup:
    """Several ``recstream worker`` processes of one deployment (one consumer group), each
    with its own state folder and log, for the multi-worker tests."""

    def __init__(self, settings: KafkaSettings, root: Path, names: Sequence[str], args: Sequence[str]) -> None:
        self.settings = settings
        self.workers = {name: WorkerProcess(settings, root / name, *args, log_path=root / f"{name}.log") for name in names}
        self.running: list[str] = []

    def start(self, *names: str, timeout_s: float = 600.0) -> None:
        """Start the workers together (they load their models in parallel), then wait for each."""
        for name in names:
            self.workers[name].start()
            self.running.append(name)
        for name in names:
            self.workers[name].wait_ready(timeout_s)

    def stop(self, name: str) -> int:
        """SIGTERM one worker (a clean stop) and wait for it; returns its exit status."""
        self.running.remove(name)
        return self.workers[name].stop()

    def kill(self, name: str) -> None:
        """SIGKILL one worker (no clean stop: it neither commits nor leaves the group; the group
        notices when its session times out) and wait for it. ``start(name)`` restarts it on
        its own state folder, which it then discards (``streams.worker.claim_state``)."""
        self.running.remove(name)
        self.workers[name].kill()

    def alive(self) -> None:
        for name in self.running:
            proc = self.workers[name].proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with status {proc.returncode}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        """Everything the worker logged in this test (all its starts)."""
        path = self.workers[name].log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def shares(self, topic: str) -> dict[str, set[int]]:
        """The latest assignment of every running worker."""
        return {name: assigned_partitions(self.log(name), topic) for name in self.running}

    def wait_balanced(self, topic: str, partitions: int, timeout_s: float) -> dict[str, set[int]]:
        """Wait until the running workers' latest assignments are non-empty, disjoint and cover
        every partition of ``topic``; returns them."""
        deadline = Deadline(timeout_s)
        while True:
            shares = self.shares(topic)
            if partitions_split(shares, partitions):
                return shares
            self.alive()
            deadline.check(lambda: f"a balanced assignment of {partitions} partitions, have {shares}")
            time.sleep(0.5)  # between two reads of the logs: a poll interval

    def holdings(self, topic: str) -> dict[str, list[Holding]]:
        return {name: holdings(self.log(name), topic) for name in self.workers}

    def close(self) -> None:
        for name in list(self.running):
            self.stop(name)


def partitions_split(shares: dict[str, set[int]], partitions: int) -> bool:
    """True when every worker holds something, no partition twice, and all of them."""
    held = [p for share in shares.values() for p in share]
    return all(shares.values()) and len(held) == len(set(held)) and set(held) == set(range(partitions))


def random_clicks(n: int, users: int, item_ids: Sequence[str], start_ms: int, tag: str) -> list[Click]:
    """``n`` clicks of users ``u0``..``u{users-1}`` on random catalog items, one ms apart,
    event ids ``<tag><i>``; the same ``tag`` gives the same clicks."""
    rng = random.Random(tag)
    return [Click(f"u{rng.randrange(users)}", rng.choice(item_ids), start_ms + i, f"{tag}{i}") for i in range(n)]


def send_events(prod: KafkaProducer, settings: KafkaSettings, events: Sequence) -> list[Coord]:
    """Produce contract records, flush, and return where each landed."""
    futures = send_records(prod, settings, events)
    prod.flush()
    return [(m.topic, m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]


def offline_profiles(catalog, placed: Sequence[tuple[Click | Purchase, str, int, int]]) -> dict[str, UserProfile]:
    """Each user's profile as the worker's own pure engine computes it from ``placed`` (events with
    their topic, partition and offset, in order), in batches of 1,000, with ``catalog`` embedded."""
    import numpy as np

    from recstream.encoders.profile import DecayedProfileModel
    from recstream.encoders.text import TextEncoder, item_text
    from recstream.scoring.engine import Engine, EngineConfig, Incoming
    from recstream.scoring.popularity import DecayedPopularity
    from recstream.scoring.topk import ItemMatrix

    encoder = TextEncoder(device="cpu")
    matrix = ItemMatrix(encoder.dim, "cpu")
    texts = [item_text(i.title, i.categories, i.description) for i in catalog]
    matrix.upsert([i.item_id for i in catalog], np.asarray(encoder.encode_numpy(texts), dtype=np.float32))
    config = EngineConfig(k=5, emit="per-event")
    engine = Engine(
        model=DecayedProfileModel(dim=encoder.dim), matrix=matrix, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=encoder, config=config
    )
    profiles: dict[str, UserProfile] = {}
    batch = [Incoming(ev, topic, partition, offset) for ev, topic, partition, offset in placed]
    for start in range(0, len(batch), 1000):
        profiles.update(engine.process(batch[start : start + 1000], profiles, now_ms=0).profiles)
    return profiles


# --------------------------------------------------------------------------- exactly-once accounting


def assert_answered_once(outputs: Outputs, placed: Sequence[tuple[object, str, int, int]], bad: Iterable[Coord] = ()) -> None:
    """Exactly one recommendation per valid event of ``placed`` (event, topic, partition,
    offset) and nothing else, one dead letter per ``bad`` coord and nothing else, as read by
    ``outputs`` to the end (``Outputs(committed=True)`` under exactly-once)."""
    outputs.read_to_end()
    want = {(topic, partition, offset) for _, topic, partition, offset in placed}
    by_coord = outputs.recs_by_coord()
    missing = want - by_coord.keys()
    doubled = {c for c, recs in by_coord.items() if len(recs) > 1}
    unknown = by_coord.keys() - want
    assert not missing and not doubled and not unknown, (
        f"{len(missing)} events without a recommendation ({describe_coords(missing)}), {len(doubled)} with several "
        f"({describe_coords(doubled)}), {len(unknown)} recommendations for no event sent ({describe_coords(unknown)})"
    )
    assert not outputs.recs.rejected, outputs.recs.rejected[:3]
    letters = outputs.letters_by_coord()
    bad = set(bad)
    assert letters.keys() == bad and all(len(v) == 1 for v in letters.values()), (
        f"dead letters differ from the malformed records: {describe_coords(letters.keys() ^ bad)}; "
        f"repeated: {describe_coords(c for c, v in letters.items() if len(v) > 1)}"
    )


def assert_profiles_offline(settings: KafkaSettings, catalog, placed: Sequence[tuple[Click | Purchase, str, int, int]]) -> None:
    """Every user's committed profile (the ``profiles`` changelog, ``read_committed``) equals
    the one the worker's pure engine computes offline from ``placed``: each event applied once."""
    import numpy as np

    expected = offline_profiles(catalog, placed)
    got = read_profiles(settings, committed=True)
    assert got.keys() == expected.keys(), f"users {sorted(got.keys() ^ expected.keys())[:10]} differ"
    counts = Counter(event.user_id for event, *_ in placed)
    for user, want in expected.items():
        have = got[user]
        assert have.applied == counts[user] == want.applied, (user, have.applied, counts[user])
        assert have.offsets == want.offsets, user
        assert have.purchased == want.purchased, user
        assert [(h.item_id, h.ts, h.kind) for h in have.history] == [(h.item_id, h.ts, h.kind) for h in want.history], user
        assert have.ref_ts == want.ref_ts, user
        np.testing.assert_allclose(have.vector, want.vector, rtol=1e-4, atol=1e-5, err_msg=user)


def place(prod: KafkaProducer, settings: KafkaSettings, events: Sequence) -> list[tuple[object, str, int, int]]:
    """Produce contract events, flush, and return ``(event, topic, partition, offset)`` each."""
    return [(event, *coord) for event, coord in zip(events, send_events(prod, settings, events))]


def mixed_events(n: int, users: int, item_ids: Sequence[str], start_ms: int, tag: str) -> list[Click | Purchase]:
    """``n`` clicks and purchases (one in five) of users ``u0``..``u{users-1}``, one second
    apart (distinct times: a profile does not depend on arrival order), event ids ``<tag><i>``."""
    rng = random.Random(tag)
    return [(Purchase if rng.random() < 0.2 else Click)(f"u{rng.randrange(users)}", rng.choice(item_ids), start_ms + i * 1000, f"{tag}{i}") for i in range(n)]


# --------------------------------------------------------------------------- a broker of the test's own


def ports_free(first: int, count: int) -> bool:
    """Whether ports ``first`` .. ``first + count - 1`` can be bound on loopback (as a broker
    binds them: a port in TIME_WAIT is no obstacle)."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_block(count: int, preferred: int | None = None) -> int:
    """The first of ``count`` consecutive free ports: ``preferred`` when its block is free,
    else one found from a port the system hands out."""
    if preferred is not None and ports_free(preferred, count):
        return preferred
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count <= 65536 and ports_free(port, count):
            return port
    raise RuntimeError(f"no block of {count} free ports")


def free_port_pair() -> int:
    """A free port whose successor is free too (kafka.sh puts the controller on PORT+1)."""
    return free_port_block(2)


def kafka_sh(action: str, env: dict[str, str], timeout_s: float, *flags: str) -> subprocess.CompletedProcess:
    """``deploy/kafka/kafka.sh ACTION [FLAGS]`` with ``env`` (which says which broker)."""
    from recstream.streams.localkafka import script_path

    return subprocess.run(["bash", str(script_path()), action, *flags], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def remove_broker(env: dict[str, str], data: Path, *flags: str) -> None:
    """Stop a test's own broker (SIGKILL when the clean stop failed) and delete its data folder."""
    try:
        kafka_sh("stop", env, 90, *flags)
    finally:
        pidfile = data / "broker.pid"  # still there only when the clean stop failed
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), 9)
            except (OSError, ValueError):
                pass
        shutil.rmtree(data, ignore_errors=True)


def cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """``recstream ARGS`` in a subprocess with ``env``, from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "recstream", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def jsonl(path: Path, records: list[dict]) -> Path:
    """``records`` written as JSON lines (a dataset file for ``recstream produce``)."""
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


class PrivateBroker:
    """A plain broker of the test's own (``deploy/kafka/kafka.sh`` with ``RECSTREAM_KAFKA_PORT``
    and ``RECSTREAM_KAFKA_DATA``): its own free port pair and data folder, so that stopping or
    killing it touches no other test and nobody's broker on 9092."""

    def __init__(self, data: Path, start_timeout_s: float = 180.0) -> None:
        from recstream.streams.localkafka import script_path

        self.port = free_port_pair()
        self.data = Path(data)
        self.script = script_path()
        self.start_timeout_s = start_timeout_s
        self.env = {
            **os.environ,
            "RECSTREAM_KAFKA_PORT": str(self.port),
            "RECSTREAM_KAFKA_DATA": str(self.data),
            "RECSTREAM_KAFKA_START_TIMEOUT": str(int(start_timeout_s)),
            "RECSTREAM_KAFKA_SECURITY": "plain",
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.script), action], env=self.env, capture_output=True, text=True, timeout=self.start_timeout_s + 90, check=False)

    def start(self) -> float:
        """Start it (on its existing data, if any) and wait until it answers; returns the seconds taken."""
        t0 = time.monotonic()
        done = self._run("start")
        if done.returncode != 0:
            raise AssertionError(f"the private broker did not start:\n{done.stderr[-3000:]}")
        return time.monotonic() - t0

    def stop(self) -> None:
        """A clean stop (SIGTERM; kafka.sh kills it after 60 s)."""
        done = self._run("stop")
        assert done.returncode == 0, done.stderr[-3000:]

    def pid(self) -> int:
        return int((self.data / "broker.pid").read_text().strip())

    def kill(self, timeout_s: float = 30.0) -> int:
        """SIGKILL the broker's java process (its pid from ``broker.pid``), wait until it is
        gone, and return the pid. The pid file goes too: the process may stay a zombie where
        nothing reaps it, and kafka.sh would take a zombie for a running broker."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = Deadline(timeout_s)
        while _process_alive(pid) or self.answers():  # a dying JVM's listening socket outlives it briefly
            deadline.check(f"broker process {pid} to die after SIGKILL")
            time.sleep(0.1)  # poll interval
        (self.data / "broker.pid").unlink(missing_ok=True)
        return pid

    def answers(self) -> bool:
        from recstream.streams.localkafka import answers

        return answers(self.bootstrap, timeout_s=1.0)

    def log_tail(self, lines: int = 40) -> str:
        path = self.data / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
