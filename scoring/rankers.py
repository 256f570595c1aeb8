"""How the engine ranks the users it has evidence for: one class per ranking method.

:class:`scoring.engine.Engine` picks one :class:`Ranker` at construction (its
:attr:`~scoring.engine.Engine.ranker` names it) and its batch step only calls the interface:

* :meth:`Ranker.begin_batch` at a micro-batch's start, :meth:`Ranker.popularity_changed`
  after each event counted in the popularity;
* :meth:`Ranker.snapshot` / :meth:`Ranker.snapshots`: what the ranker needs of a user's state
  at that point of the batch (a snapshot with a ``fallback`` list is a user without the
  evidence this ranker needs: the engine sends the popularity list);
* :meth:`Ranker.rank`: the top-k lists of the other snapshots, together, and
  :attr:`Ranker.model_name`, the records' ``model``.

The HTTP API's recommendations on request (:func:`scoring.query.rank_requests`) go through
the same ranker: :meth:`Ranker.answer_queries` answers a group of requests with a user
(:class:`scoring.query.UserQuery`: a query or not, the user's stored profile or none), batched
the ranker's way, and leaves those without its evidence to the popularity list.

The rankers:

* :class:`TextRanker` (``"text"``): the cosine of the user's text profile with each item
  (:func:`scoring.topk.score_topk`); a request: the same with the query mixed in
  (:func:`scoring.query.mix`), all the requests in one call;
* :class:`BlendRanker` (``"blend"``): text similarity, co-occurrence and popularity blended
  (:mod:`scoring.blend`), densely or in two stages, with fixed or adaptive weights; it keeps
  the batch's popularity at its start and the journal of its changes, so that each snapshot
  is scored with the counts of its time; a request: the dense blend with the query mixed into
  the text signal, the weights of the request's input partition, one call per weighting;
* :class:`LearnedRanker` (``"learned"``): a learned user encoder (:mod:`scoring.learned`),
  one model for the whole batch; a request without a query: the encoder's current model, one
  request at a time; one with a query: the text signal, as :class:`TextRanker`.

A ranker reads the engine it serves (its matrix, profile model, popularity, co-occurrence
scorer, adaptive weights, exclusions and liked history); the state the engine updates event
by event stays there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence, cast

import numpy as np
import torch

from recstream.scoring.blend import (
    POPULAR_CANDIDATES,
    BlendWeights,
    BlendWorkspace,
    NewItems,
    PopularityStates,
    blend_score_topk,
    candidate_blend_topk,
    decayed_log1p,
)
from recstream.scoring.query import QueryAnswer, UserQuery, mix
from recstream.scoring.records import RecItem
from recstream.scoring.topk import _because, explain, score_topk

if TYPE_CHECKING:
    from recstream.encoders.profile import UserProfile
    from recstream.scoring.engine import Engine, Incoming
    from recstream.scoring.learned import LearnedModel, LearnedUserEncoder

LN2 = float(np.log(2.0))


@dataclass(slots=True)
class Snapshot:
    """A user's state to rank from, taken right after an event (or after the batch)."""

    user_id: str
    query: np.ndarray | None
    exclude: frozenset[str]
    history: list[str]
    trigger: Incoming
    #: the popularity list of a user without the evidence the ranker needs (then not ranked)
    fallback: list[RecItem] | None = None
    #: blend only: the co-occurrence scores (matrix rows, values) and the length of the
    #: batch's popularity journal at the snapshot
    cooc: tuple[np.ndarray, np.ndarray] | None = None
    pop_pos: int = 0
    #: learned user encoder only: the model's input, ``(item_id, positive)`` oldest first
    sequence: list[tuple[str, bool]] | None = None
    #: adaptive blend only: the weights ranking this snapshot, its grid of neighbouring
    #: weightings and their lists (``(G, k)`` matrix rows, -1 past the candidates)
    weights: np.ndarray | None = None
    grid: np.ndarray | None = None
    alternatives: np.ndarray | None = None


def _rec_items(results: Sequence[Sequence]) -> list[list[RecItem]]:
    """Each list of ``(item_id, score, because)`` as :class:`RecItem` (kept if already)."""
    return [cast("list[RecItem]", res) if not res or type(res[0]) is RecItem else [RecItem(*r) for r in res] for res in results]


