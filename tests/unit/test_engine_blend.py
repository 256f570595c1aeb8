"""The engine's hybrid path (:attr:`scoring.engine.EngineConfig.blend`): co-occurrence
updated in the batch step, blended scoring, the per-event invariant and the rollback.

A small random catalog (unit vectors, no text model: the engine only needs the encoder for
review texts, which a stub embeds); expected lists are computed independently from the
pure pieces (a co-occurrence model fed the positive events one by one, brute-force
popularity and cosines, :func:`scoring.blend.blend_topk`).
"""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest
import torch

from recstream.encoders.profile import DecayedProfileModel, UserProfile
from recstream.scoring.blend import BlendWeights, blend_topk, candidate_mask
from recstream.scoring.cooccurrence import CooccurrenceModel, CooccurrenceScorer, is_positive
from recstream.scoring.engine import BLEND_MODEL_PREFIX, POPULARITY_MODEL, Engine, EngineConfig, Incoming
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.streams.records import Click, Purchase, Review

DIM = 16
T0 = 1_700_000_000_000
WEIGHTS = BlendWeights(0.5, 0.3, 0.2, "zscore")
TOPICS = {"click": "clicks", "purchase": "purchases", "review": "reviews"}


class StubTexts:
    """Review texts embedded as a fixed pseudo-random unit vector per text."""

    name = "stub"

    def encode_numpy(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM).astype(np.float32)  # not hash(): salted per process
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def catalog(n: int = 40, seed: int = 7) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"i{j}" for j in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def make_engine(blend: BlendWeights | None = WEIGHTS, **cfg) -> Engine:
    ids, vecs = catalog()
    m = ItemMatrix(DIM, "cpu")
    m.upsert(ids, vecs)
    config = EngineConfig(k=6, emit=cfg.pop("emit", "per-event"), blend=blend, **cfg)
    return Engine(
        model=DecayedProfileModel(dim=DIM),
        matrix=m,
        popularity=DecayedPopularity(config.popularity_half_life_ms),
        texts=StubTexts(),
        config=config,
        partition_popularity={},
        partition_cooccurrence={},
    )


def stream(n: int = 300, seed: int = 3, repeats: bool = True) -> list[Incoming]:
    rng = random.Random(seed)
    ids, _ = catalog()
    offsets: dict[tuple[str, int], int] = {}
    out: list[Incoming] = []
    last: dict[str, str] = {}
    ts = T0
    while len(out) < n:
        if repeats and out and rng.random() < 0.04:
            out.append(rng.choice(out))  # a redelivery
            continue
        user = f"u{rng.randint(0, 7)}"
        ts += rng.randint(1, 600) * 1000
        item = rng.choice(ids[:25]) if rng.random() < 0.9 else f"ext-{rng.randint(0, 2)}"
        if not repeats and last.get(user) == item:
            continue
        last[user] = item
        r = rng.random()
        if r < 0.6:
            ev = Click(user, item, ts, f"e{len(out)}")
        elif r < 0.75:
            ev = Purchase(user, item, ts, f"e{len(out)}")
        else:
            ev = Review(user, item, rng.choice([1, 2, 3, 4, 5]), rng.choice(["", "great", "awful"]), ts, f"e{len(out)}")
        topic, part = TOPICS[ev.kind], int(user[1:]) % 2
        off = offsets.get((topic, part), -1) + 1
        offsets[(topic, part)] = off
        out.append(Incoming(ev, topic, part, off))
    return out


def run(engine: Engine, batches: list[list[Incoming]]):
    profiles: dict[str, UserProfile] = {}
    recs = []
    touched: dict[tuple[int, str], int] = {}  # row -> the latest event time counted in it
    for b in batches:
        res = engine.process(b, profiles, now_ms=T0)
        profiles.update(res.profiles)
        recs.extend(res.recommendations)
        if len(b) == 1:  # one event: every row it changed includes it, and nothing later
            assert set(res.cooccurrence_touched.values()) <= {b[0].event.ts}
        for key, ts in res.cooccurrence_touched.items():
            touched[key] = max(touched.get(key, ts), ts)
        # the events come in time order: each partition's rows are listed by their time, the
        # order their changelog records go out and another worker takes them in
        for rows_touched in (res.cooccurrence_touched, res.popularity_touched):
            for p in {p for p, _ in rows_touched}:
                stamps = [ts for (q, _), ts in rows_touched.items() if q == p]
                assert stamps == sorted(stamps)
    return recs, profiles, touched


