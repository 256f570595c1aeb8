"""Hard faults under exactly-once: a worker of a group SIGKILLed, a full state volume, the
broker SIGKILLed, the broker gone for longer than the session timeout.

Every test runs its workers with ``--processing-guarantee exactly_once`` and per-event
emission, and ends with the same accounting (read ``read_committed``, as ``recstream
subscribe`` reads):

* exactly one committed recommendation per event sent, none for anything else, and no dead
  letter (:func:`faults.assert_answered_once`);
* every user's committed profile equals the profile the worker's pure engine computes
  offline from the events sent (:func:`faults.assert_profiles_offline`): each event applied
  once, with its item's embedding, nothing lost.

The faults:

a. three workers share six partitions; one is SIGKILLed while its partitions have events
   waiting (at most a quarter of them answered); the two others take its partitions over once
   its session times out and answer its events, and the events sent while it is down, before
   it is back; then it is restarted and the six partitions are split over three again;
c. the worker's state folder is on a small tmpfs the test mounts (64 MB), and a file fills it
   while events stream: the worker stops with one clear line ("cannot write the local state
   ... No space left on device") and exit status 74, no event is dead-lettered, and a restart
   with the space back answers every event once (nothing committed was lost).  Where the
   machine refuses the mount (not root, or no CAP_SYS_ADMIN), the write failure is injected at
   the state store instead: a ``sitecustomize`` in the worker's environment wraps every
   RocksDB database it opens, whose writes then raise RocksDB's own "IO error: No space left
   on device" while a trigger file exists (``RECSTREAM_TEST_NO_MOUNT=1`` takes that path on
   purpose);
b. the broker's java process is SIGKILLed (``kill -9`` of the pid in its data folder's
   ``broker.pid``) while the worker is busy with a stream, and started again on the same
   data; the worker, never restarted, answers everything, before and after;
d. the broker is stopped for longer than the worker's session timeout (1.5 times it) and
   started again: the worker, never restarted, reconnects by itself and answers the events
   sent before and after.

b and d stop and kill a broker of their own (a free port pair and a temporary data folder,
started and stopped here through ``deploy/kafka/kafka.sh`` with ``RECSTREAM_KAFKA_PORT`` and
``RECSTREAM_KAFKA_DATA``), never the shared one the other tests use.  The workers run with
``--session-timeout 10 --heartbeat-interval 1`` so that the group notices a dead or
unreachable member in seconds (the default is 60 s).

These tests found three bugs, fixed in ``streams/``: a full state volume made every event of
the stream fail on its own and be dead-lettered, its offset committed (lost), instead of
stopping the worker (c; ``streams.state.state_write``); the catalog table was not a global
table for faust, so a third worker never received the catalog and answered every event with
the popularity list and profiles without the items' text (a; ``ObservedGlobalTable``); and a
recovery after a rebalance could use the exactly-once consumer's tail reader before its start
had completed (a start cancelled or still under way), and crashed the worker ("'NoneType'
object has no attribute 'seek_to'"; a; ``ExactlyOnceConsumer.highwaters``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from recstream.streams import topics as T
from recstream.streams.client import WorkerProcess, producer, wait_catalog
from recstream.streams.demo.data import load_catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402  (tests/ is not a package)
from faults import Deadline, Outputs, PrivateBroker, now_ms  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSION_S = 10.0
EOS = (
    "--processing-guarantee",
    "exactly_once",
    "--emit",
    "per-event",
    "-k",
    "5",
    "--metrics-port",
    "0",
    "--session-timeout",
    str(SESSION_S),
    "--heartbeat-interval",
    "1",
)
USERS = 100
DAY_MS = 86_400_000
START_S = 300.0  # a worker's start (torch and the model) on a loaded 2-core machine
DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def private_broker() -> Iterator[PrivateBroker]:
    """A plain broker of this module's own, for the tests that kill or stop it."""
    if shutil.which("java") is None:
        pytest.skip("the private broker needs Java")
    data = Path(tempfile.mkdtemp(prefix="recstream-hard-faults-"))
    broker = PrivateBroker(data)
    try:
        broker.start()
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            if (data / "broker.pid").exists():
                broker.kill()
            shutil.rmtree(data, ignore_errors=True)


