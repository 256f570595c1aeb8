"""The ``recstream`` command line.

Every command that talks to Kafka takes ``--broker`` (``RECSTREAM_BROKER``),
``--topic-prefix`` (``RECSTREAM_TOPIC_PREFIX``) and ``--app-id`` (``RECSTREAM_APP_ID``);
flags win over environment variables, which win over the defaults (the local broker on
127.0.0.1:9092, no prefix, app id ``recstream``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Sequence

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
    return parent


def settings_from(args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings.from_env(broker=args.broker, topic_prefix=args.topic_prefix, app_id=args.app_id)


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
        names = [s.name for s in topics.topic_specs(settings)]
        topics.delete_topics(settings, names)
        print("deleted: " + ", ".join(names))
        return 0
    raise AssertionError(args.action)


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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.exit(2, f"recstream: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the message, not a traceback, for expected failures
        from kafka.errors import KafkaError

        if isinstance(exc, (KafkaError, FileNotFoundError, ValueError)):
            parser.exit(1, f"recstream: error: {exc}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
