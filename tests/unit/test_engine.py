"""The batch step (:mod:`scoring.engine`) on a small real catalog embedded with the real encoder.

The catalog has five clearly distinct topics (sci-fi novels, Italian cooking, gardening,
jazz records, trail running), each item embedded from its title and categories with the
real all-MiniLM-L6-v2 model.  Every expected result is computed here independently
(brute-force cosines, brute-force decayed counts) or by replaying the same events
through a second engine; no result is hard-coded.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recstream.encoders.profile import DecayedProfileModel, ProfileConfig, UserProfile  # noqa: E402
from recstream.encoders.text import TextEncoder, item_text  # noqa: E402
from recstream.scoring.engine import POPULARITY_MODEL, Engine, EngineConfig, Incoming  # noqa: E402
from recstream.scoring.popularity import DecayedPopularity  # noqa: E402
from recstream.scoring.topk import ItemMatrix  # noqa: E402
from recstream.streams.records import (  # noqa: E402
    Click,
    Purchase,
    Recommendation,
    Review,
    Trigger,
    decode_recommendation,
    encode,
)

T0 = 1_700_000_000_000
MINUTE = 60_000
NOW = T0 + 10**9  # the emitted_ts passed to process()

CLICKS, PURCHASES, REVIEWS = "rs.clicks", "rs.purchases", "rs.reviews"
TOPIC_OF_KIND = {"click": CLICKS, "purchase": PURCHASES, "review": REVIEWS}

# topic -> (noun used in review texts, [(title, categories)])
CATALOG_SPEC: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "scifi": (
        "science fiction novel",
        [
            ("Foundation: The Galactic Empire Falls", ["Books", "Science Fiction", "Space Opera"]),
            ("Dune: Spice Wars on a Desert Planet", ["Books", "Science Fiction", "Space Opera"]),
            ("Neuromancer: Cyberpunk Hackers in Cyberspace", ["Books", "Science Fiction", "Cyberpunk"]),
            ("The Left Hand of Darkness: Alien World Diplomacy", ["Books", "Science Fiction"]),
            ("Hyperion: Pilgrims Across Distant Star Systems", ["Books", "Science Fiction", "Space Opera"]),
            ("The Martian: Stranded Astronaut on Mars", ["Books", "Science Fiction", "Hard SF"]),
            ("Snow Crash: Virtual Reality Metaverse Thriller", ["Books", "Science Fiction", "Cyberpunk"]),
            ("Rendezvous with Rama: Alien Starship Mystery", ["Books", "Science Fiction", "Hard SF"]),
        ],
    ),
    "cook": (
        "Italian cookbook",
        [
            ("Fresh Handmade Pasta from Bologna", ["Cookbooks", "Italian Cooking", "Pasta"]),
            ("Risotto alla Milanese: Classic Rice Dishes", ["Cookbooks", "Italian Cooking"]),
            ("Neapolitan Pizza Dough and Wood-Fired Ovens", ["Cookbooks", "Italian Cooking", "Pizza"]),
            ("Tuscan Home Kitchen: Olive Oil, Beans and Bread", ["Cookbooks", "Italian Cooking"]),
            ("Sicilian Desserts: Cannoli and Cassata", ["Cookbooks", "Italian Cooking", "Baking"]),
            ("Slow-Cooked Ragu and Italian Sauces", ["Cookbooks", "Italian Cooking", "Sauces"]),
            ("Gnocchi, Ravioli and Tortellini Step by Step", ["Cookbooks", "Italian Cooking", "Pasta"]),
            ("Roman Trattoria Recipes: Carbonara and Cacio e Pepe", ["Cookbooks", "Italian Cooking", "Pasta"]),
        ],
    ),
    "garden": (
        "gardening guide",
        [
            ("Organic Vegetable Garden Planner", ["Gardening", "Vegetables", "Organic"]),
            ("Pruning Roses and Flowering Shrubs", ["Gardening", "Flowers", "Pruning"]),
            ("Composting and Healthy Garden Soil", ["Gardening", "Soil", "Compost"]),
            ("Raised Bed Gardening for Beginners", ["Gardening", "Vegetables"]),
            ("Growing Tomatoes, Peppers and Herbs in Pots", ["Gardening", "Container Gardening"]),
            ("Perennial Flower Borders Through the Seasons", ["Gardening", "Flowers"]),
            ("Lawn Care, Weeding and Garden Pest Control", ["Gardening", "Lawn"]),
            ("Planting Fruit Trees and Berry Bushes", ["Gardening", "Fruit Trees", "Orchard"]),
        ],
    ),
    "jazz": (
        "jazz record",
        [
            ("Kind of Blue - Miles Davis (Vinyl LP)", ["Music", "Jazz", "Vinyl Records"]),
            ("A Love Supreme - John Coltrane (Vinyl LP)", ["Music", "Jazz", "Vinyl Records"]),
            ("Time Out - Dave Brubeck Quartet (Vinyl LP)", ["Music", "Jazz", "Vinyl Records"]),
            ("Mingus Ah Um - Charles Mingus (Vinyl LP)", ["Music", "Jazz", "Vinyl Records"]),
            ("Blue Train - John Coltrane Jazz Album", ["Music", "Jazz", "Hard Bop"]),
            ("Ella and Louis - Jazz Vocal Duets Record", ["Music", "Jazz", "Vocal Jazz"]),
            ("Moanin' - Art Blakey and the Jazz Messengers", ["Music", "Jazz", "Hard Bop"]),
            ("Waltz for Debby - Bill Evans Trio Live Jazz", ["Music", "Jazz", "Piano Jazz"]),
        ],
    ),
    "run": (
        "trail running gear",
        [
            ("Trail Running Shoes with Rock Plate", ["Sports", "Trail Running", "Footwear"]),
            ("Hydration Vest for Ultramarathon Trail Runs", ["Sports", "Trail Running", "Hydration"]),
            ("Lightweight Waterproof Running Jacket", ["Sports", "Trail Running", "Apparel"]),
            ("Carbon Trekking Poles for Mountain Running", ["Sports", "Trail Running"]),
            ("GPS Running Watch with Trail Navigation", ["Sports", "Trail Running", "Electronics"]),
            ("Merino Wool Running Socks, Blister Free", ["Sports", "Trail Running", "Apparel"]),
            ("Headlamp for Night Trail Running", ["Sports", "Trail Running", "Lighting"]),
            ("Training Plan Book: Your First Mountain Ultramarathon", ["Sports", "Trail Running", "Training"]),
        ],
    ),
}
TOPICS = list(CATALOG_SPEC)


def topic_of(item_id: str) -> str:
    return item_id.split("-")[0]


@dataclass(frozen=True)
class Catalog:
    ids: list[str]
    vecs: np.ndarray  # (n, dim) unit rows, as the engine will see them

    def by_topic(self, topic: str) -> list[str]:
        return [i for i in self.ids if topic_of(i) == topic]

    def vec(self, item_id: str) -> np.ndarray:
        return self.vecs[self.ids.index(item_id)]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def catalog(encoder: TextEncoder) -> Catalog:
    ids: list[str] = []
    texts: list[str] = []
    for topic, (_, items) in CATALOG_SPEC.items():
        for j, (title, cats) in enumerate(items):
            ids.append(f"{topic}-{j}")
            texts.append(item_text(title, cats, ""))
    vecs = encoder.encode_numpy(texts).astype(np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return Catalog(ids, vecs)


def make_matrix(catalog: Catalog, dim: int) -> ItemMatrix:
    m = ItemMatrix(dim, "cpu")
    m.upsert(catalog.ids, catalog.vecs.astype(np.float32))
    return m


def make_engine(
    encoder: TextEncoder,
    catalog: Catalog,
    *,
    profile_config: ProfileConfig | None = None,
    matrix: ItemMatrix | None = None,
    **config: object,
) -> Engine:
    cfg = EngineConfig(**config)  # type: ignore[arg-type]
    return Engine(
        model=DecayedProfileModel(profile_config, dim=encoder.dim),
        matrix=matrix if matrix is not None else make_matrix(catalog, encoder.dim),
        popularity=DecayedPopularity(cfg.popularity_half_life_ms),
        texts=encoder,
        config=cfg,
    )


class Feed:
    """Builds Incoming records with per-(topic, partition) increasing offsets."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.ts = T0
        self.n = 0

    def _next(self, topic: str, partition: int) -> int:
        off = self.offsets.get((topic, partition), -1) + 1
        self.offsets[(topic, partition)] = off
        return off

    def tick(self, ms: int = MINUTE) -> int:
        self.ts += ms
        return self.ts

    def click(self, user: str, item: str, *, ts: int | None = None, partition: int = 0) -> Incoming:
        return self._wrap(Click(user, item, self.tick() if ts is None else ts, self._eid()), partition)

    def purchase(self, user: str, item: str, *, ts: int | None = None, partition: int = 0) -> Incoming:
        return self._wrap(Purchase(user, item, self.tick() if ts is None else ts, self._eid()), partition)

    def review(self, user: str, item: str, rating: float, text: str = "", *, ts: int | None = None, partition: int = 0) -> Incoming:
        return self._wrap(Review(user, item, rating, text, self.tick() if ts is None else ts, self._eid()), partition)

    def _eid(self) -> str:
        self.n += 1
        return f"ev-{self.n}"

    def _wrap(self, ev: Click | Purchase | Review, partition: int) -> Incoming:
        topic = TOPIC_OF_KIND[ev.kind]
        return Incoming(ev, topic, partition, self._next(topic, partition))


