#!/usr/bin/env python
"""Failover time: from a SIGKILL of one of two workers to the group answering again.

Two ``recstream worker`` processes (one consumer group, 2 partitions, ``--emit per-event``)
run against a broker with the demo catalog; each holds one partition.  A trial:

1. SIGKILL the victim (the worker started second); at that moment, produce one click of a
   user whose key is on the victim's partition (the *probe*);
2. wait for the probe's recommendation: the survivor answers it once the group coordinator
   has dropped the victim (no heartbeat for ``--session-timeout``), the group has rebalanced
   and the survivor has restored the partition's tables from their changelogs;
3. restart the victim (it discards its state folder: it was killed) and wait until each
   worker holds one partition again, then the next trial.

Reported per setting (session timeout : heartbeat interval) and trial: ``recovered_s``, kill
to the probe's recommendation received (the failover as a client sees it), split into
``detected_s``, kill to the survivor's log line taking the victim's partition (the session
timeout, plus up to a heartbeat interval for the survivor to learn of the rebalance), and
``restored_s``, that line to the answer (rebalance callbacks, table recovery, the batch);
one clean stop (SIGTERM: the worker leaves the group at once) per setting for reference;
and the other side of the trade-off, a *pause*: the victim is frozen (SIGSTOP) for
``--pause-s`` seconds, as a long GC or a starved CPU would, then resumed (SIGCONT):
``rebalanced`` says whether the group took its partition away meanwhile (a spurious
failover: the worker was not dead, and it rejoins with a second rebalance), ``recovered_s``
when the probe sent at the pause's start was answered.  The victim's partition holds the events of the warm-up, so the survivor
restores real changelogs.  Prints one JSON document (``--output`` also writes it).

    .venv/bin/python bench/recovery.py                                   # 60:3 and 10:1, 3 trials each
    .venv/bin/python bench/recovery.py --settings 60:3,10:1,6:2 --trials 5
    .venv/bin/python bench/recovery.py --quick                           # 10:1, one trial

Needs a broker (``--broker``, default ``$RECSTREAM_BROKER`` or 127.0.0.1:9092); each setting
uses a fresh topic prefix, deleted at the end.  Exit status 0, 1 when a step failed (the
JSON then has ``error`` and the trials so far), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # bench/ (common.py), then the checkout first
    if _p not in sys.path:
        sys.path.insert(0, _p)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from common import Guarded, add_run_args, bench_header, cpu_model, finish, mem_total_gib, pkg_version  # noqa: E402
from recstream.streams import topics as T  # noqa: E402
from recstream.streams.client import (  # noqa: E402
    RecommendationWatcher,
    WorkerProcess,
    partition_for,
    producer,
    send_records,
    wait_catalog,
)
from recstream.streams.config import KafkaSettings  # noqa: E402
from recstream.streams.demo.data import load_catalog  # noqa: E402
from recstream.streams.records import Click  # noqa: E402

PARTITIONS = 2
WARMUP_EVENTS = 400
_ASSIGNED = "Setting newly assigned partitions"
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log(msg: str) -> None:
    print(f"[recovery] {msg}", file=sys.stderr, flush=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_settings(text: str) -> list[tuple[float, float]]:
    """``"60:3,10:1"`` as [(60.0, 3.0), (10.0, 1.0)] (session timeout : heartbeat, seconds)."""
    out = []
    try:
        for part in text.split(","):
            session, _, heartbeat = part.strip().partition(":")
            out.append((float(session), float(heartbeat or min(3.0, float(session) / 3))))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of SESSION:HEARTBEAT seconds: {text!r}") from None
    return out


def assignments(log_text: str, topic: str) -> list[tuple[int, set[int]]]:
    """(epoch ms, partitions of ``topic``) of every assignment a worker logged (Faust's
    inline ``TopicPartition(topic=..., partition=N)`` form)."""
    inline = re.compile(rf"TopicPartition\(topic='{re.escape(topic)}', partition=(\d+)\)")
    out = []
    for line in log_text.splitlines():
        if _ASSIGNED in line:
            m = _LOG_TIME.match(line)
            ms = int(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000) if m else 0
            out.append((ms, {int(p) for p in inline.findall(line)}))
    return out


def held(worker: WorkerProcess, topic: str) -> set[int]:
    found = assignments(worker.log_text(), topic)
    return found[-1][1] if found else set()


def user_on(partition: int, tag: str) -> str:
    for i in range(10_000):
        user = f"{tag}-{i}"
        if partition_for(user.encode(), PARTITIONS) == partition:
            return user
    raise AssertionError("no key found")  # pragma: no cover - murmur2 spreads keys


class Pair:
    """Two workers of one group in a fresh namespace, with one session setting."""

    def __init__(self, broker: str, root: Path, session_s: float, heartbeat_s: float, extra: list[str]) -> None:
        self.settings = KafkaSettings(broker=broker, topic_prefix=f"rcv{uuid.uuid4().hex[:8]}.")
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=PARTITIONS))
        args = [
            "--partitions",
            str(PARTITIONS),
            "--emit",
            "per-event",
            "-k",
            "5",
            "--metrics-port",
            "0",
            "--session-timeout",
            str(session_s),
            "--heartbeat-interval",
            str(heartbeat_s),
            *extra,
        ]
        self.workers = {name: WorkerProcess(self.settings, root / name, *args, log_path=root / f"{name}.log") for name in "ab"}
        self.clicks = self.settings.topic(T.CLICKS)
        self.prod = producer(self.settings)
        self.watcher: RecommendationWatcher | None = None
        self.ids: list[str] = []
        self.n = 0
        self.pause_s = 15.0

    def alive(self, *names: str) -> None:
        for name in names:
            proc = self.workers[name].proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{self.workers[name].log_text()[-2000:]}")

    def wait_split(self, timeout_s: float) -> dict[str, set[int]]:
        """Until each worker's latest assignment is one partition, the two different."""
        deadline = time.monotonic() + timeout_s
        while True:
            shares = {name: held(w, self.clicks) for name, w in self.workers.items()}
            if all(len(s) == 1 for s in shares.values()) and shares["a"] != shares["b"]:
                return shares
            self.alive("a", "b")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no one-partition-each assignment within {timeout_s:.0f}s: {shares}")
            time.sleep(0.2)

    def start(self, timeout_s: float) -> None:
        self.workers["a"].start()
        self.workers["a"].wait_ready(timeout_s)
        self.workers["b"].start()
        self.workers["b"].wait_ready(timeout_s)
        catalog = load_catalog(ts=now_ms() - 86_400_000)
        self.ids = [i.item_id for i in catalog]
        send_records(self.prod, self.settings, catalog)
        self.prod.flush()
        wait_catalog(self.settings, self.ids, timeout_s=timeout_s)
        self.watcher = RecommendationWatcher(self.settings, from_beginning=False)
        self.wait_split(timeout_s)
        # warm-up: both partitions get events (and their changelogs state) before any kill
        events = [self.click(f"warm-{i % 50}") for i in range(WARMUP_EVENTS)]
        self.watcher.wait_for(lambda w: all(e.event_id in w.by_event for e in events), timeout_s, "warm-up answers")

    def click(self, user: str) -> Click:
        self.n += 1
        event = Click(user, self.ids[self.n % len(self.ids)], now_ms(), f"probe-{self.n}")
        send_records(self.prod, self.settings, [event])
        self.prod.flush()
        return event

    def trial(self, how: str, timeout_s: float) -> dict:
        assert self.watcher is not None
        victim = self.workers["b"]
        (partition,) = held(victim, self.clicks)
        probe_user = user_on(partition, f"{how}-{self.n}")
        before = len(assignments(self.workers["a"].log_text(), self.clicks))
        t0, wall0 = time.monotonic(), now_ms()
        if how == "sigkill":
            victim.kill()
        elif how == "pause":
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGSTOP)
        else:
            victim.stop()
        probe = self.click(probe_user)
        if how == "pause":  # the fault itself: the worker frozen this long (answers are read meanwhile)
            while time.monotonic() - t0 < self.pause_s:
                self.watcher.poll(100)
            victim.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

        def answered(w: RecommendationWatcher) -> bool:
            self.alive("a")
            return probe.event_id in w.by_event

        self.watcher.wait_for(answered, timeout_s, f"the probe's recommendation after the {how}")
        recovered = self.watcher.received_at[probe.event_id] - wall0 / 1000  # when it was read
        taken = [ms for ms, parts in assignments(self.workers["a"].log_text(), self.clicks)[before:] if partition in parts]
        detected = (taken[0] - wall0) / 1000 if taken else None
        out = {
            "how": how,
            "partition": partition,
            "recovered_s": round(recovered, 2),
            "detected_s": round(detected, 2) if detected is not None else None,
            "restored_s": round(recovered - detected, 2) if detected is not None else None,
        }
        if how == "pause":
            out.update(pause_s=self.pause_s, rebalanced=detected is not None)
            self.wait_split(timeout_s)  # the resumed worker back in the group (after a second rebalance if dropped)
            out["victim_alive"] = victim.proc is not None and victim.proc.poll() is None
            log(f"pause of {self.pause_s:g}s: {'the group rebalanced' if taken else 'no rebalance'}; the probe answered after {recovered:.1f}s")
            if out["victim_alive"]:
                return out
        else:
            log(f"{how}: answered again after {recovered:.1f}s (survivor took partition {partition} after {'?' if detected is None else f'{detected:.1f}'}s)")
        victim.stop()
        victim.start()  # killed: it discards its state folder and restores from the changelogs
        victim.wait_ready(timeout_s)
        self.wait_split(timeout_s)
        return out

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.prod.close()
        for w in self.workers.values():
            w.stop()
        leftovers = list(T.list_topics(self.settings))
        if leftovers:
            T.delete_topics(self.settings, leftovers)