class Pipeline:
    """One exactly-once worker on two partitions, its topics, a producer and the committed
    outputs, in a fresh namespace of ``broker``."""

    def __init__(self, broker: str, tmp_path: Path, tag: str, *, data_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.settings = faults.fresh_settings(broker, tag)
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=2))
        self.log_path = tmp_path / "worker.log"
        self.data_dir = data_dir or tmp_path / "state"
        self.env = env
        self.worker = self.new_worker()
        self.prod = producer(self.settings)
        self.placed: list[tuple[object, str, int, int]] = []
        self.catalog: list = []
        self.outputs: Outputs | None = None
        self.next_ms = now_ms() - 30 * DAY_MS

    def new_worker(self) -> WorkerProcess:
        return WorkerProcess(self.settings, self.data_dir, "--partitions", "2", *EOS, log_path=self.log_path, env=self.env)

    def start(self) -> "Pipeline":
        self.worker.start()
        self.worker.wait_ready(START_S)
        self.catalog = load_catalog(ts=now_ms() - DAY_MS)
        faults.send_events(self.prod, self.settings, self.catalog)
        wait_catalog(self.settings, [i.item_id for i in self.catalog], timeout_s=DEADLINE_S)
        self.outputs = Outputs(self.settings, committed=True)
        return self

    def send(self, n: int, tag: str) -> list[faults.Coord]:
        events = faults.mixed_events(n, USERS, [i.item_id for i in self.catalog], self.next_ms, tag)
        self.next_ms += n * 1000
        placed = faults.place(self.prod, self.settings, events)
        self.placed += placed
        return [(topic, p, o) for _, topic, p, o in placed]

    def alive(self) -> None:
        proc = self.worker.proc
        if proc is None or proc.poll() is not None:
            raise AssertionError(f"the worker exited with status {proc and proc.returncode}:\n{self.worker.log_text()[-3000:]}")

    def wait_answered(self, count: int) -> None:
        """Until ``count`` events have a committed recommendation."""
        assert self.outputs is not None
        deadline = Deadline(DEADLINE_S)
        while len(self.outputs.recs_by_coord()) < count:
            self.alive()
            deadline.check(lambda: f"{count} committed recommendations, have {len(self.outputs.recs_by_coord())}")
            self.outputs.poll()

    def wait_all(self, coords: list[faults.Coord]) -> None:
        assert self.outputs is not None
        self.outputs.wait_for(coords, (), DEADLINE_S, self.alive)

    def check(self) -> None:
        """The accounting: each event answered once, profiles as computed offline."""
        assert self.outputs is not None
        faults.assert_answered_once(self.outputs, self.placed)
        faults.assert_profiles_offline(self.settings, self.catalog, self.placed)

    def close(self) -> None:
        if self.outputs is not None:
            self.outputs.close()
        self.prod.close()
        self.worker.stop()
        leftovers = list(T.list_topics(self.settings))
        if leftovers:
            T.delete_topics(self.settings, leftovers)


# --------------------------------------------------------------------------- a. a worker of three SIGKILLed

GROUP_PARTITIONS = 6
GROUP_ARGS = ("--partitions", str(GROUP_PARTITIONS), *EOS, "--batch-max", "100")  # small batches: a kill lands mid-stream


@pytest.mark.timeout(600)
def test_a_one_of_three_workers_sigkilled_mid_stream_and_restarted(kafka_broker: str, tmp_path: Path) -> None:
    settings = faults.fresh_settings(kafka_broker, "ha")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=GROUP_PARTITIONS))
    group = faults.WorkerGroup(settings, tmp_path, ("a", "b", "c"), GROUP_ARGS)
    prod = producer(settings)
    outputs = Outputs(settings, committed=True)
    clicks = settings.topic(T.CLICKS)
    placed: list[tuple[object, str, int, int]] = []
    next_ms = now_ms() - 30 * DAY_MS

    def send(n: int, tag: str) -> list[faults.Coord]:
        nonlocal next_ms
        events = faults.mixed_events(n, 3 * USERS, ids, next_ms, tag)
        next_ms += n * 1000
        batch = faults.place(prod, settings, events)
        placed.extend(batch)
        return [(topic, p, o) for _, topic, p, o in batch]

    def answered(coords: list[faults.Coord]) -> int:
        outputs.poll()
        return len(set(coords) & outputs.recs_by_coord().keys())

    try:
        group.start("a", "b", "c", timeout_s=START_S)
        catalog = load_catalog(ts=now_ms() - DAY_MS)
        ids = [i.item_id for i in catalog]
        faults.send_events(prod, settings, catalog)
        wait_catalog(settings, ids, timeout_s=DEADLINE_S)
        balanced = group.wait_balanced(clicks, GROUP_PARTITIONS, DEADLINE_S)
        outputs.wait_for(send(1_200, "a1-"), (), DEADLINE_S, group.alive)

        # C is killed while its partitions have events waiting and in flight
        in_flight = send(3_000, "a2-")
        on_c = [c for c in in_flight if c[1] in balanced["c"]]
        deadline = Deadline(DEADLINE_S)
        while answered(on_c) < len(on_c) // 4:
            group.alive()
            deadline.check(lambda: f"a quarter of C's {len(on_c)} events answered, have {answered(on_c)}")
        group.kill("c")
        killed = time.monotonic()
        answered_by_c = answered(on_c)  # what C committed: the others take over only after its session times out
        assert answered_by_c < len(on_c), "C was done with its events before the kill: not mid-stream"

        # A and B take C's partitions over once its session timed out, C still down
        while_down = send(600, "a3-")
        outputs.wait_for(in_flight + while_down, (), DEADLINE_S, group.alive)
        failover_s = time.monotonic() - killed
        after = group.shares(clicks)
        assert faults.partitions_split(after, GROUP_PARTITIONS) and set(after) == {"a", "b"}, after

        # C comes back (its state folder is discarded: it was killed) and gets partitions again
        group.start("c", timeout_s=START_S)
        rebalanced = group.wait_balanced(clicks, GROUP_PARTITIONS, DEADLINE_S)
        assert set(rebalanced) == {"a", "b", "c"}, rebalanced
        outputs.wait_for(send(600, "a4-"), (), DEADLINE_S, group.alive)
        group.alive()
        faults.assert_answered_once(outputs, placed)
        faults.assert_profiles_offline(settings, catalog, placed)
    finally:
        outputs.close()
        prod.close()
        group.close()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
    print(
        f"\nthree workers, exactly-once: C (partitions {sorted(balanced['c'])}) SIGKILLed with {answered_by_c} of its "
        f"{len(on_c)} in-flight events answered; A and B answered the rest and the events sent meanwhile "
        f"{failover_s:.1f}s after the kill (session timeout {SESSION_S:.0f}s); C restarted and took "
        f"{sorted(rebalanced['c'])}; all {len(placed)} events answered once, profiles as computed offline"
    )


