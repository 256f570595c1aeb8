"""A learned user encoder: a small causal transformer over a user's recent items (SASRec-style).

Pure torch, no Kafka.  Training (:mod:`encoders.train`), the offline protocol
(``bench/learned_protocol.py``) and the worker (:class:`scoring.engine.Engine` with a
``user_encoder``) all use this module's :class:`SASRec` and :func:`sequence_from_history`.

Model
=====

Every item has one representation ``r_i = P e_i + v_i``: ``e_i`` is the item's catalog
text embedding (the unit MiniLM vector the worker already keeps in its item matrix), ``P``
a learned projection to ``dim`` and ``v_i`` a learned ID embedding.  Items outside the
training vocabulary get ``v_i = 0``: text only, so an item published after training is
recommendable at once.  A user's history (oldest first, at most ``max_len`` items) is fed
as ``r_i + f_i + p_t`` (``f_i`` a learned embedding of the interaction's feedback:
positive or not, ``p_t`` a learned embedding of the item's position in the history read,
0 = the oldest: the output at position ``t`` is then exactly the user vector of the history
cut after ``t``, as long as it fits in ``max_len``) through ``layers`` pre-norm transformer blocks
with a causal mask.  The user vector is the output at the last position; an item's score
is ``u . r_i``.  Scoring the catalog is therefore one matrix product with the matrix of
every item's ``r_i`` (:meth:`SASRec.item_vectors`), which the worker keeps as an
:class:`scoring.topk.ItemMatrix` and scores with the unchanged top-k code.

Checkpoint
==========

One file written by :func:`save_checkpoint` with ``torch.save`` of a dict of plain values:
``{"format": "recstream-sasrec", "format_version": 1, "config": <JSON text>,
"state_dict": {name: tensor}}``, read back by :func:`load_checkpoint` with
``torch.load(weights_only=True)`` (no arbitrary object is ever unpickled).  The JSON config
holds the model version, the dimensions, ``max_len``, the item id vocabulary, the text
model name, the training range and the validation metric (:class:`SASRecConfig`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "SASRec",
    "SASRecConfig",
    "batch_inputs",
    "gather_rows",
    "load_checkpoint",
    "right_align",
    "save_checkpoint",
    "sequence_from_history",
    "sequence_inputs",
]

CHECKPOINT_FORMAT: Final = "recstream-sasrec"
CHECKPOINT_FORMAT_VERSION: Final = 1
MODEL_NAME: Final = "sasrec"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another format or inconsistent."""


