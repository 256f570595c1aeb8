"""TextEncoder against the sentence-transformers reference, plus item_text."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recstream.encoders.text import (  # noqa: E402
    DeviceUnavailableError,
    ModelNotFoundError,
    TextEncoder,
    default_model_path,
    item_text,
    model_name,
    resolve_device,
)

TEXTS = [
    "Toy Story (1995). Adventure, Animation, Children. A cowboy doll feels threatened by a new spaceman toy.",
    "The movie was great, I loved every minute of it.",
    "",
    "Stainless steel kitchen knife set with wooden block",
    "A gripping thriller about a bank heist that goes wrong, with plenty of twists " * 8,
    "ok",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(default_model_path()), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True))


def test_properties(encoder: TextEncoder) -> None:
    assert encoder.dim == 384
    assert encoder.device == torch.device("cpu")
    assert encoder.name == "all-MiniLM-L6-v2"
    assert encoder.max_length == 256


def test_matches_sentence_transformers(encoder: TextEncoder, reference: np.ndarray) -> None:
    out = encoder.encode(TEXTS)
    assert out.dtype == torch.float32
    assert out.shape == (len(TEXTS), encoder.dim)
    assert out.device == encoder.device
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5, rtol=0)


def test_the_traced_model_gives_the_eager_models_embeddings(encoder: TextEncoder) -> None:
    # on the CPU the forward pass runs a TorchScript trace (made at the first call, outside
    # Python's interpreter lock): the same embeddings as the eager model, at other batch
    # sizes and lengths than the trace's example, truncated texts included
    eager = TextEncoder(device="cpu", trace=False)
    texts = TEXTS + ["x", "a card " * 300, "gift card for my mother"]
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(encoder.encode(texts, batch_size=batch_size).numpy(), eager.encode(texts, batch_size=batch_size).numpy(), atol=1e-5, rtol=0)
    assert encoder.traced and not eager.traced
    # ordinary tensors, whatever the batching (an inference-mode tensor cannot enter autograd)
    for batch_size in (1, 64):
        out = encoder.encode(texts, batch_size=batch_size)
        assert not out.is_inference() and not out.requires_grad
        out.mul_(1.0)  # in place, outside inference mode


def test_a_fork_shares_the_model_and_its_trace() -> None:
    # the API's query thread embeds with a fork: its own tokenizer, the worker's model and trace
    # (made once, by whichever of the two is called first)
    worker = TextEncoder(device="cpu")
    fork = worker.fork()
    assert fork._tokenizer is not worker._tokenizer
    assert not worker.traced and not fork.traced
    out = fork.encode(TEXTS)
    assert fork.traced and worker.traced
    np.testing.assert_array_equal(out.numpy(), worker.encode(TEXTS).numpy())


def test_a_trace_that_fails_or_differs_leaves_the_eager_model(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reference: np.ndarray) -> None:
    import recstream.encoders.text as text

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no tracing here")

    with monkeypatch.context() as m:
        m.setattr(torch.jit, "trace", refuse)
        broken = TextEncoder(device="cpu")
        with caplog.at_level(logging.WARNING, logger=text.__name__):
            out = broken.encode(TEXTS)
    assert not broken.traced
    assert "cannot trace the model (RuntimeError: no tracing here); using the eager model" in caplog.text
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5, rtol=0)

    caplog.clear()
    with monkeypatch.context() as m:
        m.setattr(text, "_TRACE_TOLERANCE", -1.0)  # no trace can pass: as if it gave other embeddings
        differs = TextEncoder(device="cpu")
        with caplog.at_level(logging.WARNING, logger=text.__name__):
            out = differs.encode(TEXTS)
    assert not differs.traced and "the traced model differs from the eager one" in caplog.text
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5, rtol=0)


def test_order_preserved_with_small_batches(encoder: TextEncoder) -> None:
    texts = TEXTS + ["short", "a somewhat longer text " * 3, "x"]
    batched = encoder.encode(texts, batch_size=2).numpy()
    one_by_one = np.stack([encoder.encode([t]).numpy()[0] for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_unit_norms(encoder: TextEncoder) -> None:
    norms = torch.linalg.vector_norm(encoder.encode(TEXTS), dim=1)
    torch.testing.assert_close(norms, torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_similar_texts_are_closer(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode(
        [
            "A funny animated movie about toys that come to life.",
            "An animated comedy film where children's toys are alive.",
            "Heavy duty cordless drill with two lithium batteries.",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2
    assert float(a @ b) > float(b @ c) + 0.2


def test_empty_inputs(encoder: TextEncoder) -> None:
    empty = encoder.encode([])
    assert empty.shape == (0, encoder.dim) and empty.dtype == torch.float32
    one = encoder.encode([""])
    assert one.shape == (1, encoder.dim)
    assert abs(float(one.norm()) - 1.0) < 1e-5
    assert encoder.encode_numpy(["a"]).dtype == np.float32
    with pytest.raises(ValueError):
        encoder.encode(["a"], batch_size=0)
    with pytest.raises(TypeError):
        encoder.encode("not a list")  # type: ignore[arg-type]


def test_truncation(encoder: TextEncoder) -> None:
    short = TextEncoder(device="cpu", max_length=8)
    long_text = "word " * 100
    prefix = " ".join(["word"] * 6)  # [CLS] + 6 tokens + [SEP] = 8 tokens
    np.testing.assert_allclose(short.encode([long_text]).numpy(), encoder.encode([prefix]).numpy(), atol=1e-5, rtol=0)


def test_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError, match="nope"):
        TextEncoder(missing, device="cpu")


def test_dir_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=str(tmp_path.name)):
        TextEncoder(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=str(tmp_path.name)):
        TextEncoder(tmp_path, device="cpu")
    assert issubclass(ModelNotFoundError, ValueError)


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError):
        resolve_device("not-a-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device(name)
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        TextEncoder(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_close_to_cpu(encoder: TextEncoder) -> None:
    gpu = TextEncoder(device="cuda")
    out = gpu.encode(TEXTS)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    cos = (out.cpu() * encoder.encode(TEXTS)).sum(dim=1)
    assert float(cos.min()) > 0.999


def test_item_text() -> None:
    text = item_text("Toy Story (1995)", ["Adventure", "Animation", "Children"], "A cowboy doll is jealous.")
    assert text == "Toy Story (1995). Adventure, Animation, Children. A cowboy doll is jealous."
    assert item_text("Title", [], "") == "Title"
    assert item_text("", ["", "Drama"], "Desc") == "Drama. Desc"
    assert item_text("Wow!", ["A"], "d") == "Wow! A. d"
    assert item_text("T", ["A", "B"], "D", fields=("description", "title")) == "D. T"
    assert item_text("T", ["A"], "D", fields=("categories",)) == "A"
    with pytest.raises(ValueError, match="unknown"):
        item_text("T", [], "D", fields=("title", "body"))
    with pytest.raises(ValueError):
        item_text("T", [], "D", fields=("title", "title"))
    with pytest.raises(ValueError):
        item_text("T", [], "D", fields=())


def test_cached_embeddings_report_the_model_as_fresh_ones_do(encoder: TextEncoder, tmp_path: Path) -> None:
    # recstream tune / backtest --dataset record the text model in their JSON: a second run,
    # which reads the embeddings from the cache, must name the same model as the first
    from recstream.scoring.protocol import embed_texts

    fresh, first = embed_texts(TEXTS[:3], cache_dir=tmp_path, progress=False)
    cached, second = embed_texts(TEXTS[:3], cache_dir=tmp_path, progress=False)
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["model"] == second["model"] == encoder.name == model_name(default_model_path())
    assert np.array_equal(fresh, cached)