class Ranker(ABC):
    """One way to rank the users with evidence (see the module doc)."""

    #: :attr:`scoring.engine.Engine.ranker`: ``"text"``, ``"blend"`` or ``"learned"``
    name: ClassVar[str]

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def begin_batch(self) -> None:
        """A micro-batch starts (before any of its events is applied)."""

    def popularity_changed(self, item_id: str) -> None:
        """``item_id``'s count in the engine's popularity changed (an event was applied)."""

    @abstractmethod
    def snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        """What this ranker needs of ``profile`` now (``trigger``: the event it answers)."""

    def snapshots(self, pairs: Sequence[tuple[UserProfile, Incoming]]) -> list[Snapshot]:
        """:meth:`snapshot` of each ``(profile, trigger)``, all at the same point of the batch."""
        return [self.snapshot(profile, inc) for profile, inc in pairs]

    @abstractmethod
    def rank(self, scored: Sequence[Snapshot]) -> list[list[RecItem]]:
        """The top-k list of each snapshot without a ``fallback``, in order."""

    def rank_between(self, scored: Sequence[Snapshot], between: Callable[[], object], segment: int) -> list[list[RecItem]]:
        """:meth:`rank`'s lists, ranked in segments of at most ``segment`` snapshots with
        ``between()`` called between two (:attr:`scoring.engine.Engine.between_steps`)."""
        out: list[list[RecItem]] = []
        for start in range(0, len(scored), segment):
            if start:
                between()
            out.extend(self.rank(scored[start : start + segment]))
        return out

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The records' ``model`` of the lists :meth:`rank` makes."""

    @abstractmethod
    def answer_queries(self, queries: Sequence[UserQuery], now_ms: int | None) -> list[QueryAnswer | None]:
        """The answers to requests with a user (:func:`scoring.query.rank_requests`), in
        order, batched this ranker's way; ``None`` for a user without the evidence it needs
        (the caller answers with the popularity list).  ``now_ms``: the time of the
        popularity signal (``None``: no event yet)."""

    def _query_vector(self, q: UserQuery) -> np.ndarray | None:
        """The text signal's vector of a request: its query mixed with the user's text
        profile (:func:`scoring.query.mix`; ``None``: neither)."""
        profile = q.request.profile
        return mix(q.request.query, self.engine.model.query(profile) if profile is not None else None)

    def _answer_by_text(self, queries: Sequence[UserQuery], picked: Sequence[tuple[int, np.ndarray]], out: list[QueryAnswer | None]) -> None:
        """Answer each ``queries[n]`` of ``picked`` by the cosine of its text vector with
        each item, all in one :func:`scoring.topk.score_topk` call, into ``out[n]`` (the
        model: the engine's text profile's)."""
        if not picked:
            return
        part = [queries[n] for n, _ in picked]
        k = max(q.request.k for q in part)
        tops = score_topk(self.engine.matrix, np.stack([v for _, v in picked]), k, exclude=[q.exclude for q in part], history=[q.history for q in part])
        for (n, _), q, top in zip(picked, part, tops):
            out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), r.because) for r in top[: q.request.k]], q.model(self.engine.model_name))

    def _text_snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        """The profile's text query (a copy; ``None``: no usable profile), exclusions and
        explaining history."""
        eng = self.engine
        query = eng.model.query(profile)
        return Snapshot(
            user_id=profile.user_id,
            query=None if query is None else np.array(query, dtype=np.float32, copy=True),
            exclude=eng.exclusions(profile),
            history=eng.liked_history(profile),
            trigger=trigger,
        )


class TextRanker(Ranker):
    """The cosine of the user's text profile with each item; no profile: popularity."""

    name = "text"

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        snap = self._text_snapshot(profile, trigger)
        if snap.query is None:
            # popularity as of this event: computed now, it moves with every event
            snap.fallback = self.engine._fallback(snap.exclude, trigger.event.ts)
        return snap

    def rank(self, scored: Sequence[Snapshot]) -> list[list[RecItem]]:
        queries = np.stack(cast("list[np.ndarray]", [s.query for s in scored]))  # not None: no fallback
        return _rec_items(
            score_topk(self.engine.matrix, queries, self.engine.config.k, exclude=[s.exclude for s in scored], history=[s.history for s in scored])
        )

    def answer_queries(self, queries: Sequence[UserQuery], now_ms: int | None) -> list[QueryAnswer | None]:
        """The text signal (the query mixed with the profile) ranks them all, in one batch;
        neither: popularity."""
        out: list[QueryAnswer | None] = [None] * len(queries)
        self._answer_by_text(queries, [(n, v) for n, q in enumerate(queries) if (v := self._query_vector(q)) is not None], out)
        return out


