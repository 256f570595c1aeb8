"""The learned user encoder (encoders/sasrec.py) and its training (encoders/train.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recstream.encoders.sasrec import (
    CheckpointError,
    SASRec,
    SASRecConfig,
    batch_inputs,
    load_checkpoint,
    save_checkpoint,
    sequence_from_history,
)
from recstream.encoders.train import CatalogScorer, TrainConfig, cases, evaluate, train

TEXT_DIM = 12


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def catalog(n: int = 30, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, TEXT_DIM)).astype(np.float32)
    return [f"m{j}" for j in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def model(vocab: tuple[str, ...] = ("m0", "m1", "m2", "m3"), seed: int = 0, **kw) -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(vocab=vocab, text_dim=TEXT_DIM, dim=16, heads=2, layers=2, max_len=kw.pop("max_len", 8), dropout=0.0, **kw)
    return SASRec(cfg).eval()


def inputs(m: SASRec, seqs, emb: np.ndarray, ids: list[str]):
    return batch_inputs(m, seqs, torch.from_numpy(emb), {i: r for r, i in enumerate(ids)}.get)


def test_sequence_from_history_merges_repeats_and_keeps_the_latest():
    hist = [("a", False), ("a", True), ("b", False), ("a", False), ("c", True), ("c", False)]
    assert sequence_from_history(hist, 10) == [("a", True), ("b", False), ("a", False), ("c", True)]
    assert sequence_from_history(hist, 2) == [("a", False), ("c", True)]
    assert sequence_from_history(hist, 0) == []


def test_output_at_t_ignores_later_items_and_equals_the_cut_history():
    ids, emb = catalog()
    m = model()
    seq = [(ids[j], j % 2 == 0) for j in (3, 1, 4, 1, 5, 9, 2)]
    other = seq[:4] + [(ids[j], True) for j in (7, 8, 6)]
    with torch.inference_mode():
        h = m.encode(*inputs(m, [seq, other], emb, ids))
        # positions 0..3 hold the same items in both rows: same outputs, later items differ
        assert torch.allclose(h[0, :4], h[1, :4], atol=1e-6)
        assert not torch.allclose(h[0, 4:], h[1, 4:], atol=1e-4)
        # the output at position 3 is the user vector of the history cut after it
        cut = m.user_vectors(*inputs(m, [seq[:4]], emb, ids))
        assert torch.allclose(h[0, 3], cut[0], atol=1e-5)
        # and padding on the left changes nothing
        padded = m.user_vectors(*inputs(m, [seq[:4], seq], emb, ids))
        assert torch.allclose(padded[0], cut[0], atol=1e-5)


def test_items_outside_the_vocabulary_use_their_text_only():
    ids, emb = catalog()
    m = model(vocab=("m0", "m1"))
    idx = m.indices(["m0", "m5", "never-seen"])
    assert idx.tolist() == [1, 0, 0]
    text = torch.from_numpy(emb[[0, 5, 6]])
    with torch.inference_mode():
        vecs = m.item_vectors(text, idx)
        proj = m.text_proj(text)
    assert torch.equal(vecs[1], proj[1]) and torch.equal(vecs[2], proj[2])
    assert not torch.allclose(vecs[0], proj[0])  # a vocabulary item adds its ID embedding
    assert float(vecs[1].norm()) > 0  # a new item still has a usable vector


def test_checkpoint_round_trip(tmp_path):
    ids, emb = catalog()
    m = model(training={"interactions": [0, 100]}, metric={"ndcg@10": 0.5}, version="2026-11-28")
    path = save_checkpoint(m, tmp_path / "m.ckpt")
    back = load_checkpoint(path)
    assert back.config == m.config
    for (name, a), (name_b, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert name == name_b and torch.equal(a, b)
    seqs = [[(ids[1], True), (ids[2], False)], [(ids[0], True)]]
    with torch.inference_mode():
        assert torch.equal(m.user_vectors(*inputs(m, seqs, emb, ids)), back.user_vectors(*inputs(back, seqs, emb, ids)))
    raw = torch.load(path, weights_only=True)  # plain tensors and strings only
    assert raw["format"] == "recstream-sasrec" and isinstance(raw["config"], str)


def test_a_broken_checkpoint_gives_a_clear_error(tmp_path):
    m = model()
    good = save_checkpoint(m, tmp_path / "good.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: not a readable checkpoint"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a recstream SASRec checkpoint"):
        load_checkpoint(foreign)
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "recstream-sasrec", "payload": It(0, "u", "i", True)}, evil)  # an arbitrary object
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    doc = torch.load(good, weights_only=True)
    doc["state_dict"]["pos_emb.weight"] = torch.zeros(3, 3)
    torch.save(doc, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="inconsistent checkpoint"):
        load_checkpoint(tmp_path / "shape.ckpt")
    doc = torch.load(good, weights_only=True)
    doc["format_version"] = 99
    torch.save(doc, tmp_path / "v99.ckpt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.ckpt")


@dataclasses.dataclass(frozen=True)
class It:
    ts: int
    user_id: str
    item_id: str
    positive: bool


def cyclic_log(ids: list[str], users: int = 24, length: int = 16, seed: int = 0) -> list[It]:
    """Each user walks the catalog in a fixed cycle (item j -> item j+1) from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids), users)
    out = []
    for step in range(length):
        for u in range(users):
            out.append(It(step * 1000 + u, f"u{u}", ids[(starts[u] + step) % len(ids)], True))
    return out


