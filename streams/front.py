"""The API's front process: lookups answered outside the worker's interpreter (docs/api.md).

The worker's Python is busy with the stream: a micro-batch holds its interpreter lock for
most of every second under load, and a lookup answered on one of its threads waits for it
(at 500 clicks/s and 1,000 lookups/s, a p99 of about 110 ms at the client, while a lookup
takes under a millisecond of the worker's own time).  So the worker hands its listening
socket (``--metrics-port``) to a process of its own, started and stopped with it:

* ``GET /v1/users/{user_id}/recommendations`` for a user of a partition the worker holds is
  answered here, from the worker's ``latest-recommendations`` RocksDB store of that
  partition, opened as a RocksDB *secondary* instance (read-only, beside the worker's
  primary; it catches up with the primary's log before a read at most every
  :data:`CATCH_UP_S`, so a lookup sees the lists the worker had stored 50 ms earlier);
* everything else (lookups the front cannot answer: a bad request, a user it has no list
  for, another worker's user, a store it cannot open; ``POST /v1/recommend``, ``DELETE``,
  the OpenAPI document, ``/health``, ``/ready``) is passed to the worker's own HTTP server,
  which listens on a loopback port of its choosing, and answered exactly as the worker
  answers it; ``/metrics`` is the worker's exposition with the front's own lookups added
  into the same series.

Which partitions the worker holds (and where their stores are) the front reads from the
worker every :data:`STATE_INTERVAL_S` over the loopback port, with a secret the worker
gives it; while the worker's group rebalances, every request goes to the worker; while the
worker does not answer (a long pause), the front answers from the partitions it last read
for up to :data:`STATE_MAX_AGE_S`, then passes every request on.  The front stops with the worker (it asks the kernel for a SIGTERM when
its parent dies, and checks its parent every second) and the worker restarts it if it
exits.  ``recstream worker --no-api-process`` serves everything from the worker itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from .api import MAX_BODY_BYTES, SERVED_BY_HEADER, Api, ApiError, _error_response, latest_response, parse_k, path_user_id
from .client import partition_for  # at start: imported by the first lookup, it held the loop for 0.1 s

log = logging.getLogger("recstream.front")

#: how often the front reads the worker's partitions (which it holds, where their stores are)
STATE_INTERVAL_S = 0.1
#: how long the front keeps answering from the last partitions it read while the worker does
#: not answer (a long micro-batch, a pause): under the shortest session timeout (6 s), after
#: which the group may have given the worker's partitions to another
STATE_MAX_AGE_S = 5.0
#: how far behind the worker's store a lookup may read: a store's view catches up with the
#: worker's log at most this often (a catch-up costs about a millisecond while the worker
#: writes, so once per lookup would bound the front at about a thousand lookups/s)
CATCH_UP_S = 0.05
#: the worker's internal route the front reads them from
STATE_PATH = "/internal/v1/front-state"
#: the header that carries the worker's secret on its internal route
INTERNAL_HEADER = "X-Recstream-Internal"
LOOKUP_ROUTE = "/v1/users/{user_id}/recommendations"
#: how long a request passed to the worker may take (a query at a busy worker included)
PASS_TIMEOUT_S = 60.0
#: the fewest seconds between two starts of the front by the worker
RESTART_BACKOFF_S = 5.0
#: headers of one hop, not passed on (aiohttp sets its own length, date and server)
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host"}
    | {"content-length", "date", "server"}
)


@dataclass(frozen=True)
class FrontConfig:
    """What the worker tells its front process (JSON on the front's standard input)."""

    fd: int  # the listening socket, inherited
    internal_url: str  # the worker's own HTTP server, on loopback
    secret: str  # for the worker's internal route
    own_url: str  # the URL the group forwards this worker's users' requests to
    partitions: int
    max_k: int
    token: str | None = field(default=None, repr=False)
    log_format: str = "text"
    parent_pid: int = 0


@dataclass(frozen=True)
class WorkerState:
    """The worker's partitions as the front last read them."""

    #: the latest-recommendations store's directory of every partition the worker holds
    paths: dict[int, str]
    #: why the worker cannot answer for its users now (a rebalance, a recovery), or None
    unavailable: str | None

    @classmethod
    def from_json(cls, raw: bytes) -> "WorkerState":
        doc = orjson.loads(raw)
        return cls({int(p): str(path) for p, path in doc["paths"].items()}, doc.get("unavailable"))


class LatestStores:
    """Read-only views of the worker's latest-recommendations stores: RocksDB secondary
    instances, one per store directory, each catching up with the worker's primary (its
    manifest and write-ahead log) before a read when it last did more than ``max_lag_s`` ago."""

    def __init__(self, scratch: Path, max_lag_s: float = CATCH_UP_S) -> None:
        self.scratch = scratch
        self.max_lag_s = max_lag_s
        self._dbs: dict[str, Any] = {}
        self._caught_up: dict[str, float] = {}

    def get(self, path: str, key: bytes) -> bytes | None:
        """The stored value of ``key`` in the store at ``path`` (None: absent), as the worker
        had it at most ``max_lag_s`` ago; raises when the store cannot be opened or read (then
        it is opened afresh next time)."""
        db = self._dbs.get(path)
        if db is None:
            db = self._open(path)
        try:
            now = time.monotonic()
            if now - self._caught_up.get(path, -math.inf) >= self.max_lag_s:
                db.try_catch_up_with_primary()
                self._caught_up[path] = now
            return db.get(key)
        except Exception:
            self._close(path)
            raise

    def _open(self, path: str) -> Any:
        self.keep(path, self.open_view(path))
        return self._dbs[path]

    def open_view(self, path: str) -> Any:
        """A new view of the store at ``path`` (not kept: see :meth:`keep`); any thread."""
        import rocksdict

        if not os.path.isdir(path):
            raise FileNotFoundError(f"no store at {path} (yet)")
        self.scratch.mkdir(parents=True, exist_ok=True)
        own = self.scratch / hashlib.sha1(path.encode()).hexdigest()[:16]  # the secondary's own files (its info log)
        return rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.secondary(str(own)))

    def missing(self, paths: Iterable[str]) -> list[str]:
        """Those of ``paths`` without a view yet."""
        return [p for p in paths if p not in self._dbs]

    def keep(self, path: str, db: Any) -> None:
        """Keep a view made by :meth:`open_view` (closed instead if one was opened meanwhile)."""
        if path in self._dbs:
            db.close()
            return
        self._dbs[path] = db
        self._caught_up[path] = time.monotonic()

    def _close(self, path: str) -> None:
        self._caught_up.pop(path, None)
        db = self._dbs.pop(path, None)
        if db is not None:
            try:
                db.close()
            except Exception:  # noqa: BLE001 - already unusable
                pass

    def retain(self, paths: set[str]) -> None:
        """Close the views of stores the worker no longer holds."""
        for path in [p for p in self._dbs if p not in paths]:
            self._close(path)

    def close(self) -> None:
        self.retain(set())


