"""Prequential evaluation (scoring/prequential.py): the engine's own live figures equal the
backtest's on the same events."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from recstream.encoders.profile import DecayedProfileModel
from recstream.scoring.backtest import BacktestConfig, evaluate_records
from recstream.scoring.blend import DEFAULT_WEIGHTS
from recstream.scoring.engine import POPULARITY_MODEL, Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.prequential import Prequential
from recstream.scoring.topk import ItemMatrix
from recstream.streams.records import Click, Purchase, Review

DIM = 16
TOPIC = {"click": "clicks", "purchase": "purchases", "review": "reviews"}


def test_a_target_event_tests_the_list_its_user_held():
    pq = Prequential(k=3, window=2)
    pq.test("u", "a", 1, "click")  # no list yet: cold
    pq.hold("u", "blend", ["a", "b", "c", "d"])
    pq.test("u", "b", 2, "click")  # rank 1: NDCG 1/log2(3)
    pq.test("u", "b", 2, "purchase")  # the same interaction: no second case
    pq.test("u", "d", 3, "click")  # outside the top 3: a miss
    pq.test("u", "c", 4, "review", rating=2.0)  # a negative review is no target
    pq.hold("u", POPULARITY_MODEL, ["c"])
    pq.test("u", "c", 5, "purchase")
    pq.publish()
    blend, pop = pq.figures["blend"], pq.figures[POPULARITY_MODEL]
    assert (pq.cold, blend.cases, blend.hits, pop.cases, pop.hits) == (1, 2, 1, 1, 1)
    assert blend.ndcg == pytest.approx(1 / math.log2(3)) and pop.ndcg == 1.0
    assert blend.window_hit_rate == 0.5 and blend.window_ndcg == pytest.approx(0.5 / math.log2(3))


def test_the_window_keeps_the_latest_cases_and_forgotten_users_are_cold():
    pq = Prequential(k=1, window=2, max_users=1)
    for n, item in enumerate(["x", "y", "x"]):
        pq.hold("u", "text", ["x"])
        pq.test("u", item, n, "click")
    pq.hold("v", "text", ["x"])  # u is forgotten
    pq.test("u", "x", 9, "click")
    pq.publish()
    f = pq.figures["text"]
    assert (f.cases, f.hits, f.window_cases, f.window_hit_rate, pq.cold) == (3, 2, 2, 0.5, 1)
    with pytest.raises(ValueError):
        Prequential(window=0)


class NoTexts:
    name = "stub"

    def encode_numpy(self, texts):
        out = np.random.default_rng(len(texts)).standard_normal((len(texts), DIM)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def events(n: int = 1200, seed: int = 5) -> list:
    rng = random.Random(seed)
    out, t = [], 1_700_000_000_000
    for i in range(n):
        t += rng.randint(0, 3) * 60_000  # ties: several events at one time
        user, item = f"u{rng.randint(0, 40)}", f"i{min(int(rng.paretovariate(0.8)), 119)}"
        out.append(Click(user, item, t, f"c{i}"))
        r = rng.random()
        if r < 0.3:
            out.append(Purchase(user, item, t, f"p{i}"))
        elif r < 0.5:
            out.append(Review(user, item, rng.choice([1, 2, 3, 4, 5]), "words", t, f"r{i}"))
    return out


@pytest.mark.parametrize("blend", [DEFAULT_WEIGHTS, None])
def test_the_engines_live_figures_equal_the_backtest_of_its_records(blend):
    rng = np.random.default_rng(1)
    matrix = ItemMatrix(DIM, "cpu")
    matrix.upsert([f"i{j}" for j in range(120)], rng.standard_normal((120, DIM)).astype(np.float32))
    config = EngineConfig(k=10, emit="per-event", blend=blend)
    engine = Engine(
        model=DecayedProfileModel(dim=DIM), matrix=matrix, popularity=DecayedPopularity(config.popularity_half_life_ms), texts=NoTexts(), config=config
    )
    evs = events()
    offsets = dict.fromkeys(TOPIC.values(), 0)
    batch = []
    for ev in evs:
        batch.append(Incoming(ev, TOPIC[ev.kind], 0, offsets[TOPIC[ev.kind]]))
        offsets[TOPIC[ev.kind]] += 1
    batch.append(batch[100])  # a redelivery: no case
    profiles: dict = {}
    recs = []
    for start in range(0, len(batch), 97):
        res = engine.process(batch[start : start + 97], profiles, now_ms=0)
        profiles.update(res.profiles)
        recs += res.recommendations
    # every event is a test event of the backtest
    bt = evaluate_records(evs, recs, [f"i{j}" for j in range(120)], BacktestConfig(split_ms=evs[0].ts, ks=(10,)))
    figures = engine.prequential.figures
    cases = sum(f.cases for f in figures.values())
    hits = sum(f.hits for f in figures.values())
    ndcg = sum(f.ndcg for f in figures.values())
    assert cases == bt.counts["cases"] > 300
    assert engine.prequential.cold == bt.counts["cold"] > 0
    m = bt.metrics("recstream")
    assert hits == round(m["hit_rate@10"] * cases)
    assert ndcg / cases == pytest.approx(m["ndcg@10"])
    assert set(figures) <= {engine.ranker, POPULARITY_MODEL} and engine.ranker == ("blend" if blend else "text")
