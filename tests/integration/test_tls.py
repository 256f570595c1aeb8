"""TLS against a real broker: SSL, mutual TLS, SASL_SSL with PLAIN and with SCRAM, ACLs.

The module starts its own TLS broker (``deploy/kafka/kafka.sh start --tls``) on a free block
of ports in a temporary folder, with fresh random passwords, the two extra listeners with
bad certificates (``RECSTREAM_KAFKA_TLS_BAD_CERTS=1``: an expired broker certificate, one for
another host) and the CA, broker and client certificates the script makes with openssl; it
stops the broker and removes the folder at the end, whatever happened. Every client checks
the broker's certificate against the script's CA file with host name checking on. The admin
grants ``alice`` exactly the ACLs docs/operations.md documents (topics, consumer groups and
transactional ids with the test's prefix), ``bob`` the same without the transactional ids,
and ``User:ANONYMOUS`` (the SSL listener without client certificates) the documented ACLs (docs/operations.md) on
one sub-prefix. Then:

* SASL_SSL PLAIN, the usual managed-cluster set-up: ``recstream produce``, a worker,
  ``recstream subscribe``, and ``recstream backtest`` scoring what the worker published
  (it reads the catalog, the clicks and the recommendations back);
* SSL and mutual TLS: the catalog produced and a worker run with alice's client certificate
  (mTLS), clicks produced and the answers read with ``subscribe`` without one (SSL), and
  read again over mTLS;
* SASL_SSL SCRAM-SHA-512, least privilege: alice runs an exactly-once worker through one
  SIGKILL that lands in an open transaction; every valid event is answered exactly once,
  every malformed record has one dead letter, every profile applied each event once; bob,
  without the transactional-id ACL, is refused by the check an exactly-once worker needs
  before it starts, so his worker stops with one line rather than wait forever;
* a wrong CA, an expired broker certificate, a certificate for another host, a wrong PLAIN
  password and mutual TLS without a client certificate each end the command with one clear
  line and exit status 1 (and without host name checking the wrong-host listener works).

The tests that run workers are marked ``slow`` (``-m "not slow"`` keeps the broker start and
the one-line error checks: about 45 s on an idle 2-core machine).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import AuthorizationError

from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, connection_options, producer, read_to_end, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog, topic_of
from recstream.streams.produce import parse_time
from recstream.streams.records import Click, Purchase, decode_dead_letter, decode_recommendation, encode, record_key
from recstream.streams.security import SecuritySettings, check_transactional_ids, kafka_python_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180
CLI_TIMEOUT_S = 120
#: offsets of the listeners from the broker's first port (deploy/kafka/kafka.sh, --tls)
OFFSETS = {"SSL": 0, "MTLS": 1, "SASL_PLAIN": 2, "SASL_SCRAM": 3, "EXPIRED": 5, "WRONG_HOST": 6}
PORTS = 7  # the listeners above and the controller (PORT+4)


def _free_port_block() -> int:
    """19097 (the script's default) when its 7 ports are free, else another free block."""
    return faults.free_port_block(PORTS, preferred=19097)


@dataclass(frozen=True)
class TlsBroker:
    port: int
    tls: Path  # the script's certificate folder: ca.pem, client.pem, client.key
    passwords: dict[str, str]
    prefix: str  # alice's and bob's ACLs cover it
    wrong_ca: Path  # a CA that signed nothing of this broker

    @property
    def ca(self) -> str:
        return str(self.tls / "ca.pem")

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.port + OFFSETS[listener]}"

    def security(self, listener: str, user: str = "alice", **overrides) -> SecuritySettings:
        """How a client reaches ``listener``: the script's CA, host name checking on,
        alice's client certificate on the mTLS listener, ``user``'s password with SASL."""
        kw: dict = {"ssl_cafile": self.ca}
        if listener == "MTLS":
            kw.update(ssl_certfile=str(self.tls / "client.pem"), ssl_keyfile=str(self.tls / "client.key"))
        if listener == "SASL_PLAIN":
            kw.update(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username=user, sasl_password=self.passwords[user])
        elif listener == "SASL_SCRAM":
            kw.update(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=self.passwords[user])
        else:
            kw.update(protocol="SSL")
        kw.update(overrides)
        return SecuritySettings(**kw)

    def settings(self, listener: str, prefix: str, user: str = "alice", **overrides) -> KafkaSettings:
        return KafkaSettings(broker=self.address(listener), topic_prefix=prefix, security=self.security(listener, user, **overrides))


