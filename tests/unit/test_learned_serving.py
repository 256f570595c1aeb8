"""Serving the learned user encoder in the engine (scoring/learned.py, Engine(user_encoder=...)).

The engine's rankings on a replayed stream must equal the offline evaluation of the same
checkpoint (encoders.train.CatalogScorer over the catalog, the same exclusions), and a
changed checkpoint file is picked up without a restart (a broken one is refused and the old
model kept).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time

import numpy as np
import pytest
import torch

from recstream.encoders.profile import DecayedProfileModel, ProfileConfig
from recstream.encoders.sasrec import SASRec, SASRecConfig, batch_inputs, checkpoint_hash, load_checkpoint, save_checkpoint
from recstream.encoders.train import CatalogScorer
from recstream.scoring.engine import POPULARITY_MODEL, Engine, EngineConfig, Incoming
from recstream.scoring.learned import LearnedUserEncoder
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix
from recstream.streams.records import Click, Purchase

DIM = 16
T0 = 1_700_000_000_000


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def catalog(n: int = 40, seed: int = 5) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"i{j}" for j in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def checkpoint(path, seed: int = 0, max_len: int = 6):
    ids, _ = catalog()
    torch.manual_seed(seed)
    # the vocabulary leaves out the last 10 items: they are served from their text only
    model = SASRec(SASRecConfig(vocab=tuple(ids[:30]), text_dim=DIM, dim=16, heads=2, layers=2, max_len=max_len, dropout=0.0))
    return save_checkpoint(model, path)


class NoTexts:
    name = "none"

    def encode_numpy(self, texts):
        raise AssertionError("no review text in these streams")


def make_engine(encoder: LearnedUserEncoder | None, device: str = "cpu") -> Engine:
    ids, vecs = catalog()
    m = ItemMatrix(DIM, device, torch.float32)
    m.upsert(ids, vecs)
    config = EngineConfig(k=5, emit="per-event")
    return Engine(
        model=DecayedProfileModel(ProfileConfig(history_len=1000), dim=DIM),
        matrix=m,
        popularity=DecayedPopularity(config.popularity_half_life_ms),
        texts=NoTexts(),
        config=config,
        user_encoder=encoder,
    )


def stream(n: int = 160, seed: int = 2) -> list[Incoming]:
    """Clicks, each positive one followed by a purchase of the same item (a rating >= 4)."""
    rng = random.Random(seed)
    ids, _ = catalog()
    out: list[Incoming] = []
    ts = T0
    offsets = {"clicks": 0, "purchases": 0}
    while len(out) < n:
        user = f"u{rng.randint(0, 5)}"
        item = rng.choice(ids)
        ts += rng.randint(1, 100) * 1000
        out.append(Incoming(Click(user_id=user, item_id=item, ts=ts, event_id=f"e{len(out)}"), "clicks", 0, offsets["clicks"]))
        offsets["clicks"] += 1
        if rng.random() < 0.5:
            out.append(Incoming(Purchase(user_id=user, item_id=item, ts=ts, event_id=f"e{len(out)}"), "purchases", 0, offsets["purchases"]))
            offsets["purchases"] += 1
    return out


def offline(path, events: list[Incoming], k: int = 5) -> list[list[str]]:
    """Per event: the checkpoint's top k, computed from the interactions seen so far."""
    ids, vecs = catalog()
    model = load_checkpoint(path)
    scorer = CatalogScorer(model, ids, vecs)
    seqs: dict[str, list[tuple[str, bool]]] = {}
    out = []
    for inc in events:
        ev = inc.event
        seq = seqs.setdefault(ev.user_id, [])
        if seq and seq[-1][0] == ev.item_id:
            seq[-1] = (ev.item_id, seq[-1][1] or ev.kind == "purchase")
        else:
            seq.append((ev.item_id, ev.kind == "purchase"))
        scores = scorer.scores([seq])[0].clone()
        for item_id, _ in seq:  # every item the user interacted with is excluded
            scores[scorer.row_of[item_id]] = -math.inf
        out.append([ids[r] for r in torch.topk(scores, k).indices.tolist()])
    return out


def run(engine: Engine, events: list[Incoming], sizes=(1, 7, 32, 3, 64)):
    profiles: dict = {}
    recs = []
    i = j = 0
    while i < len(events):
        chunk = events[i : i + sizes[j % len(sizes)]]
        res = engine.process(chunk, profiles)
        profiles.update(res.profiles)
        recs.extend(res.recommendations)
        i += len(chunk)
        j += 1
    return recs


def test_serving_gives_the_offline_rankings(tmp_path):
    path = checkpoint(tmp_path / "seq.ckpt")
    events = stream()
    encoder = LearnedUserEncoder(path)
    recs = run(make_engine(encoder), events)
    assert len(recs) == len(events)
    want = offline(path, events)
    assert [[r.item_id for r in rec.items] for rec in recs] == want
    # the histories were longer than max_len, items outside the vocabulary were recommended
    assert any(r.item_id in {f"i{j}" for j in range(30, 40)} for rec in recs for r in rec.items)
    assert {rec.model for rec in recs} == {f"sasrec/seq@{checkpoint_hash(path)}"}
    # the recommendations do not depend on how the stream was cut into micro-batches
    again = run(make_engine(LearnedUserEncoder(path)), events, sizes=(len(events),))
    assert [[r.item_id for r in rec.items] for rec in again] == want


