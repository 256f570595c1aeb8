"""Training and offline evaluation of :class:`encoders.sasrec.SASRec`.  Pure code, no Kafka.

Inputs are *interactions* in time order: objects with ``ts``, ``user_id``, ``item_id`` and
``positive`` (e.g. :class:`scoring.protocol.Interaction`, one per MovieLens rating), a
catalog (item ids, in the row order of ``embeddings``, their unit text vectors).

* :func:`train` learns from the interactions ``[0, train_end)``: each user's sequence
  (:func:`encoders.sasrec.sequence_from_history` rules) is cut into windows of ``max_len``
  and the output at every position predicts the next item with a full softmax over the
  catalog (the loss counts the positions whose next interaction is positive, or all of them
  with ``targets="all"``); AdamW; after each epoch the validation metric is measured on
  the interactions ``[train_end, valid_end)`` (:func:`evaluate`) and the best epoch is kept.
* :func:`evaluate` is the reference protocol's rule for one window: every positive
  interaction on a catalog item whose user has an earlier interaction is a case; the
  user's state is every interaction before it; candidates are the catalog minus the items
  the user interacted with before; HR@k and NDCG@k of the target's rank.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recstream.encoders.sasrec import SASRec, SASRecConfig, batch_inputs, right_align, sequence_from_history

__all__ = ["TrainConfig", "TrainResult", "cases", "evaluate", "resolve_device", "train"]


class InteractionLike(Protocol):
    @property
    def ts(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def positive(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training hyper-parameters (model shape: :class:`encoders.sasrec.SASRecConfig`)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    targets: str = "positive"  # which next interactions the loss counts: "positive" | "all"
    k: int = 10
    patience: int = 5  # stop after this many epochs without a better validation NDCG
    seed: int = 0
    device: str | None = None  # None: cuda when present, else cpu
    eval_batch: int = 512
    max_seconds: float | None = None  # no new epoch starts after this much training time

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.k < 1 or self.patience < 1 or self.eval_batch < 1:
            raise ValueError(
                f"epochs, batch_size, k, patience and eval_batch must be at least 1, got {self.epochs}, {self.batch_size}, {self.k}, {self.patience} and {self.eval_batch}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.targets not in ("positive", "all"):
            raise ValueError(f"targets must be 'positive' or 'all', got {self.targets!r}")


@dataclass(slots=True)
class TrainResult:
    model: SASRec
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    untrained: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return dev


# --------------------------------------------------------------------------- data


def user_sequences(interactions: Sequence[InteractionLike], end: int, row_of: dict[str, int]) -> dict[str, list[tuple[str, bool]]]:
    """Each user's ``(item_id, positive)`` sequence over ``[0, end)`` (catalog items only)."""
    raw: dict[str, list[tuple[str, bool]]] = {}
    for it in interactions[:end]:
        if it.item_id in row_of:
            raw.setdefault(it.user_id, []).append((it.item_id, bool(it.positive)))
    return {u: sequence_from_history(s, max_len=len(s)) for u, s in raw.items()}


@dataclass(slots=True)
class Cases:
    """The cases of one window: each one's history (last ``max_len``), exclusions and target."""

    histories: list[list[tuple[str, bool]]]
    exclude: list[list[int]]
    target: list[int]
    cold: int = 0

    def __len__(self) -> int:
        return len(self.target)


def cases(interactions: Sequence[InteractionLike], start: int, end: int, row_of: dict[str, int], max_len: int) -> Cases:
    """The protocol's cases of ``[start, end)`` (see the module doc), every earlier
    interaction (from index 0) making the users' states."""
    seqs: dict[str, list[tuple[str, bool]]] = {}
    rated: dict[str, list[int]] = {}
    seen: dict[str, set[str]] = {}
    out = Cases([], [], [])
    for i, it in enumerate(interactions[:end]):
        if i >= start and it.positive and it.item_id in row_of:
            if it.user_id not in seen:
                out.cold += 1
            else:
                out.histories.append(sequence_from_history(seqs.get(it.user_id, ()), max_len))
                out.exclude.append(list(rated.get(it.user_id, ())))
                out.target.append(row_of[it.item_id])
        row = row_of.get(it.item_id)
        if row is not None:
            seqs.setdefault(it.user_id, []).append((it.item_id, bool(it.positive)))
            rated.setdefault(it.user_id, []).append(row)
        seen.setdefault(it.user_id, set()).add(it.item_id)
    return out