def env_of(settings: KafkaSettings) -> dict[str, str]:
    """The environment of a recstream command with these settings (the password only here)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECSTREAM_SASL_", "RECSTREAM_SSL_", "RECSTREAM_SECURITY", "RECSTREAM_CONFIG", "RECSTREAM_APP_ID"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RECSTREAM_BROKER=settings.broker,
        RECSTREAM_TOPIC_PREFIX=settings.topic_prefix,
        **settings.security.to_env(),
    )
    return env


def _kafka_sh(action: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return faults.kafka_sh(action, env, timeout_s, "--tls")


def grant(admin: KafkaSettings, principal: str, prefix: str, transactional_ids: bool = True) -> None:
    """The documented ACLs (docs/operations.md) for a worker on topic prefix ``prefix``: topics and consumer groups
    with the prefix (the app id shares it) and, for exactly-once, transactional ids with it."""
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    def allow(kind: ResourceType, op: ACLOperation) -> ACL:
        return ACL(principal, "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, prefix, ACLResourcePatternType.PREFIXED))

    acls = [
        allow(ResourceType.TOPIC, op)
        for op in (ACLOperation.READ, ACLOperation.WRITE, ACLOperation.DESCRIBE, ACLOperation.CREATE, ACLOperation.DESCRIBE_CONFIGS)
    ]
    acls += [allow(ResourceType.GROUP, ACLOperation.READ), allow(ResourceType.GROUP, ACLOperation.DESCRIBE)]
    if transactional_ids:
        acls += [allow(ResourceType.TRANSACTIONAL_ID, ACLOperation.WRITE), allow(ResourceType.TRANSACTIONAL_ID, ACLOperation.DESCRIBE)]
    client = KafkaAdminClient(bootstrap_servers=admin.bootstrap_servers, **kafka_python_kwargs(admin.security))
    try:
        result = client.create_acls(acls)
        assert not result["failed"], result["failed"]
        wanted = ACLFilter(
            principal, "*", ACLOperation.ANY, ACLPermissionType.ANY, ResourcePatternFilter(ResourceType.ANY, prefix, ACLResourcePatternType.PREFIXED)
        )
        deadline = faults.Deadline(30)
        while len(client.describe_acls(wanted)[0]) < len(acls):  # the broker enforces what it describes
            deadline.check(f"the ACLs of {principal} on {prefix}")
            time.sleep(0.2)  # poll interval
    finally:
        client.close()


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsBroker]:
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.skip("the TLS broker needs Java and openssl")
    port = _free_port_block()
    data = Path(tempfile.mkdtemp(prefix="recstream-tls-"))
    passwords = {user: secrets.token_hex(12) for user in ("admin", "alice", "bob")}
    env = {
        **os.environ,
        "RECSTREAM_KAFKA_TLS_PORT": str(port),
        "RECSTREAM_KAFKA_TLS_DATA": str(data),
        "RECSTREAM_KAFKA_TLS_USERS": ",".join(f"{u}:{p}" for u, p in passwords.items()),
        "RECSTREAM_KAFKA_TLS_CLIENT": "alice",
        "RECSTREAM_KAFKA_TLS_BAD_CERTS": "1",
        "RECSTREAM_KAFKA_START_TIMEOUT": str(START_TIMEOUT_S),
    }
    try:
        started = _kafka_sh("start", env, START_TIMEOUT_S + 120)
        if started.returncode != 0:
            pytest.fail(f"the TLS broker did not start:\n{started.stderr[-3000:]}")
        status = _kafka_sh("status", env, 30)
        assert status.returncode == 0 and f"127.0.0.1:{port + 3}" in status.stdout, status.stdout + status.stderr
        wrong = data / "wrong-ca"
        wrong.mkdir()
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=another CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-keyout",
                str(wrong / "ca.key"),
                "-out",
                str(wrong / "ca.pem"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        broker = TlsBroker(port, data / "tls", passwords, f"tls{uuid.uuid4().hex[:8]}.", wrong / "ca.pem")
        admin = broker.settings("SASL_SCRAM", broker.prefix, "admin")
        grant(admin, "User:alice", broker.prefix)
        grant(admin, "User:bob", broker.prefix, transactional_ids=False)
        grant(admin, "User:ANONYMOUS", f"{broker.prefix}anon.")
        yield broker
    finally:
        faults.remove_broker(env, data, "--tls")


def _cli(args: list[str], env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return faults.cli(args, env, timeout_s)


_jsonl = faults.jsonl


def _produce(settings: KafkaSettings, path: Path, records: list[dict], *extra: str) -> None:
    done = _cli(["produce", str(_jsonl(path, records)), "--format", "jsonl", *extra], env_of(settings))
    assert done.returncode == 0, done.stderr[-2000:]


def _subscribe(settings: KafkaSettings, limit: int) -> list[dict]:
    got = _cli(["subscribe", "--from-beginning", "--json", "--limit", str(limit), "--idle-exit", "60"], env_of(settings))
    assert got.returncode == 0, got.stderr[-2000:]
    return [orjson.loads(line) for line in got.stdout.splitlines()]


def _items(catalog) -> list[dict]:
    return [{"topic": "items", **i.to_dict()} for i in catalog]


def _clicks(clicks: list[Click]) -> list[dict]:
    return [{"topic": "clicks", "user_id": c.user_id, "item_id": c.item_id, "ts": c.ts, "event_id": c.event_id} for c in clicks]


def _one_clear_line(result: subprocess.CompletedProcess, starts: str, *contains: str) -> str:
    """The command failed with status 1 and exactly one line on stderr, which starts with
    ``starts`` and holds each of ``contains``; no traceback, nothing on stdout."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(starts), lines[0]
    for part in contains:
        assert part in lines[0], (part, lines[0])
    assert not result.stdout.strip()
    return lines[0]


