"""The worker's HTTP API: recommendations served to applications (docs/api.md).

By default the worker's port is served by the API's front process (:mod:`streams.front`),
which answers lookups of the worker's own users from its stores and passes every other
request to the server below, unchanged; ``--no-api-process`` serves them all here.

Served by the worker's monitoring server (:class:`streams.metrics.MonitoringService`), on the
same port as ``/metrics``, ``/health`` and ``/ready``, on its own thread and event loop (not
the stream's: see :class:`PipelineBackend` for what runs where):

* ``GET /v1/users/{user_id}/recommendations?k=``: the user's latest list, the record last
  published on ``recommendations`` for them (kept in the ``latest-recommendations`` table,
  whose changelog is a compacted topic); an unknown user gets the popularity list
  (``model: "popularity"``);
* ``POST /v1/recommend`` ``{user_id?, query?, k?, exclude?}``: a list computed now, the query
  embedded with the worker's text encoder (the queries of the requests in flight in one
  forward pass) and ranked with the user's state by the stream's ranker
  (:mod:`scoring.query`); without ``user_id``, semantic search over the catalog;
* ``DELETE /v1/users/{user_id}``: forget the user (a :class:`streams.records.Forget` record on
  the ``clicks`` topic, applied by the worker holding the user's partition);
* ``GET /v1/openapi.json``: the OpenAPI document (also ``docs/openapi.json``).

**Any worker answers for any user.**  A user's profile and latest list live on the worker
holding the user's partition.  A request for a user of another partition is forwarded to
that worker, as Faust's table router does: every worker advertises its API address as its
Faust ``canonical_url`` in the consumer group's assignment metadata, and the changelog
distribution of the assignment says which worker holds each partition.  A forwarded request
is never forwarded again (``X-Recstream-Forwarded``); during a rebalance the answer is a
503 with ``Retry-After``.  The response names the worker that served it
(``X-Recstream-Served-By``).

Every bad request gets a JSON error ``{"code", "message"}`` (and ``field`` when one field is
at fault) with a 4xx status, never a 500: request bodies are validated with pydantic
(:class:`RecommendBody`), path and query parameters by hand.  With a token
(``--api-token-file``), every endpoint but ``/health``, ``/ready`` and ``/metrics`` needs
``Authorization: Bearer <token>`` (401 otherwise).  Requests are counted in Prometheus
(``recstream_api_requests_total``, ``recstream_api_request_duration_seconds``).

The HTTP layer is kept out of ``scoring/`` and ``encoders/``: the ranking of a request is
:func:`scoring.query.rank_requests`, pure code.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Callable, Protocol, Sequence

import numpy as np
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from .records import json_type

if TYPE_CHECKING:
    from aiohttp import web

    from recstream.encoders.profile import UserProfile
    from recstream.scoring.query import QueryAnswer, QueryRequest

    from .app import Pipeline

log = logging.getLogger("recstream.api")

API_VERSION = "1.0.0"
#: most items a ``POST /v1/recommend`` may ask for
MAX_K = 100
#: longest query text, in characters (the encoder reads at most --max-length tokens of it)
MAX_QUERY_CHARS = 2_000
#: most item ids in ``exclude``
MAX_EXCLUDE = 1_000
#: largest request body, in bytes
MAX_BODY_BYTES = 64 * 1024
#: most queries embedded and ranked in one pass on the compute thread
QUERY_BATCH_MAX = 64
#: how long a forwarded request may take on the owner
FORWARD_TIMEOUT_S = 10.0
#: how long the popularity list served to unknown users is reused
POPULAR_TTL_S = 1.0
#: paths that never need the token (probes and the scraper)
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
FORWARDED_HEADER = "X-Recstream-Forwarded"
SERVED_BY_HEADER = "X-Recstream-Served-By"
JSON = "application/json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_K_TEXT = re.compile(r"[0-9]{1,6}")

#: Every error code the API answers with, and its HTTP status.
ERROR_STATUS: dict[str, int] = {
    "invalid_json": 400,
    "invalid_utf8": 400,
    "not_object": 400,
    "unknown_field": 400,
    "missing_field": 400,
    "wrong_type": 400,
    "out_of_range": 400,
    "invalid_value": 400,
    "unknown_parameter": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "internal": 500,
    "bad_gateway": 502,
    "unavailable": 503,
}


class ApiError(Exception):
    """An answer with a JSON error body ``{"code", "message"[, "field"]}``."""

    def __init__(self, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = ERROR_STATUS[code]
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> bytes:
        doc: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            doc["field"] = self.field
        return orjson.dumps(doc)


# --------------------------------------------------------------------------- validation


def _no_control(v: str) -> str:
    if _CONTROL.search(v):
        raise PydanticCustomError("invalid_value", "must not contain control characters (U+0000-U+001F, U+007F-U+009F)")
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise PydanticCustomError("invalid_value", "must not be empty or only white space")
    return v


Id = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_control)]
Query = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS), AfterValidator(_not_blank)]


class RecommendBody(BaseModel):
    """The body of ``POST /v1/recommend``: at least one of ``user_id`` and ``query``."""

    model_config = ConfigDict(extra="forbid", strict=True, title="RecommendRequest")

    user_id: Id | None = Field(
        None,
        description="The user to recommend for (any worker answers: the request is "
        "forwarded to the worker holding the user's partition). Absent: semantic search over "
        "the catalog, which needs a query.",
    )
    query: Query | None = Field(
        None, description=f"Free text (at most {MAX_QUERY_CHARS} characters), embedded with the worker's text encoder and blended with the user's text profile."
    )
    k: Annotated[int, Field(ge=1, le=MAX_K)] | None = Field(None, description=f"Items wanted, 1 to {MAX_K} (default: the worker's --k).")
    exclude: Annotated[list[Id], Field(max_length=MAX_EXCLUDE)] = Field(
        default_factory=list, description=f"Item ids never to return (at most {MAX_EXCLUDE}), on top of the user's purchased and recently seen items."
    )

    @model_validator(mode="after")
    def _user_or_query(self) -> "RecommendBody":
        if self.user_id is None and self.query is None:
            raise PydanticCustomError("missing_field", "give user_id, query or both (without user_id it is a semantic search, which needs a query)")
        return self


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "list_type": "an array",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "string_sub_type": "a string",
}


def _preview(v: Any, limit: int = 60) -> str:
    try:
        text = orjson.dumps(v).decode()
    except TypeError:
        text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def body_error(exc: PydanticValidationError) -> ApiError:
    """The first problem of a pydantic validation error as an :class:`ApiError`."""
    err = exc.errors(include_url=False)[0]
    kind, loc, given = err["type"], tuple(err.get("loc", ())), err.get("input")
    # pydantic adds the union branch to the location of an optional field ("k", "int")
    loc = tuple(
        p for p in loc if p not in ("int", "str", "list[str]", "function-after[_no_control(), str]", "function-after[_not_blank(), str]", "constrained-str")
    )
    path = _field_path(loc) or None
    where = f"{path}: " if path else ""
    allowed = ", ".join(RecommendBody.model_fields)
    if kind == "extra_forbidden":
        return ApiError("unknown_field", f"{where}unknown field; allowed fields are {allowed}", path)
    if kind == "missing":
        return ApiError("missing_field", f"{where}required field is missing", path)
    if kind in ("greater_than_equal", "less_than_equal"):
        if path == "k":
            return ApiError("out_of_range", f"k: must be between 1 and {MAX_K}, got {_preview(given)}", path)
        return ApiError("out_of_range", f"{where}{err['msg'].lower()}, got {_preview(given)}", path)
    if kind in ("string_too_long", "string_too_short", "too_long", "too_short"):
        length = len(given) if isinstance(given, (str, list)) else "?"
        return ApiError("out_of_range", f"{where}{err['msg'].lower()}, got {length}", path)
    if kind.endswith("_type") or kind in _TYPE_NAMES or kind.endswith("_parsing"):
        wanted = _TYPE_NAMES.get(kind, "of another type")
        if kind == "model_type":
            return ApiError("not_object", f"the body must be a JSON object, got {json_type(given)}")
        return ApiError("wrong_type", f"{where}must be {wanted}, got {json_type(given)} {_preview(given)}", path)
    if kind in ERROR_STATUS and ERROR_STATUS[kind] == 400:
        return ApiError(kind, f"{where}{err['msg']}", path)
    return ApiError("invalid_value", f"{where}{err['msg']}", path)


def parse_body(raw: bytes) -> RecommendBody:
    """Validate a ``POST /v1/recommend`` body; raises :class:`ApiError` (400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_utf8", f"the body is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    if not text.strip():
        raise ApiError("invalid_json", 'the body is empty; send a JSON object such as {"query": "jazz"}')
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError("not_object", f"the body must be a JSON object, got {json_type(obj)}")
    try:
        return RecommendBody.model_validate(obj)
    except PydanticValidationError as exc:
        raise body_error(exc) from None


def check_user_id(user_id: str) -> str:
    """A user id by the contract's id rules; raises :class:`ApiError`."""
    if not user_id or len(user_id) > 256:
        raise ApiError("invalid_value", f"user_id: must have 1 to 256 characters, got {len(user_id)}", "user_id")
    if _CONTROL.search(user_id):
        raise ApiError("invalid_value", "user_id: must not contain control characters", "user_id")
    return user_id


def path_user_id(raw_path: str) -> str:
    """The user id of ``/v1/users/{user_id}...`` from the raw (percent-encoded) path: the
    segment decoded as UTF-8, strictly (an id with ``/`` is sent as ``%2F``); raises
    :class:`ApiError`."""
    from urllib.parse import unquote_to_bytes

    segment = raw_path.split("/")[3]
    try:
        user_id = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_utf8", f"user_id: the path segment is not percent-encoded UTF-8 ({exc.reason} at byte {exc.start})", "user_id") from None
    return check_user_id(user_id)


def parse_k(query: Any, max_k: int, allowed: Sequence[str] = ("k",)) -> int:
    """``k`` from a query string (default ``max_k``); raises :class:`ApiError` for an unknown
    parameter or a k that is not an integer from 1 to ``max_k``."""
    for name in query.keys():
        if name not in allowed:
            raise ApiError("unknown_parameter", f"{_preview(name)}: unknown query parameter; allowed: {', '.join(allowed)}", name)
    values = query.getall("k", [])
    if not values:
        return max_k
    if len(values) > 1:
        raise ApiError("invalid_value", "k: given more than once", "k")
    text = values[0]
    if not _K_TEXT.fullmatch(text):
        raise ApiError("wrong_type", f"k: must be an integer, got {_preview(text)}", "k")
    k = int(text)
    if not 1 <= k <= max_k:
        raise ApiError("out_of_range", f"k: must be between 1 and {max_k} (the length of the lists the worker keeps, its --k), got {k}", "k")
    return k


# --------------------------------------------------------------------------- the backend


@dataclass(frozen=True, slots=True)
class Owner:
    """Where a user's state lives: its partition, whether here, and the owner's URL."""

    partition: int
    local: bool
    url: str | None


class Backend(Protocol):
    """What the API needs from a worker (a fake in unit tests)."""

    max_k: int
    own_url: str

    def unavailable(self) -> str | None: ...
    def owner(self, user_id: str) -> Owner: ...
    # these two may also return an awaitable of the same
    def latest(self, partition: int, user_id: str) -> "bytes | None | Awaitable[bytes | None]": ...
    def profile(self, partition: int, user_id: str) -> "UserProfile | None | Awaitable[UserProfile | None]": ...
    async def popular(self, k: int) -> list[dict[str, Any]]: ...
    async def recommend(self, request: QueryRequest, text: str | None) -> QueryAnswer: ...
    async def forget(self, user_id: str, request_id: str) -> dict[str, Any]: ...
    async def forward(self, url: str, request: "web.Request", body: bytes | None) -> "web.Response": ...


class QueryBatcher:
    """Queries of the requests in flight, embedded and ranked in one pass.

    ``run(batch)`` (a list of ``(QueryRequest, text or None)``) returns one
    :class:`QueryAnswer` each, in order.  While a pass runs, new requests queue up and go
    together in the next one (at most ``max_batch``).  With ``concurrency`` 2, two passes
    may be in flight at once (a pipeline: one embedding its texts while the other is
    ranked)."""

    def __init__(
        self,
        run: Callable[[list[tuple[QueryRequest, str | None]]], Awaitable[list[QueryAnswer]]],
        max_batch: int = QUERY_BATCH_MAX,
        on_batch: Callable[[int], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.run = run
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.concurrency = max(1, concurrency)
        self._pending: list[tuple[QueryRequest, str | None, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, request: QueryRequest, text: str | None) -> QueryAnswer:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, text, future))
        self._tasks = {t for t in self._tasks if not t.done()}
        if len(self._tasks) < self.concurrency:
            self._tasks.add(asyncio.ensure_future(self._drain()))
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                answers = await self.run([(r, t) for r, t, _ in batch])
            except Exception as exc:  # a failure of the model or scoring: each request gets a 500
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class PipelineBackend:
    """The API's view of a running worker (:class:`streams.app.Pipeline`).

    Its methods are called on the HTTP thread's event loop (:class:`streams.metrics.HttpThread`),
    not on the worker's:

    * lookups read the RocksDB database of the user's partition directly (rocksdict reads
      are thread-safe; a database faust has not opened yet is opened on the worker's loop,
      the only one that opens or closes them), and the ownership of partitions from a
      snapshot of the group's assignment, rebuilt when faust replaces its assignment;
    * a query's text is embedded on the API's own query thread (``recstream-query``: the
      worker's model, with a tokenizer of its own, as a fast tokenizer is not safe to share
      between threads), then ranked on the worker's compute thread (the engine's matrix,
      popularity and co-occurrence model change there): inside the micro-batch in progress,
      at its next consistent point, every few tens of events (:class:`streams.lane.ComputeLane`);
    * a forget request is produced on the worker's loop (faust's producer);
    * requests forwarded to another worker go through this loop's own client session.
    """

    def __init__(self, pipeline: "Pipeline", own_url: str) -> None:
        from . import topics as T

        self.pipeline = pipeline
        self.own_url = own_url
        self.max_k = pipeline.config.k
        self.partitions = pipeline.config.partitions
        self.latest_changelog = pipeline.settings.changelog(T.LATEST_TABLE)
        self.forget_topic = pipeline.settings.topic(T.CLICKS)
        # two batches in flight: one embedding on the query thread while the other is ranked
        self.batcher = QueryBatcher(self._rank, on_batch=self._observe_batch, concurrency=2)
        #: the worker's event loop (faust's): None until bound, then calls needing it go there
        self.worker_loop: asyncio.AbstractEventLoop | None = None
        self.query_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-query", initializer=self._query_thread_init)
        self._query_encoder = self._thread_encoder(pipeline.encoder)
        self._popular: tuple[float, list[dict[str, Any]]] | None = None
        self._popular_refresh: asyncio.Future | None = None
        self._owners: tuple[Any, Any, frozenset[int], dict[int, str]] | None = None
        self._session: Any = None
        self.query_batch_sizes: Any = None  # a prometheus Histogram, set by the API
        self.query_stage_seconds: Any = None  # a prometheus Histogram by stage, set by the API
        # queries are ranked inside the stream's micro-batches, at the engine's consistent points
        pipeline.engine.between_steps = pipeline.lane.between_steps

    def bind_loops(self, worker_loop: asyncio.AbstractEventLoop) -> None:
        """The worker's event loop, where calls that touch faust's state are handed over."""
        self.worker_loop = worker_loop

    async def _on_worker_loop(self, fn: Callable[[], Any]) -> Any:
        from .metrics import call_on_loop

        return await call_on_loop(self.worker_loop, fn)

    @staticmethod
    def _query_thread_init() -> None:
        """Half the CPU threads of torch for the query thread's forward passes (OpenMP's thread
        count is per calling thread): the compute thread may run one at the same time, and two
        passes of all the cores each would fight over them."""
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // 2))

    @staticmethod
    def _thread_encoder(encoder: Any) -> Any:
        """The worker's text encoder with a tokenizer of its own (its model and the model's
        trace, read-only in inference, are shared: :meth:`encoders.text.TextEncoder.fork`),
        for the query thread; None when it cannot be made (then queries are embedded on the
        compute thread, as events are)."""
        fork = getattr(encoder, "fork", None)
        if fork is None:
            return None
        try:
            return fork()
        except Exception as exc:  # noqa: BLE001 - an encoder that cannot be copied: the compute thread embeds
            log.warning("queries are embedded on the compute thread: the encoder cannot be copied (%s)", exc)
            return None

    def _observe_batch(self, n: int) -> None:
        if self.query_batch_sizes is not None:
            self.query_batch_sizes.observe(n)

    # ------------------------------------------------------------------ routing
    def unavailable(self) -> str | None:
        app = self.pipeline.app
        if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
            return "the worker's group is rebalancing or its tables are recovering"
        return None

    def _ownership(self) -> tuple[frozenset[int], dict[int, str]]:
        """(the event partitions this worker holds, the owner's URL of every partition of
        the latest-recommendations changelog), from faust's assignment; kept until faust
        replaces its assignment objects (a rebalance replaces them, never changes them)."""
        assignor = self.pipeline.app.assignor
        assignment = getattr(assignor, "_assignment", None)
        distribution = getattr(assignor, "_changelog_distribution", None)
        cached = self._owners
        if cached is not None and cached[0] is assignment and cached[1] is distribution:
            return cached[2], cached[3]
        active = frozenset(self.pipeline.active_partitions())
        try:
            tables = assignor.tables_metadata()
        except Exception:  # no assignment yet
            tables = {}
        urls: dict[int, str] = {}
        for url, topics in tables.items():
            for partition in topics.get(self.latest_changelog, ()):
                urls.setdefault(partition, str(url))
        if assignment is not None and distribution is not None:
            self._owners = (assignment, distribution, active, urls)
        return active, urls

    def owner(self, user_id: str) -> Owner:
        from .client import partition_for

        partition = partition_for(user_id.encode("utf-8"), self.partitions)
        active, urls = self._ownership()
        if partition in active:
            return Owner(partition, True, self.own_url)
        return Owner(partition, False, urls.get(partition))

    def front_state(self) -> dict[str, Any]:
        """What the API's front process (:mod:`streams.front`) needs to answer lookups: the
        latest-recommendations store's directory of every partition this worker holds, and
        why it cannot answer now (or None)."""
        active, _ = self._ownership()
        store = self.pipeline.latest_table.data
        path_of = getattr(store, "partition_path", None)
        paths = {str(p): str(path_of(p)) for p in sorted(active)} if path_of is not None and self._partitioned_rocksdict(store) else {}
        return {"paths": paths, "unavailable": self.unavailable()}

    @staticmethod
    def _partitioned_rocksdict(store: Any) -> bool:
        """Whether ``store`` keeps a RocksDB (rocksdict) database per partition, read by key."""
        inner = getattr(store, "table", None)
        return getattr(store, "use_rocksdict", False) and inner is not None and not inner.is_global and not inner.use_partitioner

    # ------------------------------------------------------------------ local state
    def _db(self, table: Any, partition: int) -> Any:
        """The partition's database (opened if needed: call on the worker's loop)."""
        from .state import _partition_db

        db = _partition_db(table.data, partition)
        if db is None:
            raise ApiError("unavailable", f"the table {table.name} has no local store for partition {partition} yet", headers={"Retry-After": "1"})
        return db

    @staticmethod
    def _open_db(table: Any, partition: int) -> Any:
        """The partition's database when faust has it open (any thread), else None."""
        store = table.data
        dbs = getattr(store, "_dbs", None)
        if dbs is None or not PipelineBackend._partitioned_rocksdict(store):
            return None
        return dbs.get(partition)

    def _read(self, table: Any, partition: int, key: bytes) -> Any:
        """The stored value of ``key`` (bytes or None), read on this thread when the
        partition's database is open; else an awaitable that opens it on the worker's loop."""
        db = self._open_db(table, partition)
        if db is None:
            return self._on_worker_loop(lambda: self._db(table, partition).get(key))
        try:
            return db.get(key)
        except Exception as exc:  # noqa: BLE001 - closed under us by a rebalance
            raise ApiError(
                "unavailable",
                f"the table {table.name}'s store for partition {partition} is being closed ({type(exc).__name__}); retry",
                headers={"Retry-After": "1"},
            ) from None

    def latest(self, partition: int, user_id: str) -> "bytes | None | Awaitable[bytes | None]":
        return self._read(self.pipeline.latest_table, partition, user_id.encode("utf-8"))

    async def profile(self, partition: int, user_id: str) -> "UserProfile | None":
        from recstream.encoders.profile import UserProfile

        raw = self._read(self.pipeline.profiles, partition, user_id.encode("utf-8"))
        if inspect.isawaitable(raw):
            raw = await raw
        return None if raw is None else UserProfile.from_bytes(raw)

    async def popular(self, k: int) -> list[dict[str, Any]]:
        """The popularity list of the worker's --k items (what an unknown user's record would
        hold), computed on the compute thread at most once per :data:`POPULAR_TTL_S`: an
        older list is served while the next one is computed (only the first request waits)."""
        cached = self._popular
        if cached is None or time.monotonic() - cached[0] > POPULAR_TTL_S:
            refresh = self._popular_refresh
            if refresh is None or refresh.done():
                refresh = self._popular_refresh = asyncio.ensure_future(self._compute_popular())
                refresh.add_done_callback(lambda f: f.cancelled() or f.exception())  # logged in _compute_popular
            if cached is None:
                cached = await asyncio.shield(refresh)
        assert cached is not None
        return cached[1][:k]

    async def _compute_popular(self) -> tuple[float, list[dict[str, Any]]]:
        engine = self.pipeline.engine
        try:
            top = await self.pipeline.compute(lambda: engine.popularity.top(self.max_k, allowed=engine.matrix))
        except Exception:
            log.exception("the popularity list failed")
            raise
        cached = self._popular = (time.monotonic(), [{"item_id": i, "score": float(s), "because": None} for i, s in top])
        return cached

    # ------------------------------------------------------------------ queries
    async def recommend(self, request: QueryRequest, text: str | None) -> QueryAnswer:
        return await self.batcher.submit(request, text)

    def _embed(self, encoder: Any, texts: list[str]) -> np.ndarray:
        vecs = encoder.encode_numpy(texts)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    async def _rank(self, batch: list[tuple[QueryRequest, str | None]]) -> list[QueryAnswer]:
        """Embed the batch's texts on the query thread (concurrently with the stream's
        micro-batch), then rank on the compute thread (at the micro-batch's next consistent
        point, :class:`streams.lane.ComputeLane`)."""
        from recstream.scoring.query import rank_requests

        pipeline = self.pipeline
        stages = self.query_stage_seconds
        started = time.perf_counter()
        texts = [t for _, t in batch if t is not None]
        if texts:
            if self._query_encoder is not None:
                loop = asyncio.get_running_loop()
                vecs = await loop.run_in_executor(self.query_executor, self._embed, self._query_encoder, texts)
            else:
                vecs = await pipeline.compute(self._embed, pipeline.encoder, texts)
            it = iter(vecs)
            for req, t in batch:
                if t is not None:
                    req.query = next(it)
            if stages is not None:
                stages.labels("embed").observe(time.perf_counter() - started)
        requests = [req for req, _ in batch]
        ranked = time.perf_counter()
        answers = await pipeline.lane.run(rank_requests, pipeline.engine, requests)
        if stages is not None:
            stages.labels("rank").observe(time.perf_counter() - ranked)
        return answers

    # ------------------------------------------------------------------ forgetting
    async def forget(self, user_id: str, request_id: str) -> dict[str, Any]:
        """Write the forget request with faust's producer, on the worker's loop."""
        return await self._on_worker_loop(lambda: self._forget(user_id, request_id))

    async def _forget(self, user_id: str, request_id: str) -> dict[str, Any]:
        from .client import partition_for
        from .records import Forget, encode

        record = Forget(user_id, int(time.time() * 1000), request_id)
        partition = partition_for(user_id.encode("utf-8"), self.partitions)
        meta = await self.pipeline.app.producer.send_and_wait(self.forget_topic, user_id.encode("utf-8"), encode(record), partition, None, None)
        return {
            "status": "accepted",
            "user_id": user_id,
            "request_id": request_id,
            "topic": self.forget_topic,
            "partition": meta.partition,
            "offset": meta.offset,
        }

    # ------------------------------------------------------------------ forwarding
    async def forward(self, url: str, request: "web.Request", body: bytes | None) -> "web.Response":
        import aiohttp
        from aiohttp import web
        from yarl import URL

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S), auto_decompress=False)
        target = URL(url)
        routed = URL.build(
            scheme=target.scheme or "http",
            host=target.raw_host or "",
            port=target.port,
            path=request.rel_url.raw_path,
            query_string=request.rel_url.raw_query_string,
            encoded=True,
        )
        headers = {FORWARDED_HEADER: self.own_url}
        for name in ("Authorization", "Content-Type", "Accept"):
            if name in request.headers:
                headers[name] = request.headers[name]
        try:
            async with self._session.request(request.method, routed, headers=headers, data=body) as response:
                payload = await response.read()
                out = web.Response(body=payload, status=response.status, content_type=response.content_type or JSON)
                for name in (SERVED_BY_HEADER, "Retry-After", "WWW-Authenticate"):
                    if name in response.headers:
                        out.headers[name] = response.headers[name]
                return out
        except asyncio.TimeoutError:
            raise ApiError(
                "bad_gateway", f"the worker holding the user's partition ({url}) did not answer within {FORWARD_TIMEOUT_S:g}s", headers={"Retry-After": "1"}
            ) from None
        except aiohttp.ClientError as exc:
            raise ApiError(
                "unavailable", f"the worker holding the user's partition ({url}) cannot be reached: {type(exc).__name__}; retry", headers={"Retry-After": "1"}
            ) from None

    async def close(self) -> None:
        """Call on the HTTP thread's loop (the batcher and the client session live there)."""
        await self.batcher.close()
        if self._popular_refresh is not None:
            self._popular_refresh.cancel()
            await asyncio.gather(self._popular_refresh, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.query_executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- HTTP


def _json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> "web.Response":
    from aiohttp import web

    return web.Response(body=orjson.dumps(doc), status=status, content_type=JSON, headers=headers)


def latest_response(raw: bytes, k: int) -> "web.Response":
    """The answer to a lookup from the user's stored latest record: its first ``k`` items."""
    doc = orjson.loads(raw)
    doc["items"] = doc["items"][:k]
    return _json_response(doc)


def _error_response(exc: ApiError) -> "web.Response":
    from aiohttp import web

    headers = dict(exc.headers)
    if exc.code == "unauthorized":
        headers.setdefault("WWW-Authenticate", 'Bearer realm="recstream"')
    return web.Response(body=exc.body(), status=exc.status, content_type=JSON, headers=headers)


#: the route label of requests that matched no route
OTHER_ROUTE = "other"
ROUTES = (
    ("GET", "/v1/users/{user_id}/recommendations"),
    ("DELETE", "/v1/users/{user_id}"),
    ("POST", "/v1/recommend"),
    ("GET", "/v1/openapi.json"),
)


class Api:
    """The routes, the middlewares (auth, JSON errors, metrics) and their handlers."""

    def __init__(self, backend: Backend, *, token: str | None = None, registry: Any = None, internal_paths: frozenset[str] = frozenset()) -> None:
        self.backend = backend
        self.token = token
        #: paths that need no token and are not counted: the probes, the scrape, and routes
        #: of the worker's own (the front process's state route, which checks a secret)
        self.open_paths = OPEN_PATHS | internal_paths
        self.requests = self.durations = self.forwarded = None
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if registry is not None:
            from prometheus_client import Counter, Histogram

            self.requests = Counter(
                "recstream_api_requests",
                "HTTP API requests answered, by route (its template), method and status.",
                ["route", "method", "status"],
                registry=registry,
            )
            self.durations = Histogram(
                "recstream_api_request_duration_seconds",
                "HTTP API request time, from the request read to the response ready, by route.",
                ["route"],
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                registry=registry,
            )
            self.forwarded = Counter(
                "recstream_api_forwarded", "HTTP API requests forwarded to the worker holding the user's partition, by route.", ["route"], registry=registry
            )
            if hasattr(backend, "query_batch_sizes"):
                backend.query_batch_sizes = Histogram(
                    "recstream_api_query_batch_size",
                    "Requests of POST /v1/recommend embedded and ranked together.",
                    buckets=(1, 2, 4, 8, 16, 32, 64),
                    registry=registry,
                )
            if hasattr(backend, "query_stage_seconds"):
                backend.query_stage_seconds = Histogram(
                    "recstream_api_query_seconds",
                    "Time of a POST /v1/recommend batch by stage: embed (the query "
                    "thread's forward pass) and rank (the compute thread, the wait for the next consistent point of "
                    "the micro-batch in progress included).",
                    ["stage"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                    registry=registry,
                )

    # ------------------------------------------------------------------ wiring
    def install(self, app: "web.Application") -> None:
        """Add the API's routes and middleware to an aiohttp application (before it starts)."""
        app.middlewares.append(self._middleware)
        app.router.add_get("/v1/users/{user_id}/recommendations", self.get_latest, allow_head=False)
        app.router.add_delete("/v1/users/{user_id}", self.delete_user)
        app.router.add_post("/v1/recommend", self.post_recommend)
        app.router.add_get("/v1/openapi.json", self.get_openapi, allow_head=False)

    def authorize(self, request: "web.Request") -> None:
        if self.token is None or request.path in self.open_paths:
            return
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(
                "unauthorized", "this endpoint needs a bearer token: send 'Authorization: Bearer <token>' (the token is in the worker's --api-token-file)"
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError("unauthorized", "the Authorization header must be 'Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self.token.encode()):
            raise ApiError("unauthorized", "the bearer token is not the worker's (--api-token-file)")

    def _route(self, request: "web.Request") -> str:
        info = request.match_info
        route = getattr(info, "route", None)
        resource = getattr(route, "resource", None)
        canonical = getattr(resource, "canonical", None)
        return canonical if canonical else OTHER_ROUTE

    async def _middleware_impl(self, request: "web.Request", handler: Any) -> "web.StreamResponse":
        from aiohttp import web

        started = time.perf_counter()
        route = self._route(request)
        try:
            self.authorize(request)
            response = await handler(request)
        except ApiError as exc:
            response = _error_response(exc)
        except web.HTTPException as exc:
            if exc.status == 404:
                response = _error_response(ApiError("not_found", f"no such endpoint: {request.method} {_preview(request.path)}; see /v1/openapi.json"))
            elif exc.status == 405:
                allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
                response = _error_response(
                    ApiError(
                        "method_not_allowed", f"{request.method} is not allowed on {_preview(request.path)}; allowed: {allowed}", headers={"Allow": allowed}
                    )
                )
            elif exc.status == 413:
                response = _error_response(ApiError("body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes"))
            elif exc.status < 500 and exc.status != 400:
                response = exc  # e.g. a redirect: as aiohttp made it
            else:
                response = _error_response(ApiError("invalid_value" if exc.status == 400 else "internal", exc.reason or "bad request"))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the API failed on %s %s", request.method, request.path)
            response = _error_response(ApiError("internal", "internal error; the worker's log has the details"))
        if request.path not in self.open_paths:
            self.observe(route, request.method, response.status, started)
        return response

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        """Count one answered request (its route template, method, status) and its time since
        ``started`` (``time.perf_counter()``) in the API's metrics, when it has any."""
        if self.requests is None:
            return
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # prometheus' labels() takes a lock and builds a key: once per label set
            children = self._children[key] = (self.requests.labels(route, method, str(status)), self.durations.labels(route))  # type: ignore[union-attr]
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    @property
    def _middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def middleware(request: "web.Request", handler: Any) -> "web.StreamResponse":
            return await self._middleware_impl(request, handler)

        return middleware

    # ------------------------------------------------------------------ helpers
    def _served(self, response: "web.Response") -> "web.Response":
        response.headers[SERVED_BY_HEADER] = self.backend.own_url
        return response

    async def _route_user(self, request: "web.Request", user_id: str, body: bytes | None) -> tuple[Owner, "web.Response | None"]:
        """The user's owner; a response when the request was forwarded (or cannot be served)."""
        busy = self.backend.unavailable()
        if busy is not None:
            raise ApiError("unavailable", f"{busy}; retry in a moment", headers={"Retry-After": "1"})
        owner = self.backend.owner(user_id)
        if owner.local:
            return owner, None
        if request.headers.get(FORWARDED_HEADER) is not None or owner.url is None or owner.url == self.backend.own_url:
            raise ApiError(
                "unavailable",
                f"no worker holds partition {owner.partition} right now (the group is rebalancing); retry in a moment",
                headers={"Retry-After": "1"},
            )
        if self.forwarded is not None:
            self.forwarded.labels(self._route(request)).inc()
        return owner, await self.backend.forward(owner.url, request, body)

    async def _read_body(self, request: "web.Request") -> bytes:
        ctype = request.headers.get("Content-Type")
        if ctype is not None:
            mime = ctype.split(";", 1)[0].strip().lower()
            if mime != JSON and not mime.endswith("+json"):
                raise ApiError("unsupported_media_type", f"the body must be JSON: send 'Content-Type: {JSON}', got {_preview(ctype)}")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise ApiError("body_too_large", f"the body is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}")
        body = await request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ApiError("body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
        return body

    # ------------------------------------------------------------------ handlers
    async def get_latest(self, request: "web.Request") -> "web.Response":
        user_id = path_user_id(request.rel_url.raw_path)
        k = parse_k(request.rel_url.query, self.backend.max_k)
        owner, forwarded = await self._route_user(request, user_id, None)
        if forwarded is not None:
            return forwarded
        raw = self.backend.latest(owner.partition, user_id)
        if inspect.isawaitable(raw):
            raw = await raw
        if raw is None:
            doc = {
                "schema": 1,
                "user_id": user_id,
                "items": await self.backend.popular(k),
                "trigger": None,
                "event_ts": None,
                "emitted_ts": None,
                "model": "popularity",
            }
            return self._served(_json_response(doc))
        return self._served(latest_response(raw, k))

    async def post_recommend(self, request: "web.Request") -> "web.Response":
        from recstream.scoring.query import QueryRequest  # torch: not imported by the API's front process

        raw = await self._read_body(request)
        body = parse_body(raw)
        k = body.k if body.k is not None else self.backend.max_k
        exclude = frozenset(body.exclude)
        if body.user_id is None:
            answer = await self.backend.recommend(QueryRequest(None, None, None, k, exclude), body.query)
        else:
            owner, forwarded = await self._route_user(request, body.user_id, raw)
            if forwarded is not None:
                return forwarded
            profile = self.backend.profile(owner.partition, body.user_id)
            if inspect.isawaitable(profile):
                profile = await profile
            answer = await self.backend.recommend(QueryRequest(body.user_id, profile, None, k, exclude, owner.partition), body.query)
        doc = {
            "user_id": body.user_id,
            "query": body.query,
            "model": answer.model,
            "items": [{"item_id": i, "score": float(s), "because": b} for i, s, b in answer.items],
        }
        return self._served(_json_response(doc))

    async def delete_user(self, request: "web.Request") -> "web.Response":
        user_id = path_user_id(request.rel_url.raw_path)
        if request.rel_url.query:
            parse_k(request.rel_url.query, 1, allowed=())
        doc = await self.backend.forget(user_id, uuid.uuid4().hex)
        return self._served(_json_response(doc, status=202))

    async def get_openapi(self, request: "web.Request") -> "web.Response":
        return _json_response(openapi_document())


# --------------------------------------------------------------------------- OpenAPI


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "enum": sorted(ERROR_STATUS), "description": "What went wrong, for programs."},
            "message": {"type": "string", "description": "What went wrong and what was given, for people."},
            "field": {"type": "string", "description": "The field or parameter at fault, when one is."},
        },
    }


_ITEM = {
    "type": "object",
    "required": ["item_id", "score", "because"],
    "properties": {
        "item_id": {"type": "string"},
        "score": {"type": "number", "description": "The ranker's score (higher is better); comparable within one list only."},
        "because": {"type": ["string", "null"], "description": "The item of the user's history that most explains this one."},
    },
}


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (served at ``/v1/openapi.json``; ``docs/openapi.json``)."""
    request_schema = RecommendBody.model_json_schema(ref_template="#/components/schemas/{model}")
    request_schema.pop("$defs", None)

    def errors(*statuses: int) -> dict[str, Any]:
        out = {}
        for status in statuses:
            codes = sorted(c for c, s in ERROR_STATUS.items() if s == status)
            out[str(status)] = {"description": f"error: {', '.join(codes)}", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return out

    user_param = {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": "The user's id (1 to 256 characters, no control characters; percent-encode it).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    }
    auth_error = errors(401)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recstream API",
            "version": API_VERSION,
            "description": "Recommendations served by any recstream worker (docs/api.md). Errors are JSON objects "
            "with a code and a message. With --api-token-file, every endpoint but /health, /ready and "
            "/metrics needs 'Authorization: Bearer <token>'.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _error_schema(),
                "RecommendRequest": request_schema,
                "Item": _ITEM,
                "LatestRecommendations": {
                    "type": "object",
                    "required": ["schema", "user_id", "items", "trigger", "event_ts", "emitted_ts", "model"],
                    "description": "The user's latest recommendation record, as published on the recommendations "
                    "topic (docs/contract.md), its items cut to k; for a user the worker has no list for, "
                    "the popularity list with model 'popularity' and null trigger and times.",
                    "properties": {
                        "schema": {"const": 1},
                        "user_id": {"type": "string"},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                        "trigger": {
                            "type": ["object", "null"],
                            "description": "The event that caused the list (topic, partition, offset, event_id, received_ts).",
                        },
                        "event_ts": {"type": ["integer", "null"]},
                        "emitted_ts": {"type": ["integer", "null"]},
                        "model": {"type": "string", "description": "The ranking model, or 'popularity'."},
                    },
                },
                "Recommendations": {
                    "type": "object",
                    "required": ["user_id", "query", "items", "model"],
                    "properties": {
                        "user_id": {"type": ["string", "null"]},
                        "query": {"type": ["string", "null"]},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                        "model": {
                            "type": "string",
                            "description": "The stream's ranker ('+query' when a query was "
                            "blended in), '<encoder>/semantic-search' without a user, or 'popularity'.",
                        },
                    },
                },
                "ForgetAccepted": {
                    "type": "object",
                    "required": ["status", "user_id", "request_id", "topic", "partition", "offset"],
                    "properties": {
                        "status": {"const": "accepted"},
                        "user_id": {"type": "string"},
                        "request_id": {"type": "string"},
                        "topic": {"type": "string", "description": "Where the forget request was written."},
                        "partition": {"type": "integer"},
                        "offset": {"type": "integer"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/users/{user_id}/recommendations": {
                "get": {
                    "summary": "The user's latest recommendations",
                    "operationId": "getLatestRecommendations",
                    "parameters": [
                        user_param,
                        {
                            "name": "k",
                            "in": "query",
                            "required": False,
                            "description": "Items wanted, 1 to the worker's --k (default: all).",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The latest list, or the popularity list for an unknown user",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/LatestRecommendations"}}},
                        },
                        **errors(400),
                        **auth_error,
                        **errors(502, 503),
                    },
                },
            },
            "/v1/users/{user_id}": {
                "delete": {
                    "summary": "Forget the user",
                    "description": "Writes a forget request for the user; the worker holding the user's partition "
                    "deletes their profile and latest recommendations (tombstones on the changelogs) "
                    "when it reaches it, normally within a second.",
                    "operationId": "forgetUser",
                    "parameters": [user_param],
                    "responses": {
                        "202": {
                            "description": "Accepted: the request is on the topic",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ForgetAccepted"}}},
                        },
                        **errors(400),
                        **auth_error,
                    },
                },
            },
            "/v1/recommend": {
                "post": {
                    "summary": "Recommend now, optionally for a text query; without user_id, semantic search",
                    "operationId": "recommend",
                    "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/RecommendRequest"}}}},
                    "responses": {
                        "200": {"description": "The list", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Recommendations"}}}},
                        **errors(400),
                        **auth_error,
                        **errors(413, 415, 502, 503),
                    },
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}, **auth_error},
                },
            },
            "/health": {
                "get": {
                    "summary": "Liveness (no token needed)",
                    "security": [],
                    "operationId": "health",
                    "responses": {"200": {"description": "healthy"}, "503": {"description": "unhealthy"}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness (no token needed)",
                    "security": [],
                    "operationId": "ready",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (no token needed)",
                    "security": [],
                    "operationId": "metrics",
                    "responses": {"200": {"description": "text exposition format 0.0.4"}},
                }
            },
        },
    }


def read_token_file(path: str) -> str:
    """The API token: the first line of ``path`` (read up to 4 KiB), without surrounding
    white space.  Raises :class:`ValueError` with the reason."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise ValueError(f"API token file {path}: {exc.strerror or exc}") from None
    try:
        token = data.decode("utf-8").splitlines()[0].strip() if data.strip() else ""
    except UnicodeDecodeError:
        raise ValueError(f"API token file {path}: not UTF-8 text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError(f"API token file {path}: the first line must hold the token (printable, no spaces)")
    return token


def main() -> None:  # pragma: no cover - python -m recstream.streams.api > docs/openapi.json
    import sys

    sys.stdout.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