def run_batches(
    engine: Engine, batches: list[list[Incoming]], profiles: dict[str, UserProfile] | None = None
) -> tuple[list[Recommendation], dict[str, UserProfile], list]:
    """Process batches in order, carrying profiles forward from ``BatchResult.profiles``."""
    profiles = {} if profiles is None else profiles
    recs: list[Recommendation] = []
    stats = []
    for batch in batches:
        res = engine.process(batch, profiles, now_ms=NOW)
        profiles.update(res.profiles)
        recs.extend(res.recommendations)
        stats.append(res.stats)
    return recs, profiles, stats


def split(events: list[Incoming], sizes: list[int]) -> list[list[Incoming]]:
    out, i = [], 0
    for s in sizes:
        if i >= len(events):
            break
        out.append(events[i : i + s])
        i += s
    if i < len(events):
        out.append(events[i:])
    return out


def assert_same_recs(a: list[Recommendation], b: list[Recommendation], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for n, (x, y) in enumerate(zip(a, b)):
        where = f"record {n} (user {x.user_id}, trigger {x.trigger})"
        assert (x.user_id, x.trigger, x.event_ts, x.emitted_ts, x.model) == (
            y.user_id,
            y.trigger,
            y.event_ts,
            y.emitted_ts,
            y.model,
        ), where
        assert [i.item_id for i in x.items] == [i.item_id for i in y.items], where
        assert [i.because for i in x.items] == [i.because for i in y.items], where
        np.testing.assert_allclose([i.score for i in x.items], [i.score for i in y.items], atol=atol, rtol=1e-9, err_msg=where)


def cosine_scores(profile: UserProfile, catalog: Catalog) -> dict[str, float]:
    """Brute-force cosine of every catalog item with the user's profile vector."""
    v = profile.vector.astype(np.float64)
    q = v / np.linalg.norm(v)
    return dict(zip(catalog.ids, (catalog.vecs @ q).tolist()))


# --------------------------------------------------------------------------- a random stream

POSITIVE = ["Wonderful {n}, I loved every part of it.", "Excellent {n}, highly recommended!", "Great {n}."]
NEGATIVE = ["Terrible {n}, a complete waste of money.", "Boring and disappointing {n}.", "Awful {n}, avoid."]


def random_stream(catalog: Catalog, n: int = 240, seed: int = 20240611) -> list[Incoming]:
    """Several users, all three kinds, texts, unknown items, late events and redeliveries."""
    rng = random.Random(seed)
    feed = Feed()
    favourite = {f"u{i}": TOPICS[i % len(TOPICS)] for i in range(6)}
    users = [*favourite, "ghost", "neutral"]
    out: list[Incoming] = []
    while len(out) < n:
        if out and rng.random() < 0.04:  # redelivery of an earlier record
            out.append(rng.choice(out))
            continue
        user = rng.choice(users)
        partition = users.index(user) % 2
        ts = feed.tick(rng.randint(1, 180) * 1000)
        if rng.random() < 0.06:  # a late event
            ts -= rng.randint(1, 60) * MINUTE
        if user == "ghost":  # only items that are not in the catalog
            out.append(feed.click(user, f"ext-{rng.randint(0, 4)}", ts=ts, partition=partition))
            continue
        if user == "neutral":  # only neutral reviews without text
            out.append(feed.review(user, rng.choice(catalog.ids), 3, "", ts=ts, partition=partition))
            continue
        if rng.random() < 0.1:
            item = f"ext-{rng.randint(0, 4)}"
        elif rng.random() < 0.75:
            item = rng.choice(catalog.by_topic(favourite[user]))
        else:
            item = rng.choice(catalog.ids)
        r = rng.random()
        if r < 0.55:
            out.append(feed.click(user, item, ts=ts, partition=partition))
        elif r < 0.7:
            out.append(feed.purchase(user, item, ts=ts, partition=partition))
        else:
            rating = rng.choice([1, 2, 3, 4, 5])
            noun = CATALOG_SPEC[topic_of(item)][0] if topic_of(item) in CATALOG_SPEC else "product"
            if rng.random() < 0.6:
                text = rng.choice(POSITIVE if rating >= 3 else NEGATIVE).format(n=noun)
            else:
                text = ""
            out.append(feed.review(user, item, rating, text, ts=ts, partition=partition))
    return out


@pytest.fixture(scope="module")
def stream(catalog: Catalog) -> list[Incoming]:
    return random_stream(catalog)


@pytest.fixture(scope="module")
def single_event_run(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming]):
    """The reference: strictly one event per batch (per-event emission)."""
    engine = make_engine(encoder, catalog, emit="per-event", k=8)
    recs, profiles, stats = run_batches(engine, [[inc] for inc in stream])
    return engine, recs, profiles, stats