# --------------------------------------------------------------------------- scoring


class CatalogScorer:
    """Scores histories against a catalog with a model: the batched path shared by the
    validation, the offline protocol and (through the same methods) the worker.  ``device``
    defaults to the model's (a model trained on CUDA is scored there)."""

    def __init__(self, model: SASRec, ids: Sequence[str], embeddings: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.ids = list(ids)
        self.row_of = {item_id: r for r, item_id in enumerate(self.ids)}
        emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)) if not isinstance(embeddings, torch.Tensor) else embeddings
        self.text = emb.float().to(self.device)
        self.index = model.indices(self.ids).to(self.device)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the item vectors (after the model's weights changed)."""
        with torch.inference_mode():
            self.items = self.model.item_vectors(self.text, self.index)

    def inputs(self, histories: Sequence[Sequence[tuple[str, bool]]]) -> tuple[torch.Tensor, ...]:
        """:func:`encoders.sasrec.batch_inputs` with the text from the catalog's rows."""
        return batch_inputs(self.model, histories, self.text, self.row_of.get, device=self.device)

    def user_vectors(self, histories: Sequence[Sequence[tuple[str, bool]]]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.user_vectors(*self.inputs(histories))

    def scores(self, histories: Sequence[Sequence[tuple[str, bool]]]) -> torch.Tensor:
        """``(B, catalog)`` scores; an empty history scores 0 everywhere (no preference)."""
        u = self.user_vectors(histories)
        with torch.inference_mode():
            s = u @ self.items.T
            empty = torch.tensor([len(h) == 0 for h in histories], device=s.device)
            return s.masked_fill(empty.unsqueeze(1), 0.0)


def target_ranks(scores: torch.Tensor, exclude: Sequence[Sequence[int]], target: Sequence[int]) -> torch.Tensor:
    """0-based rank of each target among its candidates (ties count against the target)."""
    s = scores.clone()
    for b, rows in enumerate(exclude):
        if rows:
            s[b, list(rows)] = -math.inf
    tgt = torch.as_tensor(list(target), device=s.device)
    ts = s[torch.arange(len(target), device=s.device), tgt]
    s[torch.arange(len(target), device=s.device), tgt] = -math.inf
    return (s >= ts.unsqueeze(1)).sum(dim=1).cpu()


def metrics_from_ranks(ranks: torch.Tensor, k: int) -> dict[str, float]:
    n = int(ranks.numel())
    if n == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, "cases": 0}
    hit = ranks < k
    gain = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros((), dtype=torch.float64))
    return {f"hr@{k}": float(hit.double().mean()), f"ndcg@{k}": float(gain.mean()), "cases": n}


def evaluate(scorer: CatalogScorer, window: Cases, k: int = 10, batch: int = 512) -> dict[str, float]:
    """HR@k / NDCG@k of ``scorer`` on the cases of a window (ranks over all candidates)."""
    ranks = []
    was = scorer.model.training
    scorer.model.eval()
    try:
        scorer.refresh()
        for s in range(0, len(window), batch):
            sl = slice(s, s + batch)
            ranks.append(target_ranks(scorer.scores(window.histories[sl]), window.exclude[sl], window.target[sl]))
    finally:
        scorer.model.train(was)
    return metrics_from_ranks(torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long), k)


# --------------------------------------------------------------------------- training


def _windows(seqs: dict[str, list[tuple[str, bool]]], max_len: int) -> list[list[tuple[str, bool]]]:
    """Training windows of ``max_len + 1`` items (inputs + the next one), newest first cut."""
    out = []
    for user in sorted(seqs):
        s = seqs[user]
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(s[start:end])
            end = start + 1 if start > 0 else 0
    return out


