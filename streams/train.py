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


def cmd_train(args: argparse.Namespace, settings: Any, dataset_options: dict[str, Any] | None = None) -> int:
    import torch

    from recstream.encoders.sasrec import SASRecConfig, checkpoint_hash, save_checkpoint
    from recstream.encoders.train import TrainConfig, train
    from recstream.scoring.protocol import interactions_from_events

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
    mc = SASRecConfig(
        vocab=(),
        dim=args.dim,
        layers=args.layers,
        heads=args.heads,
        max_len=args.max_len,
        dropout=args.dropout,
        use_ids=not args.no_ids,
        version=args.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    )
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        targets=args.targets,
        k=args.k,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
    )
    src = load_source(
        args.dataset,
        None if args.dataset else settings,
        end_ms=end_ms,
        positive_threshold=args.positive_threshold,
        progress=not args.no_progress,
        dataset_options=dataset_options,
    )
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
    mc = replace(
        mc,
        text_model=info["model"],
        training={"source": src.name, "from": args.from_, "to": args.to, "validate_to": args.validate_to, "kinds": kinds, "item_fields": list(fields)},
    )
    res = train(
        interactions,
        [it.item_id for it in src.catalog],
        emb,
        train_end=train_end,
        valid_end=len(interactions),
        model_config=mc,
        config=tc,
        progress=not args.no_progress,
    )
    path = save_checkpoint(res.model, args.output)
    m = res.model.config.metric
    k = args.k
    metric = (
        f"validation HR@{k} {m.get(f'hr@{k}', 0):.4f}, NDCG@{k} {m.get(f'ndcg@{k}', 0):.4f} on {m.get('cases', 0)} cases"
        if f"ndcg@{k}" in m
        else "no validation"
    )
    print(
        f"wrote {path} (sasrec/{path.stem}@{checkpoint_hash(path)}): best epoch {res.best_epoch} of {len(res.history)}, "
        f"{metric}; {len(res.model.config.vocab)} items with an ID embedding, {res.seconds:.0f}s"
    )
    return 0