def test_stream_covers_the_interesting_cases(stream: list[Incoming], catalog: Catalog) -> None:
    kinds = {inc.event.kind for inc in stream}
    assert kinds == {"click", "purchase", "review"}
    reviews = [inc.event for inc in stream if isinstance(inc.event, Review)]
    assert any(r.text and r.rating <= 2 for r in reviews) and any(r.text and r.rating >= 4 for r in reviews)
    assert any(not r.text for r in reviews)
    assert any(inc.event.item_id not in catalog.ids for inc in stream)
    keys = [(inc.source, inc.offset) for inc in stream]
    assert len(set(keys)) < len(keys), "the stream should contain redeliveries"


# --------------------------------------------------------------------------- 1. micro-batching


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([10**6], id="one-batch"),
        pytest.param([120, 120], id="halves"),
        pytest.param([1, 17, 64, 3, 40, 2, 90], id="ragged"),
        pytest.param([25] * 10, id="twenty-fives"),
    ],
)
def test_micro_batching_changes_nothing(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming], single_event_run, sizes: list[int]) -> None:
    ref_engine, ref_recs, ref_profiles, ref_stats = single_event_run
    engine = make_engine(encoder, catalog, emit="per-event", k=8)
    recs, profiles, stats = run_batches(engine, split(stream, sizes))

    # one record per event, in event order, with the same content
    assert len(recs) == len(stream)
    assert [r.trigger.offset for r in recs] == [inc.offset for inc in stream]
    assert_same_recs(recs, ref_recs)
    # both fallback and scored records are present, so both paths were compared
    assert {r.model for r in recs} == {POPULARITY_MODEL, engine.model_name}

    # the state evolved the same way
    assert profiles.keys() == ref_profiles.keys()
    for user, p in profiles.items():
        q = ref_profiles[user]
        assert (p.history, p.purchased, p.applied, p.offsets, p.ref_ts, p.updated_ts) == (
            q.history,
            q.purchased,
            q.applied,
            q.offsets,
            q.ref_ts,
            q.updated_ts,
        ), user
        np.testing.assert_allclose(p.vector, q.vector, atol=1e-5, rtol=0)
    pop, ref_pop = list(engine.popularity.items()), list(ref_engine.popularity.items())
    assert [i for i, _ in pop] == [i for i, _ in ref_pop]
    np.testing.assert_allclose([s for _, s in pop], [s for _, s in ref_pop], rtol=1e-12)

    def total(ss, name: str) -> int:
        return sum(getattr(s, name) for s in ss)

    for name in ("events", "applied", "duplicates", "unknown_items", "texts_encoded", "fallbacks"):
        assert total(stats, name) == total(ref_stats, name), name
    assert total(stats, "duplicates") > 0 and total(stats, "unknown_items") > 0
    assert total(stats, "applied") + total(stats, "duplicates") == len(stream)