def test_training_learns_a_sequential_pattern_that_an_untrained_model_does_not_know():
    ids, emb = catalog()
    log = cyclic_log(ids, users=16, length=12)
    split = len(log) * 3 // 4
    res = train(
        log,
        ids,
        emb,
        train_end=split,
        valid_end=len(log),
        model_config=SASRecConfig(vocab=(), dim=16, heads=2, layers=1, max_len=6, dropout=0.0),
        config=TrainConfig(epochs=25, batch_size=8, lr=1e-2, patience=25, seed=1),
        progress=False,
        log=lambda _: None,
    )
    assert res.untrained["cases"] == len(log) - split
    assert res.untrained["ndcg@10"] < 0.5
    best = res.history[res.best_epoch - 1]["ndcg@10"]
    assert best > 0.9 > res.untrained["ndcg@10"] + 0.3
    # the kept model is the best epoch's, and its config says how it was trained
    scorer = CatalogScorer(res.model, ids, emb)
    again = evaluate(scorer, cases(log, split, len(log), scorer.row_of, 6))
    assert again["ndcg@10"] == pytest.approx(best)
    assert res.model.config.metric["epoch"] == res.best_epoch
    assert res.model.config.training["interactions"] == [0, split]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_learns_and_its_checkpoint_serves_on_the_cpu(tmp_path):
    ids, emb = catalog()
    log = cyclic_log(ids, users=16, length=12)
    split = len(log) * 3 // 4
    res = train(
        log,
        ids,
        emb,
        train_end=split,
        valid_end=len(log),
        model_config=SASRecConfig(vocab=(), dim=16, heads=2, layers=1, max_len=6, dropout=0.0),
        config=TrainConfig(epochs=25, batch_size=8, lr=1e-2, patience=25, seed=1, device="cuda"),
        progress=False,
        log=lambda _: None,
    )
    assert next(res.model.parameters()).device.type == "cuda"
    best = res.history[res.best_epoch - 1]["ndcg@10"]
    assert best > 0.9 > res.untrained["ndcg@10"] + 0.3
    on_cpu = load_checkpoint(save_checkpoint(res.model, tmp_path / "gpu.ckpt"), "cpu")
    scorer = CatalogScorer(on_cpu, ids, emb)
    assert evaluate(scorer, cases(log, split, len(log), scorer.row_of, 6))["ndcg@10"] == pytest.approx(best, abs=1e-3)


def test_training_is_deterministic_with_a_seed():
    ids, emb = catalog()
    log = cyclic_log(ids, users=8, length=8)
    kw = dict(
        train_end=48,
        valid_end=64,
        model_config=SASRecConfig(vocab=(), dim=8, heads=1, layers=1, max_len=4),
        config=TrainConfig(epochs=2, batch_size=4, seed=3),
        progress=False,
        log=lambda _: None,
    )
    a, b = train(log, ids, emb, **kw), train(log, ids, emb, **kw)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of heads"):
        SASRecConfig(vocab=(), dim=10, heads=3)
    with pytest.raises(ValueError, match="unique"):
        SASRecConfig(vocab=("a", "a"))
    with pytest.raises(ValueError, match="targets"):
        TrainConfig(targets="some")
    m = model(max_len=4)
    ids, emb = catalog()
    with pytest.raises(ValueError, match="exceed max_len"):
        m.encode(torch.zeros(1, 5, TEXT_DIM), torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
