"""``recstream train``: learn the user encoder (encoders/sasrec.py) from a dataset or the topics.

The event log (a dataset folder, or the deployment's catalog and event topics, read by
:func:`streams.tune.load_source`) becomes interactions (:func:`scoring.protocol.interactions_from_events`:
the events of one user on one item at one time are one interaction, positive with a
purchase or a review rated at least the threshold).  The interactions with
``--from <= ts < --validation-from`` are the training range; those from ``--validation-from``
up to ``--split`` (default: the end of the log) the validation window, on which HR@k/NDCG@k
are measured after every epoch (the protocol's rules: the user's earlier interactions are the
state, the items they rated are not candidates); the best epoch is kept and written to
``--output``.  ``--split`` is the start of the test period, as ``backtest --split``: nothing
from it on is read.

Item text embeddings are the worker's (``--item-fields``, the packaged MiniLM), so the
checkpoint reads the same vectors the worker keeps in its item matrix.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from recstream.scoring.records import KIND_RANK

from .config import worker_defaults
from .produce import format_time

if TYPE_CHECKING:
    from recstream.encoders.sasrec import SASRecConfig
    from recstream.encoders.train import TrainConfig

    from .app import WorkerConfig
    from .config import KafkaSettings


def _model_defaults() -> SASRecConfig:
    from recstream.encoders.sasrec import SASRecConfig

    return SASRecConfig(vocab=())


def _train_defaults() -> TrainConfig:
    """``recstream train``'s training defaults: smaller batches, every next interaction a
    target and less patience than :class:`encoders.train.TrainConfig`'s own."""
    from recstream.encoders.train import TrainConfig

    return TrainConfig(batch_size=32, targets="all", patience=3)


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``recstream train`` can be told (made from its flags by
    :func:`streams.cli.train.train_settings`, which checks them).

    The interactions of the ``kinds`` from ``from_ms`` to ``validation_from_ms`` train, those
    from ``validation_from_ms`` to ``split_ms`` (``None``: the end of the log) validate; they
    are read from the dataset at ``dataset`` or, without one, from the ``kafka`` deployment's
    topics. ``model`` is the encoder's shape (and version label), ``train`` the training's
    hyper-parameters and device; ``engine`` the worker's settings the checkpoint must match
    (its item fields and text model) and the torch threads.
    """

    output: str
    validation_from_ms: int
    model: SASRecConfig = field(default_factory=_model_defaults)
    train: TrainConfig = field(default_factory=_train_defaults)
    engine: WorkerConfig = field(default_factory=worker_defaults)
    kafka: KafkaSettings | None = None  # the deployment read (None with a dataset)
    dataset: str | None = None
    dataset_options: dict[str, Any] | None = None  # a CSV column mapping (streams.sources.load_dataset)
    from_ms: int | None = None
    split_ms: int | None = None
    kinds: tuple[str, ...] = tuple(KIND_RANK)  # click, purchase, review, as the worker's profiles
    positive_threshold: float = 4.0
    progress: bool = True


def run_train(settings: TrainSettings) -> int:
    """``recstream train``: train, write the checkpoint to ``settings.output`` and print the
    result. Returns the exit status."""
    import torch

    from recstream.encoders.sasrec import checkpoint_hash, save_checkpoint
    from recstream.encoders.train import train
    from recstream.scoring.protocol import interactions_from_events

    from .tune import catalog_embeddings, load_source

    if settings.engine.torch_threads:
        torch.set_num_threads(settings.engine.torch_threads)
    progress = settings.progress
    src = load_source(
        settings.dataset,
        settings.kafka,
        end_ms=settings.split_ms,
        positive_threshold=settings.positive_threshold,
        progress=progress,
        dataset_options=settings.dataset_options,
    )
    interactions = interactions_from_events(src.events, kinds=settings.kinds, positive_threshold=settings.positive_threshold)
    if settings.from_ms is not None:
        interactions = [it for it in interactions if it.ts >= settings.from_ms]
    known = {it.item_id for it in src.catalog}
    interactions = [it for it in interactions if it.item_id in known]
    train_end = sum(1 for it in interactions if it.ts < settings.validation_from_ms)
    if train_end == 0:
        raise ValueError("no interaction on a catalog item in the training range")
    if train_end == len(interactions):
        print("recstream train: no interaction after --validation-from: no validation, the last epoch is kept", file=sys.stderr)
    fields = settings.engine.item_fields
    emb, info = catalog_embeddings(src.catalog, fields=fields, model=settings.engine.model, device=settings.train.device, progress=progress)
    dates = {"from": settings.from_ms, "to": settings.validation_from_ms, "validate_to": settings.split_ms}
    mc = replace(
        settings.model,
        text_model=info["model"],
        training={
            "source": src.name,
            **{name: None if ms is None else format_time(ms) for name, ms in dates.items()},
            "kinds": list(settings.kinds),
            "item_fields": list(fields),
        },
    )
    res = train(
        interactions,
        [it.item_id for it in src.catalog],
        emb,
        train_end=train_end,
        valid_end=len(interactions),
        model_config=mc,
        config=settings.train,
        progress=progress,
    )
    path = save_checkpoint(res.model, settings.output)
    m = res.model.config.metric
    k = settings.train.k
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