# --------------------------------------------------------------------------- 2. topic + exclusions


def test_recommends_from_the_users_topic_and_never_purchased(encoder: TextEncoder, catalog: Catalog) -> None:
    garden = catalog.by_topic("garden")
    clicked, bought = garden[:2], garden[2:4]
    feed = Feed()
    events = [feed.click("alice", i) for i in clicked] + [feed.purchase("alice", i) for i in bought]
    rest = [i for i in garden if i not in clicked + bought]

    engine = make_engine(encoder, catalog, k=len(rest))
    res = engine.process(events, {}, now_ms=NOW)
    (rec,) = res.recommendations
    assert rec.model == engine.model_name
    got = [i.item_id for i in rec.items]
    assert sorted(got) == sorted(rest), "the remaining gardening items should fill the top"

    # scores are the cosine of the profile with each item, best first, over everything allowed
    ref = cosine_scores(res.profiles["alice"], catalog)
    allowed = sorted((i for i in catalog.ids if i not in clicked + bought), key=lambda i: -ref[i])
    assert got == allowed[: len(rest)]
    np.testing.assert_allclose([i.score for i in rec.items], [ref[i] for i in got], atol=1e-5)

    # full list with exclude_seen (default): nothing from the history, nothing bought
    full = make_engine(encoder, catalog, k=len(catalog.ids)).process(events, {}, now_ms=NOW).recommendations[0]
    assert sorted(i.item_id for i in full.items) == sorted(allowed)

    # exclude_seen=False: clicked items may come back (they are the closest), purchased never
    open_engine = make_engine(encoder, catalog, k=len(catalog.ids), exclude_seen=False)
    rec2 = open_engine.process(events, {}, now_ms=NOW).recommendations[0]
    ids2 = [i.item_id for i in rec2.items]
    assert sorted(ids2) == sorted(i for i in catalog.ids if i not in bought)
    assert set(clicked) <= set(ids2[: len(garden)])
    assert not set(bought) & set(ids2)


def test_purchased_stays_excluded_after_it_leaves_the_history(encoder: TextEncoder, catalog: Catalog) -> None:
    cook = catalog.by_topic("cook")
    feed = Feed()
    events = [feed.purchase("bob", cook[0])] + [feed.click("bob", i) for i in cook[1:4]]
    engine = make_engine(encoder, catalog, k=len(catalog.ids), profile_config=ProfileConfig(history_len=2))
    res = engine.process(events, {}, now_ms=NOW)
    profile = res.profiles["bob"]
    assert [h.item_id for h in profile.history] == cook[2:4]
    got = {i.item_id for i in res.recommendations[0].items}
    assert got == set(catalog.ids) - {cook[0]} - set(cook[2:4])
    assert cook[1] in got, "an item that left the recent history may come back"


# --------------------------------------------------------------------------- 3. review polarity


def _neighbour_view(encoder: TextEncoder, catalog: Catalog, base: list[Incoming], extra: list[Incoming], neighbours: list[str]) -> tuple[float, float]:
    engine = make_engine(encoder, catalog, k=len(catalog.ids), exclude_seen=False)
    rec = engine.process(base + extra, {}, now_ms=NOW).recommendations[-1]
    ids = [i.item_id for i in rec.items]
    scores = {i.item_id: i.score for i in rec.items}
    return (
        float(np.mean([scores[n] for n in neighbours])),
        float(np.mean([ids.index(n) for n in neighbours])),
    )


def test_review_rating_moves_recommendations_away_or_toward(encoder: TextEncoder, catalog: Catalog) -> None:
    jazz, run = catalog.by_topic("jazz"), catalog.by_topic("run")
    feed = Feed()
    base = [feed.click("carol", i) for i in (jazz[0], jazz[1], run[0], run[1], run[2])]
    target = jazz[4]
    history = {jazz[0], jazz[1], run[0], run[1], run[2], target}
    sims = catalog.vecs @ catalog.vec(target)
    neighbours = [i for i in np.array(catalog.ids)[np.argsort(-sims)].tolist() if i not in history][:4]
    assert all(topic_of(n) == "jazz" for n in neighbours)

    bad = [feed.review("carol", target, 1, "Terrible jazz record, a complete waste of money.")]
    good = [feed.review("carol", target, 5, "Wonderful jazz record, I loved every part of it.")]

    score0, rank0 = _neighbour_view(encoder, catalog, base, [], neighbours)
    score_bad, rank_bad = _neighbour_view(encoder, catalog, base, bad, neighbours)
    score_good, rank_good = _neighbour_view(encoder, catalog, base, good, neighbours)
    assert score_bad < score0 < score_good
    assert rank_good < rank0 < rank_bad  # lower index = recommended earlier


# --------------------------------------------------------------------------- 4. popularity fallback