def lists(recs) -> list[tuple[str, str, list[str]]]:
    return [(r.user_id, r.model, [i.item_id for i in r.items]) for r in recs]


def rows(model: CooccurrenceModel) -> dict:
    return {i: (r.log2_count, dict(r.neighbours)) for i, r in model.rows()}


@pytest.mark.parametrize("sizes", [[7], [64], [1000]])
def test_blend_micro_batches_equal_one_event_at_a_time(sizes: list[int]) -> None:
    events = stream()
    ref = make_engine()
    ref_recs, ref_profiles, ref_touched = run(ref, [[e] for e in events])
    eng = make_engine()
    size = sizes[0]
    recs, profiles, touched = run(eng, [events[i : i + size] for i in range(0, len(events), size)])
    assert lists(recs) == lists(ref_recs)
    for a, b in zip(recs, ref_recs):
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-5)
    models = {r.model for r in recs}
    assert models == {POPULARITY_MODEL, BLEND_MODEL_PREFIX + WEIGHTS.label()}
    assert rows(eng.cooccurrence) == rows(ref.cooccurrence) and len(eng.cooccurrence) > 10
    for p in (0, 1):
        assert rows(eng.partition_cooccurrence[p]) == rows(ref.partition_cooccurrence[p])
    assert touched == ref_touched  # the rows and each one's latest event time
    # each partition's rows hold what that partition's events made, and only those keys
    assert set(touched) == {(p, i) for p, m in eng.partition_cooccurrence.items() for i, _ in m.rows()}


def test_blend_lists_match_an_independent_computation() -> None:
    """Each list is the blend of the profile's cosines, the item-kNN scores of the user's
    positives before it and the popularity at the event's time, over the candidates."""
    events = stream(160, seed=11, repeats=False)
    eng = make_engine()
    recs, _, _ = run(eng, [events[i : i + 50] for i in range(0, len(events), 50)])
    ids, vecs = catalog()
    row_of = {i: r for r, i in enumerate(ids)}
    cfg = eng.config
    assert (cfg.cooc_pair_decay, cfg.cooc_recency) != (1.0, 1.0)  # the sequence-aware weights are exercised
    cooc = CooccurrenceModel(100, None, 20, 4.0, pair_decay=cfg.cooc_pair_decay, recency=cfg.cooc_recency)
    scorer = CooccurrenceScorer(cooc, row_of.get, len(ids))
    pop = DecayedPopularity(eng.config.popularity_half_life_ms)
    profiles: dict[str, UserProfile] = {}
    model = DecayedProfileModel(dim=DIM)
    checked = 0
    for inc, rec in zip(events, recs):
        ev = inc.event
        p = profiles.setdefault(ev.user_id, model.new_profile(ev.user_id))
        r = row_of.get(ev.item_id)
        text = StubTexts().encode_numpy([ev.text])[0] if isinstance(ev, Review) and ev.text else None
        model.apply(
            p,
            kind=ev.kind,
            item_id=ev.item_id,
            ts=ev.ts,
            item_vec=None if r is None else vecs[r],
            text_vec=text,
            rating=ev.rating if isinstance(ev, Review) else None,
        )
        pop.add(ev.item_id, ev.ts)
        positives = cooc.histories.get(ev.user_id)
        if is_positive(ev.kind, ev.rating if isinstance(ev, Review) else None, 4.0):
            if not positives or positives[-1] != ev.item_id:  # the latest positive again adds nothing
                cooc.observe(positives, ev.item_id, ev.ts)
            cooc.histories.push(ev.user_id, ev.item_id)
            positives = cooc.histories.get(ev.user_id)
        q = model.query(p)
        co = scorer.dense(positives)
        if q is None and not co.any():
            assert rec.model == POPULARITY_MODEL
            continue
        excluded = {h.item_id for h in p.history} | set(p.purchased)
        cand = candidate_mask(torch.ones(len(ids), dtype=torch.bool), [[row_of[i] for i in excluded if i in row_of]])
        text_s = torch.zeros((1, len(ids))) if q is None else torch.from_numpy(vecs @ np.asarray(q, dtype=np.float32))[None]
        pop_s = np.array([math.log1p(pop.score(i, ev.ts)) for i in ids], dtype=np.float32)
        vals, top = blend_topk(cand, WEIGHTS, 6, text_s, co[None], pop_s)
        expected = [ids[t] for v, t in zip(vals[0].tolist(), top[0].tolist()) if v != -math.inf]
        got = [i.item_id for i in rec.items]
        assert rec.model.startswith(BLEND_MODEL_PREFIX)
        np.testing.assert_allclose([i.score for i in rec.items], vals[0, : len(got)].numpy(), rtol=1e-4, atol=1e-4)
        assert got == expected
        checked += 1
    assert checked > 100


