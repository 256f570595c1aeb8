"""Connection and naming settings shared by every recstream command.

Every command talks to one Kafka cluster (``--broker`` / ``RECSTREAM_BROKER``, default
the local broker on 127.0.0.1:9092) and names its topics with an optional prefix
(``--topic-prefix`` / ``RECSTREAM_TOPIC_PREFIX``), so that several deployments, replays
and test runs share one cluster without touching each other. The Faust application id
(``--app-id`` / ``RECSTREAM_APP_ID``) names the consumer group and the state changelog
topics; it defaults to ``<prefix>recstream``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

DEFAULT_BROKER = "127.0.0.1:9092"
DEFAULT_APP_ID = "recstream"
ENV_BROKER = "RECSTREAM_BROKER"
ENV_TOPIC_PREFIX = "RECSTREAM_TOPIC_PREFIX"
ENV_APP_ID = "RECSTREAM_APP_ID"

# Kafka's legal topic characters; the prefix and app id become parts of topic names.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_LEN = 249


class ConfigError(ValueError):
    """A setting has a value recstream cannot use; the message says which and why."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the cluster is and how this deployment names its topics."""

    broker: str = DEFAULT_BROKER
    topic_prefix: str = ""
    app_id: str = ""

    def __post_init__(self) -> None:
        servers = [s.strip() for s in self.broker.split(",") if s.strip()]
        if not servers:
            raise ConfigError("broker: empty; give host:port[,host:port...]")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"broker: {server!r} is not host:port")
        if not _TOPIC_CHARS.match(self.topic_prefix):
            raise ConfigError(
                f"topic prefix: {self.topic_prefix!r} may hold only letters, digits, '.', '_' and '-'"
            )
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

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        broker: str | None = None,
        topic_prefix: str | None = None,
        app_id: str | None = None,
    ) -> "KafkaSettings":
        """Explicit arguments (command-line flags) win over the environment, which wins over defaults."""
        env = os.environ if env is None else env
        return cls(
            broker=broker or env.get(ENV_BROKER) or DEFAULT_BROKER,
            topic_prefix=topic_prefix if topic_prefix is not None else env.get(ENV_TOPIC_PREFIX, ""),
            app_id=app_id or env.get(ENV_APP_ID, ""),
        )