class LearnedRanker(Ranker):
    """A learned user encoder over the user's recent items; no history: popularity.  The
    model current at a batch's start ranks the whole batch and names its records."""

    name = "learned"

    def __init__(self, engine: Engine, encoder: LearnedUserEncoder) -> None:
        super().__init__(engine)
        self.encoder = encoder
        self._model: LearnedModel | None = None

    def begin_batch(self) -> None:
        self._model = self.encoder.current()

    @property
    def model(self) -> LearnedModel:
        """The model of the current batch (the encoder's current one before any batch)."""
        return self._model if self._model is not None else self.encoder.current()

    @property
    def model_name(self) -> str:
        return self.model.name

    def snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        eng = self.engine
        exclude = eng.exclusions(profile)
        snap = Snapshot(profile.user_id, None, exclude, eng.liked_history(profile), trigger, sequence=self.model.sequence(profile, eng.matrix))
        if not snap.sequence:
            snap.fallback = eng._fallback(exclude, trigger.event.ts)
        return snap

    def rank(self, scored: Sequence[Snapshot]) -> list[list[RecItem]]:
        eng = self.engine
        return _rec_items(
            self.model.topk(
                eng.matrix, [s.sequence or [] for s in scored], eng.config.k, exclude=[s.exclude for s in scored], history=[s.history for s in scored]
            )
        )

    def answer_queries(self, queries: Sequence[UserQuery], now_ms: int | None) -> list[QueryAnswer | None]:
        """A request without a query: the encoder's current model, one request at a time (no
        history in the model: popularity); one with a query: the text signal, as
        :class:`TextRanker`, those together."""
        eng = self.engine
        out: list[QueryAnswer | None] = [None] * len(queries)
        by_text: list[tuple[int, np.ndarray]] = []
        for n, q in enumerate(queries):
            profile = q.request.profile
            if q.request.query is None:
                learned = self.encoder.current()
                seq = learned.sequence(profile, eng.matrix) if profile is not None else []
                if seq:
                    [top] = learned.topk(eng.matrix, [seq], q.request.k, exclude=[q.exclude], history=[q.history])
                    out[n] = QueryAnswer([RecItem(*r) for r in top], learned.name)
                continue
            v = self._query_vector(q)
            if v is not None:
                by_text.append((n, v))
        self._answer_by_text(queries, by_text, out)
        return out


