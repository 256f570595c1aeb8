"""TLS/SASL settings against a real secured broker: SASL_PLAINTEXT with SCRAM, and ACLs.

The module starts its own broker (``deploy/kafka/kafka.sh start --scram``) on a free port
(19094 when free) in a temporary folder, with fresh random passwords for ``admin`` (the
super user), ``alice`` and ``bob``, and stops it at the end, whatever happened. Nothing is
allowed without an ACL; the admin grants ``alice`` what a worker needs on one topic
prefix and ``bob`` nothing. Then:

* alice runs the pipeline end to end: ``recstream produce`` (the catalog, then clicks),
  ``recstream worker`` and ``recstream subscribe``, her password only in the environment;
  a config file with a password file and SCRAM-SHA-512 works too;
* a wrong password makes the CLI and the worker exit at once with one clear line;
* bob, with the right password, can neither write nor read the topics.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson
import pytest
from kafka import TopicPartition
from kafka.errors import TopicAuthorizationFailedError

from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, producer, read_to_end, reader, wait_catalog
from recstream.streams.config import KafkaSettings
from recstream.streams.demo.data import load_catalog
from recstream.streams.security import SecuritySettings

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)

START_TIMEOUT_S = 180
CLI_TIMEOUT_S = 90


def _free_port_pair() -> int:
    """19094 (and 19095 for the controller) when free, else another free pair."""
    return faults.free_port_block(2, preferred=19094)


@dataclass(frozen=True)
class SecuredBroker:
    broker: str
    passwords: dict[str, str]
    prefix: str

    def settings(self, user: str, password: str | None = None, mechanism: str = "SCRAM-SHA-256") -> KafkaSettings:
        return KafkaSettings(
            broker=self.broker,
            topic_prefix=self.prefix,
            security=SecuritySettings("SASL_PLAINTEXT", mechanism, user, password if password is not None else self.passwords[user]),
        )

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """The environment of a recstream command run as ``user`` (the password only here)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSTREAM_SASL_", "RECSTREAM_SSL_", "RECSTREAM_CONFIG"))}
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            RECSTREAM_BROKER=self.broker,
            RECSTREAM_TOPIC_PREFIX=self.prefix,
            RECSTREAM_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            RECSTREAM_SASL_MECHANISM="SCRAM-SHA-256",
            RECSTREAM_SASL_USERNAME=user,
            RECSTREAM_SASL_PASSWORD=password if password is not None else self.passwords[user],
        )
        return env


