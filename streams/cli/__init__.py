"""The ``recstream`` command line: one module per command, as faust's ``faust/cli/``.

Each command module (``kafka``, ``topics``, ``worker``, ``forget``, ``profile``,
``produce``, ``replay``, ``backtest``, ``tune``, ``train``, ``subscribe``, ``demo``) holds
its ``add_parser(sub, kafka_opts)`` and its ``cmd_*`` handler, which turns the flags into
calls of the module that does the work (``streams.worker``, ``streams.backtest``, ...);
:mod:`streams.cli.options` holds what they share (the Kafka option groups, the engine and
adaptation knobs, the ``RECSTREAM_*`` readers). :func:`main` maps expected failures to one
line and an exit status: 2 for a usage or settings error, 1 for a failure (an unreachable
broker, a refused login, an ACL, a bad file), 130 on Ctrl-C.

Every command that talks to Kafka takes ``--broker`` (``RECSTREAM_BROKER``),
``--topic-prefix`` (``RECSTREAM_TOPIC_PREFIX``) and ``--app-id`` (``RECSTREAM_APP_ID``);
flags win over environment variables, which win over the defaults (the local broker on
127.0.0.1:9092, no prefix, app id ``recstream``). TLS and SASL settings, and a TOML config
file for all of these (``--config``), are described in :mod:`streams.config` and
:mod:`streams.security`; passwords are read from a file or the environment, never from a flag.
The same file holds any other setting of a command, in a table named after it
(:mod:`streams.cli.configfile`): defaults < config file < environment < flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..config import ConfigError
from . import backtest, demo, forget, kafka, produce, profile, replay, subscribe, topics, train, tune, worker
from .backtest import backtest_settings
from .configfile import apply_config_file, note_environment
from .options import Handler, Parser, engine_worker_args, env_reads, kafka_options, settings_from, version_string
from .train import train_settings
from .tune import tune_settings
from .worker import worker_config

__all__ = [
    "Handler",
    "apply_config_file",
    "backtest_settings",
    "build_parser",
    "engine_worker_args",
    "main",
    "settings_from",
    "train_settings",
    "tune_settings",
    "worker_config",
]

#: the commands, in the order ``recstream --help`` lists them
COMMANDS = (kafka, topics, worker, forget, profile, produce, replay, backtest, tune, train, subscribe, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``recstream`` parser. The ``RECSTREAM_*`` variables are read here (they are the
    flags' defaults): one that does not parse raises :class:`~streams.config.ConfigError`."""
    parser = Parser(
        prog="recstream",
        description="Real-time, text-aware recommendations on Apache Kafka.",
        epilog="Run 'recstream COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_string()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    kafka_opts = kafka_options()
    for command in COMMANDS:
        before = set(sub.choices)
        with env_reads() as names:  # the settings the environment sets win over the config file's
            command.add_parser(sub, kafka_opts)
        for name in set(sub.choices) - before:
            note_environment(sub.choices[name], names)
    return parser


def _authorization_message(exc: Exception) -> str:
    """One line for an ACL refusal (kafka-python's errors carry the topics or a description)."""
    import re

    name = type(exc).__name__
    detail = re.sub(r"^\[Error \d+\] \w+: ", "", str(exc).strip())  # kafka-python repeats the class
    if len(detail) > 300:
        detail = detail[:300] + "..."
    what = {
        "TopicAuthorizationFailedError": "the user may not use these topics",
        "GroupAuthorizationFailedError": "the user may not use this consumer group (the app id)",
        "ClusterAuthorizationFailedError": "the user may not perform this cluster operation",
        "TransactionalIdAuthorizationFailedError": "the user may not use these transactional ids",
    }.get(name, "refused by the broker's ACLs")
    return f"{what} ({name}{': ' + detail if detail and detail != name else ''}); ask the cluster's operators for ACLs"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # the RECSTREAM_* variables are read as the parser is built, then the config file's table of the command
        parser = build_parser()
        apply_config_file(parser, argv)
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

        from ..security import AuthenticationFailed, BrokerUnreachable

        if isinstance(exc, (AuthenticationFailed, BrokerUnreachable)):
            parser.exit(1, f"recstream: {exc}\n")
        if isinstance(exc, AuthorizationError):
            parser.exit(1, f"recstream: not authorized: {_authorization_message(exc)}\n")
        if isinstance(exc, (KafkaError, FileNotFoundError, ValueError)):
            parser.exit(1, f"recstream: error: {exc}\n")
        raise