class BlendRanker(Ranker):
    """Text similarity, co-occurrence and decayed popularity, each normalised over the
    user's candidates and weighted (:mod:`scoring.blend`): in two stages with the z-score
    normalisation and :attr:`~scoring.engine.EngineConfig.blend_candidates` (then the weights
    may be the engine's adaptive ones, per input partition), over every item otherwise.  A
    user with neither a text profile nor co-occurrence evidence gets popularity."""

    name = "blend"

    #: snapshots blended together at most (bounds the (B, items) score matrices)
    BLEND_CHUNK = 128

    def __init__(self, engine: Engine, weights: BlendWeights) -> None:
        super().__init__(engine)
        self.weights = weights
        # the batch being processed: popularity by matrix row (log2 at the epoch) at its
        # start, and the journal of its changes, so that each snapshot is scored with the
        # counts of its time
        self.pop_base: np.ndarray | None = None
        self.journal: list[tuple[int, float]] = []
        # the two-stage blend's reused score buffers and its "new items" candidate source
        self._workspace: BlendWorkspace | None = None
        self._new_items: NewItems | None = None

    @property
    def model_name(self) -> str:
        return cast(str, self.engine.blend_model_name)  # set with the blend weights

    def begin_batch(self) -> None:
        self.pop_base = self.engine._popularity_by_row()
        self.journal = []

    def popularity_changed(self, item_id: str) -> None:
        eng = self.engine
        r = eng.matrix.row(item_id)
        if r is not None:
            self.journal.append((r, eng.popularity.log2_score(item_id)))  # type: ignore[arg-type]

    def _snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        """The text snapshot at this point of the popularity journal, without co-occurrence."""
        snap = self._text_snapshot(profile, trigger)
        snap.pop_pos = len(self.journal)
        return snap

    def _set_cooc(self, snap: Snapshot, cooc: tuple[np.ndarray, np.ndarray]) -> None:
        snap.cooc = cooc
        if snap.query is None and len(cooc[0]) == 0:
            snap.fallback = self.engine._fallback(snap.exclude, snap.trigger.event.ts)

    def snapshot(self, profile: UserProfile, trigger: Incoming) -> Snapshot:
        snap = self._snapshot(profile, trigger)
        # the co-occurrence scores as of this event: the model moves with every event
        self._set_cooc(snap, self.engine.cooccurrence_scorer().sparse(self.engine.positive_history(profile)))
        return snap

    def snapshots(self, pairs: Sequence[tuple[UserProfile, Incoming]]) -> list[Snapshot]:
        """The co-occurrence scores of all of them computed together
        (:meth:`CooccurrenceScorer.sparse_batch`, the same numbers)."""
        snaps = [self._snapshot(profile, inc) for profile, inc in pairs]
        history = self.engine.positive_history
        coocs = self.engine.cooccurrence_scorer().sparse_batch([history(profile) for profile, _ in pairs])
        for snap, cooc in zip(snaps, coocs):
            self._set_cooc(snap, cooc)
        return snaps

    def rank(self, scored: Sequence[Snapshot]) -> list[list[RecItem]]:
        return self._rank(scored, None, 0)

    def rank_between(self, scored: Sequence[Snapshot], between: Callable[[], object], segment: int) -> list[list[RecItem]]:
        """The segments are chunks of one pass, which share the batch's popularity states
        (one sweep of its journal) and reference time."""
        return self._rank(scored, between, segment)

    def _rank(self, scored: Sequence[Snapshot], between: Callable[[], object] | None, segment: int) -> list[list[RecItem]]:
        adaptive = self.engine.adaptive
        if adaptive is not None:
            for s in scored:
                s.weights = adaptive[s.trigger.partition].weights
                s.grid = adaptive.grid(s.trigger.partition)
        # pop_base is set at the batch's start
        return _rec_items(self._blend_topk(scored, self.weights, cast(np.ndarray, self.pop_base), self.journal, between, segment))

    def query_weights(self, partition: int | None) -> BlendWeights:
        """The weights of a request from input partition ``partition``: the partition's
        adaptive ones where it has some, the configured ones otherwise."""
        adaptive = self.engine.adaptive
        if adaptive is not None and partition is not None:
            adapter = adaptive.adapters.get(partition)  # not adaptive[partition]: that would create one
            if adapter is not None:
                return adapter.blend_weights(self.weights.normalization)
        return self.weights

    def answer_queries(self, queries: Sequence[UserQuery], now_ms: int | None) -> list[QueryAnswer | None]:
        """The dense blend (:func:`scoring.blend.blend_score_topk`, whose top-k the stream's
        two-stage ranking equals) of the text signal (the query mixed with the profile), the
        user's co-occurrence evidence and the popularity at ``now_ms``, one call per
        weighting (:meth:`query_weights`); neither text nor co-occurrence: popularity."""
        eng = self.engine
        matrix = eng.matrix
        out: list[QueryAnswer | None] = [None] * len(queries)
        groups: dict[BlendWeights, list[tuple[int, np.ndarray | None, tuple[np.ndarray, np.ndarray]]]] = {}
        for n, q in enumerate(queries):
            profile = q.request.profile
            text = self._query_vector(q)
            cooc = eng.cooccurrence_scorer().sparse(eng.positive_history(profile)) if profile is not None else (np.zeros(0, dtype=np.int64), np.zeros(0))
            if text is None and len(cooc[0]) == 0:
                continue
            groups.setdefault(self.query_weights(q.request.partition), []).append((n, text, cooc))
        if not groups:
            return out
        rows_used = matrix.rows_used
        pop_vec = decayed_log1p(eng._popularity_by_row(), eng.popularity.shift(now_ms if now_ms is not None else 0))  # popularity_vector by row
        for weights, group in groups.items():
            part = [queries[n] for n, _, _ in group]
            k = max(q.request.k for q in part)
            texts = np.zeros((len(group), matrix.dim), dtype=np.float32)
            cooc_rows = np.zeros((len(group), rows_used), dtype=np.float32)
            for j, (_, text, (rows, vals)) in enumerate(group):
                if text is not None:
                    texts[j] = text
                cooc_rows[j, rows] = vals
            tops = blend_score_topk(matrix, texts, k, [q.exclude for q in part], weights, cooc_rows, pop_vec)
            whys = explain(matrix, [[r.item_id for r in top] for top in tops], [q.history for q in part])
            for (n, _, _), q, top, ws in zip(group, part, tops, whys):
                kn = q.request.k
                out[n] = QueryAnswer([RecItem(r.item_id, float(r.score), why) for r, why in zip(top[:kn], ws[:kn])], q.model(self.model_name))
        return out

    def _blend_topk(
        self,
        scored: Sequence[Snapshot],
        blend: BlendWeights,
        pop_base: np.ndarray,
        journal: Sequence[tuple[int, float]],
        between: Callable[[], object] | None = None,
        segment: int = 0,
    ) -> list[list[tuple[str, float, str | None]]]:
        """The blend's top-k of each snapshot (see :mod:`scoring.engine`), in order (with
        ``between``: in chunks of at most ``segment``, ``between()`` called between two)."""
        eng = self.engine
        m = eng.matrix
        n = m.rows_used
        dim = m.dim
        half_life = eng.popularity.half_life_ms
        # popularity of row r at time t: log1p(2 ** (log2 count at the epoch - t / H)), taken
        # relative to a reference time in float64 so that float32 keeps its precision
        ref = max(s.trigger.event.ts for s in scored) / half_life
        if eng.config.blend_candidates and blend.normalization == "zscore":
            return self._two_stage_topk(scored, blend, pop_base, journal, ref, between, segment)
        work = torch.from_numpy((pop_base - ref).astype(np.float32))
        applied = 0
        out: list[list[tuple[str, float, str | None]]] = []
        chunk = self.BLEND_CHUNK if between is None else min(self.BLEND_CHUNK, segment)
        for start in range(0, len(scored), chunk):
            if start and between is not None:
                between()
            part = scored[start : start + chunk]
            b = len(part)
            queries = np.zeros((b, dim), dtype=np.float32)
            shift = torch.tensor([s.trigger.event.ts / half_life - ref for s in part], dtype=torch.float32)
            # one popularity state per run of snapshots taken at the same point of the batch
            states: list[torch.Tensor] = []
            state_of = np.empty(b, dtype=np.int64)
            for j, snap in enumerate(part):
                if snap.query is not None:
                    queries[j] = snap.query
                assert snap.cooc is not None
                if not states or snap.pop_pos != applied:
                    if snap.pop_pos != applied:
                        work = work.clone()
                        for r, lg in journal[applied : snap.pop_pos]:
                            work[r] = lg - ref
                        applied = snap.pop_pos
                    states.append(work)
                state_of[j] = len(states) - 1
            base = torch.stack(states)[torch.from_numpy(state_of)] if len(states) > 1 else states[0].unsqueeze(0)
            # log1p(2 ** x), without overflow for a snapshot far older than the batch's latest
            pop = torch.nn.functional.softplus((base - shift.unsqueeze(1)) * LN2)
            cooc = np.zeros((b, n), dtype=np.float32)
            for j, snap in enumerate(part):
                rows, vals = snap.cooc  # type: ignore[misc]
                cooc[j, rows] = vals
            res = blend_score_topk(m, queries, eng.config.k, [s.exclude for s in part], blend, cooc, pop)
            # the history item that explains each recommendation, as the text ranking gives
            whys = explain(m, [[r.item_id for r in recs] for recs in res], [s.history for s in part])
            out.extend([(r.item_id, r.score, why) for r, why in zip(recs, ws)] for recs, ws in zip(res, whys))
        return out

    def _two_stage_topk(
        self,
        scored: Sequence[Snapshot],
        blend: BlendWeights,
        pop_base: np.ndarray,
        journal: Sequence[tuple[int, float]],
        ref: float,
        between: Callable[[], object] | None = None,
        segment: int = 0,
    ) -> list[list[tuple[str, float, str | None]]]:
        """:meth:`_blend_topk` in two stages (:func:`candidate_blend_topk`).  The popularity
        is the dense ranking's (the state of the batch's journal each snapshot saw, at its
        time, relative to ``ref``) but looked up at the candidates and summed over the catalog
        without a ``(B, items)`` tensor (:class:`scoring.blend.PopularityStates`)."""
        eng = self.engine
        m = eng.matrix
        dim = m.dim
        half_life = eng.popularity.half_life_ms
        states = PopularityStates(
            torch.from_numpy((pop_base - ref).astype(np.float32)),
            np.fromiter((r for r, _ in journal), dtype=np.int64, count=len(journal)),
            np.array([lg - ref for _, lg in journal], dtype=np.float32),
            popular=POPULAR_CANDIDATES,
        )
        if self._workspace is None:
            self._workspace, self._new_items = BlendWorkspace(), NewItems()
        workspace = self._workspace
        new_rows = cast(NewItems, self._new_items).rows(m)  # the items added to the catalog most recently
        # more snapshots at a time where the catalog is small (the (B, items) score buffers
        # stay under 32 MiB, a micro-batch of 512 at 10,000 items in one pass): fewer passes of
        # fixed cost, and one matrix product of many rows (a product of a few rows costs several
        # times more per row)
        chunk = max(self.BLEND_CHUNK, min(1024, (1 << 23) // max(m.rows_used, 1)))
        if between is not None:
            chunk = min(chunk, segment)
        out: list[list[tuple[str, float, str | None]]] = []
        for start in range(0, len(scored), chunk):
            if start and between is not None:
                between()
            part = scored[start : start + chunk]
            queries = np.zeros((len(part), dim), dtype=np.float32)
            for j, snap in enumerate(part):
                if snap.query is not None:
                    queries[j] = snap.query
                assert snap.cooc is not None
            shift = torch.tensor([s.trigger.event.ts / half_life - ref for s in part], dtype=torch.float32)
            pop = states.view(np.array([s.pop_pos for s in part], dtype=np.int64), shift)
            adaptive = part[0].weights is not None
            alternatives: list[np.ndarray] = []
            values, rows = candidate_blend_topk(
                m,
                queries,
                eng.config.k,
                [s.exclude for s in part],
                blend,
                [s.cooc for s in part],  # type: ignore[misc]
                pop,
                stats=eng.candidate_stats,
                row_weights=np.stack([s.weights for s in part]) if adaptive else None,  # type: ignore[misc]
                grid=np.stack([s.grid for s in part]) if adaptive else None,  # type: ignore[misc]
                alternatives=alternatives if adaptive else None,
                workspace=workspace,
                new_rows=new_rows,
                raw=True,
            )
            for snap, alt in zip(part, alternatives):
                snap.alternatives = alt
            out.extend(self._items(values, rows, [s.history for s in part]))  # type: ignore[arg-type]
        return out

    def _items(self, values: torch.Tensor, rows: torch.Tensor, history: Sequence[Sequence[str]]) -> list[list[RecItem]]:
        """Each user's :class:`RecItem` list from ``(B, k)`` scores and matrix rows, best first,
        cut at the first ``-inf`` score or free row (as :func:`scoring.blend._lists`), with the
        history item that explains each one (:func:`scoring.topk.explain`)."""
        matrix = self.engine.matrix
        id_at = matrix._row_to_id.__getitem__
        inf = -math.inf
        picked: list[list[int]] = []
        scores: list[list[float]] = []
        ids: list[list[str | None]] = []  # no None once cut
        for vals, rs in zip(values.tolist(), rows.tolist()):
            got = list(map(id_at, rs))
            if None in got or inf in vals:
                cut = next(j for j, (v, i) in enumerate(zip(vals, got)) if v == inf or i is None)
                got, vals, rs = got[:cut], vals[:cut], rs[:cut]
            picked.append(rs)
            scores.append(vals)
            ids.append(got)
        whys = _because(matrix, picked, history)
        new = tuple.__new__  # RecItem(*t) without the NamedTuple's Python-level __new__
        return [[new(RecItem, t) for t in zip(i, v, w)] for i, v, w in zip(ids, scores, whys)]
