"""The API's front process (streams/front.py): its reads of the worker's stores, its merge of
the worker's metrics with its own, and its answers against a fake worker, with a real HTTP
client (no broker)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import orjson
import pytest
import rocksdict
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams.client import partition_for
from recstream.streams.front import INTERNAL_HEADER, STATE_PATH, Front, FrontConfig, LatestStores, WorkerState, merge_exposition

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


def primary(path: Path) -> rocksdict.Rdict:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    return rocksdict.Rdict(str(path), options=opts)


def test_a_secondary_view_sees_every_write_of_the_primary_before_each_read(tmp_path: Path) -> None:
    db = primary(tmp_path / "latest-0.db")
    db[b"u1"] = b"one"
    stores = LatestStores(tmp_path / "scratch", max_lag_s=0.0)
    path = str(tmp_path / "latest-0.db")
    assert stores.get(path, b"u1") == b"one"
    db[b"u1"] = b"two"
    db[b"u2"] = b"new"
    assert (stores.get(path, b"u1"), stores.get(path, b"u2")) == (b"two", b"new")
    del db[b"u1"]  # a forgotten user: gone from the front too
    assert stores.get(path, b"u1") is None
    db.flush()  # from the log into a table file: still seen
    db[b"u3"] = b"three"
    assert stores.get(path, b"u3") == b"three"
    stores.retain(set())
    assert stores.get(path, b"u2") == b"new"  # opened afresh
    stores.close()
    db.close()


def test_a_view_catches_up_at_most_every_max_lag_s(tmp_path: Path) -> None:
    db = primary(tmp_path / "latest-0.db")
    db[b"u"] = b"old"
    path = str(tmp_path / "latest-0.db")
    stores = LatestStores(tmp_path / "scratch", max_lag_s=0.3)
    assert stores.get(path, b"u") == b"old"
    caught_up = time.monotonic()
    db[b"u"] = b"new"
    if time.monotonic() - caught_up < 0.25:
        assert stores.get(path, b"u") == b"old"  # within the lag: the view as it was
    time.sleep(0.3)  # the lag itself
    assert stores.get(path, b"u") == b"new"
    stores.close()
    db.close()


def test_a_store_that_is_not_there_raises_and_is_tried_again(tmp_path: Path) -> None:
    stores = LatestStores(tmp_path / "scratch")
    path = str(tmp_path / "latest-1.db")
    with pytest.raises(FileNotFoundError):
        stores.get(path, b"u")
    db = primary(tmp_path / "latest-1.db")
    db[b"u"] = b"x"
    assert stores.get(path, b"u") == b"x"
    stores.close()
    db.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_front_s_counts_are_added_into_the_worker_s_series() -> None:
    worker, front = CollectorRegistry(), CollectorRegistry()
    for registry, n, seconds in ((worker, 3, 0.2), (front, 5, 0.0003)):
        c = Counter("recstream_api_requests", "requests", ["route", "method", "status"], registry=registry)
        c.labels("/v1/users/{user_id}/recommendations", "GET", "200").inc(n)
        h = Histogram("recstream_api_request_duration_seconds", "time", ["route"], buckets=(0.001, 0.5), registry=registry)
        h.labels("/v1/users/{user_id}/recommendations").observe(seconds)
    Counter("recstream_api_requests_extra", "only the worker's", registry=worker).inc(2)
    Counter("recstream_api_requests", "requests", ["route", "method", "status"], registry=CollectorRegistry())  # unrelated
    Counter("recstream_front_only", "only the front's", registry=front).inc(7)
    extra = Counter("recstream_api_requests_by_front", "x", ["route", "method", "status"], registry=front)
    extra.labels("/v1/recommend", "POST", "400").inc()

    merged = samples(merge_exposition(generate_latest(worker).decode(), front).decode())
    route = (("method", "GET"), ("route", "/v1/users/{user_id}/recommendations"), ("status", "200"))
    assert merged[("recstream_api_requests_total", route)] == 8
    lookups = (("route", "/v1/users/{user_id}/recommendations"),)
    assert merged[("recstream_api_request_duration_seconds_count", lookups)] == 2
    assert merged[("recstream_api_request_duration_seconds_bucket", (("le", "0.001"), *lookups))] == 1  # the front's fast one
    assert merged[("recstream_api_request_duration_seconds_bucket", (("le", "+Inf"), *lookups))] == 2
    assert merged[("recstream_api_requests_extra_total", ())] == 2
    assert merged[("recstream_front_only_total", ())] == 7


def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_the_front_answers_lookups_from_the_store_and_passes_the_rest_to_the_worker(tmp_path: Path) -> None:
    """A fake worker (an aiohttp server with the state route and a catch-all answer) behind a
    real front; a real HTTP client in front."""
    partitions, secret = 2, "s3cret"
    users = {p: next(f"u{n}" for n in range(100) if partition_for(f"u{n}".encode(), partitions) == p) for p in range(partitions)}
    db = primary(tmp_path / "latest-0.db")
    record = {"schema": 1, "user_id": users[0], "items": [{"item_id": f"i{n}", "score": 1.0 - n / 10, "because": None} for n in range(5)], "model": "blend"}
    db[users[0].encode()] = orjson.dumps(record)
    seen: list[str] = []
    state = {"paths": {"0": str(tmp_path / "latest-0.db")}, "unavailable": None}

    async def run() -> None:
        async def front_state(request: web.Request) -> web.Response:
            if request.headers.get(INTERNAL_HEADER) != secret:
                raise web.HTTPNotFound()
            return web.json_response(state)

        async def anything(request: web.Request) -> web.Response:
            seen.append(f"{request.method} {request.raw_path} {await request.read()!r}")
            if request.path == "/metrics":
                return web.Response(body=b"# HELP x_total x\n# TYPE x_total counter\nx_total 1.0\n", content_type="text/plain")
            return web.json_response({"answered": "worker"}, status=418, headers={"X-Worker": "yes"})

        worker_app = web.Application()
        worker_app.router.add_get(STATE_PATH, front_state)
        worker_app.router.add_route("*", "/{tail:.*}", anything)
        runner = web.AppRunner(worker_app)
        await runner.setup()
        internal = listening()
        await web.SockSite(runner, internal).start()
        public = listening()
        port = public.getsockname()[1]
        config = FrontConfig(
            fd=public.fileno(),
            internal_url=f"http://127.0.0.1:{internal.getsockname()[1]}",
            secret=secret,
            own_url=f"http://127.0.0.1:{port}",
            partitions=partitions,
            max_k=10,
            token="tok",
        )
        front = Front(config, tmp_path / "scratch", max_lag_s=0.0)
        stop = asyncio.Event()
        serving = asyncio.ensure_future(front.serve(stop))
        auth = {"Authorization": "Bearer tok"}
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
                for _ in range(200):  # the first read of the worker's state
                    if front.state is not None:
                        break
                    await asyncio.sleep(0.02)
                assert front.state == WorkerState({0: str(tmp_path / "latest-0.db")}, None)

                async with client.get(f"/v1/users/{users[0]}/recommendations?k=2", headers=auth) as r:
                    assert r.status == 200 and r.headers["X-Recstream-Served-By"] == config.own_url
                    assert await r.json() == record | {"items": record["items"][:2]}
                assert seen == []  # answered by the front alone
                db[users[0].encode()] = orjson.dumps(record | {"model": "newer"})
                async with client.get(f"/v1/users/{users[0]}/recommendations", headers=auth) as r:
                    assert (await r.json())["model"] == "newer"
                db[users[0].encode()] = b"not json"  # a value the front cannot read: the worker answers
                async with client.get(f"/v1/users/{users[0]}/recommendations", headers=auth) as r:
                    assert r.status == 418
                db[users[0].encode()] = orjson.dumps(record)
                seen.clear()

                # the worker answers: no token, a bad k, an unknown user, another partition's user, other routes
                passed = [
                    ("GET", f"/v1/users/{users[0]}/recommendations", {}, None),
                    ("GET", f"/v1/users/{users[0]}/recommendations?k=0", auth, None),
                    ("GET", "/v1/users/nobody/recommendations", auth, None),
                    ("GET", f"/v1/users/{users[1]}/recommendations", auth, None),
                    ("POST", "/v1/recommend?x=a%20b", auth, b'{"query": "jazz"}'),
                    ("DELETE", f"/v1/users/{users[0]}", auth, None),
                ]
                for method, path, headers, body in passed:
                    async with client.request(method, path, headers=headers, data=body) as r:
                        assert (r.status, r.headers["X-Worker"], await r.json()) == (418, "yes", {"answered": "worker"}), path
                assert seen[-2:] == ['POST /v1/recommend?x=a%20b b\'{"query": "jazz"}\'', f"DELETE /v1/users/{users[0]} b''"]
                assert len(seen) == len(passed)

                async with client.get("/metrics") as r:
                    exposition = samples(await r.text())
                assert exposition[("x_total", ())] == 1
                assert exposition[("recstream_api_front_lookups_total", (("answered_by", "front"),))] == 2
                assert exposition[("recstream_api_front_lookups_total", (("answered_by", "worker"),))] == 5
                ok = (("method", "GET"), ("route", "/v1/users/{user_id}/recommendations"), ("status", "200"))
                assert exposition[("recstream_api_requests_total", ok)] == 2

                state["unavailable"] = "rebalancing"  # then every lookup goes to the worker
                for _ in range(200):
                    if front.state is not None and front.state.unavailable:
                        break
                    await asyncio.sleep(0.02)
                async with client.get(f"/v1/users/{users[0]}/recommendations", headers=auth) as r:
                    assert r.status == 418

                await runner.cleanup()  # the worker gone: a JSON 503
                async with client.get("/v1/openapi.json", headers=auth) as r:
                    doc = await r.json()
                    assert (r.status, doc["code"], r.headers["Retry-After"]) == (503, "unavailable", "1")
        finally:
            stop.set()
            await serving
            internal.close()

    asyncio.run(run())
    db.close()


def test_the_front_process_does_not_load_torch_or_faust() -> None:
    """Its memory stays small (about 55 MB where torch alone brings 500 MB) and it starts in
    a fraction of a second."""
    import subprocess
    import sys

    code = "import sys, recstream.streams.front; print(sorted(m for m in ('torch', 'faust', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out