def merge_exposition(text: str, registry: Any) -> bytes:
    """The worker's Prometheus exposition ``text`` with the samples of ``registry`` added in:
    a sample of the same name and labels is summed (a count of the front's and the worker's
    requests), a new one appended to its family, a new family appended."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for mine in registry.collect():
        theirs = families.get(mine.name)
        if theirs is None:
            families[mine.name] = mine
            continue
        at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(theirs.samples)}
        for s in mine.samples:
            i = at.get((s.name, tuple(sorted(s.labels.items()))))
            if i is None:
                theirs.samples.append(s)
            elif not s.name.endswith("_created"):  # a creation time is the worker's
                theirs.samples[i] = theirs.samples[i]._replace(value=theirs.samples[i].value + s.value)

    class Merged:
        def collect(self) -> Any:
            return list(families.values())

    out = CollectorRegistry(auto_describe=False)
    out.register(Merged())
    return generate_latest(out)


class _Backend:
    """What :class:`streams.api.Api` needs of a backend to authorize and count here."""

    def __init__(self, own_url: str, max_k: int) -> None:
        self.own_url = own_url
        self.max_k = max_k


class Front:
    """The front process's HTTP server: lookups from the stores, the rest passed to the worker."""

    def __init__(self, config: FrontConfig, scratch: Path, *, max_lag_s: float = CATCH_UP_S) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.api = Api(_Backend(config.own_url, config.max_k), token=config.token, registry=self.registry)  # type: ignore[arg-type]
        lookups = Counter(
            "recstream_api_front_lookups",
            "Lookups (GET /v1/users/{user_id}/recommendations) by who answered them: the front process "
            "from the worker's store (front), or the worker, to which the front passed them (worker).",
            ["answered_by"],
            registry=self.registry,
        )
        self.by_front, self.by_worker = lookups.labels("front"), lookups.labels("worker")
        self.stores = LatestStores(scratch, max_lag_s)
        self.state: WorkerState | None = None
        self.session: Any = None

    # ------------------------------------------------------------------ handlers
    async def lookup(self, request: Any) -> Any:
        started = time.perf_counter()
        response = self._local_lookup(request)
        if response is None:
            self.by_worker.inc()
            return await self.pass_on(request)
        self.by_front.inc()
        self.api.observe(LOOKUP_ROUTE, "GET", response.status, started)
        return response

    def _local_lookup(self, request: Any) -> Any:
        """The answer from the store, or None where the worker must answer (its errors, its
        popularity list for unknown users and its forwarding stay in one place)."""
        state = self.state
        if state is None or state.unavailable is not None:
            return None
        try:
            self.api.authorize(request)
            user_id = path_user_id(request.rel_url.raw_path)
            k = parse_k(request.rel_url.query, self.config.max_k)
        except ApiError:
            return None
        key = user_id.encode("utf-8")
        path = state.paths.get(partition_for(key, self.config.partitions))
        if path is None:
            return None
        try:
            raw = self.stores.get(path, key)
        except Exception as exc:  # noqa: BLE001 - the worker answers instead
            log.debug("lookup passed to the worker: the store %s cannot be read (%s)", path, exc)
            return None
        if raw is None:
            return None
        try:
            response = latest_response(raw, k)
        except (ValueError, KeyError, TypeError) as exc:  # a stored value it cannot read: the worker says what it is
            log.warning("lookup passed to the worker: the stored list in %s cannot be read (%s)", path, exc)
            return None
        response.headers[SERVED_BY_HEADER] = self.config.own_url
        return response

    async def metrics(self, request: Any) -> Any:
        response = await self.pass_on(request)
        if response.status != 200:
            return response
        try:
            body = merge_exposition(response.body.decode(), self.registry)
        except Exception as exc:  # noqa: BLE001 - the worker's exposition as it is, without the front's counts
            log.warning("the front's metrics are left out of /metrics: the worker's exposition cannot be parsed (%s)", exc)
            return response
        return web.Response(body=body, headers={"Content-Type": response.headers.get("Content-Type", "text/plain; version=0.0.4; charset=utf-8")})

    async def pass_on(self, request: Any) -> Any:
        """The worker's answer to ``request`` (a 503 JSON error when it does not answer)."""
        body = await request.content.read(MAX_BODY_BYTES + 1) if request.can_read_body else None  # the worker tells a larger one
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        url = URL(self.config.internal_url + request.raw_path, encoded=True)
        try:
            async with self.session.request(request.method, url, headers=headers, data=body, allow_redirects=False) as r:
                payload = await r.read()
                out = CIMultiDict((k, v) for k, v in r.headers.items() if k.lower() not in _HOP)
                return web.Response(status=r.status, body=payload, headers=out)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return _error_response(
                ApiError("unavailable", f"the worker behind this port does not answer ({type(exc).__name__}); retry in a moment", headers={"Retry-After": "1"})
            )

    # ------------------------------------------------------------------ the worker's state
    async def follow(self) -> None:
        """Read the worker's partitions every :data:`STATE_INTERVAL_S`; stop when the worker is gone."""
        url = self.config.internal_url + STATE_PATH
        headers = {INTERNAL_HEADER: self.config.secret}
        last_parent_check = read_at = 0.0
        while True:
            try:
                async with self.session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                    if r.status != 200:
                        raise ValueError(f"status {r.status}")
                    self.state, read_at = WorkerState.from_json(await r.read()), time.monotonic()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError):
                if time.monotonic() - read_at > STATE_MAX_AGE_S:  # else: the worker is busy, the partitions still its own
                    self.state = None
            state = self.state
            self.stores.retain(set(state.paths.values()) if state is not None else set())
            if state is not None:
                await self._open_views(state)
            now = time.monotonic()
            if now - last_parent_check >= 1.0:
                last_parent_check = now
                if self.config.parent_pid and os.getppid() != self.config.parent_pid:
                    log.warning("the worker (pid %d) is gone: the API's front process stops", self.config.parent_pid)
                    return
            await asyncio.sleep(STATE_INTERVAL_S)

    async def _open_views(self, state: WorkerState) -> None:
        """Open the views of newly held stores off the event loop (an open reads every file of
        the store: tens to hundreds of milliseconds), before lookups need them."""
        loop = asyncio.get_running_loop()
        for path in self.stores.missing(state.paths.values()):
            try:
                db = await loop.run_in_executor(None, self.stores.open_view, path)
            except Exception:  # noqa: BLE001 - not there yet: tried again at the next read of the state
                continue
            self.stores.keep(path, db)

    async def serve(self, stop: asyncio.Event) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=PASS_TIMEOUT_S), auto_decompress=False
        )
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
        app.router.add_get(LOOKUP_ROUTE, self.lookup, allow_head=False)
        app.router.add_get("/metrics", self.metrics, allow_head=False)
        app.router.add_route("*", "/{tail:.*}", self.pass_on)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(fileno=self.config.fd)
        await web.SockSite(runner, sock).start()
        log.info("API front process (pid %d) on %s, the worker at %s", os.getpid(), self.config.own_url, self.config.internal_url)
        follower = asyncio.ensure_future(self.follow())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({follower, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            follower.cancel()
            stopped.cancel()
            await runner.cleanup()
            await self.session.close()
            self.stores.close()


def _die_with_parent() -> None:
    """Ask Linux for a SIGTERM when the parent (the worker) dies (elsewhere: the parent check)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: follow() checks the parent every second
        pass


def main() -> int:
    config = FrontConfig(**orjson.loads(sys.stdin.buffer.read()))
    _die_with_parent()
    if config.parent_pid and os.getppid() != config.parent_pid:
        return 0  # the worker died before the request above
    from .logs import install as install_logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    install_logging(config.log_format)
    with tempfile.TemporaryDirectory(prefix="recstream-front-") as scratch:
        front = Front(config, Path(scratch))

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await front.serve(stop)

        asyncio.run(run())
    return 0


class FrontProcess:
    """The worker's side: starts the front process on the worker's listening socket, restarts
    it when it exits (at most once every :data:`RESTART_BACKOFF_S`), stops it with the worker.
    Its :attr:`internal` socket (loopback, a free port) is where the worker's own HTTP server
    listens."""

    def __init__(self, sock: socket.socket, *, own_url: str, partitions: int, max_k: int, token: str | None, log_format: str) -> None:
        self.sock = sock
        self.internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.internal.bind(("127.0.0.1", 0))
        self.internal.listen(128)
        self.internal.setblocking(False)
        port = self.internal.getsockname()[1]
        self.config = FrontConfig(
            fd=sock.fileno(),
            internal_url=f"http://127.0.0.1:{port}",
            secret=secrets.token_urlsafe(24),
            own_url=own_url,
            partitions=partitions,
            max_k=max_k,
            token=token,
            log_format=log_format,
            parent_pid=os.getpid(),
        )
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.stopping = False

    def is_internal(self, request: Any) -> bool:
        """Whether ``request`` carries this worker's secret (the front's state requests)."""
        return hmac.compare_digest(request.headers.get(INTERNAL_HEADER, "").encode(), self.config.secret.encode())

    def start(self) -> None:
        import recstream

        root = str(Path(recstream.__file__).resolve().parents[1])  # the front imports the worker's own code
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recstream.streams.front"], stdin=subprocess.PIPE, pass_fds=(self.sock.fileno(),), close_fds=True, env=env
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(asdict(self.config)))
        self.proc.stdin.close()
        log.info("API front process started (pid %d): lookups are answered outside the worker's interpreter", self.proc.pid)

    def check(self) -> None:
        """Restart the front if it exited (called every second by the worker)."""
        proc = self.proc
        if self.stopping or proc is None or proc.poll() is None:
            return
        if time.monotonic() - self.started_at < RESTART_BACKOFF_S:
            return
        log.error("the API's front process exited (status %s); starting it again", proc.returncode)
        self.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.internal.close()


if __name__ == "__main__":
    sys.exit(main())
