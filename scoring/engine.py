"""The batch step of recstream: events in, profile updates and top-k recommendations out.

Pure code, no Kafka: the Faust worker (:mod:`streams.agents.events`) feeds it the valid
events of one micro-batch with the profiles of the users they touch, and publishes what
it returns; the backtest feeds it a replayed event log the same way.

One batch is processed as:

1. every review text of the batch is embedded in one forward pass of the text encoder;
2. events are applied to their user's profile strictly in order (cheap numpy updates),
   and popularity is counted; an event whose offset the profile has already applied is a
   redelivery and changes nothing;
3. the state to recommend from is snapshotted, either right after each event
   (``emit="per-event"``, used by backtests) or once per touched user after the batch
   (``emit="per-user"``, production);
4. all snapshots are scored together: one matrix product against the item matrix and a
   top-k with head-room for the excluded items (see :func:`scoring.topk.score_topk`).
   Users without a usable profile get the most popular catalog items as of the snapshot.

Steps 3 and 4 belong to the engine's ranker (:mod:`scoring.rankers`), one class per way of
ranking, chosen once at construction (:attr:`Engine.ranking`, named by :attr:`Engine.ranker`):
:class:`~scoring.rankers.TextRanker` (the text profile alone, as above, the default),
:class:`~scoring.rankers.BlendRanker` (with :attr:`EngineConfig.blend`, below) or
:class:`~scoring.rankers.LearnedRanker` (with a ``user_encoder``).  The batch step calls
only its interface (:class:`~scoring.rankers.Ranker`): it takes the snapshots, says which
users lack the evidence it needs (they get the popularity list), ranks the others and names
the records' ``model``.

With blend weights configured (:attr:`EngineConfig.blend`), step 2 also updates an
item-to-item co-occurrence model (:class:`scoring.cooccurrence.CooccurrenceModel`): every
positive event (:func:`scoring.cooccurrence.is_positive`) pairs its item with the user's
last ``cooc_history_len`` distinct positive items *before* it, read from the stored profile
(:func:`scoring.cooccurrence.positive_history`); a positive event on the item that is
already the user's latest positive (a MovieLens rating is a click and a purchase at once,
a double click) adds nothing.  Step 4 (:class:`~scoring.rankers.BlendRanker`) then ranks
with :func:`scoring.blend.blend_score_topk`: the profile's cosines, the co-occurrence scores
of the user's positive history and the decayed popularity (``log1p`` of the count at the
event's time), each normalised over the user's candidates and weighted; the records'
``model`` is ``"blend/<weights label>"``.  A user without a usable text profile but with
co-occurrence evidence is served by the blend too (the text signal is then left out); only
a user with neither gets the popularity list.  The co-occurrence scores and the popularity counts are taken at the snapshot, so
the invariant below holds for the blend as well.

Because step 2 is sequential and step 4 only reads the snapshots, per-event emission from
a batch equals what strictly one-at-a-time processing would emit.
"""

from __future__ import annotations

import copy
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, MutableMapping, Protocol, Sequence

import numpy as np
import torch

from recstream.encoders.profile import ProfileConfig, ProfileModel, UserProfile
from recstream.scoring.adapt import AdaptConfig, AdaptiveWeights
from recstream.scoring.blend import BlendWeights, CandidateStats
from recstream.scoring.cooccurrence import DEFAULT_MAX_NEIGHBOURS, CooccurrenceModel, CooccurrenceScorer, is_positive, positive_history, weight_problem
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.prequential import Prequential
from recstream.scoring.rankers import BlendRanker, LearnedRanker, Ranker, TextRanker
from recstream.scoring.rankers import Snapshot as _Snapshot
from recstream.scoring.records import KIND_TOPICS, Event, Item, RecItem, Recommendation, Review, Trigger
from recstream.scoring.topk import ItemMatrix

if TYPE_CHECKING:
    from recstream.encoders.text import TextEncoder
    from recstream.scoring.learned import LearnedUserEncoder

