"""Benchmark of the worker's HTTP API (issue 17): lookups and query recommendations.

A real ``recstream worker`` on the local broker (its own topic namespace), a synthetic catalog
(bench/catalog_gen.py), users warmed with clicks; then, each phase ``--phase-s`` seconds,
bounded in time, on loopback only:

* ``baseline``: clicks at ``--event-rate`` (500/s) and no HTTP load;
* ``lookup@R``: ``GET /v1/users/{u}/recommendations`` at R requests/s (200 and 1,000) from an
  open-loop aiohttp client (each request sent at its scheduled time, its latency counted from
  then: no coordinated omission), while the clicks go on at the same rate;
* ``query@R``: ``POST /v1/recommend`` with a user and a text query at R requests/s (20 and
  100), clicks going on too unless ``--query-without-events``.

For every phase: requests sent, answered 200, errors, achieved rate, latency p50/p90/p99/max
(ms); the worker's event throughput (events processed per second, from its /metrics) and the
end-to-end latency of its recommendation records (``emitted_ts - event_ts``, p50/p99), so the
cost of the HTTP load to event processing shows against the baseline.  Prints one JSON
document (``-o`` also writes it).

    .venv/bin/python bench/serving.py --quick        # 6 s phases
    .venv/bin/python bench/serving.py                # 20 s phases
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

from streams import topics as T  # noqa: E402
from streams.client import WorkerProcess, producer, tail, wait_catalog  # noqa: E402
from streams.config import KafkaSettings  # noqa: E402

QUERIES = ("noise cancelling headphones with a long battery", "a cast-iron skillet for even heat", "a smartwatch that tracks sleep",
           "a quiet espresso machine with a milk frother", "warm dimmable lamp for reading", "stackable pantry storage bins")


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


def events_processed(port: int) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "recstream_events_processed_total")


async def load(port: int, rate: float, seconds: float, make) -> dict:
    """Open-loop load: request i is sent at t0 + i / rate; latency from that moment."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        n = int(rate * seconds)
        tasks = []

        async def one(i: int) -> None:
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            method, path, body = make(i)
            try:
                async with session.request(method, f"http://127.0.0.1:{port}{path}", data=body,
                                           headers={"Content-Type": "application/json"} if body else None) as r:
                    await r.read()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted, reported
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            latencies.append((loop.time() - due) * 1000)

        for i in range(n):
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - t0
    ok = statuses.get("200", 0)
    return {
        "target_rps": rate, "sent": n, "ok": ok, "statuses": statuses, "achieved_rps": round(ok / elapsed, 1),
        "latency_ms": {"p50": _r(percentile(latencies, 50)), "p90": _r(percentile(latencies, 90)),
                       "p99": _r(percentile(latencies, 99)), "max": _r(max(latencies) if latencies else None)},
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


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
    p.add_argument("-o", "--output")
    a = p.parse_args()
    if a.quick:
        a.phase_s, a.items, a.users = 6.0, 2_000, 500
    settings = KafkaSettings(broker=a.broker, topic_prefix=f"bserve{int(time.time())}.")
    T.ensure_topics(settings, T.topic_specs(settings, partitions=2))
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="recstream-bench-serving-"))
    worker = WorkerProcess(settings, work / "state", "--partitions", "2", "-k", "10", "--metrics-port", str(port),
                           "--device", a.device, log_path=work / "worker.log")
    catalog = gen.Catalog(a.items, 11)
    users = [f"su{n}" for n in range(a.users)]
    started = time.monotonic()
    out: dict = {"benchmark": "bench/serving.py", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                 "settings": {"items": a.items, "users": a.users, "event_rate": a.event_rate, "phase_s": a.phase_s,
                              "partitions": 2, "k": 10, "loopback": True,
                              "catalog": "synthetic, bench/catalog_gen.Catalog(items, seed 11)"},
                 "phases": {}}
    pump = rec = None
    try:
        worker.start()
        worker.wait_ready(600)
        prod = producer(settings)
        now = int(time.time() * 1000)
        for item in catalog.items:
            prod.send(settings.topic(T.ITEMS), key=item.item_id.encode(), value=orjson.dumps(catalog.record(item, now)))
        prod.flush()
        wait_catalog(settings, [i.item_id for i in catalog.items], timeout_s=900)
        rng = random.Random(3)
        for n, user in enumerate(users):  # every user gets a list
            for j in range(3):
                prod.send(settings.topic(T.CLICKS), key=user.encode(),
                          value=orjson.dumps({"user_id": user, "item_id": rng.choice(catalog.items).item_id, "ts": now + j}))
        prod.flush()
        prod.close()
        # the warm-up is answered when the worker has processed every click
        deadline = time.monotonic() + 600
        while events_processed(port) < 3 * len(users):
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up clicks were not processed within 600 s")
            time.sleep(0.5)
        rec = RecLatency(settings)
        rec.start()
        pump = EventPump(settings, catalog, users, a.event_rate)
        pump.start()

        def phase(name: str, events: bool, http) -> None:
            if events:
                pump.running.set()
            time.sleep(1.0)  # the pump reaches its rate
            e0, t0 = events_processed(port), time.time()
            result = asyncio.run(http()) if http is not None else (time.sleep(a.phase_s) or {})
            e1, t1 = events_processed(port), time.time()
            pump.running.clear()
            time.sleep(1.0)
            lat = rec.between(int(t0 * 1000), int(t1 * 1000))
            result["worker"] = {"events_per_s": round((e1 - e0) / (t1 - t0), 1), "event_load": a.event_rate if events else 0,
                                "records": len(lat), "record_latency_ms": {"p50": _r(percentile(lat, 50)), "p99": _r(percentile(lat, 99))}}
            out["phases"][name] = result
            print(f"{name}: {orjson.dumps(result).decode()}", file=sys.stderr)

        phase("baseline", True, None)
        for rate in [float(x) for x in a.lookup_rates.split(",") if x]:
            phase(f"lookup@{rate:g}", True, lambda rate=rate: load(port, rate, a.phase_s, lambda i: (
                "GET", f"/v1/users/{users[(i * 7919) % len(users)]}/recommendations", None)))
        for rate in [float(x) for x in a.query_rates.split(",") if x]:
            phase(f"query@{rate:g}", not a.query_without_events, lambda rate=rate: load(port, rate, a.phase_s, lambda i: (
                "POST", "/v1/recommend", orjson.dumps({"user_id": users[(i * 7919) % len(users)], "query": QUERIES[i % len(QUERIES)],
                                                       "k": 10}))))
        base = out["phases"]["baseline"]["worker"]["events_per_s"]
        out["summary"] = {name: {"p99_ms": ph.get("latency_ms", {}).get("p99"), "achieved_rps": ph.get("achieved_rps"),
                                 "events_per_s": ph["worker"]["events_per_s"],
                                 "events_vs_baseline": round(ph["worker"]["events_per_s"] / base, 3) if base else None}
                          for name, ph in out["phases"].items()}
    finally:
        if pump is not None:
            pump.stopped.set()
        if rec is not None:
            rec.stopped.set()
        worker.stop()
        leftovers = list(T.list_topics(settings))
        if leftovers:
            T.delete_topics(settings, leftovers)
    out["wall_s"] = round(time.monotonic() - started, 1)
    text = orjson.dumps(out, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
