#!/usr/bin/env python
"""Issue 8's reference protocol with the learned user encoder (SASRec, encoders/sasrec.py).

Same protocol as bench/reference_protocol.py (scoring/protocol.py): all ratings of
ml-latest-small in ``(timestamp, user, item)`` order, validation window = the 70-80% slice,
test window = the last 20% (9,248 cases), candidates = the catalog minus the items the user
rated before.  This script:

1. trains a model on the first 70% of the interactions, choosing the epoch on the
   validation window (``encoders.train.train``), or loads ``--learned CKPT``;
2. replays the interactions once, like ``run_reference``: on the validation window it tunes
   the 3-signal blend (text, co-occurrence, popularity) and a 4-signal blend with the
   learned score added, over weight grids on the simplex; on the test window it reports
   popularity, item-kNN, text-only, the tuned blend, the learned model alone and the tuned
   4-signal blend, all on the same cases in the same run.

Nothing is fitted on the test window.  One JSON document goes to stdout (``--output`` also
writes it); progress on stderr; exit status 0, 1 on an error, 130 when interrupted.

    .venv/bin/python bench/learned_protocol.py --output bench/results/learned_protocol.json
    .venv/bin/python bench/learned_protocol.py --learned model.ckpt   # evaluate a checkpoint
    .venv/bin/python bench/learned_protocol.py --quick                # smoke run, 15,000 ratings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import Guarded, add_run_args, command_line, cpu_model, finish, pkg_version  # noqa: E402
from recstream.encoders.sasrec import SASRecConfig, checkpoint_hash, describe, load_checkpoint, save_checkpoint, sequence_from_history  # noqa: E402
from recstream.encoders.train import CatalogScorer, TrainConfig, train  # noqa: E402
from recstream.scoring.blend import EQUAL_WEIGHTS, NORMALIZATIONS, BlendWeights, candidate_mask, normalize_scores  # noqa: E402
from recstream.scoring.metrics import RankingMetrics  # noqa: E402
from recstream.scoring.protocol import (  # noqa: E402
    DAY_MS,
    GridPoint,
    ProtocolConfig,
    ProtocolData,
    Replay,
    WindowResult,
    embed_texts,
    grid_ranks,
    protocol_windows,
    weight_grid,
)
from recstream.streams.tune import load_protocol_data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
QUICK_INTERACTIONS = 15_000
SIGNALS = ("text", "cooccurrence", "popularity", "learned")


def log(msg: str) -> None:
    print(f"[learned_protocol] {msg}", file=sys.stderr, flush=True)


def simplex4(step: float, normalizations: Sequence[str]) -> list[tuple[str, tuple[float, ...]]]:
    n = round(1.0 / step)
    out = []
    for norm in normalizations:
        for a in range(n + 1):
            for b in range(n + 1 - a):
                for c in range(n + 1 - a - b):
                    d = n - a - b - c
                    out.append((norm, (a / n, b / n, c / n, d / n)))
    return out


class LearnedReplay(Replay):
    """The protocol's replay plus the learned model's scores as a 4th signal."""

    def __init__(self, data: ProtocolData, embeddings: np.ndarray, config: ProtocolConfig, scorer: CatalogScorer) -> None:
        super().__init__(data, embeddings, config)
        self.scorer = scorer
        self.max_len = scorer.model.config.max_len
        self.seqs: dict[str, list[tuple[str, bool]]] = {}
        self.pending: list[list[tuple[str, bool]]] = []
        self.grid4: list[tuple[str, tuple[float, ...]]] = []
        self.grid4_sums = np.zeros((0, 2))
        self.blends4: dict[str, tuple[str, tuple[float, ...]]] = {}

    def apply(self, it) -> None:  # type: ignore[no-untyped-def]
        super().apply(it)
        if it.item_id in self.row_of:
            self.seqs.setdefault(it.user_id, []).append((it.item_id, bool(it.positive)))

    def _snapshot(self, batch, it) -> None:  # type: ignore[no-untyped-def]
        self.pending.append(sequence_from_history(self.seqs.get(it.user_id, ())[-4 * self.max_len :], self.max_len))
        super()._snapshot(batch, it)

    def _flush(self, batch, res: WindowResult, blends, grid, grid_sums, text_only) -> None:  # type: ignore[no-untyped-def]
        n = batch.size
        if n:
            k = self.config.k
            with torch.inference_mode():
                learned = self.scorer.scores(self.pending[:n]).float().cpu()
                cand = candidate_mask(torch.ones(len(self.ids), dtype=torch.bool), batch.exclude)
                target = batch.target[:n]
                vals, rows = torch.topk(learned.masked_fill(~cand, -math.inf), k, dim=1)
                self._add(res.metrics.setdefault("learned", RankingMetrics((k,))), vals, rows, target)
                if self.blends4 or self.grid4:
                    text = torch.from_numpy(batch.queries[:n]) @ self._emb_t.T
                    sig = (text, torch.from_numpy(batch.cooc[:n]), torch.from_numpy(batch.pop[:n]), learned)
                    zs = {norm: torch.stack([normalize_scores(s, cand, norm) for s in sig]) for norm in {w[0] for w in [*self.blends4.values(), *self.grid4]}}
                    for name, (norm, w) in self.blends4.items():
                        z = zs[norm]
                        blended = (torch.tensor(w).view(4, 1, 1) * z).sum(0).masked_fill(~cand, -math.inf)
                        vals, rows = torch.topk(blended, k, dim=1)
                        self._add(res.metrics.setdefault(name, RankingMetrics((k,))), vals, rows, target)
                    if self.grid4:
                        discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
                        tgt = torch.from_numpy(target)
                        for norm, z in zs.items():
                            idx = [g for g, (nm, _) in enumerate(self.grid4) if nm == norm]
                            weights = torch.tensor([self.grid4[g][1] for g in idx], dtype=torch.float32)
                            ranks = grid_ranks(z, cand, tgt, weights, k).numpy()
                            hit = ranks < k
                            gain = np.where(hit, discount[np.minimum(ranks, k - 1)], 0.0)
                            self.grid4_sums[idx, 0] += hit.sum(axis=0)
                            self.grid4_sums[idx, 1] += gain.sum(axis=0)
        self.pending = []
        super()._flush(batch, res, blends, grid, grid_sums, text_only)


def table(res: WindowResult, k: int) -> dict:
    return {
        "interactions": [res.start, res.end],
        "ts_ms": [res.start_ts, res.end_ts],
        "cases": res.cases,
        "cold_cases_skipped": res.cold,
        "table": res.table(k),
        "seconds": res.seconds,
    }


def protocol_config_from(reference: dict) -> ProtocolConfig:
    """The protocol settings of a ``bench/reference_protocol.py`` output (its co-occurrence
    shape; defaults for what it does not say)."""
    co = reference.get("parameters", {}).get("protocol", {}).get("cooccurrence", {})
    half_life = co.get("half_life_days")
    return ProtocolConfig(
        cooc_history_len=int(co.get("history_len", 20)),
        cooc_max_neighbours=int(co.get("max_neighbours", 100)),
        cooc_half_life_ms=None if half_life is None else float(half_life) * DAY_MS,
        cooc_events=co.get("events", "positive"),
        cooc_pair_decay=float(co.get("pair_decay", 1.0)),
        cooc_recency=float(co.get("recency", 1.0)),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    p.add_argument("--learned", type=Path, help="evaluate this checkpoint instead of training one")
    p.add_argument("--save", type=Path, help="write the trained checkpoint here")
    p.add_argument("--dim", type=int, default=64, help="model width (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    p.add_argument("--max-len", type=int, default=50, help="history items read (default 50)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout (default 0.2)")
    p.add_argument("--no-ids", action="store_true", help="text only: no learned ID embeddings")
    p.add_argument("--epochs", type=int, default=8, help="most epochs (default 8; the best on validation is kept)")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without progress (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="training windows per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--targets", choices=("positive", "all"), default="all", help="next interactions the loss counts (default all)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--max-train-minutes", type=float, help="no new epoch after this much training time (default: none)")
    p.add_argument(
        "--blend-from",
        type=Path,
        help="take the 3-signal blend weights tuned on validation from this "
        "bench/reference_protocol.py result (same data, same validation window) instead of tuning them again",
    )
    p.add_argument("--grid-step", type=float, default=0.1, help="3-signal blend weight grid step (default 0.1)")
    p.add_argument("--grid4-step", type=float, default=0.2, help="4-signal blend weight grid step (default 0.2)")
    p.add_argument("--normalizations", default=",".join(NORMALIZATIONS), help="normalisations tried (default zscore,rank)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".recstream" / "cache", help="embedding cache folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the usable cores)")
    p.add_argument(
        "--refit-epochs",
        type=int,
        help="train on the first 80%% (train + validation) for this many epochs, "
        "chosen on validation beforehand, instead of on the first 70%% with early stopping",
    )
    p.add_argument(
        "--test-only",
        action="store_true",
        help="no validation pass: warm to the test window and evaluate it (needs --blend-from; no 4-signal blend, whose weights are tuned on validation)",
    )
    add_run_args(p, f"smoke run: the first {QUICK_INTERACTIONS:,} ratings, 1 epoch, coarse grids")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    progress = not args.no_progress
    result: dict = {
        "benchmark": "issue 8 reference protocol, learned encoder (bench/learned_protocol.py)",
        "command": command_line("bench/learned_protocol.py", argv),
    }
    with Guarded(result, log) as guard:
        torch.set_num_threads(threads)
        step = 0.25 if args.quick and args.grid_step == 0.1 else args.grid_step
        norms = [s.strip() for s in args.normalizations.split(",") if s.strip()]
        result["machine"] = {
            "cpu_model": cpu_model(),
            "threads": threads,
            "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "cuda_available": torch.cuda.is_available(),
        }
        result["versions"] = {"python": platform.python_version(), "torch": torch.__version__, "recstream": pkg_version("recstream")}
        data = load_protocol_data(args.data, progress=progress)
        if args.quick:
            data = ProtocolData(data.name, data.catalog, data.interactions[:QUICK_INTERACTIONS], data.row_of)
        emb, emb_info = embed_texts(data.texts(), cache_dir=args.cache_dir, progress=progress)
        n = len(data.interactions)
        val_start, test_start = protocol_windows(n)
        t0 = time.perf_counter()
        if args.learned:
            model = load_checkpoint(args.learned)
            result["model"] = {"checkpoint": str(args.learned), "hash": checkpoint_hash(args.learned), **describe(model)}
        else:
            mc = SASRecConfig(
                vocab=(),
                dim=args.dim,
                layers=args.layers,
                heads=args.heads,
                max_len=args.max_len,
                dropout=args.dropout,
                use_ids=not args.no_ids,
                text_model=emb_info["model"],
            )
            tc = TrainConfig(
                epochs=1 if args.quick else args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                targets=args.targets,
                patience=args.patience,
                seed=args.seed,
                max_seconds=args.max_train_minutes * 60 if args.max_train_minutes else None,
            )
            log(f"training on [0, {val_start}), validating on [{val_start}, {test_start})")
            if args.refit_epochs and not args.test_only:
                raise ValueError("--refit-epochs trains on the validation window: use it with --test-only")
            if args.refit_epochs:
                # hyper-parameters and epochs chosen on validation beforehand: train on everything before
                # the test window (no validation left, the last epoch is kept)
                log(f"refit: training on [0, {test_start}) for {args.refit_epochs} epochs, no validation")
                tc = dataclasses.replace(tc, epochs=args.refit_epochs, patience=args.refit_epochs, max_seconds=None)
                trained = train(
                    data.interactions, data.ids, emb, train_end=test_start, valid_end=test_start, model_config=mc, config=tc, progress=progress, log=log
                )
            else:
                trained = train(
                    data.interactions, data.ids, emb, train_end=val_start, valid_end=test_start, model_config=mc, config=tc, progress=progress, log=log
                )
            model = trained.model
            result["training"] = {
                "history": trained.history,
                "best_epoch": trained.best_epoch,
                "seconds": round(trained.seconds, 1),
                "untrained_validation": trained.untrained,
                "config": {
                    "epochs": tc.epochs,
                    "batch_size": tc.batch_size,
                    "lr": tc.lr,
                    "weight_decay": tc.weight_decay,
                    "targets": tc.targets,
                    "seed": tc.seed,
                },
            }
            if args.save:
                save_checkpoint(model, args.save)
                result["checkpoint"] = {"path": str(args.save), "hash": checkpoint_hash(args.save)}
            result["model"] = describe(model)
        t_train = time.perf_counter() - t0
        scorer = CatalogScorer(model, data.ids, emb)
        # the 3-signal weights, and the co-occurrence signal, of the run that tuned them
        ref = json.loads(args.blend_from.read_text()) if args.blend_from else None
        tuned3 = None if ref is None else GridPoint(BlendWeights.from_dict(ref["tuned_weights"]), float("nan"), float("nan"))
        config = ProtocolConfig() if ref is None else protocol_config_from(ref)
        result["protocol"] = config.to_dict()
        replay = LearnedReplay(data, emb, config, scorer)
        k = config.k
        if args.test_only:
            if tuned3 is None:
                raise ValueError("--test-only needs --blend-from (the 3-signal weights are not tuned here)")
            replay.advance(test_start, progress=progress)
            best3, val_doc, best4 = tuned3, None, None
        else:
            replay.advance(val_start, progress=progress)
            grid3 = [] if args.blend_from else weight_grid(step, norms)
            step4 = 0.5 if args.quick and args.grid4_step == 0.2 else args.grid4_step
            replay.grid4 = simplex4(step4, norms)
            replay.grid4_sums = np.zeros((len(replay.grid4), 2))
            val = replay.evaluate(test_start, grid=grid3, blends={"blend-equal-zscore": EQUAL_WEIGHTS}, progress=progress)
            best3 = val.best() if tuned3 is None else tuned3
            cases = max(val.cases, 1)
            ranked4 = sorted(range(len(replay.grid4)), key=lambda g: (-replay.grid4_sums[g, 1], -replay.grid4_sums[g, 0], g))
            best4 = replay.grid4[ranked4[0]]
            val_doc = table(val, k)
            val_doc["blend-tuned"] = {
                "weights": best3.weights.normalized().to_dict(),
                f"hr@{k}": None if math.isnan(best3.hit_rate) else best3.hit_rate,
                f"ndcg@{k}": None if math.isnan(best3.ndcg) else best3.ndcg,
                "tuned_in": str(args.blend_from) if args.blend_from else "this run",
            }
            val_doc["blend4_top5"] = [
                {
                    "normalization": replay.grid4[g][0],
                    "weights": dict(zip(SIGNALS, replay.grid4[g][1])),
                    f"hr@{k}": replay.grid4_sums[g, 0] / cases,
                    f"ndcg@{k}": replay.grid4_sums[g, 1] / cases,
                }
                for g in ranked4[:5]
            ]
            replay.grid4 = []
            replay.blends4 = {"blend4-tuned": best4}
        test = replay.evaluate(n, blends={"blend-tuned": best3.weights, "blend-equal-zscore": EQUAL_WEIGHTS}, progress=progress)
        test_doc = table(test, k)
        knn = test_doc["table"]["item-knn"][f"ndcg@{k}"] or 0.0
        result.update(
            {
                "dataset": data.name,
                "interactions": n,
                "catalog": len(data.catalog),
                "windows": {"train": [0, val_start], "validation": [val_start, test_start], "test": [test_start, n]},
                "validation": val_doc,
                "tuned": {
                    "blend": best3.weights.normalized().to_dict(),
                    "blend4": None if best4 is None else {"normalization": best4[0], "weights": dict(zip(SIGNALS, best4[1]))},
                },
                "test": test_doc,
                "ratios_ndcg_vs_item_knn": {name: (row[f"ndcg@{k}"] / knn if knn else None) for name, row in test_doc["table"].items()},
                "seconds": {"train_or_load": round(t_train, 1), "total": round(time.perf_counter() - t_start, 1)},
            }
        )
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
