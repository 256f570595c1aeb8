"""The HTTP API's layer (streams/api.py) without a broker: validation, JSON errors, auth,
metrics and the OpenAPI document, through a real aiohttp server and client on loopback
with a fake backend; and the ranking of requests (scoring/query.py) against the engine's
own records.  The same API against a real worker: tests/integration/test_api.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from recstream.streams.api import (
    MAX_BODY_BYTES,
    MAX_K,
    Api,
    ApiError,
    Owner,
    QueryBatcher,
    openapi_document,
    parse_body,
    read_token_file,
)
from recstream.scoring.query import QueryAnswer, QueryRequest, mix, rank_requests
from recstream.streams.records import RecItem

ROOT = Path(__file__).resolve().parents[2]
RECORD = {
    "schema": 1,
    "user_id": "u1",
    "items": [{"item_id": f"i{n}", "score": 1.0 - n / 10, "because": None} for n in range(5)],
    "trigger": {"topic": "clicks", "partition": 0, "offset": 3, "event_id": None},
    "event_ts": 1,
    "emitted_ts": 2,
    "model": "blend/x",
}


class FakeBackend:
    max_k = 5
    own_url = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.requests: list[tuple[QueryRequest, str | None]] = []
        self.busy: str | None = None

    def unavailable(self) -> str | None:
        return self.busy

    def owner(self, user_id: str) -> Owner:
        return Owner(0, True, self.own_url)

    def latest(self, partition: int, user_id: str) -> bytes | None:
        return orjson.dumps({**RECORD, "user_id": user_id}) if user_id == "u1" else None

    def profile(self, partition: int, user_id: str):
        return None

    async def popular(self, k: int) -> list[dict[str, Any]]:
        return [{"item_id": "p1", "score": 3.0, "because": None}][:k]

    async def recommend(self, request: QueryRequest, text: str | None) -> QueryAnswer:
        self.requests.append((request, text))
        return QueryAnswer([RecItem("i1", 0.5, None)], "stub")

    async def forget(self, user_id: str, request_id: str) -> dict[str, Any]:
        self.forgotten.append(user_id)
        return {"status": "accepted", "user_id": user_id, "request_id": request_id, "topic": "clicks", "partition": 0, "offset": 1}

    async def forward(self, url, request, body):  # pragma: no cover - owner() is always local here
        raise AssertionError("no forwarding in these tests")

    async def close(self) -> None:
        pass


async def client_for(backend: FakeBackend, token: str | None = None, registry: CollectorRegistry | None = None) -> TestClient:
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", health)
    Api(backend, token=token, registry=registry).install(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "body, code, field",
    [
        (b'{"query": "jazz"}', None, None),
        (b'{"user_id": "u1", "k": 3, "exclude": ["a", "b"]}', None, None),
        (b'{"query": "jazz", "colour": 1}', "unknown_field", "colour"),
        (b'{"query": "jazz", "k": "5"}', "wrong_type", "k"),
        (b'{"query": "jazz", "k": 5.0}', "wrong_type", "k"),
        (b'{"query": "jazz", "k": true}', "wrong_type", "k"),
        (b'{"query": "jazz", "k": 0}', "out_of_range", "k"),
        (b'{"query": "jazz", "k": 101}', "out_of_range", "k"),
        (b'{"query": 42}', "wrong_type", "query"),
        (b'{"query": "   "}', "invalid_value", "query"),
        (b'{"query": ""}', "out_of_range", "query"),
        (b'{"user_id": "a\\u0000b"}', "invalid_value", "user_id"),
        (b'{"user_id": ""}', "out_of_range", "user_id"),
        (b'{"query": "x", "exclude": "i1"}', "wrong_type", "exclude"),
        (b'{"query": "x", "exclude": [1]}', "wrong_type", "exclude[0]"),
        (b"{}", "missing_field", None),
        (b'{"k": 3}', "missing_field", None),
        (b"", "invalid_json", None),
        (b'{"query": ', "invalid_json", None),
        (b"[1, 2]", "not_object", None),
        (b'"jazz"', "not_object", None),
        (b'{"query": "\xff"}', "invalid_utf8", None),
    ],
)
def test_parse_body(body: bytes, code: str | None, field: str | None) -> None:
    if code is None:
        parse_body(body)
        return
    with pytest.raises(ApiError) as info:
        parse_body(body)
    assert (info.value.code, info.value.field) == (code, field), info.value.message
    assert info.value.status == 400
    assert info.value.message


def test_k_messages_name_the_range() -> None:
    with pytest.raises(ApiError, match=rf"k: must be between 1 and {MAX_K}, got 500"):
        parse_body(b'{"query": "x", "k": 500}')


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-token\nignored\n")
    assert read_token_file(str(f)) == "s3cret-token"
    f.write_text("\n")
    with pytest.raises(ValueError, match="first line"):
        read_token_file(str(f))
    with pytest.raises(ValueError, match="No such file"):
        read_token_file(str(tmp_path / "missing"))


def test_openapi_document_is_kept_in_docs() -> None:
    doc = openapi_document()
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert on_disk == json.loads(orjson.dumps(doc)), "regenerate: python -m recstream.streams.api > docs/openapi.json"
    assert set(doc["paths"]) >= {"/v1/users/{user_id}/recommendations", "/v1/users/{user_id}", "/v1/recommend"}


# --------------------------------------------------------------------------- over HTTP


async def test_lookup_popularity_and_errors() -> None:
    backend = FakeBackend()
    registry = CollectorRegistry()
    client = await client_for(backend, registry=registry)
    try:
        r = await client.get("/v1/users/u1/recommendations?k=2")
        assert r.status == 200
        doc = await r.json()
        assert doc["items"] == RECORD["items"][:2] and doc["model"] == "blend/x"
        assert r.headers["X-Recstream-Served-By"] == backend.own_url
        r = await client.get("/v1/users/nobody/recommendations")
        doc = await r.json()
        assert (doc["model"], doc["trigger"], [i["item_id"] for i in doc["items"]]) == ("popularity", None, ["p1"])
        for path, status, code in [
            ("/v1/users/u1/recommendations?k=6", 400, "out_of_range"),
            ("/v1/users/u1/recommendations?k=0", 400, "out_of_range"),
            ("/v1/users/u1/recommendations?k=two", 400, "wrong_type"),
            ("/v1/users/u1/recommendations?k=1&k=2", 400, "invalid_value"),
            ("/v1/users/u1/recommendations?colour=red", 400, "unknown_parameter"),
            ("/v1/users/a%00b/recommendations", 400, "invalid_value"),
            ("/v1/users/" + "x" * 257 + "/recommendations", 400, "invalid_value"),
            ("/v1/users/%ff/recommendations", 400, "invalid_utf8"),
            ("/v1/nothing", 404, "not_found"),
        ]:
            r = await client.get(path)
            doc = await r.json()
            assert (r.status, doc["code"]) == (status, code), (path, doc)
            assert doc["message"]
        r = await client.put("/v1/recommend", data=b"{}")
        assert (r.status, (await r.json())["code"]) == (405, "method_not_allowed")
        r = await client.post("/v1/recommend", data=b"{}", headers={"Content-Type": "text/plain"})
        assert (r.status, (await r.json())["code"]) == (415, "unsupported_media_type")
        r = await client.post("/v1/recommend", data=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={"Content-Type": "application/json"})
        assert (r.status, (await r.json())["code"]) == (413, "body_too_large")
        r = await client.get("/v1/users/a%2Fb/recommendations")  # an id with a slash, percent-encoded
        assert r.status == 200 and (await r.json())["user_id"] == "a/b"
        backend.busy = "rebalancing"
        r = await client.get("/v1/users/u1/recommendations")
        assert (r.status, (await r.json())["code"], r.headers["Retry-After"]) == (503, "unavailable", "1")
        backend.busy = None
        r = await client.delete("/v1/users/u-9")
        assert r.status == 202 and (await r.json())["user_id"] == "u-9" and backend.forgotten == ["u-9"]
        r = await client.post("/v1/recommend", json={"user_id": "u1", "query": "jazz", "k": 3, "exclude": ["i9"]})
        doc = await r.json()
        assert r.status == 200 and doc == {"user_id": "u1", "query": "jazz", "model": "stub", "items": [{"item_id": "i1", "score": 0.5, "because": None}]}
        request, text = backend.requests[-1]
        assert (request.user_id, request.k, request.exclude, text) == ("u1", 3, frozenset({"i9"}), "jazz")
        r = await client.get("/v1/openapi.json")
        assert (await r.json())["openapi"].startswith("3.1")
    finally:
        await client.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}
    key = ("recstream_api_requests_total", (("method", "GET"), ("route", "/v1/users/{user_id}/recommendations"), ("status", "200")))
    assert samples[key] == 3
    assert samples[("recstream_api_requests_total", (("method", "GET"), ("route", "other"), ("status", "404")))] == 1
    assert samples[("recstream_api_request_duration_seconds_count", (("route", "/v1/recommend"),))] >= 3


async def test_bearer_token() -> None:
    client = await client_for(FakeBackend(), token="tok-123")
    try:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dG9rLTEyMw=="}, {"Authorization": "Bearer"}):
            r = await client.get("/v1/users/u1/recommendations", headers=headers)
            doc = await r.json()
            assert (r.status, doc["code"]) == (401, "unauthorized"), headers
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = await client.get("/v1/openapi.json")
        assert r.status == 401
        r = await client.get("/v1/users/u1/recommendations", headers={"Authorization": "Bearer tok-123"})
        assert r.status == 200
        for path in ("/health", "/metrics"):
            assert (await client.get(path)).status == 200
    finally:
        await client.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["user_id", "query", "k", "exclude", "colour", "K", ""])
BODIES = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=5).map(orjson.dumps),
    JSON_VALUES.map(orjson.dumps),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_bodies_get_a_json_answer_never_a_500(body: bytes) -> None:
    import asyncio

    async def run() -> None:
        client = await client_for(FakeBackend())
        try:
            r = await client.post("/v1/recommend", data=body, headers={"Content-Type": "application/json"})
            doc = await r.json()
            assert r.status in (200, 400), (body, r.status, doc)
            if r.status == 400:
                assert set(doc) <= {"code", "message", "field"} and doc["code"] and doc["message"]
        finally:
            await client.close()

    asyncio.run(run())


async def test_batcher_groups_requests_in_flight() -> None:
    import asyncio

    sizes: list[int] = []
    gate = asyncio.Event()

    async def run(batch):
        sizes.append(len(batch))
        await gate.wait()
        return [QueryAnswer([], t or "") for _, t in batch]

    batcher = QueryBatcher(run, max_batch=8)
    tasks = [asyncio.ensure_future(batcher.submit(QueryRequest(None, None, None, 1), f"q{n}")) for n in range(12)]
    await asyncio.sleep(0.01)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert [a.model for a in answers] == [f"q{n}" for n in range(12)]
    assert sizes == [8, 4]


# --------------------------------------------------------------------------- scoring/query.py


def test_mix() -> None:
    q, p = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert mix(None, None) is None
    np.testing.assert_allclose(mix(q, None), q)
    m = mix(q, p, 0.7)
    assert abs(np.linalg.norm(m) - 1) < 1e-6 and m[0] > m[1] > 0


def test_a_request_without_query_ranks_as_the_stream() -> None:
    from tests.unit.test_engine_blend import make_engine, stream

    engine = make_engine(emit="per-user")
    batch = stream(200, repeats=False)
    profiles: dict = {}
    result = engine.process(batch, profiles)
    last = batch[-1].event.user_id
    [rec] = [r for r in result.recommendations if r.user_id == last]
    [answer] = rank_requests(engine, [QueryRequest(last, result.profiles[last], None, engine.config.k)])
    assert answer.model == rec.model
    assert [i.item_id for i in answer.items] == [i.item_id for i in rec.items]
    np.testing.assert_allclose([i.score for i in answer.items], [i.score for i in rec.items], rtol=1e-4, atol=1e-5)
    assert [i.because for i in answer.items] == [i.because for i in rec.items]


def test_query_and_semantic_search() -> None:
    from tests.unit.test_engine_blend import make_engine, stream

    engine = make_engine(emit="per-user")
    batch = stream(100, repeats=False)
    result = engine.process(batch, {})
    user = batch[-1].event.user_id
    profile = result.profiles[user]
    target = next(i for i in engine.matrix.ids() if i not in {h.item_id for h in profile.history} | profile.purchased)
    vec = engine.matrix.vector(target)
    [search, blended, excluded] = rank_requests(
        engine,
        [
            QueryRequest(None, None, vec, 3),
            QueryRequest(user, profile, vec, 3),
            QueryRequest(None, None, vec, 3, frozenset({target})),
        ],
    )
    assert search.items[0].item_id == target and search.model == "stub/semantic-search"
    assert all(i.because is None for i in search.items)
    assert blended.model.endswith("+query")
    assert target not in [i.item_id for i in excluded.items]
    seen = {h.item_id for h in profile.history} | profile.purchased
    assert not seen & {i.item_id for i in blended.items}
    # an unknown user: the popularity list, or the query blended with popularity
    [pop, new_with_query] = rank_requests(engine, [QueryRequest("nobody", None, None, 4), QueryRequest("nobody", None, vec, 4)])
    assert pop.model == "popularity" and len(pop.items) == 4
    assert new_with_query.model.endswith("+query")


def _query_engine(method: str, tmp_path: Path):
    """An engine of each ranking method after a few per-user micro-batches, the profiles,
    the last batch's result, and its users' last events (the batch's last one last)."""
    import dataclasses

    from recstream.scoring.adapt import AdaptConfig
    from recstream.scoring.engine import Incoming
    from recstream.scoring.learned import LearnedUserEncoder
    from tests.unit import test_engine_blend as blend_tests
    from tests.unit import test_learned_serving as learned_tests
    from tests.unit.test_rankers import batches

    if method == "learned":
        engine = learned_tests.make_engine(LearnedUserEncoder(learned_tests.checkpoint(tmp_path / "seq.ckpt")))
        engine.config = dataclasses.replace(engine.config, emit="per-user")
        evs = learned_tests.stream()
    else:
        cfg: dict[str, Any] = {"adapt": AdaptConfig(step=0.1, rate=5.0, epoch=3)} if method == "adaptive" else {}
        engine = blend_tests.make_engine(None if method == "text" else blend_tests.WEIGHTS, emit="per-user", **cfg)
        evs = blend_tests.stream(200, repeats=False)
    profiles: dict[str, Any] = {}
    for part in batches(evs):  # several micro-batches: the adaptive weights move between them
        result = engine.process(part, profiles)
        profiles.update(result.profiles)
    last: dict[str, Incoming] = {}
    for inc in part:  # the last batch's users, in the order of their last events
        last.pop(inc.event.user_id, None)
        last[inc.event.user_id] = inc
    return engine, profiles, result, last


@pytest.mark.parametrize("method", ["text", "blend", "adaptive", "learned"])
def test_each_ranker_answers_a_request_without_query_as_the_stream(method: str, tmp_path: Path) -> None:
    engine, profiles, result, last = _query_engine(method, tmp_path)
    assert engine.ranker == ("blend" if method == "adaptive" else method)
    if method == "adaptive":  # the partitions' weights moved apart
        weights = [a.weights for _, a in sorted(engine.adaptive.adapters.items())]  # type: ignore[union-attr]
        assert len(weights) == 2 and not np.allclose(weights[0], weights[1])
    # the blend's popularity is the one at the user's last event: the batch's last user only
    users = list(last) if method in ("text", "learned") else [list(last)[-1]]
    ranked = 0
    for rec in result.recommendations:
        if rec.user_id not in users:
            continue
        inc = last[rec.user_id]
        [answer] = rank_requests(engine, [QueryRequest(rec.user_id, profiles[rec.user_id], None, engine.config.k, frozenset(), inc.partition)])
        assert answer.model == rec.model, rec.user_id
        assert [i.item_id for i in answer.items] == [i.item_id for i in rec.items], rec.user_id
        np.testing.assert_allclose([i.score for i in answer.items], [i.score for i in rec.items], rtol=1e-4, atol=1e-5)
        assert [i.because for i in answer.items] == [i.because for i in rec.items], rec.user_id
        ranked += rec.model != "popularity"
    assert ranked


@pytest.mark.parametrize("method", ["text", "blend", "adaptive", "learned"])
def test_a_query_ranks_by_the_query_mixed_with_the_profile(method: str, tmp_path: Path) -> None:
    """A request with a query, computed directly: the text signal alone (text and learned
    rankers) or blended with the weights of the request's partition; an unknown user without
    a query gets the popularity list; a semantic search the nearest items."""
    from recstream.scoring.blend import BlendWeights, blend_score_topk, popularity_vector
    from recstream.scoring.topk import explain, score_topk

    engine, profiles, _, last = _query_engine(method, tmp_path)
    m = engine.matrix
    ids = list(m.ids())
    vec = m.vector(ids[3])
    requests = [QueryRequest(u, profiles[u], vec, 2 + n % 4, frozenset({ids[n]}), part) for n, u in enumerate(sorted(last)) for part in (0, 1)]
    requests += [
        QueryRequest("nobody", None, vec, 4, frozenset(), 1),
        QueryRequest("nobody", None, None, 3, frozenset({ids[0]})),
        QueryRequest(None, None, vec, 3),
    ]
    answers = rank_requests(engine, requests)
    now = engine.popularity.last_ts
    pop_vec = popularity_vector(engine.popularity, [m.id_at(r) for r in range(m.rows_used)], now)
    by_partition: dict[str, list[list[str]]] = {}
    for req, answer in zip(requests, answers):
        profile = req.profile
        if req.user_id is None:
            [want] = score_topk(m, vec[None], req.k, exclude=[frozenset()])
            assert answer.model == f"{engine.texts.name}/semantic-search"
            assert [(i.item_id, i.because) for i in answer.items] == [(r.item_id, None) for r in want]
            continue
        exclude = req.exclude | (engine.exclusions(profile) if profile is not None else frozenset())
        if req.query is None:
            top = engine.popularity.top(req.k, exclude=exclude, allowed=m)
            assert answer.model == "popularity" and [(i.item_id, i.score) for i in answer.items] == [(t, float(s)) for t, s in top] and top
            continue
        history = engine.liked_history(profile) if profile is not None else []
        text = mix(vec, engine.model.query(profile) if profile is not None else None)
        assert text is not None
        if method in ("text", "learned"):
            [want] = score_topk(m, text[None], req.k, exclude=[exclude], history=[history])
            model = engine.model_name
            because = [r.because for r in want]
        else:
            weights = engine.ranking.weights  # type: ignore[attr-defined]
            if method == "adaptive":
                weights = BlendWeights(*(round(float(x), 6) for x in engine.adaptive.adapters[req.partition].weights), "zscore")  # type: ignore[union-attr,index]
            cooc = np.zeros((1, m.rows_used), dtype=np.float32)
            if profile is not None:
                rows, vals = engine.cooccurrence_scorer().sparse(engine.positive_history(profile))
                cooc[0, rows] = vals
            [want] = blend_score_topk(m, text[None], req.k, [exclude], weights, cooc, pop_vec)
            [because] = explain(m, [[r.item_id for r in want]], [history])
            model = engine.blend_model_name  # type: ignore[assignment]
        assert answer.model == model + "+query"
        assert [(i.item_id, i.because) for i in answer.items] == list(zip([r.item_id for r in want], because)) and answer.items
        np.testing.assert_allclose([i.score for i in answer.items], [r.score for r in want], rtol=1e-5, atol=1e-6)
        assert not exclude & {i.item_id for i in answer.items}
        by_partition.setdefault(req.user_id, []).append([i.item_id for i in answer.items])
    if method == "adaptive":  # the partition's weights matter
        assert any(lists[0] != lists[1] for lists in by_partition.values() if len(lists) == 2)


# --------------------------------------------------------------------------- the forget record


def test_forget_record_round_trip_and_rules() -> None:
    from recstream.streams.records import Click, Forget, ValidationError, encode, parse_input, record_key

    f = Forget("u-1", 1_700_000_000_000, "req-1")
    assert parse_input("clicks", record_key(f), encode(f)) == f
    assert orjson.loads(encode(f)) == {"type": "forget", "user_id": "u-1", "ts": 1_700_000_000_000, "request_id": "req-1"}
    click = Click("u-1", "i1", 1_700_000_000_000)
    assert parse_input("clicks", b"u-1", encode(click)) == click
    for key, value, field in [
        (b"u-2", encode(f), "key"),
        (b"u-1", b'{"type": "forget", "user_id": "u-1"}', "ts"),
        (b"u-1", b'{"type": "forget", "user_id": "u-1", "ts": 1, "item_id": "x"}', "item_id"),
        (b"u-1", b'{"type": "other", "user_id": "u-1", "ts": 1}', "type"),
        (b"u-1", b'{"type": "forget", "user_id": "u-1", "ts": 1, "schema": 2}', "schema"),
    ]:
        with pytest.raises(ValidationError) as info:
            parse_input("purchases", key, value)
        assert info.value.field == field, info.value


@pytest.mark.parametrize("method", ["text", "blend", "adaptive", "learned"])
def test_batched_requests_rank_as_one_by_one(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import recstream.scoring.rankers as rankers

    engine, profiles, _, _ = _query_engine(method, tmp_path)
    vec = engine.matrix.vector("i3")
    requests = [
        QueryRequest(u, p, vec if n % 2 else None, 2 + n % 4, frozenset({"i5"}), n % 3 if n % 3 < 2 else None)
        for n, (u, p) in enumerate(sorted(profiles.items()))
    ]
    requests += [QueryRequest(None, None, vec, 3), QueryRequest("nobody", None, None, 2), QueryRequest("nobody", None, vec, 2, frozenset(), 1)]
    calls: list[tuple[str, int]] = []
    for name in ("score_topk", "blend_score_topk"):

        def counted(*args: Any, _name: str = name, _f: Any = getattr(rankers, name), **kwargs: Any) -> Any:
            calls.append((_name, len(args[1])))
            return _f(*args, **kwargs)

        monkeypatch.setattr(rankers, name, counted)
    together = rank_requests(engine, requests)
    batched = list(calls)
    alone = [rank_requests(engine, [r])[0] for r in requests]
    assert [(a.model, [(i.item_id, i.because) for i in a.items]) for a in together] == [(a.model, [(i.item_id, i.because) for i in a.items]) for a in alone]
    for a, b in zip(together, alone):
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-6)
    with_query = sum(r.user_id is not None and r.query is not None for r in requests)
    if method in ("text", "learned"):  # the requests ranked by text in one call
        texts = with_query + (method == "text") * sum(r.profile is not None and r.query is None for r in requests)
        assert batched == [("score_topk", texts)]
    else:  # one call per weighting
        if method == "adaptive":
            weightings = {engine.ranking.query_weights(r.partition) for r in requests if r.user_id is not None and r.profile is not None}  # type: ignore[attr-defined]
            assert len(weightings) == 3  # the two partitions' and the configured ones
        else:
            weightings = {engine.ranking.weights}  # type: ignore[attr-defined]
        assert sorted(n for _, n in batched) == sorted(
            sum(engine.ranking.query_weights(r.partition) == w for r in requests if r.user_id is not None and (r.profile is not None or r.query is not None))  # type: ignore[attr-defined]
            for w in weightings
        )
        assert {name for name, _ in batched} == {"blend_score_topk"}


async def test_batcher_pipelines_two_batches() -> None:
    import asyncio

    started: list[int] = []
    running = asyncio.Condition()
    gates = [asyncio.Event(), asyncio.Event()]

    async def run(batch):
        n = len(started)
        started.append(len(batch))
        async with running:
            running.notify_all()
        await gates[min(n, 1)].wait()
        return [QueryAnswer([], t or "") for _, t in batch]

    async def started_batches(n: int) -> None:
        async with running:
            await asyncio.wait_for(running.wait_for(lambda: len(started) >= n), 10)

    batcher = QueryBatcher(run, max_batch=8, concurrency=2)
    first = [asyncio.ensure_future(batcher.submit(QueryRequest(None, None, None, 1), f"a{n}")) for n in range(3)]
    await started_batches(1)
    second = [asyncio.ensure_future(batcher.submit(QueryRequest(None, None, None, 1), f"b{n}")) for n in range(2)]
    await started_batches(2)
    assert started == [3, 2]  # the second batch runs while the first is still in flight
    gates[1].set()
    assert [a.model for a in await asyncio.gather(*second)] == ["b0", "b1"]
    assert not any(f.done() for f in first)
    gates[0].set()
    assert [a.model for a in await asyncio.gather(*first)] == ["a0", "a1", "a2"]
    await batcher.close()


async def test_served_while_the_worker_loop_is_blocked() -> None:
    """The API runs on its own thread and loop (streams.metrics.HttpThread): a lookup is
    answered while the calling loop (the worker's, in a worker) is blocked, as in a micro-batch."""
    import threading
    import urllib.request

    from recstream.streams.metrics import HttpThread, bind

    backend = FakeBackend()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = web.Application()
    Api(backend).install(app)

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return runner

    http = HttpThread()
    runner = await http.run(serve())
    answers: list[tuple[int, dict]] = []
    done = threading.Event()

    def client() -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/users/u1/recommendations?k=2", timeout=30) as r:
                answers.append((r.status, orjson.loads(r.read())))
        finally:
            done.set()

    try:
        threading.Thread(target=client, daemon=True).start()
        assert done.wait(30)  # this loop is blocked the whole time
        assert answers and answers[0][0] == 200 and answers[0][1]["items"] == RECORD["items"][:2]
    finally:
        await http.run(runner.cleanup())
        http.stop()
        sock.close()
