"""``recstream train``: learn the user encoder (encoders/sasrec.py) from a dataset or the topics.

The event log (a dataset folder, or the deployment's catalog and event topics, read by
:func:`streams.tune.load_source`) becomes interactions (:func:`scoring.protocol.interactions_from_events`:
the events of one user on one item at one time are one interaction, positive with a
purchase or a review rated at least the threshold).  The interactions with
``--from <= ts < --to`` are the training range; those from ``--to`` up to ``--validate-to``
(default: the end of the log) the validation window, on which HR@k/NDCG@k are measured after
every epoch (the protocol's rules: the user's earlier interactions are the state, the items
they rated are not candidates); the best epoch is kept and written to ``--output``.

Item text embeddings are the worker's (``--item-fields``, the packaged MiniLM), so the
checkpoint reads the same vectors the worker keeps in its item matrix.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from .produce import parse_time


def cmd_train(args: argparse.Namespace, settings: Any) -> int:
    import torch

    from encoders.sasrec import SASRecConfig, checkpoint_hash, save_checkpoint
    from encoders.train import TrainConfig, train
    from scoring.protocol import interactions_from_events

    from .tune import catalog_embeddings, load_source

    start_ms = parse_time(args.from_) if args.from_ else None
    to_ms = parse_time(args.to)
    end_ms = parse_time(args.validate_to) if args.validate_to else None
    if start_ms is not None and start_ms >= to_ms:
        raise ValueError("--from must be before --to")
    if end_ms is not None and end_ms <= to_ms:
        raise ValueError("--validate-to must be after --to")
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    mc = SASRecConfig(vocab=(), dim=args.dim, layers=args.layers, heads=args.heads, max_len=args.max_len,
                      dropout=args.dropout, use_ids=not args.no_ids, version=args.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     targets=args.targets, k=args.k, patience=args.patience, seed=args.seed, device=args.device)
    src = load_source(args.dataset, None if args.dataset else settings, end_ms=end_ms, positive_threshold=args.positive_threshold,
                      progress=not args.no_progress)
    interactions = interactions_from_events(src.events, kinds=kinds, positive_threshold=args.positive_threshold)
    if start_ms is not None:
        interactions = [it for it in interactions if it.ts >= start_ms]
    known = {it.item_id for it in src.catalog}
    interactions = [it for it in interactions if it.item_id in known]
    train_end = sum(1 for it in interactions if it.ts < to_ms)
    if train_end == 0:
        raise ValueError("no interaction on a catalog item in the training range")
    if train_end == len(interactions):
        print("recstream train: no interaction after --to: no validation, the last epoch is kept", file=sys.stderr)
    fields = tuple(f.strip() for f in args.item_fields.split(",") if f.strip())
    emb, info = catalog_embeddings(src.catalog, fields=fields, model=args.model, device=args.device, progress=not args.no_progress)
    mc = replace(mc, text_model=info["model"], training={"source": src.name, "from": args.from_, "to": args.to,
                                                         "validate_to": args.validate_to, "kinds": kinds, "item_fields": list(fields)})
    res = train(interactions, [it.item_id for it in src.catalog], emb, train_end=train_end, valid_end=len(interactions),
                model_config=mc, config=tc, progress=not args.no_progress)
    path = save_checkpoint(res.model, args.output)
    m = res.model.config.metric
    k = args.k
    metric = f"validation HR@{k} {m.get(f'hr@{k}', 0):.4f}, NDCG@{k} {m.get(f'ndcg@{k}', 0):.4f} on {m.get('cases', 0)} cases" if f"ndcg@{k}" in m else "no validation"
    print(f"wrote {path} (sasrec/{path.stem}@{checkpoint_hash(path)}): best epoch {res.best_epoch} of {len(res.history)}, "
          f"{metric}; {len(res.model.config.vocab)} items with an ID embedding, {res.seconds:.0f}s")
    return 0


def add_parser(sub: Any, parents: list) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", parents=parents, help="train the learned user encoder (SASRec) and write a checkpoint for 'worker --user-model'",
        description="Train a small causal transformer over users' recent items (item = its text embedding + a learned ID "
                    "embedding) on the interactions from --from to --to (a dataset folder with --dataset, else the "
                    "deployment's topics), with a full softmax over the catalog, AdamW, CUDA when present. After every "
                    "epoch HR@k/NDCG@k are measured on the validation window (--to up to --validate-to); the best epoch "
                    "is written to --output, a weights-only checkpoint that 'recstream worker --user-model' serves.")
    p.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'; default: read the topics)")
    p.add_argument("--from", dest="from_", metavar="DATE", help="start of the training range (default: the first event)")
    p.add_argument("--to", required=True, metavar="DATE", help="end of the training range (exclusive); validation starts here")
    p.add_argument("--validate-to", metavar="DATE", help="end of the validation window (default: the end of the log)")
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--dim", type=int, default=64, help="model width (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    p.add_argument("--max-len", type=int, default=50, help="most recent interactions read per user (default 50)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout (default 0.2)")
    p.add_argument("--no-ids", action="store_true", help="no learned ID embeddings: items are their text only")
    p.add_argument("--epochs", type=int, default=20, help="most epochs (default 20)")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better validation NDCG (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="training sequences per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--targets", choices=("all", "positive"), default="all", help="next interactions the loss counts (default all)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same data + seed = same checkpoint on one machine (default 0)")
    p.add_argument("-k", "--k", type=int, default=10, help="list length of the validation metric (default 10)")
    p.add_argument("--kinds", default="click,purchase,review", help="event kinds that make interactions (default all three, as the worker's profiles)")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="rating of a positive review (default 4)")
    p.add_argument("--item-fields", default="title,categories,description", help="item fields embedded, as the worker's --item-fields")
    p.add_argument("--model", default=None, help="text model directory (default the packaged all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None, help="cpu or cuda, for training and for embedding the catalog (default: cuda when present)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default torch's)")
    p.add_argument("--version", help="version label stored in the checkpoint (default: the UTC time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p