def train(
    interactions: Sequence[InteractionLike],
    ids: Sequence[str],
    embeddings: np.ndarray,
    *,
    train_end: int,
    valid_end: int,
    model_config: SASRecConfig | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on ``[0, train_end)``, validate on ``[train_end, valid_end)`` each epoch, keep
    the best epoch by NDCG@k (see the module doc).  ``model_config``'s vocabulary is
    replaced by the catalog items seen in training."""
    cfg = config or TrainConfig()
    device = resolve_device(cfg.device)
    if not 0 < train_end <= valid_end <= len(interactions):
        raise ValueError(f"bad ranges: train [0, {train_end}), validation [{train_end}, {valid_end}) of {len(interactions)}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings have shape {emb.shape}, expected ({len(ids)}, dim)")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    seqs = user_sequences(interactions, train_end, row_of)
    vocab = tuple(sorted({item_id for s in seqs.values() for item_id, _ in s}, key=row_of.__getitem__))
    mc = replace(model_config or SASRecConfig(vocab=()), vocab=vocab, text_dim=int(emb.shape[1]))
    model = SASRec(mc).to(device)
    scorer = CatalogScorer(model, ids, emb, device)
    windows = _windows(seqs, mc.max_len)
    if not windows:
        raise ValueError("no user has two interactions in the training range")
    val = cases(interactions, train_end, valid_end, row_of, mc.max_len) if valid_end > train_end else None
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    untrained = evaluate(scorer, val, cfg.k, cfg.eval_batch) if val is not None and len(val) else {}
    say(
        f"train: {len(seqs)} users, {len(windows)} windows, {sum(len(w) - 1 for w in windows)} positions, "
        f"vocab {len(vocab)}, validation cases {len(val) if val else 0}, device {device}; untrained {untrained}"
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, int] = (-1.0, 0)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    stale = 0
    k = cfg.k
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(windows), generator=gen).tolist()
        total, count = 0.0, 0
        with tqdm(total=len(order), desc=f"epoch {epoch}/{cfg.epochs}", unit=" seq", file=sys.stderr, disable=not progress, leave=False) as bar:
            for s in range(0, len(order), cfg.batch_size):
                chunk = [windows[i] for i in order[s : s + cfg.batch_size]]
                text, index, feedback, valid = scorer.inputs([w[:-1] for w in chunk])
                every = cfg.targets == "all"
                tgt = right_align([[row_of[item_id] if pos or every else -100 for item_id, pos in w[1:]] for w in chunk], index.shape[1], pad=-100).to(device)
                if not bool((tgt >= 0).any()):
                    bar.update(len(chunk))
                    continue
                h = model.encode(text, index, feedback, valid)
                items = model.item_vectors(scorer.text, scorer.index)
                sel = tgt >= 0
                logits = h[sel] @ items.T
                loss = F.cross_entropy(logits, tgt[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * int(sel.sum())
                count += int(sel.sum())
                bar.update(len(chunk))
                bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        train_s = time.perf_counter() - t0
        m = evaluate(scorer, val, k, cfg.eval_batch) if val is not None and len(val) else {}
        row = {"epoch": epoch, "loss": round(total / max(count, 1), 4), "train_s": round(train_s, 1), **m}
        history.append(row)
        ndcg = m.get(f"ndcg@{k}", -float(row["loss"]))
        improved = ndcg > best[0] or best_state is None
        if improved:
            best = (ndcg, epoch)
            best_state = {n: v.detach().clone() for n, v in model.state_dict().items()}
            stale = 0
        else:
            stale += 1
        say(f"epoch {epoch}: loss {row['loss']}, validation {m}{' (best)' if improved else ''} [{train_s:.1f}s]")
        if stale >= cfg.patience:
            say(f"no better validation NDCG for {cfg.patience} epochs: stopping")
            break
        if cfg.max_seconds is not None and time.perf_counter() - t_start >= cfg.max_seconds and epoch < cfg.epochs:
            say(f"time budget of {cfg.max_seconds:.0f}s spent after epoch {epoch}: stopping")
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - t_start
    best_row = history[best[1] - 1]
    model.config = replace(
        mc,
        metric={key: best_row[key] for key in best_row if key.startswith(("hr@", "ndcg@", "cases"))} | {"epoch": best[1]},
        training={
            **dict(mc.training),
            "interactions": [0, train_end],
            "validation": [train_end, valid_end],
            "ts_ms": [interactions[0].ts, interactions[train_end - 1].ts],
            "epochs_run": len(history),
            "best_epoch": best[1],
            "seconds": round(seconds, 1),
            "device": str(device),
            "seed": cfg.seed,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "weight_decay": cfg.weight_decay,
            "targets": cfg.targets,
        },
    )
    return TrainResult(model, best[1], history, seconds, untrained)
