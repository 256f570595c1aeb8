#!/usr/bin/env python
"""Memory benchmark: peak RSS of a real ``recstream worker`` with N items and U users.

Item 6 of the benchmark issue: the worker's peak resident set (``VmHWM`` in
``/proc/<pid>/status``) with (items, users) = (10k, 10k), (100k, 10k), (10k, 100k) and
(100k, 100k), on the CPU; the target is under 2 GiB at (100k, 100k).

For each catalog size (one fresh topic namespace and one worker per catalog size):

1. the catalog is put in place, one of two ways (``--catalog``):

   * ``seed`` (default): the item-embeddings changelog is written directly, in the worker's own
     stored format (``streams.state.encode_item``: title, categories and a float32 unit vector; the
     vectors are seeded random, not model output) *before* the worker starts, so the worker restores
     the catalog as after a restart (global table recovery, then the item matrix is rebuilt from
     the table). This is what makes 100k items affordable here: the worker embeds short item
     texts at about 13 ms of CPU each on this machine (two 100k catalogs would take over 40
     minutes of CPU), and the memory held does not depend on where the vectors came from;
   * ``embed``: short item records (title and categories, no description) are produced on the
     ``items`` topic and the worker embeds them (the live path); the item matrix's size does
     not depend on the text length, only the embedding time does;

2. the worker (``--emit per-event``, ``--device cpu``, otherwise its defaults) answers a probe
   click; then, for each user count of that catalog size, in increasing order, click events
   are produced for the users not seen yet (``--clicks-per-user`` each, items picked as
   ``bench/catalog_gen.py`` picks them), and the benchmark waits until the worker has answered
   every one (the recommendations and dead-letter topics' end offsets), so that each user has a
   profile in the RocksDB table and in the worker's memory;
3. then it reads ``VmHWM`` (the peak), ``VmRSS`` and ``/proc/<pid>/smaps_rollup`` of the worker;
   a sampler also records the RSS every ``--sample-interval`` s, so each phase (start-up,
   catalog, users) has its own peak and RSS growth.

Users are added to the running worker: the (N, 100k) figure is the peak of the worker that held
(N, 10k) before, which is how a worker's state grows in service. Worker start/stop, topic
creation and deletion and the Kafka producer come from ``bench/pipeline.py``.

One JSON document goes to stdout (``--output`` also writes it); progress goes to stderr. Exit
status 0 on success, 1 when a step failed or timed out (the JSON then has ``error`` and what was
measured), 130 when interrupted.

Run from the repository root, with the broker up (``deploy/kafka/kafka.sh status``)::

    .venv/bin/python bench/memory.py --output bench/results/memory.json   # full run, ~12 min on 2 idle cores
    .venv/bin/python bench/memory.py --quick                                # (10k, 10k) only, < 3 min
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # bench/ (common.py, pipeline.py), then the checkout first
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from tqdm import tqdm  # noqa: E402

import catalog_gen as gen  # noqa: E402
import pipeline as P  # noqa: E402  (bench/pipeline.py: worker process, producer, topic cleanup)
from common import Guarded, add_run_args, bench_header, cpu_model, finish, mem_total_gib, pkg_version  # noqa: E402
from recstream.streams import topics as T  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402
from recstream.streams.state import encode_item  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
TARGET_BYTES = 2 * GiB  # issue: worker peak RSS under 2 GiB with 100k items and 100k users on the CPU
TARGET_CONFIG = (100_000, 100_000)
DEFAULT_CONFIGS = ((10_000, 10_000), (100_000, 10_000), (10_000, 100_000), (100_000, 100_000))
QUICK_CONFIGS = ((10_000, 10_000),)
DIM = 384  # all-MiniLM-L6-v2, the worker's default model
PROBE_USER = "mem-probe"
REBUILT = re.compile(r"item matrix rebuilt from the catalog table: (\d+) items")  # the worker's log line


class MemoryBenchError(RuntimeError):
    """A step failed or timed out; the message says which and why."""


def log(msg: str) -> None:
    tqdm.write(f"[memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------ pure helpers


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"10000x10000,100000x10000"`` (``_`` and ``k`` allowed: ``10k x 100_000``) -> [(items, users), ...]."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "").replace(" ", "")
        if not part:
            continue
        try:
            items_s, users_s = part.split("x")
            items, users = (int(s[:-1]) * 1000 if s.endswith("k") else int(s) for s in (items_s, users_s))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not ITEMSxUSERS: {part!r} (e.g. 10000x100000 or 10kx100k)") from None
        if items < 1 or users < 1:
            raise argparse.ArgumentTypeError(f"items and users must be positive: {part!r}")
        out.append((items, users))
    if not out:
        raise argparse.ArgumentTypeError("no configuration given")
    return sorted(set(out))


def plan_groups(configs: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """One worker per catalog size: ``[(items, [users ascending]), ...]``, smallest catalog first."""
    groups: dict[int, set[int]] = {}
    for items, users in configs:
        groups.setdefault(items, set()).add(users)
    return [(items, sorted(users)) for items, users in sorted(groups.items())]


def status_kib(text: str) -> dict[str, int]:
    """The ``kB`` fields of a ``/proc/<pid>/status`` or ``smaps_rollup`` text, in KiB."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


