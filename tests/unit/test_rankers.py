"""The engine's rankers (scoring/rankers.py): the engine picks one class from its config, and
its batch step goes through the :class:`Ranker` interface only, so that a ranker class plugged
into an engine gives the lists the engine configured for that method gives."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import pytest

from recstream.scoring.blend import BlendWeights
from recstream.scoring.engine import BLEND_MODEL_PREFIX, POPULARITY_MODEL, Engine
from recstream.scoring.learned import LearnedUserEncoder
from recstream.scoring.rankers import BlendRanker, LearnedRanker, Ranker, Snapshot, TextRanker
from recstream.scoring.records import RecItem
from tests.unit import test_engine_blend as blend_tests
from tests.unit import test_learned_serving as learned_tests

WEIGHTS = BlendWeights(0.5, 0.3, 0.2, "zscore")


def make(method: str, tmp_path, emit: str = "per-event", **cfg) -> Engine:
    if method == "learned":
        engine = learned_tests.make_engine(LearnedUserEncoder(learned_tests.checkpoint(tmp_path / "seq.ckpt")))
        engine.config = dataclasses.replace(engine.config, emit=emit)
        return engine
    return blend_tests.make_engine(WEIGHTS if method == "blend" else None, emit=emit, **cfg)


def events(method: str):
    return learned_tests.stream() if method == "learned" else blend_tests.stream(300)


def batches(evs, sizes=(1, 7, 32, 3, 64)):
    out, i, j = [], 0, 0
    while i < len(evs):
        out.append(evs[i : i + sizes[j % len(sizes)]])
        i += len(out[-1])
        j += 1
    return out


def run(engine: Engine, evs):
    profiles: dict = {}
    recs = []
    for b in batches(evs):
        res = engine.process(b, profiles, now_ms=blend_tests.T0)
        profiles.update(res.profiles)
        recs.extend(res.recommendations)
    return recs


class Recording(Ranker):
    """Another ranker, seen through the interface: what the engine asked of it."""

    name = "recording"

    def __init__(self, inner: Ranker) -> None:
        super().__init__(inner.engine)
        self.inner = inner
        self.calls: list[str] = []
        self.counted: list[str] = []
        self.ranked: list[Snapshot] = []
        self.fallbacks: list[Snapshot] = []

    def begin_batch(self) -> None:
        self.calls.append("begin")
        self.inner.begin_batch()

    def popularity_changed(self, item_id: str) -> None:
        self.counted.append(item_id)
        self.inner.popularity_changed(item_id)

    def _seen(self, snaps: list[Snapshot]) -> list[Snapshot]:
        self.calls.append("snapshot")
        self.fallbacks += [s for s in snaps if s.fallback is not None]
        return snaps

    def snapshot(self, profile, trigger) -> Snapshot:
        return self._seen([self.inner.snapshot(profile, trigger)])[0]

    def snapshots(self, pairs) -> list[Snapshot]:
        return self._seen(self.inner.snapshots(pairs))

    def rank(self, scored: Sequence[Snapshot]) -> list[list[RecItem]]:
        self.calls.append("rank")
        self.ranked += scored
        return self.inner.rank(scored)

    @property
    def model_name(self) -> str:
        return "recording/" + self.inner.model_name

    def answer_queries(self, queries, now_ms):
        return self.inner.answer_queries(queries, now_ms)


def test_the_engine_picks_its_ranker_from_its_config(tmp_path) -> None:
    text, blend, learned = (make(m, tmp_path) for m in ("text", "blend", "learned"))
    assert type(text.ranking) is TextRanker and text.ranker == "text" and text.ranking.model_name == text.model_name
    assert type(blend.ranking) is BlendRanker and blend.ranker == "blend" and blend.ranking.weights == WEIGHTS
    assert blend.ranking.model_name == blend.blend_model_name == BLEND_MODEL_PREFIX + WEIGHTS.label()
    assert type(learned.ranking) is LearnedRanker and learned.ranker == "learned"
    assert learned.ranking.model_name == learned.user_encoder.current().name  # type: ignore[union-attr]
    for engine, method in ((text, "text"), (blend, "blend"), (learned, "learned")):
        models = {r.model for r in run(engine, events(method))}
        assert engine.ranking.model_name in models and models <= {POPULARITY_MODEL, engine.ranking.model_name}, method


@pytest.mark.parametrize("emit", ["per-event", "per-user"])
@pytest.mark.parametrize("method", ["text", "blend", "learned"])
def test_a_ranker_class_plugged_in_gives_the_engines_lists_through_the_interface(method: str, emit: str, tmp_path) -> None:
    evs = events(method)
    want = run(make(method, tmp_path, emit), evs)
    engine = make(method, tmp_path, emit)
    inner: Ranker
    if method == "learned":
        inner = LearnedRanker(engine, engine.user_encoder)  # type: ignore[arg-type]
    else:
        inner = BlendRanker(engine, WEIGHTS) if method == "blend" else TextRanker(engine)
    engine.ranking = rec = Recording(inner)
    got = run(engine, evs)
    assert engine.ranker == "recording"
    # the same lists, scores and reasons; the ranked ones named by the plugged-in ranker
    assert [(r.user_id, r.items, r.trigger) for r in got] == [(r.user_id, r.items, r.trigger) for r in want]
    assert [r.model for r in got] == [m if m == POPULARITY_MODEL else "recording/" + m for m in (r.model for r in want)]
    # each batch: begin, snapshots, then one ranking of the snapshots with evidence
    n = len(batches(evs))
    assert rec.calls.count("begin") == n and rec.calls[0] == "begin"
    assert all(c == "begin" for a, c in zip(rec.calls, rec.calls[1:]) if a == "rank")
    assert len(rec.ranked) + len(rec.fallbacks) == len(got) and all(s.fallback is None for s in rec.ranked)
    if emit == "per-event" and method != "learned":
        assert rec.fallbacks  # events on items outside the catalog, before any evidence
    # the popularity changes once per applied event (redeliveries are not applied)
    applied = {}
    for inc in evs:
        applied.setdefault((inc.source, inc.offset), inc.event.item_id)
    assert rec.counted == list(applied.values())
