"""Recommendations on request: a user's state blended with a text query, or semantic search.

Pure code, no Kafka and no HTTP: the worker's API (:mod:`streams.api`) embeds the queries of
the requests in flight in one forward pass of the worker's text encoder (on its own query
thread), reads the users' profiles from its table, and calls :func:`rank_requests` on the
compute thread with the worker's :class:`scoring.engine.Engine`, so a request is ranked by
the same ranker, with the same exclusions and the same signals as the stream's records:

* **with a user** (known or not): the engine's ranker.  The text signal is the cosine with
  ``normalize(QUERY_WEIGHT * query + (1 - QUERY_WEIGHT) * profile)`` (the query alone when
  the user has no text profile, the profile alone without a query); the blend's other
  signals are the user's co-occurrence evidence and the popularity now, with the weights of
  the user's input partition (adaptive or fixed), z-scored over the user's candidates as in
  the stream (the dense form: :func:`scoring.blend.blend_score_topk`, whose top-k the
  stream's two-stage ranking equals).  Purchased and (``exclude_seen``) recently seen items
  are excluded, and the request's ``exclude`` too; ``because`` is the liked history item
  most similar to each item.  A user with neither a text vector nor co-occurrence evidence
  gets the popularity list (model ``popularity``).  With the learned ranker, a request
  without a query is ranked by the user model; one with a query by the text signal.
* **without a user**: semantic search, the items nearest to the query by cosine (model
  ``<encoder>/semantic-search``), minus ``exclude``; ``because`` is null.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, cast

import numpy as np

from recstream.encoders.profile import UserProfile
from recstream.scoring.blend import BlendWeights, blend_score_topk, popularity_vector
from recstream.scoring.topk import explain, score_topk
from recstream.scoring.records import RecItem

#: Weight of the query's embedding against the user's text profile in the text signal.
QUERY_WEIGHT = 0.7
POPULARITY_MODEL = "popularity"
#: suffix of ``model`` for a list ranked with a query
QUERY_SUFFIX = "+query"
SEMANTIC_SEARCH = "semantic-search"


@dataclass(slots=True)
class QueryRequest:
    """One request: ``user_id`` (None: semantic search), the user's stored ``profile`` (None:
    unknown user), the query's unit embedding (None: no query), ``k``, extra exclusions and
    the user's input partition (its adaptive weights)."""

    user_id: str | None
    profile: UserProfile | None
    query: np.ndarray | None
    k: int
    exclude: frozenset[str] = frozenset()
    partition: int | None = None


@dataclass(slots=True)
class QueryAnswer:
    items: list[RecItem] = field(default_factory=list)
    model: str = POPULARITY_MODEL