def summary(trials: list[dict], key: str) -> dict | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values), "n": len(values)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"))
    p.add_argument(
        "--settings",
        type=parse_settings,
        default=parse_settings("60:3,10:1"),
        help="SESSION:HEARTBEAT seconds, comma-separated (default 60:3 (the worker's default),10:1)",
    )
    p.add_argument("--trials", type=int, default=3, help="SIGKILLs per setting (default 3)")
    p.add_argument("--clean-stops", type=int, default=1, help="clean stops (SIGTERM) per setting, for reference (default 1)")
    p.add_argument("--pauses", type=int, default=1, help="SIGSTOP/SIGCONT pauses of the victim per setting (default 1)")
    p.add_argument("--pause-s", type=float, default=15.0, help="how long a pause freezes the victim, seconds (default 15)")
    p.add_argument("--worker-arg", action="append", default=[], help="an extra flag for both workers (repeatable)")
    p.add_argument("--timeout", type=float, default=300.0, help="longest wait for any step, seconds (default 300)")
    add_run_args(p, "smoke run: 10:1, one SIGKILL, no clean stop")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.settings, args.trials, args.clean_stops, args.pauses = [(10.0, 1.0)], 1, 0, 0
    t_start = time.perf_counter()
    result: dict = {
        **bench_header("recstream failover after a SIGKILL (bench/recovery.py)", "bench/recovery.py", argv),
        "parameters": {
            "broker": args.broker,
            "partitions": PARTITIONS,
            "workers": 2,
            "warmup_events": WARMUP_EVENTS,
            "trials": args.trials,
            "clean_stops": args.clean_stops,
            "pauses": args.pauses,
            "pause_s": args.pause_s,
            "worker_args": args.worker_arg,
        },
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "mem_gib": mem_total_gib(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": {p: pkg_version(p) for p in ("faust-streaming", "aiokafka", "kafka-python", "rocksdict")},
        "settings": [],
    }
    with Guarded(result, log) as guard:
        for session_s, heartbeat_s in args.settings:
            entry: dict = {"session_timeout_s": session_s, "heartbeat_interval_s": heartbeat_s, "trials": []}
            result["settings"].append(entry)
            log(f"session timeout {session_s:g}s, heartbeat {heartbeat_s:g}s: starting two workers")
            with tempfile.TemporaryDirectory(prefix="recstream-recovery-") as root:
                pair = Pair(args.broker, Path(root), session_s, heartbeat_s, args.worker_arg)
                pair.pause_s = args.pause_s
                try:
                    pair.start(args.timeout)
                    for how in ["sigkill"] * args.trials + ["clean_stop"] * args.clean_stops + ["pause"] * args.pauses:
                        entry["trials"].append(pair.trial(how, args.timeout))
                finally:
                    pair.close()
            kills = [t for t in entry["trials"] if t["how"] == "sigkill"]
            entry["sigkill"] = {key: summary(kills, key) for key in ("recovered_s", "detected_s", "restored_s")}
            stops = [t for t in entry["trials"] if t["how"] == "clean_stop"]
            entry["clean_stop"] = {key: summary(stops, key) for key in ("recovered_s", "detected_s", "restored_s")} if stops else None
            pauses = [t for t in entry["trials"] if t["how"] == "pause"]
            entry["pause"] = (
                {"rebalanced": sum(t["rebalanced"] for t in pauses), "of": len(pauses), "recovered_s": summary(pauses, "recovered_s")} if pauses else None
            )
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
