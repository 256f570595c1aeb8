"""The decayed user profile model."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from recstream.encoders.profile import (
    DecayedProfileModel,
    HistoryEntry,
    ProfileConfig,
    ProfileFormatError,
    ProfileModel,
    UserProfile,
    new_profile,
)

DIM = 16
DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def model() -> DecayedProfileModel:
    return DecayedProfileModel(ProfileConfig(), dim=DIM)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_config_defaults() -> None:
    cfg = ProfileConfig()
    assert cfg.half_life_ms == 30 * DAY
    assert (cfg.click_weight, cfg.purchase_weight) == (1.0, 2.0)
    assert (cfg.review_item_weight, cfg.review_text_weight) == (1.5, 1.0)
    assert cfg.history_len == 50 and cfg.min_norm == 1e-6
    with pytest.raises(ValueError):
        ProfileConfig(half_life_ms=0)


def test_protocol(model: DecayedProfileModel) -> None:
    assert isinstance(model, ProfileModel)
    assert isinstance(model.name, str) and model.name
    p = model.new_profile("u1")
    assert p.user_id == "u1" and p.vector.dtype == np.float32 and p.vector.shape == (DIM,)
    assert not p.vector.any() and p.applied == 0 and p.history == [] and p.purchased == set()


def test_decay_math_by_hand(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    e1, e2, e3, x3 = (unit(rng) for _ in range(4))
    h = model.config.half_life_ms
    p = model.new_profile("u")
    model.apply(p, kind="click", item_id="a", ts=T0, item_vec=e1, text_vec=None, rating=None)
    np.testing.assert_allclose(p.vector, e1, rtol=1e-6)
    assert p.ref_ts == T0
    # one half-life later: a purchase, the click counts half
    model.apply(p, kind="purchase", item_id="b", ts=T0 + h, item_vec=e2, text_vec=None, rating=None)
    np.testing.assert_allclose(p.vector, 0.5 * e1 + 2.0 * e2, rtol=1e-5, atol=1e-6)
    assert p.ref_ts == T0 + h
    # a late review (5 stars) at T0 + h/2: decayed by 0.5**0.5 to ref_ts, ref_ts unchanged
    model.apply(p, kind="review", item_id="c", ts=T0 + h // 2, item_vec=e3, text_vec=x3, rating=5)
    late = 0.5**0.5
    expected = 0.5 * e1 + 2.0 * e2 + late * (1.0 * 1.5 * e3 + 1.0 * 1.0 * x3)
    np.testing.assert_allclose(p.vector, expected, rtol=1e-5, atol=1e-6)
    assert p.ref_ts == T0 + h
    # two half-lives later, a 2-star review: polarity -0.5
    model.apply(p, kind="review", item_id="d", ts=T0 + 3 * h, item_vec=e1, text_vec=x3, rating=2)
    expected = 0.25 * expected + (-0.5) * (1.5 * e1 + 1.0 * x3)
    np.testing.assert_allclose(p.vector, expected, rtol=1e-5, atol=1e-6)
    q = model.query(p)
    assert q is not None and q.dtype == np.float32
    np.testing.assert_allclose(q, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def offline_sum(model: DecayedProfileModel, events: list[dict], ref: int) -> np.ndarray:
    """Reference: the closed-form decayed sum at time ``ref`` (float64)."""
    cfg = model.config
    total = np.zeros(DIM, dtype=np.float64)
    for ev in events:
        d = 0.5 ** ((ref - ev["ts"]) / cfg.half_life_ms)
        if ev["kind"] == "click" and ev["item_vec"] is not None:
            total += d * cfg.click_weight * ev["item_vec"]
        elif ev["kind"] == "purchase" and ev["item_vec"] is not None:
            total += d * cfg.purchase_weight * ev["item_vec"]
        elif ev["kind"] == "review":
            s = (ev["rating"] - 3) / 2
            if ev["item_vec"] is not None:
                total += d * s * cfg.review_item_weight * ev["item_vec"]
            if ev["text_vec"] is not None:
                total += d * s * cfg.review_text_weight * ev["text_vec"]
    return total


def random_events(rng: np.random.Generator, n: int) -> list[dict]:
    events = []
    for i in range(n):
        kind = ["click", "purchase", "review"][int(rng.integers(3))]
        events.append(
            {
                "kind": kind,
                "item_id": f"i{i}",
                "ts": T0 + int(rng.integers(0, 120 * DAY)),
                "item_vec": None if rng.random() < 0.15 else unit(rng),
                "text_vec": unit(rng) if kind == "review" and rng.random() < 0.8 else None,
                "rating": float(rng.integers(1, 6)) if kind == "review" else None,
            }
        )
    return events


def test_order_independence(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    events = random_events(rng, 60)
    ref = max(ev["ts"] for ev in events)
    expected = offline_sum(model, events, ref)
    results = []
    for seed in range(4):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        p = model.new_profile("u")
        for ev in shuffled:
            model.apply(p, **ev)
        assert p.ref_ts == ref
        assert p.applied == len(events)
        np.testing.assert_allclose(p.vector, expected, rtol=1e-4, atol=1e-5)
        results.append(p)
    for p in results[1:]:
        assert p.purchased == results[0].purchased
        assert [h.ts for h in p.history] == [h.ts for h in results[0].history]


def test_rating_direction(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    base, item, text = unit(rng), unit(rng), unit(rng)

    def after(rating: float) -> np.ndarray:
        p = model.new_profile("u")
        model.apply(p, kind="click", item_id="x", ts=T0, item_vec=base, text_vec=None, rating=None)
        model.apply(p, kind="review", item_id="r", ts=T0, item_vec=item, text_vec=text, rating=rating)
        q = model.query(p)
        assert q is not None
        return q

    start = cos(base, item)
    assert cos(after(1), item) < start
    assert cos(after(1), text) < cos(base, text)
    assert cos(after(5), item) > start
    assert cos(after(5), text) > cos(base, text)
    np.testing.assert_allclose(after(3), base, rtol=1e-5, atol=1e-6)


def test_missing_item_embedding_still_recorded(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    p = model.new_profile("u")
    model.apply(
        p,
        kind="purchase",
        item_id="gone",
        ts=T0,
        item_vec=None,
        text_vec=None,
        rating=None,
        source="purchases:3",
        offset=41,
    )
    assert not p.vector.any()
    assert p.applied == 1 and p.purchased == {"gone"}
    assert p.history == [HistoryEntry("gone", T0, "purchase", None)]
    assert p.offsets == {"purchases:3": 41}
    assert p.is_duplicate("purchases:3", 41) and not p.is_duplicate("purchases:3", 42)
    assert model.query(p) is None
    # the text half of a review still counts
    text = unit(rng)
    model.apply(p, kind="review", item_id="gone", ts=T0, item_vec=None, text_vec=text, rating=5)
    np.testing.assert_allclose(p.vector, model.config.review_text_weight * text, rtol=1e-6)
    assert p.history[-1] == HistoryEntry("gone", T0, "review", 5.0)


def test_history_bounded_most_recent_last(rng: np.random.Generator) -> None:
    model = DecayedProfileModel(ProfileConfig(history_len=5), dim=DIM)
    p = model.new_profile("u")
    order = list(range(12))
    random.Random(1).shuffle(order)
    for i in order:
        model.apply(p, kind="click", item_id=f"i{i}", ts=T0 + i, item_vec=unit(rng), text_vec=None, rating=None)
    assert [h.item_id for h in p.history] == [f"i{i}" for i in range(7, 12)]
    model.apply(p, kind="click", item_id="new", ts=T0 + 100, item_vec=None, text_vec=None, rating=None)
    assert len(p.history) == 5 and p.history[-1].item_id == "new"
    assert p.updated_ts == T0 + 100 and p.applied == 13


def test_purchased_set(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    p = model.new_profile("u")
    for kind, item in [("purchase", "a"), ("click", "b"), ("purchase", "c"), ("purchase", "a")]:
        model.apply(p, kind=kind, item_id=item, ts=T0, item_vec=unit(rng), text_vec=None, rating=None)
    assert p.purchased == {"a", "c"}


def test_unusable_profile(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    p = model.new_profile("u")
    assert model.query(p) is None
    e = unit(rng)
    model.apply(p, kind="review", item_id="a", ts=T0, item_vec=e, text_vec=e, rating=3)
    assert model.query(p) is None  # neutral review: nothing to go on
    tiny = DecayedProfileModel(ProfileConfig(min_norm=10.0), dim=DIM)
    q = tiny.new_profile("u")
    tiny.apply(q, kind="click", item_id="a", ts=T0, item_vec=e, text_vec=None, rating=None)
    assert tiny.query(q) is None


def test_bad_inputs(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    p = model.new_profile("u")
    with pytest.raises(ValueError, match="kind"):
        model.apply(p, kind="like", item_id="a", ts=T0, item_vec=unit(rng), text_vec=None, rating=None)
    with pytest.raises(ValueError, match="shape"):
        model.apply(p, kind="click", item_id="a", ts=T0, item_vec=np.ones(3), text_vec=None, rating=None)
    assert p.applied == 0


def test_serialization_round_trip(model: DecayedProfileModel, rng: np.random.Generator) -> None:
    p = model.new_profile("user-ü")
    for ev in random_events(rng, 20):
        model.apply(p, **ev, source=f"events:{ev['ts'] % 3}", offset=int(ev["ts"] % 1000))
    data = p.to_bytes()
    assert isinstance(data, bytes)
    q = UserProfile.from_bytes(data)
    assert q == p
    assert q.vector.dtype == np.float32 and q.vector.flags.writeable
    assert q.vector.tobytes() == p.vector.tobytes()
    assert q.history == p.history and q.offsets == p.offsets and q.purchased == p.purchased
    assert UserProfile.from_bytes(new_profile("e", DIM).to_bytes()) == new_profile("e", DIM)
    # the restored profile keeps working
    model.apply(q, kind="click", item_id="z", ts=p.ref_ts + 1, item_vec=unit(rng), text_vec=None, rating=None)


def test_serialization_errors() -> None:
    data = bytearray(new_profile("u", DIM).to_bytes())
    data[2] = 99  # version byte
    with pytest.raises(ProfileFormatError, match="version 99"):
        UserProfile.from_bytes(bytes(data))
    with pytest.raises(ProfileFormatError):
        UserProfile.from_bytes(b"xx")
    with pytest.raises(ProfileFormatError):
        UserProfile.from_bytes(b"NO\x01\x00\x00\x00\x00")
    good = new_profile("u", DIM).to_bytes()
    with pytest.raises(ProfileFormatError):
        UserProfile.from_bytes(good[:-4])


def test_history_entries_from_bytes_checked() -> None:
    """The history's [item_id, ts, kind, rating] lists become HistoryEntry tuples; a ts
    written as a float or numeric text is read as an int, a malformed entry is a format error."""
    import orjson

    def with_history(history: object) -> bytes:
        data = new_profile("u", DIM).to_bytes()
        _, _, meta_len = struct.unpack_from("<2sBI", data)
        meta = orjson.loads(data[7 : 7 + meta_len])
        meta["history"] = history
        raw = orjson.dumps(meta)
        return data[:3] + struct.pack("<I", len(raw)) + raw + data[7 + meta_len :]

    p = UserProfile.from_bytes(with_history([["a", 5, "click", None], ["b", 7.0, "review", 4.0], ["c", "9", "click", None]]))
    assert p.history == [HistoryEntry("a", 5, "click"), HistoryEntry("b", 7, "review", 4.0), HistoryEntry("c", 9, "click")]
    assert all(type(h) is HistoryEntry and type(h.ts) is int for h in p.history)
    for bad in ([["a", 5, "click"]], [["a", "five", "click", None]], ["abcd"], [5]):
        with pytest.raises(ProfileFormatError):
            UserProfile.from_bytes(with_history(bad))