# --------------------------------------------------------------------------- SASL_SSL PLAIN

START = parse_time("2024-01-01")
SPLIT = START + 30 * 86_400_000


def _topical_clicks(catalog, users: int = 12, per_user: int = 8, seed: int = 5) -> list[Click]:
    """Users who mostly stay with one topic, one click every few days (some after SPLIT)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for item in catalog:
        by_topic.setdefault(topic_of(item.item_id), []).append(item.item_id)
    topics = sorted(by_topic)
    clicks = []
    for u in range(users):
        ts = START + u * 1000
        for n in range(per_user):
            pool = by_topic[topics[u % len(topics)]] if rng.random() < 0.85 else by_topic[rng.choice(topics)]
            ts += rng.randint(2, 7) * 86_400_000
            clicks.append(Click(f"u{u}", rng.choice(pool), ts, f"p{u}-{n}"))
    return sorted(clicks, key=lambda c: (c.ts, c.user_id))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sasl_ssl_plain_produce_worker_subscribe_and_backtest(tls_broker, tmp_path):
    """The usual managed-cluster set-up: SASL PLAIN over TLS, the cluster's CA, host names checked."""
    alice = tls_broker.settings("SASL_PLAIN", f"{tls_broker.prefix}plain.")
    catalog = load_catalog(ts=START)
    clicks = _topical_clicks(catalog)
    assert any(c.ts >= SPLIT for c in clicks) and any(c.ts < SPLIT for c in clicks)
    _produce(alice, tmp_path / "catalog.jsonl", _items(catalog), "--partitions", "2")

    worker = WorkerProcess(alice, tmp_path / "state", "--partitions", "2", "--emit", "per-event", "-k", "5", log_path=tmp_path / "worker.log")
    try:
        worker.start()
        assert not any(tls_broker.passwords["alice"] in arg for arg in worker.proc.args)
        worker.wait_ready(timeout_s=180)
        assert "SASL_SSL PLAIN as 'alice'" in worker.log_text()
        wait_catalog(alice, [i.item_id for i in catalog], timeout_s=120)
        _produce(alice, tmp_path / "clicks.jsonl", _clicks(clicks), "--no-catalog")
        recs = _subscribe(alice, len(clicks))
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert sorted(r["trigger"]["event_id"] for r in recs) == sorted(c.event_id for c in clicks)  # each once
    assert all(len(r["items"]) == 5 for r in recs), Counter(len(r["items"]) for r in recs)
    assert tls_broker.passwords["alice"] not in worker.log_text()

    # backtest scores what the worker published: it reads the catalog, the clicks and the
    # recommendations back (--replay-prefix: this namespace, no second worker)
    report = tmp_path / "backtest.json"
    backtest = _cli(
        ["backtest", "--split", "2024-01-31", "--targets", "click", "--ks", "5", "--replay-prefix", alice.topic_prefix, "--json-file", str(report)],
        env_of(alice),
        timeout_s=300,
    )
    assert backtest.returncode == 0, backtest.stderr[-3000:]
    doc = orjson.loads(report.read_bytes())
    counts = doc["counts"]
    assert doc["replay_prefix"] == alice.topic_prefix and doc["invalid_records"] == 0
    assert doc["catalog_size"] == len(catalog) and counts["events"] == len(clicks), counts
    print(f"\nbacktest over SASL_SSL PLAIN: {counts}")
    assert counts["warm"] == sum(c.ts < SPLIT for c in clicks) and counts["test"] == sum(c.ts >= SPLIT for c in clicks), counts
    assert counts["missing"] == 0 and counts["cases"] > 0, counts  # every test click found the list the worker held


