"""Benchmark of the worker's HTTP API (issue 17): lookups and query recommendations.

A real ``recstream worker`` on the local broker (its own topic namespace), a synthetic catalog
(bench/catalog_gen.py), users warmed with clicks; then, each phase ``--phase-s`` seconds,
bounded in time, on loopback only:

* ``baseline``: clicks at ``--event-rate`` (500/s) and no HTTP load;
* ``lookup@R``: ``GET /v1/users/{u}/recommendations`` at R requests/s (200 and 1,000) from an
  open-loop aiohttp client in a process of its own (each request sent at its scheduled time, its latency counted from
  then: no coordinated omission), while the clicks go on at the same rate;
* ``query@R``: ``POST /v1/recommend`` with a user and a text query at R requests/s (20 and
  100), clicks going on too unless ``--query-without-events``.

For every phase: requests sent, answered 200, errors, achieved rate, latency p50/p90/p99/max
(ms); the worker's event throughput (events processed per second, from its /metrics) and the
end-to-end latency of its recommendation records (``emitted_ts - event_ts``, p50/p99), so the
cost of the HTTP load to event processing shows against the baseline.  Prints one JSON
document (``-o`` also writes it).  Each phase also records the worker process's CPU time
(user + system seconds per second, from /proc) and the machine's load average.

``--compare DIR`` measures two versions of the code in one run: a second worker runs the
code of ``DIR`` (a copy of the repository; its own topic namespace), and every phase runs
on one worker then the other, back to back, so that the machine's noise (a shared machine)
falls on both alike; the summary has a column per version.  Every phase starts once the
worker has processed every click produced so far (no backlog from the phase before).  Run it from outside the
repository (the workers are ``python -m recstream`` with ``PYTHONPATH`` set to their
code, and the current directory comes first on the path):

    .venv/bin/python bench/serving.py --quick        # 6 s phases
    .venv/bin/python bench/serving.py                # 20 s phases
    cd /tmp && /work/main/.venv/bin/python /work/main/bench/serving.py --quick --compare /tmp/recstream-before
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import catalog_gen as gen  # noqa: E402

from recstream.streams import topics as T  # noqa: E402
from recstream.streams.client import WorkerProcess, producer, tail, wait_catalog  # noqa: E402
from recstream.streams.config import KafkaSettings  # noqa: E402

QUERIES = (
    "noise cancelling headphones with a long battery",
    "a cast-iron skillet for even heat",
    "a smartwatch that tracks sleep",
    "a quiet espresso machine with a milk frother",
    "warm dimmable lamp for reading",
    "stackable pantry storage bins",
)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EventPump(threading.Thread):
    """Clicks at a fixed rate, in 20 ms slices, until stopped."""

    def __init__(self, settings: KafkaSettings, catalog: gen.Catalog, users: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.prod = producer(settings, linger_ms=5)
        self.topic = settings.topic(T.CLICKS)
        self.ids = [i.item_id for i in catalog.items]
        self.users = users
        self.rate = rate
        self.sent = 0
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        start, base = time.monotonic(), 0
        while not self.stopped.is_set():
            if not self.running.is_set():
                start, base = time.monotonic(), self.sent
                self.running.wait(0.1)
                continue
            due = int((time.monotonic() - start) * self.rate) + base
            while self.sent < due:
                user = self.rng.choice(self.users)
                now = int(time.time() * 1000)
                value = orjson.dumps({"user_id": user, "item_id": self.rng.choice(self.ids), "ts": now})
                self.prod.send(self.topic, key=user.encode(), value=value)
                self.sent += 1
            time.sleep(0.02)
        self.prod.flush()
        self.prod.close()


class RecLatency(threading.Thread):
    """Reads the recommendations topic: (emitted_ts, emitted_ts - event_ts) of every record."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.consumer = tail(settings, settings.topic(T.RECOMMENDATIONS), from_beginning=False)
        self.samples: list[tuple[int, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    doc = orjson.loads(r.value)
                    self.samples.append((doc["emitted_ts"], doc["emitted_ts"] - doc["event_ts"]))
        self.consumer.close()

    def between(self, t0_ms: int, t1_ms: int) -> list[float]:
        return [float(lat) for ts, lat in list(self.samples) if t0_ms <= ts < t1_ms]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def events_processed(port: int, samples: dict | None = None) -> float:
    samples = scrape(port) if samples is None else samples
    return sum(v for (name, _), v in samples.items() if name == "recstream_events_processed_total")


def server_latency(before: dict, after: dict, route: str) -> dict:
    """The worker's own view of a route between two scrapes (``recstream_api_request_duration_seconds``:
    request read to response ready, so without the waits in the socket and for the
    interpreter before the request is read): count, and p50/p99 as the bucket bounds (ms)
    that hold them."""
    name = "recstream_api_request_duration_seconds_bucket"
    buckets = sorted(
        (float(dict(labels)["le"]), after[(n, labels)] - before.get((n, labels), 0))
        for (n, labels) in after
        if n == name and dict(labels).get("route") == route
    )
    total = buckets[-1][1] if buckets else 0
    out: dict = {"count": int(total)}
    for q in (50, 99):
        bound = next((le for le, c in buckets if c >= total * q / 100), None) if total else None
        out[f"p{q}_le_ms"] = None if bound is None else (bound * 1000 if bound != float("inf") else "inf")
    return out


def query_stages(before: dict, after: dict) -> dict:
    """Mean seconds per query batch by stage (embed, rank: its wait for the compute thread
    included) between two scrapes; empty for a version without the metric."""
    out = {}
    for stage in ("embed", "rank"):
        key = (("stage", stage),)
        n = after.get(("recstream_api_query_seconds_count", key), 0) - before.get(("recstream_api_query_seconds_count", key), 0)
        total = after.get(("recstream_api_query_seconds_sum", key), 0) - before.get(("recstream_api_query_seconds_sum", key), 0)
        if n:
            out[stage] = {"batches": int(n), "mean_ms": round(1000 * total / n, 1)}
    return out


async def load(port: int, rate: float, seconds: float, make) -> dict:
    """Open-loop load: request i is sent at t0 + i / rate; latency from that moment.

    A scheduler starts each request at its time (the tasks alive are the requests in flight,
    not every request of the phase), and the client's garbage collector is off during the
    phase. Before (2026-12-08), the client made the 20,000 tasks of a 20 s phase at 1,000/s up
    front, with the collector on, and both versions of a --compare run showed the same stalls
    (a p99 of 140-185 ms, a max of 307-345 ms, where the server's own p99 was under 5 ms);
    with the two changes, one such run gave 16 ms and 92 ms for the same server."""
    import gc

    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        n = int(rate * seconds)
        tasks: set[asyncio.Future] = set()

        async def one(i: int) -> None:
            due = t0 + i / rate
            method, path, body = make(i)
            try:
                async with session.request(
                    method, f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/json"} if body else None
                ) as r:
                    await r.read()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted, reported
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            latencies.append((loop.time() - due) * 1000)

        gc.collect()
        gc.disable()
        try:
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))  # 0: behind, yield to the requests in flight
                task = asyncio.ensure_future(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
        finally:
            gc.enable()
        elapsed = loop.time() - t0
    ok = statuses.get("200", 0)
    return {
        "target_rps": rate,
        "sent": n,
        "ok": ok,
        "statuses": statuses,
        "achieved_rps": round(ok / elapsed, 1),
        "latency_ms": {
            "p50": _r(percentile(latencies, 50)),
            "p90": _r(percentile(latencies, 90)),
            "p99": _r(percentile(latencies, 99)),
            "max": _r(max(latencies) if latencies else None),
        },
    }


def make_request(kind: str, users: list[str]):
    """The request maker of a phase: ``lookup`` (GET a user's list) or ``query`` (POST a query)."""
    if kind == "lookup":
        return lambda i: ("GET", f"/v1/users/{users[(i * 7919) % len(users)]}/recommendations", None)
    return lambda i: (
        "POST",
        "/v1/recommend",
        orjson.dumps({"user_id": users[(i * 7919) % len(users)], "query": QUERIES[i % len(QUERIES)], "k": 10}),
    )


def load_phase(port: int, rate: float, seconds: float, kind: str, users: list[str]) -> dict:
    """One phase's load (run in the load client's own process)."""
    return asyncio.run(load(port, rate, seconds, make_request(kind, users)))


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Target:
    """One worker under test: its code (``root``), topics, port, event pump and record reader."""

    def __init__(self, name: str, root: Path, broker: str, work: Path, device: str, stamp: int) -> None:
        self.name = name
        self.root = root
        self.settings = KafkaSettings(broker=broker, topic_prefix=f"bserve{stamp}{name}.")
        T.ensure_topics(self.settings, T.topic_specs(self.settings, partitions=2))
        self.port = free_port()
        env = {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.worker = WorkerProcess(
            self.settings,
            work / name / "state",
            "--partitions",
            "2",
            "-k",
            "10",
            "--metrics-port",
            str(self.port),
            "--device",
            device,
            log_path=work / f"worker-{name}.log",
            env=env,
        )
        self.pump: EventPump | None = None
        self.rec: RecLatency | None = None
        self.phases: dict = {}
        self.warm_events = 0

    def feed(self, catalog: gen.Catalog, users: list[str]) -> None:
        prod = producer(self.settings)
        now = int(time.time() * 1000)
        for item in catalog.items:
            prod.send(self.settings.topic(T.ITEMS), key=item.item_id.encode(), value=orjson.dumps(catalog.record(item, now)))
        prod.flush()
        wait_catalog(self.settings, [i.item_id for i in catalog.items], timeout_s=900)
        rng = random.Random(3)
        for user in users:  # every user gets a list
            for j in range(3):
                prod.send(
                    self.settings.topic(T.CLICKS),
                    key=user.encode(),
                    value=orjson.dumps({"user_id": user, "item_id": rng.choice(catalog.items).item_id, "ts": now + j}),
                )
        prod.flush()
        prod.close()

    def wait_warm(self, n: int) -> None:
        # the warm-up is answered when the worker has processed every click
        self.warm_events = n
        deadline = time.monotonic() + 600
        while events_processed(self.port) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the warm-up clicks were not processed within 600 s")
            time.sleep(0.5)

    def catch_up(self, timeout_s: float = 120.0) -> float:
        """Wait until the worker has processed every click produced so far (a phase must
        not start with the previous one's backlog); the seconds it took."""
        assert self.pump is not None
        t0 = time.monotonic()
        while events_processed(self.port) < self.warm_events + self.pump.sent:
            if time.monotonic() - t0 > timeout_s:
                print(f"{self.name}: still behind after {timeout_s:g}s; the next phase starts with a backlog", file=sys.stderr)
                break
            time.sleep(0.25)
        return round(time.monotonic() - t0, 1)

    def stop(self) -> None:
        if self.pump is not None:
            self.pump.stopped.set()
        if self.rec is not None:
            self.rec.stopped.set()
        self.worker.stop()
        leftovers = list(T.list_topics(self.settings))
        if leftovers:
            T.delete_topics(self.settings, leftovers)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default=os.environ.get("RECSTREAM_BROKER", "127.0.0.1:9092"))
    p.add_argument("--items", type=int, default=5_000, help="catalog size (default 5,000)")
    p.add_argument("--users", type=int, default=2_000, help="users warmed with clicks (default 2,000)")
    p.add_argument("--event-rate", type=float, default=500.0)
    p.add_argument("--lookup-rates", default="200,1000")
    p.add_argument("--query-rates", default="20,100")
    p.add_argument("--phase-s", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="6 s phases, 2,000 items, 500 users")
    p.add_argument("--query-without-events", action="store_true", help="no click load during the query phases")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--client-in-process",
        action="store_true",
        help="run the HTTP load client in this process, beside the click producer and the record reader "
        "(as before 2026-12-08); by default it has a process of its own",
    )
    p.add_argument("--compare", metavar="DIR", help="also measure the code in DIR (a copy of the repository), phase by phase, back to back with this one")
    p.add_argument("-o", "--output")
    a = p.parse_args()
    if a.quick:
        a.phase_s, a.items, a.users = 6.0, 2_000, 500
    if a.compare and Path.cwd().resolve() in (ROOT, Path(a.compare).resolve()):
        p.error("with --compare, run from outside both code trees (e.g. cd /tmp): the current directory comes first on the workers' module path")
    work = Path(tempfile.mkdtemp(prefix="recstream-bench-serving-"))
    stamp = int(time.time())
    catalog = gen.Catalog(a.items, 11)
    users = [f"su{n}" for n in range(a.users)]
    started = time.monotonic()
    roots = [("current", ROOT)] + ([("compare", Path(a.compare).resolve())] if a.compare else [])
    out: dict = {
        "benchmark": "bench/serving.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": os.getloadavg()},
        "settings": {
            "items": a.items,
            "users": a.users,
            "event_rate": a.event_rate,
            "phase_s": a.phase_s,
            "partitions": 2,
            "k": 10,
            "loopback": True,
            "catalog": "synthetic, bench/catalog_gen.Catalog(items, seed 11)",
            "versions": {name: str(root) for name, root in roots},
            "load_client": "this process" if a.client_in_process else "a process of its own",
        },
        "phases": {},
    }
    targets: list[Target] = []
    client = None
    if not a.client_in_process:
        # the load client gets an interpreter of its own: in this process it would share the
        # interpreter lock with the click producer and the record reader, and its own waits
        # for it would count as the worker's latency
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        client = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        client.submit(time.sleep, 0).result()
    try:
        for name, root in roots:
            targets.append(Target(name, root, a.broker, work, a.device, stamp))
        for t in targets:
            t.worker.start()
        for t in targets:
            t.worker.wait_ready(600)
        for t in targets:
            t.feed(catalog, users)
        for t in targets:
            t.wait_warm(3 * len(users))
            t.rec = RecLatency(t.settings)
            t.rec.start()
            t.pump = EventPump(t.settings, catalog, users, a.event_rate)
            t.pump.start()

        def phase(t: Target, name: str, events: bool, http) -> None:
            assert t.pump is not None and t.rec is not None
            caught_up_s = t.catch_up()
            if events:
                t.pump.running.set()
            time.sleep(1.0)  # the pump reaches its rate
            pid = t.worker.proc.pid if t.worker.proc is not None else -1
            m0 = scrape(t.port)
            e0, t0, c0 = events_processed(t.port, m0), time.time(), cpu_seconds(pid)
            if http is None:
                result = time.sleep(a.phase_s) or {}
            elif client is None:
                result = load_phase(t.port, http[0], a.phase_s, http[1], users)
            else:
                result = client.submit(load_phase, t.port, http[0], a.phase_s, http[1], users).result()
            m1 = scrape(t.port)
            e1, t1, c1 = events_processed(t.port, m1), time.time(), cpu_seconds(pid)
            stages = query_stages(m0, m1)
            if stages:
                result["query_stages"] = stages
            if http is not None:
                route = "/v1/recommend" if name.startswith("query") else "/v1/users/{user_id}/recommendations"
                result["server_latency"] = server_latency(m0, m1, route)
            t.pump.running.clear()
            time.sleep(1.0)
            lat = t.rec.between(int(t0 * 1000), int(t1 * 1000))
            result["worker"] = {
                "events_per_s": round((e1 - e0) / (t1 - t0), 1),
                "event_load": a.event_rate if events else 0,
                "cpu_s_per_s": None if c0 is None or c1 is None else round((c1 - c0) / (t1 - t0), 2),
                "records": len(lat),
                "record_latency_ms": {"p50": _r(percentile(lat, 50)), "p99": _r(percentile(lat, 99))},
            }
            result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            result["catch_up_before_s"] = caught_up_s
            t.phases[name] = result
            print(f"{t.name} {name}: {orjson.dumps(result).decode()}", file=sys.stderr)

        plan: list[tuple[str, bool, tuple[float, str] | None]] = [("baseline", True, None)]
        plan += [(f"lookup@{float(x):g}", True, (float(x), "lookup")) for x in a.lookup_rates.split(",") if x]
        plan += [(f"query@{float(x):g}", not a.query_without_events, (float(x), "query")) for x in a.query_rates.split(",") if x]
        for name, events, http in plan:
            for t in targets:  # back to back: the same noise for every version
                phase(t, name, events, http)
        out["phases"] = targets[0].phases if len(targets) == 1 else {t.name: t.phases for t in targets}
        summary: dict = {}
        for t in targets:
            base = t.phases["baseline"]["worker"]["events_per_s"]
            summary[t.name] = {
                name: {
                    "p50_ms": ph.get("latency_ms", {}).get("p50"),
                    "p99_ms": ph.get("latency_ms", {}).get("p99"),
                    "achieved_rps": ph.get("achieved_rps"),
                    "events_per_s": ph["worker"]["events_per_s"],
                    "events_vs_baseline": round(ph["worker"]["events_per_s"] / base, 3) if base else None,
                    "server_p99_le_ms": ph.get("server_latency", {}).get("p99_le_ms"),
                    "worker_cpu_s_per_s": ph["worker"]["cpu_s_per_s"],
                    "record_p99_ms": ph["worker"]["record_latency_ms"]["p99"],
                }
                for name, ph in t.phases.items()
            }
        out["summary"] = summary["current"] if len(targets) == 1 else summary
    finally:
        for t in targets:
            t.stop()
        if client is not None:
            client.shutdown()
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    out["wall_s"] = round(time.monotonic() - started, 1)
    text = orjson.dumps(out, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