# --------------------------------------------------------------------------- c. a full state volume

VOLUME_MB = 64
EXIT_STATE_WRITE = 74  # streams.state: the local state cannot be written (EX_IOERR)

#: Where the machine refuses the tmpfs mount (not root, no CAP_SYS_ADMIN), the write failure
#: is injected at the state store instead: every RocksDB database the worker opens is wrapped,
#: and its writes raise RocksDB's own "No space left" error while the trigger file exists.
INJECT_DISK_FULL = """
import os
import rocksdict

_Rdict = rocksdict.Rdict
_TRIGGER = os.environ["RECSTREAM_TEST_DISK_FULL"]


def _check():
    if os.path.exists(_TRIGGER):
        raise Exception("IO error: No space left on device: While appending to file: (injected by test_hard_faults)")


class Rdict:
    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_db", _Rdict(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._db, name)

    def write(self, *args, **kwargs):
        _check()
        return self._db.write(*args, **kwargs)

    def put(self, *args, **kwargs):
        _check()
        return self._db.put(*args, **kwargs)

    def __setitem__(self, key, value):
        _check()
        self._db[key] = value

    def __delitem__(self, key):
        _check()
        del self._db[key]

    def __getitem__(self, key):
        return self._db[key]

    def __contains__(self, key):
        return key in self._db

    def __iter__(self):
        return iter(self._db)


rocksdict.Rdict = Rdict
print("recstream-test: state writes fail while", _TRIGGER, "exists", flush=True)
"""


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    """Mount a tmpfs of ``size_mb`` on ``path``; False where the machine refuses."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    return done.returncode == 0


def _fill(volume: Path) -> Path:
    """Write a file until the volume has no byte left; returns it."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12):
            block = b"\0" * size
            while True:
                try:
                    if f.write(block) == 0:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    assert shutil.disk_usage(volume).free < 4096, shutil.disk_usage(volume)
    return filler


