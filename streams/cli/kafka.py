"""``recstream kafka``: start, stop or check the local development broker."""

from __future__ import annotations

import argparse


def cmd_kafka(args: argparse.Namespace) -> int:
    from .. import localkafka

    extra = [str(args.lines)] if args.action == "logs" else []
    return localkafka.run(args.action, *extra, port=args.port, data_dir=args.data_dir)


def add_parser(sub, kafka_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "kafka",
        help="start, stop or check the local development broker",
        description="The local Apache Kafka broker (KRaft, single node, 127.0.0.1) from Maven Central.",
    )
    p.add_argument("action", choices=["start", "stop", "restart", "status", "fetch", "logs", "reset"])
    p.add_argument("--port", type=int, help="client port (env RECSTREAM_KAFKA_PORT; default 9092; controller on PORT+1)")
    p.add_argument(
        "--data-dir",
        help="data folder (env RECSTREAM_KAFKA_DATA; default .kafka/data-PORT in a source checkout, ~/.local/state/recstream/kafka/data-PORT when installed)",
    )
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show for 'logs' (default 50)")
    p.set_defaults(func=cmd_kafka)
