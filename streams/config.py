"""Connection and naming settings shared by every recstream command.

Every command talks to one Kafka cluster (``--broker`` / ``RECSTREAM_BROKER``, default
the local broker on 127.0.0.1:9092) and names its topics with an optional prefix
(``--topic-prefix`` / ``RECSTREAM_TOPIC_PREFIX``), so that several deployments, replays
and test runs share one cluster without touching each other. The Faust application id
(``--app-id`` / ``RECSTREAM_APP_ID``) names the consumer group and the state changelog
topics; it defaults to ``<prefix>recstream``.

TLS and SASL (:mod:`streams.security`) come from ``--security-protocol``,
``--sasl-mechanism``, ``--sasl-username``, ``--sasl-password-file``, ``--ssl-cafile``, ...
or their ``RECSTREAM_*`` variables. Every one of these settings can also be written in a
TOML file (``--config FILE`` / ``RECSTREAM_CONFIG``), in a ``[kafka]`` table (the same file
holds the other settings of each command, in a table named after it: ``[worker]``,
``[backtest]``, ...; see :mod:`streams.cli.configfile`)::

    [kafka]
    broker = "kafka-1.internal:9096"
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_username = "recstream"
    sasl_password_file = "/run/secrets/kafka-password"
    ssl_cafile = "/etc/ssl/kafka-ca.pem"

Flags win over environment variables, which win over the file, which wins over defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import security
from .security import SecuritySettings

DEFAULT_BROKER = "127.0.0.1:9092"
DEFAULT_APP_ID = "recstream"
ENV_BROKER = "RECSTREAM_BROKER"
ENV_TOPIC_PREFIX = "RECSTREAM_TOPIC_PREFIX"
ENV_APP_ID = "RECSTREAM_APP_ID"
ENV_CONFIG = "RECSTREAM_CONFIG"
#: Keys of the config file's ``[kafka]`` table.
FILE_KEYS = ("broker", "topic_prefix", "app_id", *security.FILE_KEYS)
#: The config file's command tables: the settings of ``recstream <command>``, keyed by its long
#: flags (``batch-max`` or ``batch_max``); checked and applied by :mod:`streams.cli.configfile`.
#: ``recstream kafka`` (the local development broker) has none: ``[kafka]`` is the connection.
COMMAND_TABLES = ("topics", "worker", "forget", "profile", "produce", "replay", "backtest", "tune", "train", "subscribe", "demo")
CONFIG_TABLES = ("kafka", *COMMAND_TABLES)
MAX_CONFIG_BYTES = 1024 * 1024

log = logging.getLogger(__name__)

# Kafka's legal topic characters; the prefix and app id become parts of topic names.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_LEN = 249


class ConfigError(ValueError):
    """A setting has a value recstream cannot use; the message says which and why."""


def worker_defaults() -> Any:
    """``WorkerConfig()``, the worker's defaults: the default of the settings models that hold
    the worker's engine settings (imported when called: :mod:`streams.app` loads Faust)."""
    from .app import WorkerConfig

    return WorkerConfig()


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the cluster is, how to connect to it and how this deployment names its topics."""

    broker: str = DEFAULT_BROKER
    topic_prefix: str = ""
    app_id: str = ""
    security: SecuritySettings = field(default_factory=SecuritySettings)

    def __post_init__(self) -> None:
        servers = [s.strip() for s in self.broker.split(",") if s.strip()]
        if not servers:
            raise ConfigError("broker: empty; give host:port[,host:port...]")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"broker: {server!r} is not host:port")
        if not _TOPIC_CHARS.match(self.topic_prefix):
            raise ConfigError(f"topic prefix: {self.topic_prefix!r} may hold only letters, digits, '.', '_' and '-'")
        if not _TOPIC_CHARS.match(self.app_id):
            raise ConfigError(f"app id: {self.app_id!r} may hold only letters, digits, '.', '_' and '-'")
        if not self.app_id:
            object.__setattr__(self, "app_id", f"{self.topic_prefix}{DEFAULT_APP_ID}")

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.broker.split(",") if s.strip()]

    def topic(self, logical: str) -> str:
        """The real topic name of a logical topic (``clicks`` → ``<prefix>clicks``)."""
        name = f"{self.topic_prefix}{logical}"
        if len(name) > _MAX_TOPIC_LEN:
            raise ConfigError(f"topic name {name!r} is longer than Kafka's {_MAX_TOPIC_LEN} characters")
        return name

    def changelog(self, table: str) -> str:
        """The changelog topic Faust uses for a state table of this application."""
        return f"{self.app_id}-{table}-changelog"

    def with_prefix(self, topic_prefix: str, app_id: str = "") -> "KafkaSettings":
        """Another namespace on the same cluster, with the same connection and credentials
        (the app id defaults to ``<new prefix>recstream``)."""
        return dataclasses.replace(self, topic_prefix=topic_prefix, app_id=app_id)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        broker: str | None = None,
        topic_prefix: str | None = None,
        app_id: str | None = None,
        config_file: str | None = None,
        **security_flags: Any,
    ) -> "KafkaSettings":
        """Explicit arguments (command-line flags) win over the environment, which wins over
        the config file (``config_file`` or ``RECSTREAM_CONFIG``), which wins over defaults.

        ``security_flags`` are the keyword arguments of :func:`streams.security.resolve`
        (``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password_file``,
        ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``).
        """
        env = os.environ if env is None else env
        path = config_file or env.get(ENV_CONFIG)
        table = load_config_file(path) if path else {}
        if topic_prefix is None:
            topic_prefix = env.get(ENV_TOPIC_PREFIX)
        if topic_prefix is None:
            topic_prefix = str(table.get("topic_prefix", ""))
        return cls(
            broker=broker or env.get(ENV_BROKER) or str(table.get("broker") or "") or DEFAULT_BROKER,
            topic_prefix=topic_prefix,
            app_id=app_id or env.get(ENV_APP_ID) or str(table.get("app_id") or ""),
            security=security.resolve(env, table, **security_flags),
        )


def read_config_file(path: str) -> dict[str, dict[str, Any]]:
    """The tables of a TOML config file: ``[kafka]`` (the connection, :func:`load_config_file`)
    and one per command (:data:`COMMAND_TABLES`, whose keys the command line checks). Anything
    else (another table, a key outside a table) is an error, not ignored."""
    return _read_config(path)[0]


def _read_config(path: str) -> tuple[dict[str, dict[str, Any]], int]:
    """The config file's tables, checked as :func:`read_config_file` says, and its mode."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    others = sorted(k for k in doc if k not in CONFIG_TABLES)
    if others:
        raise ConfigError(
            f"config file {path}: unknown table or key {', '.join(others)} (recstream reads [kafka] and a table per command: {', '.join(COMMAND_TABLES)})"
        )
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {name!r} must be a table ([{name}]), got {name} = {table!r}")
    return doc, mode


def load_config_file(path: str) -> dict[str, Any]:
    """The ``[kafka]`` table of a TOML config file (unknown keys are an error, not ignored)."""
    doc, mode = _read_config(path)
    table = doc.get("kafka", {})
    unknown = sorted(k for k in table if k not in FILE_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)} in [kafka]; known: {', '.join(FILE_KEYS)}")
    for key, value in table.items():
        if key == "ssl_check_hostname":
            if not isinstance(value, bool):
                raise ConfigError(f"config file {path}: ssl_check_hostname must be true or false")
        elif not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    if table.get("sasl_password") and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("config file %s holds a SASL password and other users can read it: chmod 600 it, or use sasl_password_file", path)
    return table