# --------------------------------------------------------------------------- SSL and mutual TLS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ssl_and_mutual_tls_produce_worker_and_subscribe(tls_broker, tmp_path):
    prefix = f"{tls_broker.prefix}anon.ssl."
    mtls = tls_broker.settings("MTLS", prefix)  # alice, by her client certificate
    anonymous = tls_broker.settings("SSL", prefix)  # no client certificate: User:ANONYMOUS
    now = int(time.time() * 1000)
    catalog = load_catalog(ts=now)
    _produce(mtls, tmp_path / "catalog.jsonl", _items(catalog), "--partitions", "2")

    worker = WorkerProcess(mtls, tmp_path / "state", "--partitions", "2", "--emit", "per-event", "-k", "5", log_path=tmp_path / "worker.log")
    try:
        worker.start()
        worker.wait_ready(timeout_s=180)
        wait_catalog(mtls, [i.item_id for i in catalog], timeout_s=120)
        clicks = [Click("s-u1", "scifi-01", now + 1, "t1"), Click("s-u1", "scifi-02", now + 2, "t2"), Click("s-u2", "jazz-01", now + 3, "t3")]
        _produce(anonymous, tmp_path / "clicks.jsonl", _clicks(clicks), "--no-catalog")
        over_ssl = _subscribe(anonymous, 3)
        over_mtls = _subscribe(mtls, 3)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert sorted(r["trigger"]["event_id"] for r in over_ssl) == ["t1", "t2", "t3"]
    assert over_mtls == over_ssl
    by_event = {r["trigger"]["event_id"]: r for r in over_ssl}
    assert {i["item_id"] for i in by_event["t2"]["items"]}.isdisjoint({"scifi-01", "scifi-02"})  # seen items excluded
    assert by_event["t2"]["items"][0]["item_id"].startswith("scifi-")


# --------------------------------------------------------------------------- exactly-once, least privilege

USERS, EVENTS, BAD_EVERY = 40, 2_000, 100
COMMIT_DELAY_S = 0.2
EOS_ARGS = ("--partitions", "2", "--emit", "per-event", "-k", "5", "--processing-guarantee", "exactly_once")