class PopularityRef:
    """Brute-force decayed counts over the applied events."""

    def __init__(self, half_life_ms: int) -> None:
        self.h = half_life_ms
        self.events: list[tuple[str, int]] = []

    def add(self, inc: Incoming) -> None:
        self.events.append((inc.event.item_id, inc.event.ts))

    def scores(self, now: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for item, ts in self.events:
            out[item] = out.get(item, 0.0) + 0.5 ** ((now - ts) / self.h)
        return out


def assert_popularity_fallback(rec: Recommendation, ref: PopularityRef, catalog_ids: set[str], exclude: set[str], k: int) -> None:
    assert rec.model == POPULARITY_MODEL
    scores = ref.scores(rec.event_ts)
    candidates = {i: s for i, s in scores.items() if i in catalog_ids and i not in exclude}
    ids = [i.item_id for i in rec.items]
    assert len(ids) == len(set(ids)) == min(k, len(candidates))
    assert all(i in candidates for i in ids), (ids, exclude)
    assert all(i.because is None for i in rec.items)
    got = [i.score for i in rec.items]
    np.testing.assert_allclose(got, [candidates[i] for i in ids], rtol=1e-9)
    assert got == sorted(got, reverse=True)
    if ids:
        worst = got[-1]
        assert all(s <= worst * (1 + 1e-9) for i, s in candidates.items() if i not in ids)


def test_users_without_a_profile_get_popular_catalog_items(encoder: TextEncoder, catalog: Catalog) -> None:
    k = 3
    engine = make_engine(encoder, catalog, k=k, emit="per-event")
    ref = PopularityRef(engine.config.popularity_half_life_ms)
    catalog_ids = set(catalog.ids)
    feed = Feed()
    warmup: list[Incoming] = []
    # "ext-hot" (not in the catalog) is the most popular item of all
    for item, n in [("ext-hot", 9), ("garden-2", 5), ("jazz-1", 4), ("cook-3", 3), ("run-0", 2), ("scifi-5", 1)]:
        warmup += [feed.click(f"p{j}", item) for j in range(n)]
    warmup += [feed.purchase(f"p{j}", "ext-new") for j in range(7)]  # not in the catalog (yet)
    res = engine.process(warmup, {}, now_ms=NOW)
    for inc in warmup:
        ref.add(inc)
    profiles = dict(res.profiles)
    assert res.stats.unknown_items == 9 + 7
    # unknown items still count in popularity
    ref_scores = ref.scores(feed.ts)
    top2 = [i for i, _ in engine.popularity.top(2)]
    assert top2 == sorted(ref_scores, key=lambda i: -ref_scores[i])[:2] == ["ext-hot", "ext-new"]
    np.testing.assert_allclose(engine.popularity.score("ext-hot", feed.ts), ref_scores["ext-hot"], rtol=1e-9)

    batch = [
        feed.click("newbie", "ext-hot"),  # only an unknown item
        feed.review("meh", "garden-2", 3, ""),  # only a neutral review without text
        feed.purchase("early", "ext-new"),  # bought before it is in the catalog
        feed.click("newbie", "ext-other"),
    ]
    res = engine.process(batch, profiles, now_ms=NOW)
    profiles.update(res.profiles)
    assert res.stats.unknown_items == 3
    assert res.stats.fallbacks == len(batch) == len(res.recommendations)
    for inc, rec in zip(batch, res.recommendations):
        ref.add(inc)
        p = profiles[rec.user_id]
        exclude = set(p.purchased) | {h.item_id for h in p.history}
        assert_popularity_fallback(rec, ref, catalog_ids, exclude, k)
        assert "ext-hot" not in {i.item_id for i in rec.items}
    assert "garden-2" not in {i.item_id for i in res.recommendations[1].items}  # seen by "meh"

    # the catalog learns "ext-new": it becomes the most popular catalog item, but "early" bought it
    new_vec = encoder.encode_numpy([item_text("Vintage Jazz Turntable", ["Music", "Vinyl Records"], "")])
    engine.matrix.upsert(["ext-new"], new_vec)
    catalog_ids.add("ext-new")
    batch = [feed.review("early", "cook-3", 3, ""), feed.click("fresh", "ext-hot")]
    res = engine.process(batch, profiles, now_ms=NOW)
    profiles.update(res.profiles)
    early, fresh = res.recommendations
    for inc, rec in zip(batch, res.recommendations):
        ref.add(inc)
        p = profiles[rec.user_id]
        assert_popularity_fallback(rec, ref, catalog_ids, set(p.purchased) | {h.item_id for h in p.history}, k)
    assert fresh.items[0].item_id == "ext-new"
    assert "ext-new" not in {i.item_id for i in early.items}


def test_fallback_without_exclude_seen_only_drops_purchased(encoder: TextEncoder, catalog: Catalog) -> None:
    k = 4
    engine = make_engine(encoder, catalog, k=k, emit="per-event", exclude_seen=False)
    ref = PopularityRef(engine.config.popularity_half_life_ms)
    feed = Feed()
    events = []
    for item, n in [("run-3", 5), ("cook-1", 4), ("scifi-2", 3), ("garden-6", 2), ("jazz-7", 1)]:
        events += [feed.click(f"p{j}", item) for j in range(n)]
    # "dave" reviews the most popular item neutrally, and has bought an item not in the catalog
    events += [feed.purchase("dave", "ext-1"), feed.review("dave", "run-3", 3, "")]
    res = engine.process(events, {}, now_ms=NOW)
    for inc in events:
        ref.add(inc)
    rec = res.recommendations[-1]
    assert rec.user_id == "dave"
    assert_popularity_fallback(rec, ref, set(catalog.ids), {"ext-1"}, k)
    assert rec.items[0].item_id == "run-3", "a seen item may come back when exclude_seen=False"


def test_fallback_in_the_random_stream_is_popularity_as_of_each_event(catalog: Catalog, stream: list[Incoming], single_event_run) -> None:
    engine, recs, _, _ = single_event_run
    ref = PopularityRef(engine.config.popularity_half_life_ms)
    seen_keys: dict[str, dict[str, int]] = {}
    history: dict[str, list] = {}
    purchased: dict[str, set[str]] = {}
    fallbacks = 0
    for inc, rec in zip(stream, recs):
        ev = inc.event
        offs = seen_keys.setdefault(ev.user_id, {})
        if not (inc.source in offs and inc.offset <= offs[inc.source]):
            offs[inc.source] = inc.offset
            ref.add(inc)
            history.setdefault(ev.user_id, []).append(ev.item_id)
            if ev.kind == "purchase":
                purchased.setdefault(ev.user_id, set()).add(ev.item_id)
        if rec.model == POPULARITY_MODEL:
            fallbacks += 1
            assert len(history[ev.user_id]) <= ProfileConfig().history_len  # so the history is all of it
            exclude = purchased.get(ev.user_id, set()) | set(history.get(ev.user_id, []))
            assert_popularity_fallback(rec, ref, set(catalog.ids), exclude, engine.config.k)
    assert fallbacks >= sum(1 for inc in stream if inc.event.user_id in ("ghost", "neutral"))


def test_partition_popularity_follows_the_applied_events(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming]) -> None:
    engine = make_engine(encoder, catalog, k=8)
    engine.partition_popularity = {}
    profiles: dict[str, UserProfile] = {}
    refs: dict[int, PopularityRef] = {}
    seen: dict[str, dict[str, int]] = {}
    for batch in split(stream, [60] * 4):
        res = engine.process(batch, profiles, now_ms=NOW)
        profiles.update(res.profiles)
        touched: dict[tuple[int, str], int] = {}  # -> the latest event time counted
        for inc in batch:
            offs = seen.setdefault(inc.event.user_id, {})
            if inc.source in offs and inc.offset <= offs[inc.source]:
                continue  # a redelivery counts nowhere
            offs[inc.source] = inc.offset
            refs.setdefault(inc.partition, PopularityRef(engine.config.popularity_half_life_ms)).add(inc)
            key = (inc.partition, inc.event.item_id)
            touched[key] = max(touched.get(key, inc.event.ts), inc.event.ts)
        assert res.popularity_touched == touched
    assert set(engine.partition_popularity) == set(refs)
    now = max(inc.event.ts for inc in stream)
    for part, pop in engine.partition_popularity.items():
        ref = refs[part].scores(now)
        assert set(ref) == {i for i, _ in pop.items()}
        np.testing.assert_allclose([pop.score(i, now) for i in ref], list(ref.values()), rtol=1e-9)
    total = PopularityRef(engine.config.popularity_half_life_ms)
    total.events = [e for r in refs.values() for e in r.events]
    ref = total.scores(now)
    np.testing.assert_allclose([engine.popularity.score(i, now) for i in ref], list(ref.values()), rtol=1e-9)


