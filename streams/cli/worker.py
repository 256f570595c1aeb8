"""``recstream worker``: run the streaming pipeline (its flags, and the :class:`streams.app.WorkerConfig` they make)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import ConfigError
from .options import (
    _env_choice,
    adapt_knobs,
    add_setting,
    blend_weights,
    default_of,
    engine_knobs,
    knob_settings,
    settings_from,
    text_model_option,
    torch_threads_option,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


def worker_config(args: argparse.Namespace):
    """The :class:`streams.app.WorkerConfig` of ``recstream worker``'s flags; settings it
    refuses are a ConfigError listing every problem (one line, exit status 2)."""
    from pathlib import Path

    from ..app import WorkerConfig

    kafka = settings_from(args)
    blend = blend_weights(args.blend)  # a bad file: one line, exit status 1
    api_token = _api_token(args.api_token_file) if args.api_token_file else None
    try:
        return WorkerConfig(
            kafka=kafka,
            partitions=args.partitions,
            k=args.k,
            emit=args.emit,
            exclude_seen=args.exclude_seen,
            device=args.device,
            model=args.model,
            max_length=args.max_length,
            batch_max=args.batch_max,
            batch_within_s=args.batch_within_ms / 1000.0,
            catalog_batch_max=args.catalog_batch_max,
            data_dir=Path(args.data_dir),
            processing_guarantee=args.processing_guarantee,
            max_task_idle_ms=args.max_task_idle_ms,
            max_skew_ms=args.max_skew_ms,
            torch_threads=args.torch_threads,
            index=args.index,
            index_min_items=args.index_min_items,
            ivf_nprobe=args.ivf_nprobe,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            stall_timeout_s=args.stall_timeout,
            broker_grace_s=args.broker_grace,
            session_timeout_s=args.session_timeout,
            heartbeat_interval_s=args.heartbeat_interval,
            log_format=args.log_format,
            ranker=args.ranker or ("learned" if args.user_model else default_of(WorkerConfig, "ranker")),
            blend=blend,
            user_model=args.user_model,
            user_model_check_s=args.user_model_check_s,
            api=args.api,
            api_process=args.api_process,
            api_url=args.api_url,
            api_token=api_token,
            **knob_settings(args, adapt=True),
        )
    except ValueError as exc:  # every problem, in one line
        raise ConfigError(str(exc)) from None


def _api_token(path: str) -> str:
    from ..api import read_token_file

    return read_token_file(path)  # ValueError with the reason: one line, exit status 1


def cmd_worker(args: argparse.Namespace) -> int:
    from ..security import check_connection

    config = worker_config(args)
    settings = config.kafka
    check_connection(settings.bootstrap_servers, settings.security)  # before torch and the model load
    if config.processing_guarantee == "exactly_once":
        # refused transactional ids would otherwise surface in a rebalance, where aiokafka
        # logs the error and carries on: the worker would wait forever
        from ..security import check_transactional_ids
        from ..transactions import transactional_id

        check_transactional_ids(settings.bootstrap_servers, settings.security, transactional_id(settings.app_id, 0))
    from ..worker import run_worker

    return run_worker(config, loglevel=args.loglevel)


def worker_options(p: argparse.ArgumentParser) -> None:
    """The worker's flags: each takes its default from its :class:`streams.app.WorkerConfig` field."""
    from recstream.scoring.ann import INDEX_KINDS
    from recstream.scoring.blend import DEFAULT_WEIGHTS
    from recstream.scoring.engine import EMIT_MODES

    from ..app import GUARANTEES, RANKERS, WorkerConfig
    from ..logs import LOG_FORMATS
    from ..metrics import DEFAULT_METRICS_PORT

    def default(name: str) -> Any:
        return default_of(WorkerConfig, name)

    g = p.add_argument_group("pipeline")
    add_setting(g, "--partitions", type=int, default=default("partitions"), help="partitions of the event topics and tables")
    add_setting(g, "-k", "--k", type=int, default=default("k"), help="items per recommendation")
    add_setting(g, "--emit", choices=EMIT_MODES, default=default("emit"), help="one record per touched user per micro-batch, or one per event")
    add_setting(
        g,
        "--exclude-seen",
        type=bool,
        default=default("exclude_seen"),
        help="exclude items in the user's recent history; purchases are always excluded",
    )
    g = p.add_argument_group("ranking (docs/ranking.md)")
    add_setting(
        g,
        "--ranker",
        choices=RANKERS,
        default=None,
        help="blend: text similarity, item co-occurrence and popularity, z-scored and weighted; text: the text profile alone; learned: the user encoder of --user-model",
        default_text=f"learned with --user-model, else {default('ranker')}",
    )
    add_setting(
        g,
        "--blend",
        metavar="PATH",
        default=default("blend"),
        help="the blend's weights, a file written by 'recstream tune'",
        default_text=f"{DEFAULT_WEIGHTS.label()}, chosen on two datasets' validation windows",
    )
    engine_knobs(g)
    adapt_knobs(g)
    g = p.add_argument_group("learned user encoder (docs/learned.md)")
    add_setting(
        g,
        "--user-model",
        metavar="CKPT",
        default=default("user_model"),
        help="checkpoint written by 'recstream train': rank users with it (one forward pass per micro-batch), reloaded when the file changes",
    )
    add_setting(
        g,
        "--user-model-check-s",
        type=float,
        metavar="SECONDS",
        default=default("user_model_check_s"),
        help="how often the checkpoint file is checked for a new version",
    )
    g = p.add_argument_group("encoder and device")
    text_model_option(g)
    add_setting(g, "--device", default=default("device"), help="auto, cpu, cuda or cuda:N", default_text="auto: CUDA when present")
    torch_threads_option(g)
    add_setting(g, "--max-length", type=int, default=default("max_length"), help="token limit per text")
    g = p.add_argument_group("scoring index")
    add_setting(
        g,
        "--index",
        choices=INDEX_KINDS,
        default=default("index"),
        help="exact top-k, or an approximate faiss IVF index once the catalog holds --index-min-items items; auto = ivf on the CPU when faiss is installed, exact on CUDA; see docs/benchmarks.md",
    )
    add_setting(g, "--index-min-items", type=int, default=default("index_min_items"), help="live items from which the IVF index is searched; exact below")
    add_setting(
        g,
        "--ivf-nprobe",
        type=int,
        default=default("ivf_nprobe"),
        help="IVF lists probed per query: recall@10 0.96 at 1M items with 16",
    )
    g = p.add_argument_group("micro-batches and state")
    add_setting(g, "--batch-max", type=int, default=default("batch_max"), help="most events per micro-batch")
    add_setting(
        g,
        "--batch-within-ms",
        type=float,
        default=default("batch_within_s") * 1000.0,
        help="how long an idle worker waits for more events before it starts a micro-batch smaller than --batch-max; "
        "under load the events that arrive while a batch is processed make the next one, so batches grow with the load",
        default_text=f"{default('batch_within_s') * 1000.0:g}: at once",
    )
    add_setting(g, "--catalog-batch-max", type=int, default=default("catalog_batch_max"), help="most catalog records per micro-batch")
    add_setting(g, "--data-dir", default=str(default("data_dir")), help="local RocksDB state")
    add_setting(
        g,
        "--processing-guarantee",
        choices=GUARANTEES,
        default=default("processing_guarantee"),
        help="at_least_once, or exactly_once with Kafka transactions, see docs/pipeline.md",
    )
    add_setting(
        g,
        "--max-task-idle-ms",
        type=int,
        metavar="MS",
        default=default("max_task_idle_ms"),
        help="events of all the worker's partitions are applied in event-time order; a partition with nothing buffered holds the others back while it has unfetched records on the broker, and for this long more when caught up (waiting for its producers); -1 applies records as fetched, in no order across topics; as Kafka Streams' max.task.idle.ms",
    )
    add_setting(
        g,
        "--max-skew-ms",
        type=int,
        metavar="MS",
        default=default("max_skew_ms"),
        help="keep in step with the other workers of the group: hold events more than MS of event time past the slowest other partition still progressing, so a worker does not rank with evidence from far behind it (a replay, a catch-up); 0: in lockstep",
        default_text="no bound, as live workers are all close to the clock; `backtest --workers` uses 0",
    )
    g = p.add_argument_group("monitoring")
    add_setting(
        g,
        "--metrics-port",
        type=int,
        metavar="PORT",
        default=default("metrics_port"),
        help="HTTP port of /metrics (Prometheus), /health and /ready; 0 turns them off",
        default_text=f"{DEFAULT_METRICS_PORT}, skipped with a warning when another process holds it; a port set by flag or env must be free",
    )
    add_setting(
        g,
        "--metrics-host",
        metavar="HOST",
        default=default("metrics_host"),
        help="address the endpoint listens on; 0.0.0.0 in a container, for a scraper outside it",
    )
    add_setting(
        g,
        "--stall-timeout",
        type=float,
        metavar="SECONDS",
        default=default("stall_timeout_s"),
        help="/health turns unhealthy when input waits and no micro-batch completed for this long",
    )
    add_setting(
        g,
        "--broker-grace",
        type=float,
        metavar="SECONDS",
        default=default("broker_grace_s"),
        help="/health turns unhealthy when the broker has not answered for this long",
    )
    add_setting(
        g,
        "--log-format",
        choices=LOG_FORMATS,
        default=default("log_format"),
        help="text, or json: one JSON object per line; secrets and review texts are masked in both",
    )
    g = p.add_argument_group("HTTP API (docs/api.md), served on the metrics endpoint's port")
    add_setting(
        g,
        "--api",
        type=bool,
        default=default("api"),
        help="serve /v1/ (latest recommendations, recommend on request, forget a user) beside /metrics; --no-api switches it off; off too when the metrics endpoint is",
    )
    add_setting(
        g,
        "--api-process",
        type=bool,
        default=default("api_process"),
        help="answer lookups (GET /v1/users/{user_id}/recommendations) in a process of the worker's own, which reads the worker's stores, "
        "so that they do not wait for the stream's Python; every other request is passed to the worker; --no-api-process serves all from the worker",
    )
    add_setting(
        g,
        "--api-token-file",
        metavar="FILE",
        default=None,
        help="file whose first line is a bearer token every endpoint but /health, /ready and /metrics then requires",
        default_text="none: no token",
    )
    add_setting(
        g,
        "--api-url",
        metavar="URL",
        default=default("api_url"),
        help="the URL the other workers of the group forward this worker's users' requests to",
        default_text="http://<metrics host>:<metrics port>, the host's name when listening on 0.0.0.0",
    )
    g = p.add_argument_group("consumer group membership (docs/pipeline.md: Guarantees, crashes and bad input)")
    add_setting(
        g,
        "--session-timeout",
        type=float,
        metavar="SECONDS",
        default=default("session_timeout_s"),
        help="a worker that sends no heartbeat for this long (killed, frozen, cut off from the broker) is dropped from the group and its partitions go to the others: shorter fails over faster, and drops a worker paused by GC or a busy CPU sooner (a spurious rebalance); 6 to 1800, what brokers accept by default",
    )
    add_setting(
        g,
        "--heartbeat-interval",
        type=float,
        metavar="SECONDS",
        default=default("heartbeat_interval_s"),
        help="how often the worker sends its heartbeat; at most a third of --session-timeout",
    )


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "worker",
        parents=[kafka_opts],
        help="run the streaming pipeline",
        description="Consume the catalog and event topics, keep profiles and item embeddings in "
        "RocksDB-backed tables, and publish top-k recommendations. Stops cleanly on Ctrl-C / SIGTERM.",
    )
    worker_options(p)
    p.add_argument(
        "--loglevel", choices=LOG_LEVELS, default=_env_choice("LOGLEVEL", LOG_LEVELS, "info"), help="worker log level (env RECSTREAM_LOGLEVEL; default info)"
    )
    p.set_defaults(func=cmd_worker)