@pytest.mark.timeout(420)
def test_c_full_state_volume_stops_the_worker_and_a_restart_with_space_recovers(kafka_broker: str, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    # RECSTREAM_TEST_NO_MOUNT=1 takes the injection path where the mount would work (to test it)
    mounted = os.environ.get("RECSTREAM_TEST_NO_MOUNT") != "1" and _mount_tmpfs(volume, VOLUME_MB)
    volume.mkdir(parents=True, exist_ok=True)
    env = None
    trigger = tmp_path / "disk-full"
    if not mounted:
        inject = tmp_path / "inject"
        inject.mkdir()
        (inject / "sitecustomize.py").write_text(INJECT_DISK_FULL)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])), "RECSTREAM_TEST_DISK_FULL": str(trigger)}
    pipe = Pipeline(kafka_broker, tmp_path, "hc", data_dir=volume / "state", env=env)
    try:
        pipe.start()
        if not mounted:
            assert "recstream-test: state writes fail" in pipe.worker.log_text(), "the injection did not load"
        coords = pipe.send(1_000, "c1-")
        pipe.wait_all(coords)

        filler = _fill(volume) if mounted else trigger
        if not mounted:
            trigger.touch()
        coords += pipe.send(1_000, "c2-")
        deadline = Deadline(DEADLINE_S)
        assert pipe.outputs is not None
        while pipe.worker.proc.poll() is None:
            pipe.outputs.poll()
            assert not pipe.outputs.dlq.entries, f"events were dead-lettered instead of the worker stopping: {pipe.outputs.dlq.entries[0].error}"
            deadline.check("the worker to stop on the full volume")
        code = pipe.worker.proc.returncode
        log = pipe.worker.log_text()
        assert code == EXIT_STATE_WRITE, f"exit status {code}:\n{log[-3000:]}"
        lines = [line for line in log.splitlines() if "cannot write the local state" in line]
        assert lines and "No space left on device" in lines[0], log[-3000:]
        answered_at_stop = len(pipe.outputs.recs_by_coord())
        assert answered_at_stop < len(coords)

        filler.unlink()  # the space is back
        pipe.worker = pipe.new_worker()
        pipe.worker.start()
        pipe.worker.wait_ready(START_S)
        pipe.wait_all(coords)
        pipe.alive()
        pipe.check()
    finally:
        pipe.close()
        if mounted:
            subprocess.run(["umount", str(volume)], capture_output=True, timeout=60, check=False)
    print(
        f"\nstate volume full ({'a ' + str(VOLUME_MB) + ' MB tmpfs' if mounted else 'injected at the state store'}): "
        f"the worker stopped with status {code} and '{lines[0].split('] ')[-1][:160]}'; {answered_at_stop} of "
        f"{len(coords)} events answered then; after a restart with space, all answered once"
    )


# --------------------------------------------------------------------------- b. and d. the broker


@pytest.mark.timeout(420)
def test_b_broker_sigkilled_mid_stream_and_restarted(private_broker: PrivateBroker, tmp_path: Path) -> None:
    broker = private_broker
    if not broker.answers():
        broker.start()
    pipe = Pipeline(broker.bootstrap, tmp_path, "hb").start()
    try:
        coords = pipe.send(3_000, "b1-")
        pipe.wait_answered(500)  # the worker is busy with the stream
        pipe.prod.close()
        t0 = time.monotonic()
        pid = broker.kill()
        assert not broker.answers()
        assert pipe.outputs is not None
        answered_at_kill = len(pipe.outputs.recs_by_coord())
        assert answered_at_kill < len(coords), "the worker was done before the kill: not mid-stream"
        up_s = broker.start()
        pipe.prod = producer(pipe.settings)
        coords += pipe.send(1_000, "b2-")
        pipe.wait_all(coords)
        resumed_s = time.monotonic() - t0
        pipe.alive()
        pipe.check()
    finally:
        if not broker.answers():
            broker.start()
        pipe.close()
    print(
        f"\nbroker SIGKILLed (pid {pid}) with {answered_at_kill}+ of 3000 events answered, up again in {up_s:.1f}s; "
        f"all {len(pipe.placed)} events answered once {resumed_s:.1f}s after the kill; the worker was never restarted"
    )


@pytest.mark.timeout(420)
def test_d_worker_rejoins_after_the_broker_was_gone_longer_than_its_session(private_broker: PrivateBroker, tmp_path: Path) -> None:
    broker = private_broker
    if not broker.answers():
        broker.start()
    pipe = Pipeline(broker.bootstrap, tmp_path, "hd").start()
    try:
        coords = pipe.send(1_000, "d1-")
        pipe.wait_all(coords)
        pipe.prod.close()
        broker.stop()
        gone = time.monotonic()
        # the broker stays away for longer than the session timeout: the condition awaited
        # is the time itself; meanwhile the worker must stay up, and it sees the coordinator go
        while time.monotonic() - gone < 1.5 * SESSION_S:
            pipe.alive()
            time.sleep(0.5)  # poll interval
        assert "coordinator dead" in pipe.worker.log_text().lower()  # aiokafka's words: it noticed
        down_s = time.monotonic() - gone
        broker.start()
        pipe.prod = producer(pipe.settings)
        coords += pipe.send(1_000, "d2-")
        pipe.wait_all(coords)
        back_s = time.monotonic() - gone - down_s
        pipe.alive()
        pipe.check()
    finally:
        if not broker.answers():
            broker.start()
        pipe.close()
    print(
        f"\nbroker gone {down_s:.1f}s (session timeout {SESSION_S:.0f}s); the worker, never restarted, answered all "
        f"{len(pipe.placed)} events once, {back_s:.1f}s after the broker's start"
    )