def test_a_user_without_text_profile_but_with_cooccurrence_gets_the_blend() -> None:
    eng = make_engine()
    ts = T0
    events = []
    for n, item in enumerate(["ext-1", "i5", "i9"]):  # u1: an item outside the catalog, then two in it
        events.append(Incoming(Purchase("u1", item, ts + n, f"a{n}"), "purchases", 0, n))
    events.append(Incoming(Purchase("u2", "ext-1", ts + 10, "b0"), "purchases", 0, 3))  # u2: only ext-1
    events.append(Incoming(Click("u3", "ext-2", ts + 11, "c0"), "clicks", 0, 0))  # u3: no evidence at all
    recs, profiles, _ = run(eng, [events])
    by_user = {r.user_id: r for r in recs[-2:]}
    assert eng.model.query(profiles["u2"]) is None
    assert by_user["u2"].model.startswith(BLEND_MODEL_PREFIX)
    assert {i.item_id for i in by_user["u2"].items[:2]} == {"i5", "i9"}  # the neighbours of ext-1
    assert by_user["u3"].model == POPULARITY_MODEL


def test_a_failed_batch_rolls_co_occurrence_back(monkeypatch: pytest.MonkeyPatch) -> None:
    events = stream(200, seed=5)
    eng = make_engine()
    warm, batch = events[:100], events[100:160]
    profiles: dict[str, UserProfile] = {}
    profiles.update(eng.process(warm, profiles, now_ms=T0).profiles)
    before = (rows(eng.cooccurrence), eng.cooccurrence.last_ts, {p: rows(m) for p, m in eng.partition_cooccurrence.items()})
    import recstream.scoring.rankers as rankers_module

    def broken(*args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(rankers_module, "blend_score_topk", broken)  # the dense ranking
    monkeypatch.setattr(rankers_module, "candidate_blend_topk", broken)  # the two-stage one (the default)
    with pytest.raises(RuntimeError, match="scoring failed"):
        eng.process(batch, {u: UserProfile.from_bytes(p.to_bytes()) for u, p in profiles.items()}, now_ms=T0)
    after = (rows(eng.cooccurrence), eng.cooccurrence.last_ts, {p: rows(m) for p, m in eng.partition_cooccurrence.items() if len(m)})
    assert after == before
    monkeypatch.undo()
    res = eng.process(batch, profiles, now_ms=T0)
    ref = make_engine()
    ref_profiles: dict[str, UserProfile] = {}
    ref_profiles.update(ref.process(warm, ref_profiles, now_ms=T0).profiles)
    ref_res = ref.process(batch, ref_profiles, now_ms=T0)
    assert rows(eng.cooccurrence) == rows(ref.cooccurrence)
    assert lists(res.recommendations) == lists(ref_res.recommendations)


def test_without_weights_nothing_is_counted_and_lists_are_text_only() -> None:
    events = stream(120)
    eng = make_engine(blend=None)
    recs, _, touched = run(eng, [events])
    assert eng.cooccurrence is None and touched == {}
    assert {r.model for r in recs} <= {POPULARITY_MODEL, eng.model_name}


def test_the_blend_survives_a_catalog_change() -> None:
    """Items removed and added between batches: the co-occurrence scores follow the rows."""
    events = stream(200, seed=9)
    eng = make_engine()
    profiles: dict[str, UserProfile] = {}
    profiles.update(eng.process(events[:100], profiles, now_ms=T0).profiles)
    eng.matrix.remove(["i1", "i2", "i3"])
    eng.matrix.upsert(["new-a", "new-b"], np.eye(DIM, dtype=np.float32)[:2])  # reuse freed rows
    res = eng.process(events[100:], profiles, now_ms=T0)
    for rec in res.recommendations:
        assert not {"i1", "i2", "i3"} & {i.item_id for i in rec.items}