def _kafka_sh(action: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return faults.kafka_sh(action, env, timeout_s, "--scram")


def _grant_alice(admin: KafkaSettings, prefix: str) -> None:
    """What a worker needs: its topics (prefix) and its consumer group (the app id, same prefix)."""
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

    from recstream.streams.security import kafka_python_kwargs

    def allow(kind: ResourceType, op: ACLOperation) -> ACL:
        return ACL("User:alice", "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, prefix, ACLResourcePatternType.PREFIXED))

    ops = (ACLOperation.READ, ACLOperation.WRITE, ACLOperation.DESCRIBE, ACLOperation.CREATE, ACLOperation.DESCRIBE_CONFIGS)
    acls = [allow(ResourceType.TOPIC, op) for op in ops] + [allow(ResourceType.GROUP, ACLOperation.READ), allow(ResourceType.GROUP, ACLOperation.DESCRIBE)]
    client = KafkaAdminClient(bootstrap_servers=admin.bootstrap_servers, **kafka_python_kwargs(admin.security))
    try:
        result = client.create_acls(acls)
        assert not result["failed"], result["failed"]
        wanted = ACLFilter(
            "User:alice", "*", ACLOperation.ANY, ACLPermissionType.ANY, ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
        )
        deadline = time.monotonic() + 30
        while len(client.describe_acls(wanted)[0]) < len(acls):  # the broker enforces what it describes
            assert time.monotonic() < deadline, "the ACLs did not appear within 30s"
            time.sleep(0.2)
    finally:
        client.close()


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredBroker]:
    if shutil.which("java") is None:
        pytest.skip("the secured broker needs Java")
    port = _free_port_pair()
    data = Path(tempfile.mkdtemp(prefix="recstream-scram-"))
    passwords = {user: secrets.token_hex(12) for user in ("admin", "alice", "bob")}
    env = {
        **os.environ,
        "RECSTREAM_KAFKA_SCRAM_PORT": str(port),
        "RECSTREAM_KAFKA_SCRAM_DATA": str(data),
        "RECSTREAM_KAFKA_SCRAM_USERS": ",".join(f"{u}:{p}" for u, p in passwords.items()),
        "RECSTREAM_KAFKA_START_TIMEOUT": str(START_TIMEOUT_S),
    }
    try:
        started = _kafka_sh("start", env, START_TIMEOUT_S + 120)
        if started.returncode != 0:
            pytest.fail(f"the secured broker did not start:\n{started.stderr[-3000:]}")
        sb = SecuredBroker(f"127.0.0.1:{port}", passwords, f"sec{uuid.uuid4().hex[:8]}.")
        admin = sb.settings("admin")
        T.ensure_topics(admin, T.topic_specs(admin, partitions=2))
        _grant_alice(admin, sb.prefix)
        yield sb
    finally:
        faults.remove_broker(env, data, "--scram")


def _cli(args: list[str], env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return faults.cli(args, env, timeout_s)


_jsonl = faults.jsonl


def test_alice_runs_the_pipeline_end_to_end_with_her_password_only_in_the_environment(secured, tmp_path):
    alice = secured.settings("alice")
    password = secured.passwords["alice"]
    now = int(time.time() * 1000)
    catalog = load_catalog(ts=now)
    items = [{"topic": "items", **i.to_dict()} for i in catalog]
    produced = _cli(["produce", str(_jsonl(tmp_path / "catalog.jsonl", items)), "--format", "jsonl", "--partitions", "2"], secured.env("alice"))
    assert produced.returncode == 0, produced.stderr[-2000:]

    worker = WorkerProcess(alice, tmp_path / "state", "--partitions", "2", "--emit", "per-event", "-k", "5", log_path=tmp_path / "worker.log")
    try:
        worker.start()
        assert not any(password in arg for arg in worker.proc.args)  # the command line shows no password
        worker.wait_ready(timeout_s=150)
        wait_catalog(alice, [i.item_id for i in catalog], timeout_s=90)

        clicks = [
            {"topic": "clicks", "user_id": "alice-u1", "item_id": "scifi-01", "ts": now + 1, "event_id": "s1"},
            {"topic": "clicks", "user_id": "alice-u1", "item_id": "scifi-02", "ts": now + 2, "event_id": "s2"},
            {"topic": "clicks", "user_id": "alice-u2", "item_id": "jazz-01", "ts": now + 3, "event_id": "s3"},
        ]
        produced = _cli(["produce", str(_jsonl(tmp_path / "clicks.jsonl", clicks)), "--format", "jsonl", "--no-catalog"], secured.env("alice"))
        assert produced.returncode == 0, produced.stderr[-2000:]

        got = _cli(["subscribe", "--from-beginning", "--json", "--limit", "3", "--idle-exit", "60"], secured.env("alice"))
        assert got.returncode == 0, got.stderr[-2000:]
        recs = [orjson.loads(line) for line in got.stdout.splitlines()]
        assert sorted(r["trigger"]["event_id"] for r in recs) == ["s1", "s2", "s3"]
        by_event = {r["trigger"]["event_id"]: r for r in recs}
        assert len(by_event["s2"]["items"]) == 5
        assert {i["item_id"] for i in by_event["s2"]["items"]}.isdisjoint({"scifi-01", "scifi-02"})  # seen items excluded
        assert by_event["s2"]["items"][0]["item_id"].startswith("scifi-")
    finally:
        assert worker.stop() == 0
    log = worker.log_text()
    assert "Ready" in log and password not in log


def test_a_config_file_with_a_password_file_and_scram_sha_512_works(secured, tmp_path):
    secret = tmp_path / "password"
    secret.write_text(secured.passwords["alice"] + "\n")
    secret.chmod(0o600)
    config = tmp_path / "recstream.toml"
    config.write_text(
        f'[kafka]\nbroker = "{secured.broker}"\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        f'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "alice"\nsasl_password_file = "{secret}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSTREAM_SASL_", "RECSTREAM_SECURITY", "RECSTREAM_BROKER"))}
    listed = _cli(["topics", "list", "--config", str(config), "--topic-prefix", secured.prefix], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"{secured.prefix}clicks\t2" in listed.stdout.splitlines()


def test_a_wrong_password_stops_the_cli_and_the_worker_with_one_clear_line(secured, tmp_path):
    wrong = "not-" + secured.passwords["alice"]
    expected = "recstream: authentication failed for user 'alice' (SASL SCRAM-SHA-256): check the username and password"
    listed = _cli(["topics", "list"], secured.env("alice", wrong), timeout_s=60)
    assert listed.returncode == 1
    assert expected in listed.stderr and "Traceback" not in listed.stderr and wrong not in listed.stderr

    worker = _cli(["worker", "--data-dir", str(tmp_path / "state"), "--partitions", "2"], secured.env("alice", wrong), timeout_s=60)
    assert worker.returncode != 0
    assert expected in worker.stderr and "Traceback" not in worker.stderr and wrong not in worker.stderr + worker.stdout


def test_bob_without_acls_can_neither_write_nor_read_the_topics(secured):
    bob = secured.settings("bob")
    prod = producer(bob)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            prod.send(bob.topic(T.CLICKS), key=b"bob", value=b'{"user_id":"bob","item_id":"x","ts":1}').get(timeout=30)
    finally:
        prod.close()
    consumer = reader(bob)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            list(read_to_end(consumer, [TopicPartition(bob.topic(T.RECOMMENDATIONS), 0)], timeout_s=30))
    finally:
        consumer.close()
    # the CLI says so in one line
    created = _cli(["topics", "create", "--partitions", "2"], secured.env("bob"))
    assert created.returncode == 1
    assert "recstream: not authorized: the user may not use these topics (TopicAuthorizationFailedError" in created.stderr
    assert "Traceback" not in created.stderr