def target_check(rows: Sequence[dict], target_bytes: int = TARGET_BYTES, config: tuple[int, int] = TARGET_CONFIG) -> dict:
    """Whether the peak of the target configuration is under ``target_bytes`` (None when not measured)."""
    row = next((r for r in rows if (r.get("items"), r.get("users")) == config and r.get("vm_hwm_bytes")), None)
    base = {"config": {"items": config[0], "users": config[1]}, "target_mib": round(target_bytes / MiB)}
    if row is None:
        return base | {"peak_mib": None, "met": None}
    return base | {"peak_mib": round(row["vm_hwm_bytes"] / MiB, 1), "met": row["vm_hwm_bytes"] < target_bytes}


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# ------------------------------------------------------------------------------ the worker's memory


class Sampler(threading.Thread):
    """Reads the worker's ``VmRSS`` every ``interval`` s; keeps each phase's peak RSS."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.phase = "start-up"
        self.peaks: dict[str, int] = {}  # phase -> max VmRSS seen, KiB
        self.samples: list[tuple[float, str, int]] = []  # (s since start, phase, VmRSS KiB)
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def read(self) -> dict[str, int]:
        try:
            return status_kib(Path(f"/proc/{self.pid}/status").read_text())
        except OSError:
            return {}

    def run(self) -> None:
        while not self._halt.is_set():
            rss = self.read().get("VmRSS")
            if rss is not None:
                phase = self.phase
                self.peaks[phase] = max(self.peaks.get(phase, 0), rss)
                self.samples.append((round(time.perf_counter() - self._t0, 2), phase, rss))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def snapshot(pid: int) -> dict:
    """The worker's memory now: peak and current RSS, and the anonymous/file split."""
    status = status_kib(Path(f"/proc/{pid}/status").read_text())
    try:
        rollup = status_kib(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except OSError:
        rollup = {}
    return {
        "vm_hwm_bytes": status.get("VmHWM", 0) * 1024,
        "vm_hwm_mib": mib(status.get("VmHWM")),
        "vm_rss_mib": mib(status.get("VmRSS")),
        "rss_anon_mib": mib(status.get("RssAnon")),
        "rss_file_mib": mib(status.get("RssFile")),
        "pss_mib": mib(rollup.get("Pss")),
        "threads": _threads(pid),
    }


def _threads(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# ------------------------------------------------------------------------------ one worker


class Group:
    """One catalog size: its namespace, its worker, its users added step by step."""

    def __init__(self, args, items: int, users: list[int], catalog: gen.Catalog, tmp: Path) -> None:
        self.args = args
        self.n_items = items
        self.user_steps = users
        self.catalog = catalog
        self.tmp = tmp
        self.prefix = f"mem-{uuid.uuid4().hex[:10]}."
        self.settings = KafkaSettings(broker=args.broker, topic_prefix=self.prefix)
        self.worker: P.SystemProcess | None = None
        self.sampler: Sampler | None = None
        self.users = gen.Users(max(users), catalog, args.seed, prefix="mu")
        self.events_sent = 0  # click events of users (the probe not included)
        self.answered_base = 0  # records on the output topics before the users' events
        self.rows: list[dict] = []
        self.phases: dict[str, dict] = {}

    # -------------------------------------------------------------- Kafka
    def end_offsets(self, topics: Sequence[str], partitions: int) -> int:
        from kafka import KafkaConsumer, TopicPartition

        if not hasattr(self, "_consumer"):
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.settings.bootstrap_servers, group_id=None, enable_auto_commit=False, client_id="recstream-bench-memory"
            )
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return sum(self._consumer.end_offsets(tps).values())

    def answered(self) -> int:
        """Records on the recommendations and dead-letter topics (one per event: ``--emit per-event``)."""
        return self.end_offsets([self.settings.topic(T.RECOMMENDATIONS)], self.args.partitions) + self.end_offsets([self.settings.topic(T.DLQ)], 1)

    def wait_for(self, what: str, count, total: int, unit: str, stall_s: float | None = None) -> float:
        """Until ``count()`` reaches ``total``; fails when nothing new comes for ``stall_s`` (default
        ``--stall-timeout``) seconds or the worker dies."""
        stall_s = self.args.stall_timeout if stall_s is None else stall_s
        t0 = last_t = time.perf_counter()
        last = count()
        tty = sys.stderr.isatty()
        pb = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=1.0 if tty else 15.0)
        try:
            while True:
                n = count()
                pb.update(min(n, total) - pb.n)
                t = time.perf_counter()
                if n >= total:
                    return t - t0
                self.worker.check_alive()
                if n != last:
                    last, last_t = n, t
                if t - last_t > stall_s:
                    raise MemoryBenchError(f"{what}: {n} of {total} {unit}s and none new for {stall_s:.0f} s; worker log ends with:\n{self.worker.tail(25)}")
                time.sleep(0.5)
        finally:
            pb.close()

    def seed_catalog(self) -> None:
        """Write the item-embeddings changelog in the worker's stored format (before it starts)."""
        rng = np.random.default_rng(self.args.seed)
        topic = self.settings.changelog(T.ITEMS_TABLE)
        p = P.producer(self.settings.broker, linger_ms=20, batch_size=512 * 1024)
        t0 = time.perf_counter()
        chunk = 4096
        for start in range(0, self.n_items, chunk):
            items = self.catalog.items[start : min(start + chunk, self.n_items)]
            vecs = rng.standard_normal((len(items), DIM), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            for item, vec in zip(items, vecs):
                p.send(topic, key=item.item_id.encode(), value=encode_item(item.title, item.categories, vec), partition=0)
        p.flush(300)
        p.close(5)
        log(f"seeded {self.n_items} items on {topic} in {time.perf_counter() - t0:.1f} s")

    def produce_catalog(self) -> None:
        """Short item records (title and categories) on the items topic, for the worker to embed."""
        p = P.producer(self.settings.broker, linger_ms=20, batch_size=256 * 1024)
        topic = self.settings.topic(T.ITEMS)
        ts = P.now_ms()
        for item in self.catalog.items[: self.n_items]:
            value = {"item_id": item.item_id, "title": item.title, "categories": list(item.categories), "ts": ts}
            p.send(topic, key=item.item_id.encode(), value=orjson.dumps(value))
        p.flush(300)
        p.close(5)

    def produce_clicks(self, first_user: int, last_user: int) -> int:
        """``--clicks-per-user`` clicks for each user in ``[first_user, last_user)``, user after user."""
        pick_rng = random.Random(f"memory:{self.args.seed}:{first_user}")
        topic = self.settings.topic(T.CLICKS)
        p = P.producer(self.settings.broker, linger_ms=20, batch_size=256 * 1024)
        n = 0
        ts = P.now_ms()
        for u in range(first_user, last_user):
            user_id = self.users.ids[u]
            for _ in range(self.args.clicks_per_user):
                idx = self.catalog.pick(pick_rng, self.users.favourites[u])
                value = {"user_id": user_id, "item_id": self.catalog.items[idx].item_id, "ts": ts, "event_id": f"mem.{self.events_sent + n}"}
                p.send(topic, key=user_id.encode(), value=orjson.dumps(value))
                n += 1
        p.flush(300)
        p.close(5)
        return n

    def probe(self) -> None:
        p = P.producer(self.settings.broker, linger_ms=0, batch_size=16384)
        value = {"user_id": PROBE_USER, "item_id": self.catalog.items[0].item_id, "ts": P.now_ms(), "event_id": "mem-probe.0"}
        p.send(self.settings.topic(T.CLICKS), key=PROBE_USER.encode(), value=orjson.dumps(value))
        p.flush(30)
        p.close(5)

    # -------------------------------------------------------------- steps
    def set_phase(self, name: str) -> None:
        if self.sampler is not None:
            self.sampler.phase = name

    def end_phase(self, name: str, seconds: float, **extra) -> dict:
        snap = snapshot(self.worker.proc.pid)
        peak_rss = self.sampler.peaks.get(name) if self.sampler else None
        info = {"seconds": round(seconds, 1), "peak_rss_sampled_mib": mib(peak_rss), **snap, **extra}
        info.pop("vm_hwm_bytes")
        self.phases[name] = info
        log(f"{name}: {seconds:.1f} s; worker VmHWM {snap['vm_hwm_mib']} MiB, VmRSS {snap['vm_rss_mib']} MiB")
        return snap

    def run(self) -> None:
        a = self.args
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=a.partitions))
        if a.catalog == "seed":
            self.seed_catalog()
        cmd = P.system_command(
            "recstream", broker=a.broker, prefix=self.prefix, partitions=a.partitions, data_dir=self.tmp / "data", device=a.device, extra_args=a.worker_arg
        )
        self.worker = P.SystemProcess("recstream", cmd, self.tmp / "worker.log")
        t0 = time.perf_counter()
        self.worker.start()
        self.sampler = Sampler(self.worker.proc.pid, a.sample_interval)
        self.sampler.start()
        self.set_phase("start-up")
        self.probe()
        what = "worker start-up" + (f" and recovery of {self.n_items} items" if a.catalog == "seed" else "")
        self.wait_for(what, self.answered, 1, "probe", stall_s=a.start_timeout)
        self.answered_base = 1
        extra = {}
        if a.catalog == "seed":
            restored = [int(n) for n in REBUILT.findall(self.worker.text())]
            if restored and restored[-1] != self.n_items:
                raise MemoryBenchError(f"the worker restored {restored[-1]} items, {self.n_items} were seeded")
            extra = {"catalog": f"{self.n_items} items restored from the changelog", "items_in_matrix_logged": restored[-1] if restored else None}
        self.end_phase("start-up", time.perf_counter() - t0, **extra)
        if a.catalog == "embed":
            self.set_phase("catalog")
            t0 = time.perf_counter()
            self.produce_catalog()
            changelog = self.settings.changelog(T.ITEMS_TABLE)
            self.wait_for(f"embedding {self.n_items} items", lambda: self.end_offsets([changelog], 1), self.n_items, "item")
            self.end_phase("catalog", time.perf_counter() - t0, catalog=f"{self.n_items} short items embedded")
        done_users = 0
        for target in self.user_steps:
            phase = f"users {target}"
            self.set_phase(phase)
            t0 = time.perf_counter()
            sent = self.produce_clicks(done_users, target)
            self.events_sent += sent
            self.wait_for(f"{target - done_users} users' clicks", self.answered, self.answered_base + self.events_sent, "event")
            seconds = time.perf_counter() - t0
            dead = self.end_offsets([self.settings.topic(T.DLQ)], 1)
            snap = self.end_phase(phase, seconds, events=sent, dead_letters=dead)
            row = {"items": self.n_items, "users": target, "click_events": self.events_sent, **snap, "dead_letters": dead, "catalog": a.catalog}
            row["vm_hwm_bytes"] = snap["vm_hwm_bytes"]
            self.rows.append(row)
            done_users = target
        info = self.worker.info()
        stats = info.get("last_logged_stats") or {}
        self.phases["worker_stats"] = {k: stats.get(k) for k in ("events", "applied", "recommendations", "items") if k in stats}

    def close(self) -> dict:
        out: dict = {"prefix": self.prefix}
        if self.sampler is not None:
            self.sampler.stop()
            out["rss_timeline"] = downsample(self.sampler.samples, 120)
        if self.worker is not None and self.worker.proc is not None:
            try:
                stop_s = self.worker.stop()
                out["worker_stop_s"] = None if stop_s is None else round(stop_s, 1)
                out["worker_exit_status"] = self.worker.proc.returncode
                out["worker_errors_logged"] = self.worker.info().get("errors_logged")
                if self.args.keep_logs is not None:
                    self.args.keep_logs.mkdir(parents=True, exist_ok=True)
                    dest = self.args.keep_logs / f"worker-{self.n_items}.log"
                    shutil.copyfile(self.worker.log_path, dest)
                    out["worker_log"] = str(dest)
            except Exception as exc:  # noqa: BLE001
                log(f"stopping the worker failed: {exc!r}")
        if hasattr(self, "_consumer"):
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            P.delete_prefixes(self.args.broker, [self.prefix])
        except Exception as exc:  # noqa: BLE001
            log(f"WARNING: deleting the topics of {self.prefix!r} failed: {exc!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return out


def downsample(samples: Sequence[tuple[float, str, int]], most: int) -> list[list]:
    """At most ``most`` evenly spaced samples, as ``[s, phase, MiB]`` (the maximum is always kept)."""
    if not samples:
        return []
    step = max(1, len(samples) // most)
    keep = set(range(0, len(samples), step)) | {max(range(len(samples)), key=lambda i: samples[i][2])}
    keep.add(len(samples) - 1)
    return [[samples[i][0], samples[i][1], mib(samples[i][2])] for i in sorted(keep)]


# ------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Peak RSS of a real recstream worker with N items and U users.", epilog="Prints one JSON document to stdout; progress on stderr."
    )
    p.add_argument(
        "--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"), help="bootstrap servers (default 127.0.0.1:9092 or $RECSTREAM_BROKER)"
    )
    p.add_argument("--configs", type=parse_configs, help="ITEMSxUSERS,... (default 10kx10k,100kx10k,10kx100k,100kx100k; --quick 10kx10k)")
    p.add_argument(
        "--catalog",
        choices=("seed", "embed"),
        default="seed",
        help="seed: write the item-embeddings changelog before the worker starts (it restores it); "
        "embed: produce short item records for the worker to embed (slow: ~13 ms CPU per item)",
    )
    p.add_argument("--clicks-per-user", type=int, default=1, help="click events per user (default 1)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the event topics and tables (default 1)")
    p.add_argument("--device", default="cpu", help="worker --device (default cpu: the target is on the CPU)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARGS", help="extra arguments for 'recstream worker' (repeatable)")
    p.add_argument("--seed", type=int, default=42, help="seed of the catalog, users, clicks and vectors (default 42)")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between RSS samples (default 0.5)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the worker to start (and restore a seeded catalog) (default 600)")
    p.add_argument("--stall-timeout", type=float, default=300.0, help="fail a wait when nothing new is answered for this many seconds (default 300)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy each worker's log into DIR")
    add_run_args(p, "smoke run: (10k items, 10k users) only")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.configs is None:
        args.configs = list(QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS)
    problems = []
    if args.clicks_per_user < 1:
        problems.append("--clicks-per-user must be at least 1")
    if args.partitions < 1:
        problems.append("--partitions must be at least 1")
    if not args.sample_interval > 0:
        problems.append("--sample-interval must be positive")
    if problems:
        build_parser().error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = resolve_args(build_parser().parse_args(argv))
    t_start = time.perf_counter()
    groups = plan_groups(args.configs)
    result: dict = {
        **bench_header("recstream worker memory (bench/memory.py)", "bench/memory.py", argv),
        "parameters": {
            "configs": [{"items": i, "users": u} for i, u in args.configs],
            "catalog": args.catalog,
            "clicks_per_user": args.clicks_per_user,
            "partitions": args.partitions,
            "device": args.device,
            "worker_args": args.worker_arg,
            "seed": args.seed,
            "emit": "per-event",
            "broker": args.broker,
            "workers": [{"items": i, "user_steps": u} for i, u in groups],
            "measured_as": "VmHWM (peak RSS) of the worker process from /proc/<pid>/status once every event of "
            "the step is answered; one worker per catalog size, users added in increasing steps",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "memory_gib": mem_total_gib(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {n: pkg_version(n) for n in ("recstream", "faust-streaming", "rocksdict", "torch", "numpy", "aiokafka", "kafka-python")},
    }
    rows: list[dict] = []
    workers: list[dict] = []

    def on_term(signum, frame):  # SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Guarded(result, log, known=(MemoryBenchError, P.BenchError)) as guard:
        P.check_broker(args.broker)
        catalog = gen.Catalog(max(i for i, _ in args.configs), args.seed)
        for items, users in groups:
            log(f"worker with {items} items, users {', '.join(str(u) for u in users)} ({args.catalog} catalog)")
            group = Group(args, items, users, catalog, Path(tempfile.mkdtemp(prefix="recstream-memory-")))
            try:
                group.run()
            finally:
                old = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    closed = group.close()
                finally:
                    signal.signal(signal.SIGINT, old)
                rows.extend(group.rows)
                workers.append({"items": items, "phases": group.phases, **closed})
    result["results"] = [{k: v for k, v in r.items() if k != "vm_hwm_bytes"} for r in rows]
    result["target"] = target_check(rows)
    result["workers"] = workers
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