# Delays the worker's transaction commits (as tests/integration/test_exactly_once.py does) so
# that the SIGKILL lands while a transaction holds records on the broker.
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


def _consumer(settings: KafkaSettings, committed: bool = True) -> KafkaConsumer:
    return KafkaConsumer(
        **connection_options(settings), enable_auto_commit=False, group_id=None, isolation_level="read_committed" if committed else "read_uncommitted"
    )


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


def _read_all(settings: KafkaSettings, topic: str, committed: bool = True) -> list:
    consumer = _consumer(settings, committed)
    try:
        return list(read_to_end(consumer, _partitions(consumer, topic), timeout_s=120))
    finally:
        consumer.close()


def _eos_stream(catalog_ids: list[str], start_ms: int) -> list[tuple[str, bytes, bytes, Click | Purchase | None]]:
    """(logical topic, key, value, event or None for a malformed record), in production order."""
    rng = random.Random(29)
    out = []
    for n in range(EVENTS):
        user = f"u{rng.randrange(USERS)}"
        event = (Purchase if rng.random() < 0.2 else Click)(user, rng.choice(catalog_ids), start_ms + n * 1000, f"e{n}")
        out.append((T.PURCHASES if isinstance(event, Purchase) else T.CLICKS, record_key(event), encode(event), event))
        if n % BAD_EVERY == BAD_EVERY // 2:
            out.append((T.CLICKS, user.encode(), b'{"not": "a click"' + str(n).encode(), None))
    return out


def _alive(worker: WorkerProcess) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_text()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_exactly_once_with_the_documented_acls_only_survives_a_sigkill(tls_broker, tmp_path):
    """alice holds only the documented ACLs (docs/operations.md); SASL_SSL with SCRAM-SHA-512."""
    alice = tls_broker.settings("SASL_SCRAM", f"{tls_broker.prefix}eos.")
    now = int(time.time() * 1000)
    catalog = load_catalog(ts=now - 86_400_000)
    _produce(alice, tmp_path / "catalog.jsonl", _items(catalog), "--partitions", "2")
    stream = _eos_stream([i.item_id for i in catalog], now - 30 * 86_400_000)
    valid = [event for *_, event in stream if event is not None]

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
        "RECSTREAM_TEST_COMMIT_DELAY_S": str(COMMIT_DELAY_S),
        # the killed worker leaves the group after its session timeout (default 60 s): shorter, a quicker test
        "RECSTREAM_SESSION_TIMEOUT": "12",
        "RECSTREAM_HEARTBEAT_INTERVAL": "2",
    }
    recs_topic = alice.topic(T.RECOMMENDATIONS)
    committed, uncommitted = _consumer(alice), _consumer(alice, committed=False)
    worker = WorkerProcess(alice, tmp_path / "state", *EOS_ARGS, log_path=tmp_path / "worker.log", env=env)
    try:
        worker.start()
        worker.wait_ready(timeout_s=180)
        assert "recstream-test: commits delayed" in worker.log_text(), "the sitecustomize did not run in the worker"
        wait_catalog(alice, [i.item_id for i in catalog], timeout_s=120)
        prod = producer(alice, linger_ms=20)
        futures = [prod.send(alice.topic(kind), key=key, value=value) for kind, key, value, _ in stream]
        prod.flush()
        bad = set()
        for (*_, event), future in zip(stream, futures):
            meta = future.get(timeout=60)
            if event is None:
                bad.add((meta.topic, meta.partition, meta.offset))
        prod.close()

        tps = _partitions(committed, recs_topic)
        deadline = faults.Deadline(180)
        while sum(committed.end_offsets(tps).values()) < len(valid) // 10:  # a tenth committed (read_committed end: LSO)
            _alive(worker)
            deadline.check("a tenth of the recommendations before the kill")
            time.sleep(0.1)  # poll interval
        deadline = faults.Deadline(60)
        while True:  # until a transaction holds recommendations not committed yet: end offset past the LSO
            stable, end = committed.end_offsets(tps), uncommitted.end_offsets(tps)
            if any(end[tp] > stable[tp] for tp in tps):
                break
            _alive(worker)
            deadline.check("an open transaction")
        worker.kill()

        worker = WorkerProcess(alice, tmp_path / "state", *EOS_ARGS, log_path=tmp_path / "worker.log", env=env)
        worker.start()
        worker.wait_ready(timeout_s=180)
        committed.assign(tps)
        committed.seek_to_beginning(*tps)
        count, deadline = 0, faults.Deadline(240)
        while count < len(valid):
            count += sum(len(records) for records in committed.poll(timeout_ms=500).values())
            _alive(worker)
            deadline.check(lambda: f"{count} of {len(valid)} committed recommendations")
        assert worker.stop() == 0, worker.log_text()[-3000:]
    finally:
        worker.stop()
        committed.close()
        uncommitted.close()

    recs = [decode_recommendation(r.value) for r in _read_all(alice, recs_topic)]
    per_event = Counter(r.trigger.event_id for r in recs)
    doubled = {e: n for e, n in per_event.items() if n > 1}
    assert not doubled, f"{len(doubled)} events answered more than once, e.g. {list(doubled.items())[:5]}"
    assert set(per_event) == {ev.event_id for ev in valid} and len(recs) == len(valid)
    aborted = len(_read_all(alice, recs_topic, committed=False)) - len(recs)
    assert aborted > 0, "the kill did not land in an open transaction"
    letters = Counter((d.topic, d.partition, d.offset) for d in (decode_dead_letter(r.value) for r in _read_all(alice, alice.topic(T.DLQ))))
    assert set(letters) == bad and set(letters.values()) == {1}, faults.describe_coords(set(letters) ^ bad)

    from recstream.encoders.profile import UserProfile

    latest: dict[bytes, bytes | None] = {}
    for record in _read_all(alice, alice.changelog(T.PROFILES_TABLE)):
        latest[record.key] = record.value
    applied = {k.decode(): UserProfile.from_bytes(v).applied for k, v in latest.items() if v is not None}
    assert applied == dict(Counter(ev.user_id for ev in valid))  # each event applied once, none lost
    log = worker.log_text()
    assert tls_broker.passwords["alice"] not in log
    print(
        f"\n{len(valid)} events, {len(bad)} malformed, one SIGKILL in an open transaction over SASL_SSL SCRAM-SHA-512 "
        f"with the documented ACLs (docs/operations.md) only: each answered once; {aborted} recommendations of the killed transaction aborted"
    )