# --------------------------------------------------------------------------- 5. because


def liked_items(profile: UserProfile) -> list[str]:
    """History items that may explain a recommendation: every history item except those whose
    latest review (in history order) is neutral or negative (3 stars or fewer)."""
    latest: dict[str, float] = {}
    for h in profile.history:
        if h.rating is not None:
            latest[h.item_id] = h.rating
    return [h.item_id for h in profile.history if h.item_id not in latest or latest[h.item_id] > 3]


def assert_because(rec: Recommendation, profile: UserProfile, catalog: Catalog) -> None:
    liked = [i for i in dict.fromkeys(liked_items(profile)) if i in catalog.ids]
    for item in rec.items:
        candidates = [h for h in liked if h != item.item_id]
        if not candidates:
            assert item.because is None
            continue
        sims = {h: float(catalog.vec(h) @ catalog.vec(item.item_id)) for h in candidates}
        assert item.because in sims, (item, candidates)
        assert sims[item.because] >= max(sims.values()) - 1e-6, (item, sims)


def test_because_is_the_most_similar_liked_history_item(encoder: TextEncoder, catalog: Catalog) -> None:
    feed = Feed()
    scifi, cook, garden = catalog.by_topic("scifi"), catalog.by_topic("cook"), catalog.by_topic("garden")
    events = [
        feed.click("erin", scifi[0]),
        feed.purchase("erin", cook[1]),
        feed.review("erin", garden[2], 5, "Excellent gardening guide, highly recommended!"),
        feed.review("erin", scifi[5], 1, "Boring and disappointing science fiction novel."),
        feed.review("erin", cook[6], 2, ""),
        feed.click("erin", "ext-3"),
    ]
    engine = make_engine(encoder, catalog, k=len(catalog.ids), emit="per-event")
    res = engine.process(events, {}, now_ms=NOW)
    profile = res.profiles["erin"]
    disliked = {scifi[5], cook[6]}
    for rec in res.recommendations:
        assert rec.model == engine.model_name
        becauses = {i.because for i in rec.items}
        assert not becauses & disliked
    final = res.recommendations[-1]
    assert_because(final, profile, catalog)
    # every liked catalog item explains something (the catalog is full-length here)
    assert {i.because for i in final.items} == {scifi[0], cook[1], garden[2]}


def test_because_matches_bruteforce_in_the_random_stream(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming]) -> None:
    # per-user emission at the end of each batch, so the profile to check against is the final one
    engine = make_engine(encoder, catalog, k=8)
    profiles: dict[str, UserProfile] = {}
    checked = 0
    for batch in split(stream, [60] * 4):
        res = engine.process(batch, profiles, now_ms=NOW)
        profiles.update(res.profiles)
        for rec in res.recommendations:
            if rec.model == engine.model_name:
                assert_because(rec, profiles[rec.user_id], catalog)
                checked += 1
    assert checked > 0