@dataclass(frozen=True, slots=True)
class SASRecConfig:
    """Everything needed to rebuild a :class:`SASRec` (stored as JSON in the checkpoint).

    Attributes:
        vocab: the item ids with a learned ID embedding (row ``i + 1`` of the table).
        text_dim: dimension of the items' text embeddings.
        dim: model width.
        layers, heads: transformer blocks and attention heads.
        max_len: most recent items of a history that are read.
        dropout: dropout used in training.
        text_model: name of the text model the embeddings come from.
        use_ids: learn ID embeddings (``False``: text only).
        version: a free label of this model (e.g. the training date); the checkpoint's
            hash identifies it as well.
        training: what it was trained on (range, epochs, seconds...): informative.
        metric: the validation metric of the kept epoch: informative.
    """

    vocab: tuple[str, ...]
    text_dim: int = 384
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    text_model: str = "all-MiniLM-L6-v2"
    use_ids: bool = True
    version: str = "1"
    training: Mapping[str, Any] = field(default_factory=dict)
    metric: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.text_dim < 1 or self.dim < 1 or self.layers < 0 or self.heads < 1 or self.max_len < 1:
            problems.append(
                f"text_dim, dim, heads and max_len must be >= 1 and layers >= 0, got text_dim={self.text_dim} "
                f"dim={self.dim} heads={self.heads} max_len={self.max_len} layers={self.layers}"
            )
        elif self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if len(set(self.vocab)) != len(self.vocab):
            problems.append("vocab item ids must be unique")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        doc = asdict(self)
        doc["vocab"] = list(self.vocab)
        doc["training"] = dict(self.training)
        doc["metric"] = dict(self.metric)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SASRecConfig:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("config is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        doc["vocab"] = tuple(str(v) for v in doc.get("vocab", ()))
        return cls(**doc)


class _Block(nn.Module):
    """Pre-norm self-attention + feed-forward block."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, dim)
        self.ff2 = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(b, t, d)), p, self.training)
        h = self.norm2(x)
        return x + F.dropout(self.ff2(F.dropout(F.gelu(self.ff1(h)), p, self.training)), p, self.training)


class SASRec(nn.Module):
    """The model (see the module doc).  Inputs are *vocabulary indices* (0 = not in the
    vocabulary: text only) and the items' text embeddings."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.index_of: dict[str, int] = {item_id: i + 1 for i, item_id in enumerate(c.vocab)}
        self.text_proj = nn.Linear(c.text_dim, c.dim, bias=False)
        self.id_emb = nn.Embedding(len(c.vocab) + 1, c.dim, padding_idx=0)
        self.feedback_emb = nn.Embedding(2, c.dim)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.blocks = nn.ModuleList(_Block(c.dim, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        nn.init.normal_(self.feedback_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
            if not c.use_ids:
                self.id_emb.weight.zero_()
        self.id_emb.weight.requires_grad_(c.use_ids)

    # ---------------------------------------------------------------- items
    def indices(self, item_ids: Iterable[str]) -> torch.Tensor:
        """Vocabulary indices of ``item_ids`` (0 for ids outside the vocabulary)."""
        return torch.tensor([self.index_of.get(i, 0) for i in item_ids], dtype=torch.long)

    def item_vectors(self, text: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``r_i = P e_i + v_i`` for text embeddings ``(..., text_dim)`` and indices ``(...)``."""
        return self.text_proj(text) + self.id_emb(index)

    # ---------------------------------------------------------------- users
    def encode(self, text: torch.Tensor, index: torch.Tensor, feedback: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, T, dim)`` of right-aligned histories.

        ``text`` ``(B, T, text_dim)``, ``index``/``feedback`` ``(B, T)`` long, ``valid``
        ``(B, T)`` bool: the real items are the last ones of each row, padding first.  The
        output at position ``t`` only depends on positions ``<= t`` (causal mask; padding is
        never attended to, except by itself), and equals the last output of the same row
        cut after ``t``."""
        return self.encode_items(self.item_vectors(text, index), feedback, valid)

    def encode_items(self, items: torch.Tensor, feedback: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` from the history items' vectors ``r_i`` ``(B, T, dim)`` (what
        :meth:`item_vectors` gives; the worker takes them from its item-vector matrix)."""
        t = feedback.shape[1]
        if t > self.config.max_len:
            raise ValueError(f"sequences of length {t} exceed max_len {self.config.max_len}")
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # 0 = the oldest item read
        x = items + self.feedback_emb(feedback) + self.pos_emb(pos)
        x = x * valid.unsqueeze(-1)
        x = F.dropout(x, self.config.dropout, self.training)
        causal = torch.ones(t, t, dtype=torch.bool, device=feedback.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=feedback.device)
        mask = (causal & valid.unsqueeze(1)) | eye  # (B, T, T): key j visible from query i
        mask = mask.unsqueeze(1)  # heads
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def user_vectors(self, text: torch.Tensor, index: torch.Tensor, feedback: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The user vector of each right-aligned history: the output at the last position."""
        return self.encode(text, index, feedback, valid)[:, -1]


def sequence_from_history(entries: Iterable[tuple[str, bool]], max_len: int) -> list[tuple[str, bool]]:
    """The model's input from a user's events, oldest first: ``(item_id, positive)`` pairs.

    Consecutive events on the same item are one interaction (a MovieLens rating >= 4 is a
    click and a purchase), positive when any of them is; the last ``max_len`` are kept.
    Training, the offline protocol and the worker all go through this function."""
    out: list[tuple[str, bool]] = []
    for item_id, positive in entries:
        if out and out[-1][0] == item_id:
            if positive and not out[-1][1]:
                out[-1] = (item_id, True)
            continue
        out.append((item_id, bool(positive)))
    return out[-max_len:] if max_len > 0 else []


def right_align(values: Sequence[Sequence[int]], width: int, pad: int = 0) -> torch.Tensor:
    """``(len(values), width)`` long tensor: each row's values at its end, ``pad`` before."""
    flat: list[int] = []
    for row in values:
        flat.extend([pad] * (width - len(row)))
        flat.extend(row)
    return torch.tensor(flat, dtype=torch.long).view(len(values), width)


def sequence_inputs(
    model: SASRec, sequences: Sequence[Sequence[tuple[str, bool]]]
) -> tuple[list[list[tuple[str, bool]]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The histories cut to ``max_len`` and their ``(index, feedback, valid)`` ``(B, T)``
    tensors on the CPU, right-aligned to the longest (``T >= 1``)."""
    max_len = model.config.max_len
    seqs = [list(s)[-max_len:] for s in sequences]
    t = max(1, max((len(s) for s in seqs), default=1))
    index_of = model.index_of
    index = right_align([[index_of.get(item_id, 0) for item_id, _ in s] for s in seqs], t)
    feedback = right_align([[int(pos) for _, pos in s] for s in seqs], t)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    valid = torch.arange(t).unsqueeze(0) >= (t - lengths).unsqueeze(1)
    return seqs, index, feedback, valid


def gather_rows(
    table: torch.Tensor, sequences: Sequence[Sequence[tuple[str, bool]]], width: int, row_of: Callable[[str], int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, width, d)`` rows of ``table`` for the items of right-aligned histories (zeros
    where ``row_of`` gives ``None``, and for padding), and the ``(B, width)`` mask of the
    positions that have a row; both on the table's device."""
    rows = right_align([[-1 if (r := row_of(item_id)) is None else r for item_id, _ in s] for s in sequences], width, pad=-1).to(table.device)
    has = rows >= 0
    if table.shape[0] == 0:  # no row to read: nothing has one
        return torch.zeros(*rows.shape, table.shape[1], dtype=table.dtype, device=table.device), has
    return table[rows.clamp(min=0)] * has.unsqueeze(-1), has


def batch_inputs(
    model: SASRec,
    sequences: Sequence[Sequence[tuple[str, bool]]],
    text_table: torch.Tensor,
    row_of: Callable[[str], int | None],
    *,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(text, index, feedback, valid)`` for :meth:`SASRec.encode` from histories of
    ``(item_id, positive)``, right-aligned to the longest (at most ``max_len``).

    Text embeddings are ``text_table``'s rows by ``row_of`` (gathered where the table is);
    an item without a row has a zero text vector (ID embedding only)."""
    dev = torch.device(device)
    seqs, index, feedback, valid = sequence_inputs(model, sequences)
    text, _ = gather_rows(text_table, seqs, index.shape[1], row_of)
    return text.float().to(dev), index.to(dev), feedback.to(dev), valid.to(dev)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: SASRec, path: str | Path, config: SASRecConfig | None = None) -> Path:
    """Write ``model`` (with ``config``, default its own) atomically to ``path``."""
    cfg = config or model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": cfg.to_json(),
        "state_dict": state,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(doc, tmp)
    tmp.replace(path)
    return path


def checkpoint_hash(path: str | Path) -> str:
    """First 12 hex digits of the file's SHA-256 (names the checkpoint in recommendations)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> SASRec:
    """The model saved at ``path``, in eval mode on ``device``; :class:`CheckpointError`
    (with the path and the reason) for a missing, foreign, corrupt or inconsistent file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a recstream SASRec checkpoint")
    if doc.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {doc.get('format_version')!r}, this code reads {CHECKPOINT_FORMAT_VERSION}")
    try:
        config = SASRecConfig.from_json(doc["config"])
        model = SASRec(config)
        model.load_state_dict(doc["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({type(exc).__name__}: {exc})") from exc
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: parameter {name} has non-finite values")
    return model.to(device).eval()


def describe(model: SASRec) -> dict[str, Any]:
    """A short JSON-ready summary (sizes, not the vocabulary)."""
    c = model.config
    return {
        "model": MODEL_NAME,
        "version": c.version,
        "dim": c.dim,
        "layers": c.layers,
        "heads": c.heads,
        "max_len": c.max_len,
        "vocab": len(c.vocab),
        "text_model": c.text_model,
        "use_ids": c.use_ids,
        "parameters": sum(p.numel() for p in model.parameters()),
        "metric": dict(c.metric),
        "training": {k: v for k, v in c.training.items() if k != "history"},
    }