def test_the_transactional_id_check_refuses_a_user_without_the_acl(tls_broker):
    """bob holds the topic and group ACLs but none on transactional ids: the check the worker
    needs before it starts (streams.security.check_transactional_ids) says so; alice passes."""
    bob = tls_broker.settings("SASL_SCRAM", f"{tls_broker.prefix}bob.", user="bob")
    alice = tls_broker.settings("SASL_SCRAM", f"{tls_broker.prefix}bob.")
    tid = f"{bob.app_id}-events-0"  # streams.transactions.PartitionTransactions.transactional_id
    with pytest.raises(AuthorizationError) as refused:
        check_transactional_ids(bob.bootstrap_servers, bob.security, tid, timeout_s=20)
    assert type(refused.value).__name__ == "TransactionalIdAuthorizationFailedError" and tid in str(refused.value)
    check_transactional_ids(alice.bootstrap_servers, alice.security, tid, timeout_s=20)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_exactly_once_worker_without_the_transactional_id_acl_stops_with_one_line(tls_broker, tmp_path):
    bob = tls_broker.settings("SASL_SCRAM", f"{tls_broker.prefix}bob.", user="bob")
    T.ensure_topics(bob, T.topic_specs(bob, partitions=2))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recstream", "worker", "--data-dir", str(tmp_path / "state"), "--partitions", "2", "--processing-guarantee", "exactly_once"],
            env=env_of(bob),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = faults.Deadline(60)
        while proc.poll() is None and "TransactionalIdAuthorizationFailed" not in log.read_text(errors="replace"):
            deadline.check("the worker's exit or its transactional producer's refusal")
            time.sleep(0.2)  # poll interval
        try:
            proc.wait(5)  # refused: it must stop now, not wait forever
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() not in (None, 0), f"the worker did not stop after the refusal:\n{log.read_text()[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in log.read_text().splitlines() if line.startswith("recstream:")]
    assert lines == [lines[0]] and lines[0].startswith("recstream: not authorized: the user may not use these transactional ids")