def test_because_is_none_without_catalog_items_in_history(encoder: TextEncoder, catalog: Catalog) -> None:
    feed = Feed()
    # a usable profile from review text alone: the item is not in the catalog
    events = [feed.review("fay", "ext-9", 5, "Wonderful Italian cookbook, I loved every part of it.")]
    engine = make_engine(encoder, catalog, k=5)
    res = engine.process(events, {}, now_ms=NOW)
    (rec,) = res.recommendations
    assert rec.model == engine.model_name and len(rec.items) == 5
    assert all(i.because is None for i in rec.items)
    assert all(topic_of(i.item_id) == "cook" for i in rec.items[:3])
    assert res.stats.unknown_items == 1 and res.stats.texts_encoded == 1


# Regression test: failed on the committed engine (6c3cc80..afdcc25), whose _liked_history
# dropped only the negative review *entries*, so the earlier click still made the item a reason.
@pytest.mark.parametrize("first", ["click", "purchase"])
def test_because_never_names_an_item_the_user_reviewed_negatively(encoder: TextEncoder, catalog: Catalog, first: str) -> None:
    feed = Feed()
    scifi, jazz = catalog.by_topic("scifi"), catalog.by_topic("jazz")
    events = [
        getattr(feed, first)("gus", scifi[0]),
        feed.click("gus", jazz[0]),
        feed.click("gus", jazz[1]),
        feed.review("gus", scifi[0], 1, "Terrible science fiction novel, a complete waste of money."),
    ]
    engine = make_engine(encoder, catalog, k=len(catalog.ids), emit="per-event")
    recs = engine.process(events, {}, now_ms=NOW).recommendations
    # before the review, scifi[0] explains the sci-fi items (so the check below is not vacuous)
    assert scifi[0] in {i.because for i in recs[-2].items}
    assert scifi[0] not in {i.because for i in recs[-1].items}
    assert {i.because for i in recs[-1].items} == {jazz[0], jazz[1]}


# --------------------------------------------------------------------------- 6. redelivery


@pytest.mark.parametrize("emit", ["per-event", "per-user"])
def test_redelivery_is_applied_once_but_still_emits(encoder: TextEncoder, catalog: Catalog, emit: str) -> None:
    feed = Feed()
    jazz = catalog.by_topic("jazz")
    e1 = feed.click("hal", jazz[0])
    e2 = feed.review("hal", jazz[1], 5, "Great jazz record.")
    engine = make_engine(encoder, catalog, k=5, emit=emit)
    first = engine.process([e1, e2], {}, now_ms=NOW)
    profile = first.profiles["hal"]
    before = (profile.applied, profile.vector.copy(), list(profile.history), dict(profile.offsets))
    pop_before = list(engine.popularity.items())

    # the same records again (same topic:partition and offsets), and an older offset
    again = engine.process([e2, e1], {"hal": profile}, now_ms=NOW)
    assert again.stats.duplicates == 2 and again.stats.applied == 0 and again.stats.unknown_items == 0
    p = again.profiles["hal"]
    assert p is profile
    assert (p.applied, list(p.history), dict(p.offsets)) == (before[0], before[2], before[3])
    np.testing.assert_array_equal(p.vector, before[1])
    assert list(engine.popularity.items()) == pop_before
    assert len(again.recommendations) == (2 if emit == "per-event" else 1)
    # it still emits, from the unchanged state
    last_first, last_again = first.recommendations[-1], again.recommendations[-1]
    assert [i.item_id for i in last_again.items] == [i.item_id for i in last_first.items]
    assert last_again.trigger.offset == e1.offset

    # within one batch
    fresh = make_engine(encoder, catalog, k=5, emit=emit)
    res = fresh.process([e1, e1, e2, e2], {}, now_ms=NOW)
    assert (res.stats.applied, res.stats.duplicates) == (2, 2)
    assert res.profiles["hal"].applied == 2
    assert len(res.recommendations) == (4 if emit == "per-event" else 1)

    # the same offset in another partition is not a redelivery
    other = Incoming(e1.event, e1.topic, e1.partition + 1, e1.offset)
    res = engine.process([other], {"hal": profile}, now_ms=NOW)
    assert res.stats.applied == 1 and res.profiles["hal"].applied == before[0] + 1


