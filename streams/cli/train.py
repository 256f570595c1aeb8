"""``recstream train``: train the learned user encoder and write a checkpoint (its flags, and the
:class:`streams.train.TrainSettings` they make; the run is :func:`streams.train.run_train`)."""

from __future__ import annotations

import argparse
import time

from .options import (
    Problems,
    add_setting,
    csv_options,
    dataset_options,
    date_ms,
    default_of,
    knob,
    names,
    renamed,
    settings_from,
    text_model_option,
    torch_threads_option,
)


def train_settings(args: argparse.Namespace):
    """The :class:`streams.train.TrainSettings` of ``recstream train``'s flags; every problem
    with them is listed in one ConfigError (one line, exit status 2)."""
    from recstream.encoders.sasrec import SASRecConfig
    from recstream.encoders.train import TrainConfig
    from recstream.scoring.protocol import interactions_from_events

    from ..app import WorkerConfig
    from ..train import TrainSettings

    problems = Problems()
    version = args.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    model = problems.check(
        lambda: SASRecConfig(
            vocab=(),
            dim=args.dim,
            layers=args.layers,
            heads=args.heads,
            max_len=args.max_len,
            dropout=args.dropout,
            use_ids=args.use_ids,
            version=version,
        )
    )
    train = problems.check(
        lambda: TrainConfig(
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
    )
    engine = problems.check(lambda: WorkerConfig(item_fields=args.item_fields, model=args.model, torch_threads=args.torch_threads))
    problems.check(lambda: interactions_from_events((), kinds=args.kinds))  # the kinds' own check
    options = problems.check(lambda: dataset_options(args, args.dataset))
    kafka = None if args.dataset else problems.check(lambda: settings_from(args))
    start, validation, split = args.from_, args.validation_from, args.split
    if validation is None:
        problems.add("--validation-from DATE is required: the end of the training range, where validation starts")
    elif start is not None and start >= validation:
        problems.add("--from must be before --validation-from")
    if validation is not None and split is not None and split <= validation:
        problems.add("--split must be after --validation-from")
    problems.raise_any()
    assert model is not None and train is not None and engine is not None and validation is not None
    return TrainSettings(
        output=args.output,
        validation_from_ms=validation,
        model=model,
        train=train,
        engine=engine,
        kafka=kafka,
        dataset=args.dataset,
        dataset_options=options,
        from_ms=start,
        split_ms=split,
        kinds=args.kinds,
        positive_threshold=args.positive_threshold,
        progress=args.progress,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import run_train

    return run_train(train_settings(args))


def _old_threads(text: str) -> int | None:
    """``--threads N``, the old name of ``--torch-threads``: 0 meant torch's own count."""
    try:
        return int(text) or None
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    from recstream.encoders.sasrec import SASRecConfig

    from ..train import TrainSettings

    def shape(name: str):
        return default_of(SASRecConfig, name)

    def training(name: str):
        return getattr(default_of(TrainSettings, "train"), name)

    def default(name: str):
        return default_of(TrainSettings, name)

    p = sub.add_parser(
        "train",
        parents=[kafka_opts],
        help="train the learned user encoder (SASRec) and write a checkpoint for 'worker --user-model'",
        description="Train a small causal transformer over users' recent items (item = its text embedding + a learned ID "
        "embedding) on the interactions from --from to --validation-from (a dataset folder with --dataset, else the "
        "deployment's topics), with a full softmax over the catalog, AdamW, CUDA when present. After every "
        "epoch HR@k/NDCG@k are measured on the validation window (--validation-from up to --split, the start of the "
        "test period, as backtest's --split); the best epoch is written to --output, a weights-only checkpoint "
        "that 'recstream worker --user-model' serves.",
    )
    p.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'; default: read the topics)")
    p.add_argument("--from", dest="from_", metavar="DATE", type=date_ms, help="start of the training range (default: the first event)")
    renamed(
        p,
        "--to",
        p.add_argument(
            "--validation-from", metavar="DATE", type=date_ms, help="end of the training range (exclusive) and start of the validation window (required)"
        ),
    )
    renamed(
        p,
        "--validate-to",
        p.add_argument(
            "--split",
            metavar="DATE",
            type=date_ms,
            help="end of the validation window: the start of the test period, nothing from it on is read (default: the end of the log)",
        ),
    )
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="checkpoint file to write")
    g = p.add_argument_group("model")
    add_setting(g, "--dim", type=int, env=False, default=shape("dim"), help="model width")
    add_setting(g, "--layers", type=int, env=False, default=shape("layers"), help="transformer blocks")
    add_setting(g, "--heads", type=int, env=False, default=shape("heads"), help="attention heads")
    add_setting(g, "--max-len", type=int, env=False, default=shape("max_len"), help="most recent interactions read per user")
    add_setting(g, "--dropout", type=float, env=False, default=shape("dropout"), help="dropout")
    g.add_argument("--no-ids", dest="use_ids", action="store_false", default=shape("use_ids"), help="no learned ID embeddings: items are their text only")
    g.add_argument("--version", help="version label stored in the checkpoint (default: the UTC time)")
    g = p.add_argument_group("training")
    add_setting(g, "--epochs", type=int, env=False, default=training("epochs"), help="most epochs")
    add_setting(g, "--patience", type=int, env=False, default=training("patience"), help="stop after this many epochs without a better validation NDCG")
    add_setting(g, "--batch-size", type=int, env=False, default=training("batch_size"), help="training sequences per step")
    add_setting(g, "--lr", type=float, env=False, default=training("lr"), help="AdamW learning rate")
    add_setting(g, "--weight-decay", type=float, env=False, default=training("weight_decay"), help="AdamW weight decay")
    add_setting(g, "--targets", choices=("all", "positive"), env=False, default=training("targets"), help="next interactions the loss counts")
    add_setting(g, "--seed", type=int, env=False, default=training("seed"), help="random seed: same data + seed = same checkpoint on one machine")
    add_setting(g, "-k", "--k", type=int, env=False, default=training("k"), help="list length of the validation metric")
    add_setting(
        g,
        "--kinds",
        type=names,
        metavar="KIND,...",
        env=False,
        default=default("kinds"),
        help="event kinds that make interactions, as the worker's profiles",
    )
    add_setting(g, "--positive-threshold", type=float, env=False, default=default("positive_threshold"), help="rating of a positive review")
    add_setting(
        g,
        "--device",
        env=False,
        default=training("device"),
        help="cpu or cuda, for training and for embedding the catalog",
        default_text="cuda when present",
    )
    renamed(g, "--threads", torch_threads_option(g), type=_old_threads)
    g.add_argument("--no-progress", dest="progress", action="store_false", default=default("progress"), help="no progress bars")
    g = p.add_argument_group("the worker's item text: the checkpoint reads the vectors of its item matrix")
    knob(g, "item_fields")
    text_model_option(g)
    csv_options(p)
    p.set_defaults(func=cmd_train)