# --------------------------------------------------------------------------- clear errors


def _tls_error(tls_broker: TlsBroker, case: str) -> tuple[KafkaSettings, str, tuple[str, ...]]:
    """(settings of the failing client, how its one line starts, what else the line says)."""
    b, prefix = tls_broker, tls_broker.prefix
    if case == "wrong CA":
        s = b.settings("SSL", prefix, ssl_cafile=str(b.wrong_ca))
        return (
            s,
            f"recstream: cannot connect to Kafka with SSL: {s.broker}: TLS handshake failed: certificate verify failed (",
            ("the broker's certificate is not signed by a CA in the CA file " + str(b.wrong_ca), "--ssl-cafile"),
        )
    if case == "expired certificate":
        s = b.settings("EXPIRED", prefix)
        return (
            s,
            (f"recstream: cannot connect to Kafka with SSL: {s.broker}: TLS handshake failed: certificate verify failed (certificate has expired)"),
            (f"the CA file {b.ca}", "has expired"),
        )
    if case == "wrong host":
        s = b.settings("WRONG_HOST", prefix)
        return (
            s,
            (
                f"recstream: cannot connect to Kafka with SSL: {s.broker}: TLS handshake failed: certificate verify "
                "failed (IP address mismatch, certificate is not valid for '127.0.0.1')"
            ),
            (f"the CA file {b.ca}", "host name checking on", "not for the host in --broker"),
        )
    if case == "wrong PLAIN password":
        s = b.settings("SASL_PLAIN", prefix, sasl_password="not-" + b.passwords["alice"])
        return s, "recstream: authentication failed for user 'alice' (SASL PLAIN): check the username and password", ()
    if case == "mTLS without a client certificate":
        s = b.settings("MTLS", prefix, ssl_certfile=None, ssl_keyfile=None)
        return (
            s,
            (
                f"recstream: cannot connect to Kafka with SSL: {s.broker}: TLS handshake failed: the broker requires a "
                "client certificate (mutual TLS) and none was given"
            ),
            ("--ssl-certfile and --ssl-keyfile",),
        )
    raise AssertionError(case)


ERROR_CASES = ["wrong CA", "expired certificate", "wrong host", "wrong PLAIN password", "mTLS without a client certificate"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ERROR_CASES)
def test_a_bad_certificate_or_password_ends_the_cli_with_one_clear_line(tls_broker, case):
    settings, starts, contains = _tls_error(tls_broker, case)
    line = _one_clear_line(_cli(["topics", "list"], env_of(settings), timeout_s=60), starts, *contains)
    password = settings.security.sasl_password
    assert password is None or password.reveal() not in line


@pytest.mark.timeout(120)
def test_the_worker_and_subscribe_stop_with_the_same_line(tls_broker, tmp_path):
    settings, starts, contains = _tls_error(tls_broker, "expired certificate")
    worker = _cli(["worker", "--data-dir", str(tmp_path / "state"), "--partitions", "2"], env_of(settings), timeout_s=60)
    _one_clear_line(worker, starts, *contains)
    settings, starts, contains = _tls_error(tls_broker, "wrong CA")
    _one_clear_line(_cli(["subscribe", "--idle-exit", "5"], env_of(settings), timeout_s=60), starts, *contains)


@pytest.mark.timeout(60)
def test_without_host_name_checking_the_wrong_host_listener_is_reached(tls_broker):
    """The wrong-host case fails for its host name only: the same CA, checking turned off, connects."""
    settings = tls_broker.settings("WRONG_HOST", f"{tls_broker.prefix}anon.", ssl_check_hostname=False)
    listed = _cli(["topics", "list"], env_of(settings), timeout_s=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
