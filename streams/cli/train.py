"""``recstream train``: train the learned user encoder and write a checkpoint (the run is :func:`streams.train.cmd_train`)."""

from __future__ import annotations

import argparse

from .options import csv_options, dataset_options, settings_from


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import cmd_train as run

    options = dataset_options(args, args.dataset)
    return run(args, None if args.dataset else settings_from(args), dataset_options=options)


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[kafka_opts],
        help="train the learned user encoder (SASRec) and write a checkpoint for 'worker --user-model'",
        description="Train a small causal transformer over users' recent items (item = its text embedding + a learned ID "
        "embedding) on the interactions from --from to --to (a dataset folder with --dataset, else the "
        "deployment's topics), with a full softmax over the catalog, AdamW, CUDA when present. After every "
        "epoch HR@k/NDCG@k are measured on the validation window (--to up to --validate-to); the best epoch "
        "is written to --output, a weights-only checkpoint that 'recstream worker --user-model' serves.",
    )
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
    csv_options(p)
    p.set_defaults(func=cmd_train)