def test_served_user_vectors_equal_the_models_own_forward_pass(tmp_path):
    """The worker feeds the model each history item's row of its item-vector matrix; that
    must be what the model computes from the item's text and ID (the training path), also
    for an item the model knows by ID but the catalog no longer holds (ID only, no text)."""
    path = checkpoint(tmp_path / "m.ckpt")
    ids, vecs = catalog()
    gone = "i3"  # in the model's vocabulary, deleted from the catalog
    m = ItemMatrix(DIM, "cpu", torch.float32)
    m.upsert([i for i in ids if i != gone], np.stack([v for i, v in zip(ids, vecs) if i != gone]))
    served = LearnedUserEncoder(path).current()
    seqs = [[("i1", False), (gone, True), ("i35", False)], [("i7", True)], [("i2", False)] * 3 + [("i8", True)] * 4]
    got = served.user_vectors(m, seqs)
    model = load_checkpoint(path)
    row_of = {i: r for r, i in enumerate(ids) if i != gone}.get  # the text of every item but the deleted one
    with torch.inference_mode():
        want = model.user_vectors(*batch_inputs(model, seqs, torch.from_numpy(vecs), row_of))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], served.user_vectors(m, [[("i1", False), ("i35", False)]])[0])  # the ID-only item counts
    # before the catalog arrives, the items the model knows by ID are all it reads
    empty = ItemMatrix(DIM, "cpu", torch.float32)
    with torch.inference_mode():
        want = model.user_vectors(*batch_inputs(model, [[("i1", False), ("i2", True)]], torch.from_numpy(vecs), {}.get))
    torch.testing.assert_close(served.user_vectors(empty, [[("i1", False), ("i2", True)]]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_serving_on_cuda_gives_the_offline_rankings(tmp_path):
    """The worker's CUDA path: the model and the catalog on the GPU (fp32), the lists the
    CPU's offline evaluation gives, scores within float tolerance."""
    path = checkpoint(tmp_path / "gpu.ckpt")
    events = stream()
    encoder = LearnedUserEncoder(path, "cuda")
    assert next(encoder.current().model.parameters()).device.type == "cuda"
    recs = run(make_engine(encoder, "cuda"), events)
    assert [[r.item_id for r in rec.items] for rec in recs] == offline(path, events)
    on_cpu = run(make_engine(LearnedUserEncoder(path)), events)
    np.testing.assert_allclose([r.score for rec in recs for r in rec.items], [r.score for rec in on_cpu for r in rec.items], rtol=1e-4, atol=1e-4)


def test_a_user_without_usable_history_gets_popularity(tmp_path):
    engine = make_engine(LearnedUserEncoder(checkpoint(tmp_path / "m.ckpt")))
    engine.popularity.add("i3", T0)
    res = engine.process([Incoming(Click(user_id="u", item_id="not-in-catalog", ts=T0, event_id="x"), "clicks", 0, 0)], {})
    # the model knows nothing of that item (neither in the catalog nor in its vocabulary)
    rec = res.recommendations[0]
    assert rec.model == POPULARITY_MODEL and rec.items[0].item_id == "i3"
    res = engine.process([Incoming(Click(user_id="u", item_id="i1", ts=T0 + 1, event_id="y"), "clicks", 0, 1)], res.profiles)
    assert res.recommendations[0].model.startswith("sasrec/m@")


def test_a_new_checkpoint_is_picked_up_and_a_broken_one_refused(tmp_path, caplog):
    path = checkpoint(tmp_path / "live.ckpt", seed=0)
    encoder = LearnedUserEncoder(path, check_every_s=0.05)
    engine = make_engine(encoder)
    events = stream(40)
    first = run(engine, events[:20])
    old_name = first[0].model
    assert encoder.check() is False  # unchanged file

    checkpoint(tmp_path / "live.ckpt", seed=1)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert encoder.check() is True and encoder.reloads == 1
    second = run(engine, events[20:])
    assert {r.model for r in second} == {f"sasrec/live@{checkpoint_hash(path)}"} != {old_name}

    caplog.set_level(logging.ERROR, logger="recstream.learned")
    good_name = second[0].model
    path.write_bytes(b"not a checkpoint")
    assert encoder.check() is False
    assert encoder.reload_failures == 1 and encoder.current().name == good_name
    assert "cannot be loaded, keeping" in caplog.text
    assert encoder.check() is False and encoder.reload_failures == 1  # logged once per file version

    # the watcher thread does the same on its own
    encoder.start()
    try:
        checkpoint(tmp_path / "live.ckpt", seed=2)
        deadline = time.monotonic() + 10
        while encoder.reloads < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert encoder.reloads == 2
        assert encoder.current().name == f"sasrec/live@{checkpoint_hash(path)}"
    finally:
        encoder.close()