def mix(query: np.ndarray | None, profile: np.ndarray | None, weight: float = QUERY_WEIGHT) -> np.ndarray | None:
    """The text signal's vector: the unit-norm weighted sum of the query and the profile
    vectors (either may be None; both None: None)."""
    if query is None and profile is None:
        return None
    if query is None:
        v = np.asarray(profile, dtype=np.float32)
    elif profile is None:
        v = np.asarray(query, dtype=np.float32)
    else:
        v = weight * np.asarray(query, dtype=np.float32) + (1.0 - weight) * np.asarray(profile, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return None if norm == 0.0 or not np.isfinite(norm) else (v / norm).astype(np.float32)


def _popularity(engine: Any, k: int, exclude: frozenset[str]) -> QueryAnswer:
    top = engine.popularity.top(k, exclude=exclude, allowed=engine.matrix)
    return QueryAnswer([RecItem(item_id, float(score), None) for item_id, score in top], POPULARITY_MODEL)


def _weights(engine: Any, partition: int | None) -> BlendWeights:
    blend: BlendWeights = engine.config.blend
    adaptive = engine.adaptive
    if adaptive is not None and partition is not None:
        adapter = adaptive.adapters.get(partition)  # not adaptive[partition]: that would create one
        if adapter is not None:
            return adapter.blend_weights(blend.normalization)
    return blend


def rank_requests(engine: Any, requests: Sequence[QueryRequest], now_ms: int | None = None) -> list[QueryAnswer]:
    """Rank each request (see the module doc); call on the engine's compute thread (the
    matrix, the popularity, the co-occurrence model and the adaptive weights change there,
    during a micro-batch, and a failed micro-batch rolls them back: read from another thread
    at the same time, they could mix two states' arrays or fail, so no other thread may
    call this while the stream runs).  Requests ranked the
    same way go through one batched call: the semantic searches together, the blended ones
    by weights (one :func:`scoring.blend.blend_score_topk` per weighting), the text ones
    together."""
    matrix = engine.matrix
    cfg = engine.config
    learned_encoder = getattr(engine, "user_encoder", None)
    now = now_ms if now_ms is not None else engine.popularity.last_ts
    out: list[QueryAnswer | None] = [None] * len(requests)
    search: list[int] = []
    text_rank: list[tuple[int, np.ndarray, frozenset[str], list[str], str]] = []
    blended: dict[BlendWeights, list[tuple[int, np.ndarray | None, tuple[np.ndarray, np.ndarray], frozenset[str], list[str], str]]] = {}
    for n, req in enumerate(requests):
        if len(matrix) == 0:
            out[n] = QueryAnswer([], POPULARITY_MODEL if req.query is None else f"{engine.texts.name}/{SEMANTIC_SEARCH}")
            continue
        if req.user_id is None:  # semantic search over the catalog
            assert req.query is not None
            search.append(n)
            continue
        profile = req.profile
        exclude = req.exclude | (engine._exclusions(profile) if profile is not None else frozenset())
        history = engine._liked_history(profile) if profile is not None else []
        suffix = QUERY_SUFFIX if req.query is not None else ""
        if learned_encoder is not None and req.query is None:
            learned = learned_encoder.current()
            seq = learned.sequence(profile, matrix) if profile is not None else []
            if not seq:
                out[n] = _popularity(engine, req.k, exclude)
                continue
            [top] = learned.topk(matrix, [seq], req.k, exclude=[exclude], history=[history])
            out[n] = QueryAnswer([RecItem(*r) for r in top], learned.name)
            continue
        text = mix(req.query, engine.model.query(profile) if profile is not None else None)
        if cfg.blend is not None and learned_encoder is None:
            cooc = engine._scorer().sparse(engine.positive_history(profile)) if profile is not None else (np.zeros(0, dtype=np.int64), np.zeros(0))
            if text is None and len(cooc[0]) == 0:
                out[n] = _popularity(engine, req.k, exclude)
                continue
            blended.setdefault(_weights(engine, req.partition), []).append((n, text, cooc, exclude, history, engine.blend_model_name + suffix))
            continue
        if text is None:
            out[n] = _popularity(engine, req.k, exclude)
            continue
        text_rank.append((n, text, exclude, history, engine.model_name + suffix))

    if search:
        k = max(requests[n].k for n in search)
        tops = score_topk(matrix, np.stack([cast(np.ndarray, requests[n].query) for n in search]), k, exclude=[requests[n].exclude for n in search])
        for n, top in zip(search, tops):
            out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), None) for r in top[: requests[n].k]], f"{engine.texts.name}/{SEMANTIC_SEARCH}")
    if text_rank:
        k = max(requests[n].k for n, *_ in text_rank)
        tops = score_topk(matrix, np.stack([t[1] for t in text_rank]), k, exclude=[t[2] for t in text_rank], history=[t[3] for t in text_rank])
        for (n, _, _, _, model), top in zip(text_rank, tops):
            out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), r.because) for r in top[: requests[n].k]], model)
    if blended:
        rows_used = matrix.rows_used
        pop_vec = popularity_vector(engine.popularity, [matrix.id_at(r) for r in range(rows_used)], now if now is not None else 0)
        for weights, group in blended.items():
            k = max(requests[g[0]].k for g in group)
            queries = np.zeros((len(group), matrix.dim), dtype=np.float32)
            cooc = np.zeros((len(group), rows_used), dtype=np.float32)
            for j, (_, text, (rows, vals), *_rest) in enumerate(group):
                if text is not None:
                    queries[j] = text
                cooc[j, rows] = vals
            tops = blend_score_topk(matrix, queries, k, [g[3] for g in group], weights, cooc, pop_vec)
            whys = explain(matrix, [[r.item_id for r in top] for top in tops], [g[4] for g in group])
            for (n, _, _, _, _, model), top, ws in zip(group, tops, whys):
                kn = requests[n].k
                out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), why) for r, why in zip(top[:kn], ws[:kn])], model)
    return [answer if answer is not None else QueryAnswer() for answer in out]
