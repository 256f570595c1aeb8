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

This module keeps what every ranking method shares: the requests, the semantic search, the
exclusions and explaining history of a user's request (:class:`UserQuery`), the popularity
list and the text signal's vector (:func:`mix`).  How a user's request is ranked is the
engine's ranker's part (:meth:`scoring.rankers.Ranker.answer_queries`, one class per method,
as for the stream): :func:`rank_requests` hands it all the user requests at once and never
asks which method ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, cast

import numpy as np

from recstream.encoders.profile import UserProfile
from recstream.scoring.records import RecItem
from recstream.scoring.topk import score_topk

if TYPE_CHECKING:
    from recstream.scoring.engine import Engine

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
class UserQuery:
    """A request with a user, as :meth:`scoring.rankers.Ranker.answer_queries` takes it: the
    ``request``, the items to ``exclude`` (the request's and the user's, as in the stream)
    and the liked ``history`` items that explain a recommendation."""

    request: QueryRequest
    exclude: frozenset[str]
    history: list[str]

    def model(self, name: str) -> str:
        """The answer's ``model`` for a list of the ranking ``name``: with
        :data:`QUERY_SUFFIX` where the request has a query."""
        return name + QUERY_SUFFIX if self.request.query is not None else name


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


def _popularity(engine: Engine, k: int, exclude: frozenset[str]) -> QueryAnswer:
    top = engine.popularity.top(k, exclude=exclude, allowed=engine.matrix)
    return QueryAnswer([RecItem(item_id, float(score), None) for item_id, score in top], POPULARITY_MODEL)


def rank_requests(engine: Engine, requests: Sequence[QueryRequest], now_ms: int | None = None) -> list[QueryAnswer]:
    """Rank each request (see the module doc); call on the engine's compute thread (the
    matrix, the popularity, the co-occurrence model and the adaptive weights change there,
    during a micro-batch, and a failed micro-batch rolls them back: read from another thread
    at the same time, they could mix two states' arrays or fail, so no other thread may
    call this while the stream runs).  The semantic searches go through one batched
    :func:`scoring.topk.score_topk`; the requests with a user through one call of the
    engine's ranker (:meth:`scoring.rankers.Ranker.answer_queries`, which batches them its
    own way), those it leaves unanswered get the popularity list.  ``now_ms`` (default: the
    popularity's latest event) is the time of the popularity signal."""
    matrix = engine.matrix
    now = now_ms if now_ms is not None else engine.popularity.last_ts
    out: list[QueryAnswer | None] = [None] * len(requests)
    search: list[int] = []
    users: list[int] = []
    queries: list[UserQuery] = []
    for n, req in enumerate(requests):
        if len(matrix) == 0:
            out[n] = QueryAnswer([], POPULARITY_MODEL if req.query is None else f"{engine.texts.name}/{SEMANTIC_SEARCH}")
            continue
        if req.user_id is None:  # semantic search over the catalog
            assert req.query is not None
            search.append(n)
            continue
        profile = req.profile
        users.append(n)
        queries.append(
            UserQuery(
                req,
                req.exclude | (engine.exclusions(profile) if profile is not None else frozenset()),
                engine.liked_history(profile) if profile is not None else [],
            )
        )

    if search:
        k = max(requests[n].k for n in search)
        tops = score_topk(matrix, np.stack([cast(np.ndarray, requests[n].query) for n in search]), k, exclude=[requests[n].exclude for n in search])
        for n, top in zip(search, tops):
            out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), None) for r in top[: requests[n].k]], f"{engine.texts.name}/{SEMANTIC_SEARCH}")
    if queries:
        for n, q, answer in zip(users, queries, engine.ranking.answer_queries(queries, now)):
            out[n] = answer if answer is not None else _popularity(engine, q.request.k, q.exclude)
    return [answer if answer is not None else QueryAnswer() for answer in out]
