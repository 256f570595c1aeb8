"""Online weight adaptation (scoring/adapt.py) and the engine's adaptive blend."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.scoring.adapt import DIRECTIONS, AdaptConfig, AdaptFormatError, WeightAdapter
from recstream.scoring.blend import BlendWeights
from recstream.scoring.engine import BLEND_MODEL_PREFIX, Incoming
from recstream.scoring.prequential import Prequential
from recstream.streams.records import Click
from tests.unit.test_engine_blend import T0, catalog, make_engine, run, stream

START = BlendWeights(0.4, 0.5, 0.1, "zscore")


def test_the_grid_is_the_weights_and_six_moves_on_the_simplex() -> None:
    a = WeightAdapter.start(BlendWeights(2, 2, 0.1))  # normalised on start
    grid = a.grid(0.1)
    assert grid.shape == (len(DIRECTIONS), 3) == (7, 3)
    assert np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert np.allclose(grid[0], a.weights)
    moved = np.abs(grid[1:] - a.weights).sum(axis=1) / 2
    # a move takes at most what the giving signal has (popularity has ~0.049)
    assert np.allclose(sorted(moved), sorted([0.1, 0.1, 0.1, 0.1, a.weights[2], a.weights[2]]))


def test_an_epoch_moves_the_weights_towards_the_grid_points_that_ranked_higher() -> None:
    cfg = AdaptConfig(step=0.1, rate=2.0, epoch=3)
    a = WeightAdapter.start(START)
    before = a.weights.copy()
    grid = a.grid(cfg.step)
    # the points that give popularity more weight earned the gains
    more_pop = (grid[:, 2] > before[2] + 1e-9).astype(float)
    for _ in range(3):
        a.credit(more_pop)
        a.target()
    a.end_epoch(cfg)
    assert a.weights[2] > before[2]
    assert np.isclose(a.weights.sum(), 1) and a.epochs == 1 and a.cases == 0 and a.targets == 0
    assert np.abs(a.weights - before).max() <= cfg.step + 1e-9  # at most one step per epoch


@pytest.mark.parametrize("gains", [None, np.zeros(7), np.full(7, 0.5)])
def test_an_epoch_without_evidence_leaves_the_weights(gains) -> None:
    a = WeightAdapter.start(START)
    before = a.weights.copy()
    if gains is not None:
        a.credit(gains)
    a.end_epoch(AdaptConfig())
    assert np.array_equal(a.weights, before) and a.epochs == 1


def test_rate_zero_never_moves() -> None:
    a = WeightAdapter.start(START)
    a.credit(np.arange(7, dtype=float))
    a.end_epoch(AdaptConfig(rate=0))
    assert np.allclose(a.weights, [0.4, 0.5, 0.1])


def test_the_state_round_trips_and_bad_bytes_are_refused() -> None:
    a = WeightAdapter.start(START)
    a.credit(np.linspace(0, 1, 7))
    a.target()
    a.end_epoch(AdaptConfig())
    a.credit(np.ones(7))
    b = WeightAdapter.from_bytes(a.to_bytes())
    assert np.allclose(b.weights, a.weights) and np.allclose(b.gains, a.gains)
    assert (b.cases, b.targets, b.epochs) == (a.cases, a.targets, a.epochs)
    for bad in (b"", b"{}", b"[1]", a.to_bytes().replace(b'"version":1', b'"version":9'), a.to_bytes().replace(b'"text":0.', b'"text":-0.')):
        with pytest.raises(AdaptFormatError):
            WeightAdapter.from_bytes(bad)


@pytest.mark.parametrize("bad", [dict(step=0), dict(step=0.6), dict(rate=-1), dict(rate=float("nan")), dict(epoch=0), dict(k=0)])
def test_bad_settings_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        AdaptConfig(**bad)


def test_the_engine_refuses_adaptation_without_a_two_stage_zscore_blend() -> None:
    for blend, cands in ((None, True), (BlendWeights(1, 1, 1, "rank"), True), (START, False)):
        with pytest.raises(ValueError, match="adapt"):
            make_engine(blend, adapt=AdaptConfig(), blend_candidates=cands)


# ---------------------------------------------------------------------------- the engine

ADAPT = AdaptConfig(step=0.1, rate=3.0, epoch=15)


def final_weights(engine) -> dict:
    return {p: tuple(round(x, 9) for x in w) for p, w in engine.adaptive.snapshot().items()}


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
def test_adaptive_lists_and_weights_do_not_depend_on_the_micro_batches(size: int) -> None:
    events = stream(400)
    ref = make_engine(START, adapt=ADAPT)
    ref_recs, _, _ = run(ref, [[e] for e in events])
    eng = make_engine(START, adapt=ADAPT)
    recs, _, _ = run(eng, [events[i : i + size] for i in range(0, len(events), size)])
    assert [(r.user_id, r.model, [i.item_id for i in r.items]) for r in recs] == [(r.user_id, r.model, [i.item_id for i in r.items]) for r in ref_recs]
    assert final_weights(eng) == final_weights(ref)
    # the weights did move, and the records say that the blend adapts, and from where
    assert any(abs(a - b) > 1e-6 for w in final_weights(ref).values() for a, b in zip(w, (0.4, 0.5, 0.1)))
    assert {r.model for r in ref_recs} - {"popularity"} == {BLEND_MODEL_PREFIX + "adaptive from " + START.label()}


def popular_stream(n: int, seed: int = 5) -> list[Incoming]:
    """Users whose next click is, most of the time, one of the three most clicked items:
    popularity predicts them, text and co-occurrence much less."""
    rng = np.random.default_rng(seed)
    ids, _ = catalog()
    hot = ids[:3]
    out, ts = [], T0
    for j in range(n):
        user = f"u{rng.integers(0, 60)}"
        ts += 60_000
        item = hot[int(rng.integers(0, 3))] if rng.random() < 0.7 else ids[int(rng.integers(3, len(ids)))]
        out.append(Incoming(Click(user, item, ts, f"e{j}"), "clicks", 0, j))
    return out


def test_weights_move_towards_the_signal_that_predicts_the_next_item() -> None:
    eng = make_engine(BlendWeights(0.8, 0.15, 0.05, "zscore"), adapt=AdaptConfig(step=0.1, rate=2.0, epoch=40), exclude_seen=False)
    run(eng, [popular_stream(1500)])
    w = eng.adaptive.adapters[0].weights
    assert eng.adaptive.adapters[0].epochs >= 30
    assert w[2] > 0.3, w  # popularity gained weight
    assert w[0] < 0.5, w


def test_a_failed_batch_rolls_back_the_live_tests_and_the_weights(monkeypatch) -> None:
    events = stream(300)
    eng = make_engine(START, adapt=AdaptConfig(step=0.1, rate=3.0, epoch=10))
    run(eng, [events[:200]])
    before_w = final_weights(eng)
    before_fig = dict(eng.prequential.figures)
    before_cold = eng.prequential.cold
    calls = {"n": 0}
    real = eng.ranking._blend_topk

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after two segments were judged
            raise RuntimeError("injected")
        return real(*a, **kw)

    monkeypatch.setattr(eng.ranking, "_blend_topk", flaky)
    profiles: dict = {}
    with pytest.raises(RuntimeError):
        eng.process(events[200:], profiles, now_ms=T0)
    assert calls["n"] == 3
    assert final_weights(eng) == before_w and eng.prequential.cold == before_cold
    monkeypatch.setattr(eng.ranking, "_blend_topk", real)
    eng.prequential.publish()
    assert dict(eng.prequential.figures) == before_fig


def test_prequential_rollback_restores_every_held_list_and_total() -> None:
    pq = Prequential(k=3, window=2, max_users=2)
    pq.hold("a", "blend", ["x", "y"])
    pq.test("a", "x", 1, "click")
    pq.publish()
    before = (dict(pq.figures), pq.cold, dict(pq._held), dict(pq._last))
    pq.begin()
    pq.test("a", "y", 2, "click")
    pq.test("b", "y", 3, "click")  # cold
    pq.hold("b", "blend", ["y"])
    pq.hold("c", "text", ["z"])  # forgets a
    pq.test("b", "y", 4, "click")
    pq.rollback()
    pq.publish()
    assert (dict(pq.figures), pq.cold, dict(pq._held), dict(pq._last)) == before


def test_prequential_credits_each_alternative_list_with_its_gain() -> None:
    pq = Prequential(k=3)
    alternatives = np.array([[5, 6, 7], [7, 5, -1], [1, 2, 3]], dtype=np.int32)
    pq.hold("a", "blend", ["x"], alternatives)
    gains = pq.test("a", "i7", 1, "click", item_row=7)
    assert gains is not None
    assert np.allclose(gains, [1 / np.log2(4), 1.0, 0.0])
    unknown = pq.test("a", "i7", 2, "click", item_row=None)  # not in the catalog: no list has it
    assert unknown is not None and not unknown.any()
    pq.hold("a", "popularity", ["x"])  # a list without alternatives
    assert pq.test("a", "x", 3, "click", item_row=5) is None