EmitMode = Literal["per-user", "per-event"]
EMIT_MODES: tuple[EmitMode, ...] = ("per-user", "per-event")
POPULARITY_MODEL = "popularity"
#: ``Recommendation.model`` prefix of a blended list (then the weights' label).
BLEND_MODEL_PREFIX = "blend/"
#: :attr:`Engine.between_steps` is called after every this many events of a micro-batch
#: (5-10 ms of work on a 2-core CPU with the default ranker at 10,000 items; the call
#: itself costs next to nothing when no query waits)
STEP_EVENTS = 16
#: and between ranking segments of at most this many snapshots (10-15 ms there; ranking a
#: batch of 512 in segments of 64 costs about 4% more CPU than in one pass, of 32 about 15%:
#: bench/blend_cost.py's default_api)
RANK_SEGMENT = 64


class TextEmbedder(Protocol):
    """What the engine needs from a text encoder (see :class:`encoders.text.TextEncoder`)."""

    @property
    def name(self) -> str: ...

    def encode_numpy(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Incoming:
    """A valid event and where it came from (``topic`` is the real topic name)."""

    event: Event
    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How recommendations are made.

    Attributes:
        k: items per recommendation.
        emit: ``per-user`` (one record per touched user per batch) or ``per-event``.
        exclude_seen: also exclude the items in the user's recent history (default;
            purchased items are always excluded).
        popularity_half_life_ms: half-life of the decayed popularity counts.
        score_threads: torch's intra-op CPU threads while a batch is scored (``None``:
            leave torch's setting, e.g. the worker's ``--torch-threads``).  Default 1: a
            micro-batch's product, top-k and gathers are small, and splitting them over
            threads costs more than it saves when the cores are busy (on the 2-core
            development machine two threads doubled both the CPU time and the time per
            batch, at 2,000 and at 10,000 items).  The text encoder keeps torch's setting.
        blend: rank with the text/co-occurrence/popularity blend with these weights
            (``None``: text similarity only, the default).
        cooc_neighbours: co-occurrence neighbours kept per item (``M``).
        cooc_history_len: positive items of the user's history paired with a new
            positive event, and scored.
        cooc_half_life_ms: decay of the co-occurrence counts (``None``: no decay).
        cooc_pair_decay: weight of a pair by its distance in the user's history (1: the
            plain item-kNN count; see :class:`~scoring.cooccurrence.CooccurrenceModel`).
        cooc_recency: weight of an older history item's neighbours when scoring (1: a
            plain sum).  The defaults (0.9, 0.8) were chosen on issue 8's validation
            window (docs/quality.md).
        positive_threshold: the lowest rating of a positive review.
        blend_candidates: rank the z-score blend in two stages (candidates from the
            co-occurrence, text and popularity, then only they are blended:
            :func:`scoring.blend.candidate_blend_topk`, the same lists); ``False``: blend
            every item (the dense reference).
        adapt: move the blend's weights online from the prequential tests, per input
            partition, starting from ``blend`` (:mod:`scoring.adapt`); ``None``: the
            weights stay as given.  Needs the two-stage z-score blend.
    """

    k: int = 10
    emit: EmitMode = "per-user"
    exclude_seen: bool = True
    popularity_half_life_ms: int = 7 * 24 * 3600 * 1000
    score_threads: int | None = 1
    blend: BlendWeights | None = None
    cooc_neighbours: int = DEFAULT_MAX_NEIGHBOURS
    cooc_history_len: int = 20
    cooc_half_life_ms: int | None = None
    cooc_pair_decay: float = 0.9
    cooc_recency: float = 0.8
    positive_threshold: float = 4.0
    blend_candidates: bool = True
    adapt: AdaptConfig | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k: must be at least 1, got {self.k}")
        if self.emit not in EMIT_MODES:
            raise ValueError(f"emit: must be one of {', '.join(EMIT_MODES)}, got {self.emit!r}")
        if self.popularity_half_life_ms <= 0:
            raise ValueError(f"popularity half-life: must be positive, got {self.popularity_half_life_ms}")
        if self.score_threads is not None and self.score_threads < 1:
            raise ValueError(f"score threads: must be at least 1, got {self.score_threads}")
        if self.blend is not None and not isinstance(self.blend, BlendWeights):
            raise ValueError(f"blend: must be BlendWeights or None, got {self.blend!r}")
        if self.cooc_neighbours < 1 or self.cooc_history_len < 1:
            raise ValueError(f"co-occurrence neighbours and history length: must be at least 1, got {self.cooc_neighbours} and {self.cooc_history_len}")
        if self.cooc_half_life_ms is not None and self.cooc_half_life_ms <= 0:
            raise ValueError(f"co-occurrence half-life: must be positive, got {self.cooc_half_life_ms}")
        for name in ("cooc_pair_decay", "cooc_recency"):
            if problem := weight_problem(name, getattr(self, name)):
                raise ValueError(problem)
        if self.adapt is not None and (self.blend is None or self.blend.normalization != "zscore" or not self.blend_candidates):
            raise ValueError("adapt: needs blend weights with the z-score normalisation, ranked in two stages")

    def new_cooccurrence(self) -> CooccurrenceModel:
        """An empty co-occurrence model with these settings."""
        return CooccurrenceModel(
            self.cooc_neighbours, self.cooc_half_life_ms, self.cooc_history_len, self.positive_threshold,
            pair_decay=self.cooc_pair_decay, recency=self.cooc_recency,
        )  # fmt: skip


@contextmanager
def intraop_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(slots=True)
class BatchStats:
    """What one batch did (feeds logs and metrics)."""

    events: int = 0
    applied: int = 0
    duplicates: int = 0
    unknown_items: int = 0
    texts_encoded: int = 0
    fallbacks: int = 0
    encode_s: float = 0.0
    update_s: float = 0.0
    score_s: float = 0.0


@dataclass(slots=True)
class BatchResult:
    recommendations: list[Recommendation]
    #: profiles changed by the batch (to write back), by user id
    profiles: dict[str, UserProfile]
    #: (partition, item_id) whose popularity count changed -> the latest event time counted
    #: in it; in the order of the events that last changed them (so, in a partition, by that
    #: time as the events came): the order their changelog records are written in, which
    #: another worker takes them in (streams/evidence.py)
    popularity_touched: dict[tuple[int, str], int] = field(default_factory=dict)
    stats: BatchStats = field(default_factory=BatchStats)
    #: (partition, item_id) whose per-partition co-occurrence row changed -> the latest event
    #: time counted in the row; ordered as :attr:`popularity_touched`
    cooccurrence_touched: dict[tuple[int, str], int] = field(default_factory=dict)
    #: partitions whose adaptive weights state changed (:attr:`Engine.adaptive`)
    adaptive_touched: set[int] = field(default_factory=set)


class Engine:
    """Applies micro-batches of events to profiles and scores them against the catalog.

    Args:
        model: the user profile model.
        matrix: the catalog's item embeddings (shared with the catalog agent).
        popularity: decayed popularity over the events this engine has seen.
        texts: the text encoder for review texts.
        config: see :class:`EngineConfig`.
        partition_popularity: optional per-input-partition popularity (the worker
            persists these per partition); updated alongside ``popularity``.
        cooccurrence: the co-occurrence model scored by the blend (default: a new one
            when ``config.blend`` is set, none otherwise: then nothing is counted).
        partition_cooccurrence: optional per-input-partition co-occurrence models (the
            worker persists their rows, keyed ``"<partition>:<item>"``); updated alongside
            ``cooccurrence``, their changed rows listed in
            :attr:`BatchResult.cooccurrence_touched`.
        user_encoder: a learned user encoder (:mod:`scoring.learned`): it then ranks every
            user with a history instead of the text profile or the blend; the users of a
            batch are embedded in one forward pass, and the records' ``model`` names its
            checkpoint.  One model serves a whole batch, even if a new one is loaded meanwhile.
    """

    def __init__(
        self,
        *,
        model: ProfileModel,
        matrix: ItemMatrix,
        popularity: DecayedPopularity,
        texts: TextEmbedder,
        config: EngineConfig | None = None,
        partition_popularity: dict[int, DecayedPopularity] | None = None,
        cooccurrence: CooccurrenceModel | None = None,
        partition_cooccurrence: dict[int, CooccurrenceModel] | None = None,
        user_encoder: LearnedUserEncoder | None = None,
    ) -> None:
        self.model = model
        self.matrix = matrix
        self.popularity = popularity
        self.texts = texts
        self.config = config or EngineConfig()
        self.partition_popularity = partition_popularity
        self.model_name = f"{texts.name}/{model.name}"
        blend = self.config.blend
        if cooccurrence is None and blend is not None:
            cooccurrence = self.config.new_cooccurrence()
        self.cooccurrence = cooccurrence
        self.partition_cooccurrence = partition_cooccurrence if cooccurrence is not None else None
        #: the records' ``model`` of a blended list: the weights, or where adaptation starts
        self.blend_model_name = (
            None if blend is None else BLEND_MODEL_PREFIX + (blend.label() if self.config.adapt is None else f"adaptive from {blend.label()}")
        )
        self._cooc_scorer: CooccurrenceScorer | None = None
        self._cooc_key: tuple[int, ...] | None = None
        #: the profiles :meth:`process_events` keeps when it is given none, by user id
        self.profiles: dict[str, UserProfile] = {}
        self._offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset (process_events)
        self.user_encoder = user_encoder
        #: what the two-stage blend did (users ranked, candidates, users ranked densely)
        self.candidate_stats = CandidateStats()
        #: each applied target event tests the list its user held (scoring/prequential.py)
        self.prequential = Prequential(positive_threshold=self.config.positive_threshold)
        #: the blend's weights per input partition, moved by those tests (scoring/adapt.py)
        self.adaptive = AdaptiveWeights(blend, self.config.adapt) if blend is not None and self.config.adapt is not None else None
        #: how the engine ranks users with evidence (:mod:`scoring.rankers`; the records of the
        #: others say "popularity"): chosen here, once
        self.ranking: Ranker = (
            LearnedRanker(self, user_encoder) if user_encoder is not None else BlendRanker(self, blend) if blend is not None else TextRanker(self)
        )
        #: called inside :meth:`process` where the models are consistent (every
        #: :data:`STEP_EVENTS` events applied, after the review texts are embedded, between
        #: ranking segments of :data:`RANK_SEGMENT` snapshots), on the calling thread: the
        #: worker answers the API's waiting query requests there instead of after the whole
        #: micro-batch.  What it reads then includes the batch's events applied so far,
        #: which a failing batch rolls back.  It must not change the engine's state.
        self.between_steps: Callable[[], object] | None = None

    @classmethod
    def for_catalog(
        cls,
        catalog: Sequence[Item],
        *,
        config: EngineConfig | None = None,
        profile_config: ProfileConfig | None = None,
        encoder: TextEncoder | None = None,
        item_fields: Sequence[str] | None = None,
        device: Any = None,
        matrix: ItemMatrix | None = None,
        user_encoder: LearnedUserEncoder | None = None,
    ) -> Engine:
        """An engine over ``catalog`` (the last entry per item id wins), set up as a worker's:
        the items embedded with ``encoder`` (default: the worker's model, CUDA when present)
        from :func:`~encoders.text.item_text` of ``item_fields`` (default: title, categories,
        description) into an :class:`~scoring.topk.ItemMatrix` on ``device`` (default: the
        encoder's), a :class:`~encoders.profile.DecayedProfileModel` with ``profile_config``
        and an empty popularity.  ``matrix``: the catalog already embedded (used as is)."""
        from recstream.encoders.profile import DecayedProfileModel
        from recstream.encoders.text import ITEM_TEXT_FIELDS, TextEncoder, item_text

        encoder = encoder if encoder is not None else TextEncoder()
        config = config or EngineConfig()
        if matrix is None:
            items = list({item.item_id: item for item in catalog}.values())
            fields = tuple(item_fields) if item_fields is not None else ITEM_TEXT_FIELDS
            matrix = ItemMatrix(encoder.dim, device if device is not None else encoder.device)
            chunk = 4096
            for start in range(0, len(items), chunk):
                part = items[start : start + chunk]
                texts = [item_text(it.title, it.categories, it.description, fields=fields) for it in part]
                matrix.upsert([it.item_id for it in part], np.asarray(encoder.encode_numpy(texts), dtype=np.float32))
        return cls(
            model=DecayedProfileModel(profile_config, dim=encoder.dim),
            matrix=matrix,
            popularity=DecayedPopularity(config.popularity_half_life_ms),
            texts=encoder,
            config=config,
            user_encoder=user_encoder,
        )

    def process_events(
        self,
        events: Iterable[Event],
        profiles: MutableMapping[str, UserProfile] | None = None,
        *,
        partition: int = 0,
    ) -> BatchResult:
        """``events`` (in the order given) as one micro-batch from input partition
        ``partition`` of their topics, as a worker takes them: the way in from a notebook.
        ``profiles`` holds the users' profiles and is updated with the batch's; by default
        the engine keeps them itself (:attr:`profiles`)."""
        store = self.profiles if profiles is None else profiles
        batch = []
        for event in events:
            topic = KIND_TOPICS[event.kind]
            offset = self._offsets.get((topic, partition), 0)
            batch.append(Incoming(event, topic, partition, offset))
            self._offsets[(topic, partition)] = offset + 1
        if not batch:
            return BatchResult([], {})
        result = self.process(batch, store, now_ms=max(inc.event.ts for inc in batch))
        store.update(result.profiles)
        return result

    @property
    def ranker(self) -> str:
        """The ranking method's name: ``"text"``, ``"blend"`` or ``"learned"`` (:attr:`ranking`)."""
        return self.ranking.name

    def describe_ranker(self) -> str:
        """The ranker in words, for logs: ``blend/zscore(...)``, adaptive with its settings."""
        if self.blend_model_name is None:
            return self.ranker
        if self.adaptive is None:
            return self.blend_model_name
        a = self.adaptive.config
        return f"{self.blend_model_name}, adapted online (step {a.step:g}, rate {a.rate:g}, epoch {a.epoch} target events)"

    # ------------------------------------------------------------------ helpers
    def _popularity_for(self, partition: int) -> DecayedPopularity | None:
        if self.partition_popularity is None:
            return None
        pop = self.partition_popularity.get(partition)
        if pop is None:
            pop = self.partition_popularity[partition] = DecayedPopularity(self.config.popularity_half_life_ms)
        return pop

    def _cooccurrence_for(self, partition: int) -> CooccurrenceModel | None:
        if self.partition_cooccurrence is None:
            return None
        model = self.partition_cooccurrence.get(partition)
        if model is None:
            model = self.partition_cooccurrence[partition] = self.config.new_cooccurrence()
        return model

    def cooccurrence_scorer(self) -> CooccurrenceScorer:
        """The co-occurrence scorer over the matrix rows, rebuilt when the matrix moved an
        item (its generation) or the model was cleared (a recovery)."""
        assert self.cooccurrence is not None
        m = self.matrix
        key = (id(m), m.generation, m.rows_used, id(self.cooccurrence), self.cooccurrence.clears)
        if self._cooc_scorer is None or key != self._cooc_key:
            self._cooc_scorer = CooccurrenceScorer(self.cooccurrence, m.row, m.rows_used)
            self._cooc_key = key
        return self._cooc_scorer

    def positive_history(self, profile: UserProfile) -> list[str]:
        """The user's last ``cooc_history_len`` distinct positive items, oldest first."""
        return positive_history(profile.history, self.config.cooc_history_len, self.config.positive_threshold)

    def exclusions(self, profile: UserProfile) -> frozenset[str]:
        """The items never recommended to the user: purchased ones, and (``exclude_seen``)
        every item in its profile's history."""
        if self.config.exclude_seen:
            return frozenset(profile.purchased).union(h.item_id for h in profile.history)
        return frozenset(profile.purchased)

    @staticmethod
    def liked_history(profile: UserProfile) -> list[str]:
        """History items that can explain a recommendation.

        Not an item whose latest review is neutral or negative (a click on it before a
        1-star review does not make it a reason), nor the review entries themselves.
        """
        latest_rating: dict[str, float] = {}
        for h in profile.history:
            if h.rating is not None:
                latest_rating[h.item_id] = h.rating
        return [h.item_id for h in profile.history if latest_rating.get(h.item_id, 5.0) > 3]

    def _popularity_by_row(self) -> np.ndarray:
        """The log2 popularity of each matrix row (``-inf``: none), float64."""
        scores = self.popularity.log2_scores()
        # ItemMatrix.row without a method call per item (-1: not in the matrix)
        rows = np.fromiter(map(self.matrix._id_to_row.get, scores, itertools.repeat(-1)), dtype=np.int64, count=len(scores))
        values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
        out = np.full(self.matrix.rows_used, -np.inf, dtype=np.float64)
        out[rows[rows >= 0]] = values[rows >= 0]
        return out

    def _item_vectors(self, item_ids: set[str]) -> dict[str, np.ndarray]:
        """The catalog embeddings (float32, read-only) of those of ``item_ids`` in the matrix.

        One gather for the whole batch instead of one device copy per event; the matrix
        does not change during a batch (it is only updated on this same compute thread).
        """
        known = [item_id for item_id in item_ids if item_id in self.matrix]
        if not known:
            return {}
        vecs = self.matrix.get(known).cpu().numpy()
        vecs.flags.writeable = False
        return dict(zip(known, vecs))

    def _fallback(self, exclude: frozenset[str], now_ms: int) -> list[RecItem]:
        top = self.popularity.top(self.config.k, exclude=exclude, allowed=self.matrix, now_ms=now_ms)
        return [RecItem(item_id, float(score), None) for item_id, score in top]

    # ------------------------------------------------------------------ the batch step
    def process(
        self,
        batch: Sequence[Incoming],
        profiles: Mapping[str, UserProfile],
        *,
        now_ms: int | None = None,
    ) -> BatchResult:
        """Apply ``batch`` in order and score the resulting snapshots.

        ``profiles`` holds the stored profiles of (some of) the batch's users; users
        missing from it start with a new profile. Profiles are copied on first touch
        only through the model's in-place updates of the objects given, which the
        caller then writes back from :attr:`BatchResult.profiles`.
        """
        saved: dict[tuple[int, str], tuple[DecayedPopularity, float | None, int | None]] = {}
        # the co-occurrence models the batch changed, each with its journal open (rollback)
        saved_rows: dict[int, CooccurrenceModel] = {}
        adaptive = self.adaptive
        saved_adapters = copy.deepcopy((adaptive.adapters, adaptive.touched)) if adaptive is not None else None
        self.prequential.begin()
        try:
            result = self._process(batch, profiles, now_ms, saved, saved_rows)
        except BaseException:
            # profiles are the caller's to re-read; popularity, co-occurrence, the live
            # tests and the adaptive weights live here: roll them back so that a retried
            # batch (or its records, one by one) is not counted twice
            for (_, item_id), (pop, log2, last_ts) in reversed(saved.items()):
                pop.restore(item_id, log2, last_ts)
            for cooc in reversed(saved_rows.values()):
                cooc.rollback()
            self.prequential.rollback()
            if adaptive is not None and saved_adapters is not None:
                adaptive.adapters, adaptive.touched = saved_adapters
            raise
        for cooc in saved_rows.values():
            cooc.commit()
        self.prequential.commit()
        self.prequential.publish()
        if adaptive is not None:
            result.adaptive_touched, adaptive.touched = adaptive.touched, set()
            adaptive.publish()
        return result

    def _process(
        self,
        batch: Sequence[Incoming],
        profiles: Mapping[str, UserProfile],
        now_ms: int | None,
        saved: dict[tuple[int, str], tuple[DecayedPopularity, float | None, int | None]],
        saved_rows: dict[int, CooccurrenceModel],
    ) -> BatchResult:
        def count(pop: DecayedPopularity, item_id: str, ts: int) -> None:
            key = (id(pop), item_id)
            if key not in saved:
                saved[key] = (pop, pop.log2_score(item_id), pop.last_ts)
            pop.add(item_id, ts)

        def observe(cooc: CooccurrenceModel, history: list[str], item_id: str, ts: int) -> list[str]:
            if id(cooc) not in saved_rows:
                saved_rows[id(cooc)] = cooc
                cooc.begin()  # its changes can be undone (rollback): no copy of each row
            return cooc.observe(history, item_id, ts)

        cfg = self.config
        cooc = self.cooccurrence
        ranking = self.ranking
        ranking.begin_batch()
        stats = BatchStats(events=len(batch))
        t0 = time.perf_counter()
        review_texts = [inc.event.text for inc in batch if isinstance(inc.event, Review) and inc.event.text]
        text_vecs: dict[int, np.ndarray] = {}
        if review_texts:
            encoded = self.texts.encode_numpy(review_texts)
            j = 0
            for i, inc in enumerate(batch):
                if isinstance(inc.event, Review) and inc.event.text:
                    text_vecs[i] = encoded[j]
                    j += 1
        stats.texts_encoded = len(review_texts)
        between = self.between_steps
        if between is not None and review_texts:
            between()
        t1 = time.perf_counter()

        with intraop_threads(self.config.score_threads):
            item_vecs = self._item_vectors({inc.event.item_id for inc in batch})
        touched: dict[str, UserProfile] = {}
        last_trigger: dict[str, Incoming] = {}
        snapshots: list[_Snapshot] = []
        pop_touched: dict[tuple[int, str], int] = {}
        cooc_touched: dict[tuple[int, str], int] = {}
        per_event = self.config.emit == "per-event"
        applied: list[bool] = []
        adaptive = self.adaptive
        #: adaptive weights: indices just past an event that ends its partition's epoch
        epoch_ends: list[int] = []
        targets_left: dict[int, int] = {}
        for i, inc in enumerate(batch):
            ev = inc.event
            profile = touched.get(ev.user_id)
            if profile is None:
                profile = profiles.get(ev.user_id) or self.model.new_profile(ev.user_id)
                touched[ev.user_id] = profile
            duplicate = profile.is_duplicate(inc.source, inc.offset)
            applied.append(not duplicate)
            if duplicate:
                stats.duplicates += 1
            else:
                item_vec = item_vecs.get(ev.item_id)
                if item_vec is None:
                    stats.unknown_items += 1
                cooc_history: list[str] | None = None
                if cooc is not None and is_positive(ev.kind, ev.rating if isinstance(ev, Review) else None, cfg.positive_threshold):
                    cooc_history = self.positive_history(profile)  # before the event
                    if cooc_history and cooc_history[-1] == ev.item_id:
                        cooc_history = None  # the latest positive again: no new evidence
                self.model.apply(
                    profile,
                    kind=ev.kind,
                    item_id=ev.item_id,
                    ts=ev.ts,
                    item_vec=item_vec,
                    text_vec=text_vecs.get(i),
                    rating=ev.rating if isinstance(ev, Review) else None,
                    source=inc.source,
                    offset=inc.offset,
                )
                count(self.popularity, ev.item_id, ev.ts)
                ranking.popularity_changed(ev.item_id)
                part_pop = self._popularity_for(inc.partition)
                if part_pop is not None:
                    count(part_pop, ev.item_id, ev.ts)
                    key = (inc.partition, ev.item_id)
                    pop_touched[key] = max(pop_touched.pop(key, ev.ts), ev.ts)  # moved last: see BatchResult
                if cooc_history is not None and cooc is not None:
                    observe(cooc, cooc_history, ev.item_id, ev.ts)
                    part_cooc = self._cooccurrence_for(inc.partition)
                    if part_cooc is not None:
                        for item_id in observe(part_cooc, cooc_history, ev.item_id, ev.ts):
                            key = (inc.partition, item_id)
                            cooc_touched[key] = max(cooc_touched.pop(key, ev.ts), ev.ts)
                stats.applied += 1
                if adaptive is not None and self.prequential.is_target(ev.kind, ev.rating if isinstance(ev, Review) else None):
                    left = targets_left.get(inc.partition, adaptive.targets_left(inc.partition)) - 1
                    if left <= 0:
                        epoch_ends.append(i + 1)
                        left = adaptive.config.epoch
                    targets_left[inc.partition] = left
            last_trigger[ev.user_id] = inc
            if per_event:
                snapshots.append(ranking.snapshot(profile, inc))
            if between is not None and i % STEP_EVENTS == STEP_EVENTS - 1:
                between()
        if not per_event:
            snapshots = ranking.snapshots([(touched[user], inc) for user, inc in last_trigger.items()])
        t2 = time.perf_counter()

        emitted = now_ms if now_ms is not None else int(time.time() * 1000)
        if adaptive is None:
            recs = self._rank(snapshots, emitted, stats)
            self._judge(batch, applied, recs, per_event, snapshots)
        elif per_event:
            # an epoch's end moves its partition's weights for the snapshots after it: rank
            # and judge the batch in segments cut there (so the weights do not depend on how
            # the events were cut into batches)
            recs = []
            start = 0
            for end in [*epoch_ends, len(batch)]:
                if end > start:
                    part = self._rank(snapshots[start:end], emitted, stats)
                    self._judge(batch[start:end], applied[start:end], part, True, snapshots[start:end])
                    recs.extend(part)
                if end in epoch_ends:
                    adaptive.end_epoch(batch[end - 1].partition)
                start = end
        else:
            # per user: the batch's events test the lists held before it, then its lists are held
            ends = set(epoch_ends)
            for i, (inc, ok) in enumerate(zip(batch, applied)):
                if ok:
                    self._test(inc)
                if i + 1 in ends:
                    adaptive.end_epoch(inc.partition)
            recs = self._rank(snapshots, emitted, stats)
            for snap, rec in zip(snapshots, recs):
                self._hold(rec, snap)
        stats.encode_s, stats.update_s, stats.score_s = t1 - t0, t2 - t1, time.perf_counter() - t2
        return BatchResult(recs, touched, pop_touched, stats, cooc_touched)

    def _rank(self, snapshots: Sequence[_Snapshot], emitted: int, stats: BatchStats) -> list[Recommendation]:
        """The records of ``snapshots``, in order: each ranked by the engine's ranker, or
        the popularity list of a user without the evidence it needs."""
        ranking = self.ranking
        scored = [s for s in snapshots if s.fallback is None]
        results: list[list[RecItem]] = []
        between = self.between_steps
        if scored:
            with intraop_threads(self.config.score_threads):
                # with a between-steps hook, in segments (the same lists: each snapshot is ranked alone)
                results = ranking.rank(scored) if between is None else ranking.rank_between(scored, between, RANK_SEGMENT)
        by_snapshot = {id(s): res for s, res in zip(scored, results)}
        model = ranking.model_name

        recs = []
        for snap in snapshots:
            if snap.fallback is not None:
                items, name = snap.fallback, POPULARITY_MODEL
                stats.fallbacks += 1
            else:
                items, name = by_snapshot[id(snap)], model
            inc = snap.trigger
            recs.append(
                Recommendation(
                    user_id=snap.user_id,
                    items=items,
                    trigger=Trigger(inc.topic, inc.partition, inc.offset, inc.event.event_id),
                    event_ts=inc.event.ts,
                    emitted_ts=emitted,
                    model=name,
                )
            )
        return recs

    def _test(self, inc: Incoming) -> None:
        """``inc`` tests the list its user holds; an adaptive blend credits its grid."""
        ev = inc.event
        gains = self.prequential.test(
            ev.user_id,
            ev.item_id,
            ev.ts,
            ev.kind,
            ev.rating if isinstance(ev, Review) else None,
            item_row=self.matrix.row(ev.item_id) if self.adaptive is not None else None,
        )
        if self.adaptive is not None and self.prequential.is_target(ev.kind, ev.rating if isinstance(ev, Review) else None):
            self.adaptive.target(inc.partition)
            if gains is not None:
                self.adaptive.credit(inc.partition, gains)

    def _hold(self, rec: Recommendation, snap: _Snapshot | None = None) -> None:
        self.prequential.hold(
            rec.user_id,
            POPULARITY_MODEL if rec.model == POPULARITY_MODEL else self.ranker,
            [item.item_id for item in rec.items],
            snap.alternatives if snap is not None else None,
        )

    def _judge(
        self, batch: Sequence[Incoming], applied: Sequence[bool], recs: Sequence[Recommendation], per_event: bool, snapshots: Sequence[_Snapshot] | None = None
    ) -> None:
        """Prequential evaluation: each applied event tests the list its user held before
        it, then the batch's records become the held lists (per event: each event's own)."""
        if per_event:
            assert snapshots is not None
            for inc, ok, rec, snap in zip(batch, applied, recs, snapshots):
                if ok:
                    self._test(inc)
                self._hold(rec, snap)
        else:
            for inc, ok in zip(batch, applied):
                if ok:
                    self._test(inc)
            for rec in recs:
                self._hold(rec)