def test_a_failed_batch_leaves_popularity_as_it_was(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming], monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails (here in scoring, after the events were counted) is retried by
    the worker: the engine must not have counted it already."""
    engine = make_engine(encoder, catalog, k=8)
    engine.partition_popularity = {}
    profiles: dict[str, UserProfile] = {}
    warm, batch = stream[:80], stream[80:140]
    profiles.update(engine.process(warm, profiles, now_ms=NOW).profiles)
    before = (list(engine.popularity.items()), engine.popularity.last_ts, {p: list(pop.items()) for p, pop in engine.partition_popularity.items()})

    def broken(*args, **kwargs):
        raise RuntimeError("scoring failed")

    import recstream.scoring.rankers as rankers_module

    monkeypatch.setattr(rankers_module, "score_topk", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        engine.process(batch, {u: UserProfile.from_bytes(p.to_bytes()) for u, p in profiles.items()}, now_ms=NOW)
    after = (list(engine.popularity.items()), engine.popularity.last_ts, {p: list(pop.items()) for p, pop in engine.partition_popularity.items() if len(pop)})
    assert after == before
    monkeypatch.undo()
    # and the retry counts each event once, as a batch that never failed would
    reference = make_engine(encoder, catalog, k=8)
    ref_profiles: dict[str, UserProfile] = {}
    ref_profiles.update(reference.process(warm, ref_profiles, now_ms=NOW).profiles)
    reference.process(batch, ref_profiles, now_ms=NOW)
    engine.process(batch, profiles, now_ms=NOW)
    assert list(engine.popularity.items()) == list(reference.popularity.items())


# --------------------------------------------------------------------------- 7. per-user emission


def test_per_user_emits_one_record_per_touched_user(encoder: TextEncoder, catalog: Catalog, stream: list[Incoming]) -> None:
    batches = split(stream, [37, 80, 5, 118])
    per_user = make_engine(encoder, catalog, k=8, emit="per-user")
    per_event = make_engine(encoder, catalog, k=8, emit="per-event")
    p_user: dict[str, UserProfile] = {}
    p_event: dict[str, UserProfile] = {}
    for batch in batches:
        res = per_user.process(batch, p_user, now_ms=NOW)
        p_user.update(res.profiles)
        ev_res = per_event.process(batch, p_event, now_ms=NOW)
        p_event.update(ev_res.profiles)

        last: dict[str, int] = {}
        for idx, inc in enumerate(batch):
            last[inc.event.user_id] = idx
        recs = res.recommendations
        assert len(recs) == len(last)
        assert sorted(r.user_id for r in recs) == sorted(last)
        assert set(res.profiles) == set(last)
        for rec in recs:
            idx = last[rec.user_id]
            inc = batch[idx]
            assert rec.trigger == Trigger(inc.topic, inc.partition, inc.offset, inc.event.event_id)
            assert rec.event_ts == inc.event.ts
            # a scored user's list is what per-event emission gives at that same event
            twin = ev_res.recommendations[idx]
            assert twin.user_id == rec.user_id
            if rec.model == per_user.model_name:
                assert_same_recs([rec], [twin])
            else:
                assert twin.model == POPULARITY_MODEL
                ref_top = per_user.popularity.top(
                    per_user.config.k,
                    exclude=set(p_user[rec.user_id].purchased) | {h.item_id for h in p_user[rec.user_id].history},
                    allowed=per_user.matrix,
                    now_ms=inc.event.ts,
                )
                assert [(i.item_id, i.score) for i in rec.items] == ref_top  # popularity after the batch
        assert res.stats.fallbacks == sum(1 for r in recs if r.model == POPULARITY_MODEL)


# --------------------------------------------------------------------------- 8. record fields


def test_recommendation_records_carry_their_trigger(encoder: TextEncoder, catalog: Catalog) -> None:
    run = catalog.by_topic("run")
    events = [
        Incoming(Click("ida", run[0], T0 + 5, "click-77"), "prod.clicks", 3, 41),
        Incoming(Purchase("ida", run[1], T0 + 9, None, quantity=2, price=9.5), "prod.purchases", 1, 7),
        Incoming(Review("ida", run[2], 4.5, "Great trail running gear.", T0 + 2, "rv-1"), "prod.reviews", 0, 0),
        Incoming(Click("jo", "ext-0", T0 + 11, "click-78"), "prod.clicks", 0, 12),
    ]
    engine = make_engine(encoder, catalog, k=4, emit="per-event")
    now = T0 + 123_456
    res = engine.process(events, {}, now_ms=now)
    assert engine.model_name == f"{encoder.name}/{DecayedProfileModel.name}"
    assert len(res.recommendations) == len(events)
    for inc, rec in zip(events, res.recommendations):
        assert rec.user_id == inc.event.user_id
        assert rec.trigger == Trigger(inc.topic, inc.partition, inc.offset, inc.event.event_id)
        assert rec.event_ts == inc.event.ts
        assert rec.emitted_ts == now
        # the record is a valid "recommendations" value
        assert decode_recommendation(encode(rec)) == rec
    assert [r.model for r in res.recommendations] == [engine.model_name] * 3 + [POPULARITY_MODEL]
    assert [len(r.items) for r in res.recommendations[:3]] == [4] * 3
    # jo's fallback: the catalog items with any popularity so far (the three of ida)
    assert sorted(i.item_id for i in res.recommendations[3].items) == sorted(run[:3])

    # without now_ms, emitted_ts is the wall clock at emission
    before = int(time.time() * 1000)
    rec = engine.process(events[:1], res.profiles).recommendations[0]
    after = int(time.time() * 1000)
    assert before <= rec.emitted_ts <= after


# --------------------------------------------------------------------------- 9. config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"k": 0}, "k"),
        ({"k": -3}, "k"),
        ({"emit": "per-batch"}, "emit"),
        ({"emit": "PER-USER"}, "emit"),
        ({"popularity_half_life_ms": 0}, "half-life"),
        ({"score_threads": 0}, "score threads"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kwargs)


@pytest.mark.parametrize("threads", [None, 2])
def test_scoring_threads_change_nothing_and_are_restored(
    encoder: TextEncoder, catalog: Catalog, stream: list[Incoming], single_event_run, threads: int | None
) -> None:
    import torch

    _, ref_recs, _, _ = single_event_run  # scored with the default, one thread
    before = torch.get_num_threads()
    engine = make_engine(encoder, catalog, emit="per-event", k=8, score_threads=threads)
    recs, _, _ = run_batches(engine, split(stream, [40] * 10))
    assert torch.get_num_threads() == before
    assert_same_recs(recs, ref_recs)


def test_config_defaults_and_accepted_values() -> None:
    cfg = EngineConfig()
    assert (cfg.k, cfg.emit, cfg.exclude_seen) == (10, "per-user", True)
    assert replace(cfg, k=1, emit="per-event").k == 1
    with pytest.raises(ValueError, match="k"):
        replace(cfg, k=0)
