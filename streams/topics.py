"""The topics recstream reads and writes, and idempotent creation of them.

Logical names are fixed (``items``, ``clicks``, ...); the real names carry the deployment's
prefix (see :mod:`streams.config`). Event topics and the recommendations topic share one
partition count: they are keyed by user, and profiles are co-partitioned with them. The
catalog has one partition (see :data:`CATALOG_PARTITIONS`). The
catalog and every state changelog are compacted, so they hold the latest value per key
forever and a restarted worker can rebuild its state from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Literal

from .config import KafkaSettings
from .records import EVENT_TOPICS

log = logging.getLogger(__name__)

ITEMS = "items"
CLICKS, PURCHASES, REVIEWS = EVENT_TOPICS  # "clicks", "purchases", "reviews"
RECOMMENDATIONS = "recommendations"
DLQ = "recstream-dlq"

#: Faust state tables of the pipeline; each has a compacted changelog topic.
PROFILES_TABLE = "profiles"
ITEMS_TABLE = "item-embeddings"
POPULARITY_TABLE = "popularity"
#: per-partition co-occurrence rows, key "<partition>:<item>" (written with --blend only)
COOCCURRENCE_TABLE = "cooccurrence"
WEIGHTS_TABLE = "blend-weights"
#: each user's latest recommendation record (the bytes published on ``recommendations``),
#: key user id: served by ``GET /v1/users/{user_id}/recommendations`` (streams/api.py)
LATEST_TABLE = "latest-recommendations"
TABLES = (PROFILES_TABLE, ITEMS_TABLE, POPULARITY_TABLE, COOCCURRENCE_TABLE, WEIGHTS_TABLE, LATEST_TABLE)
#: The catalog is small next to the event streams and replicated to every worker (a
#: Faust global table): one partition keeps its topic, its changelog and the local store
#: aligned, and one worker embeds each catalog update.
CATALOG_PARTITIONS = 1

DEFAULT_PARTITIONS = 4
COMPACTED = {"cleanup.policy": "compact"}
#: The changelogs that hold per-user values (a forgotten user's old values stay in a log
#: segment until the log cleaner compacts it, and the active segment is never compacted):
#: Kafka rolls and compacts a segment at the latest this long after its first record
#: (KIP-354), so a forgotten user's values are gone from the topic within about a day, and
#: their tombstones a ``delete.retention.ms`` (default one day) later.
PER_USER_TABLES = (PROFILES_TABLE, LATEST_TABLE)
MAX_COMPACTION_LAG_MS = 24 * 3600 * 1000
#: A dead letter carries the original value, base64-encoded when it is not UTF-8, so it can
#: be a third larger than the largest record the broker accepted; the DLQ takes 4 MiB.
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as recstream wants it: real name, partition count and configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication_factor: int = 1

    @property
    def compacted(self) -> bool:
        return "compact" in self.configs.get("cleanup.policy", "")


def topic_specs(
    settings: KafkaSettings,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = 1,
    include_changelogs: bool = True,
) -> list[TopicSpec]:
    """Every topic of one deployment, with the deployment's prefix applied."""
    if partitions < 1:
        raise ValueError(f"partitions: must be at least 1, got {partitions}")
    if replication_factor < 1:
        raise ValueError(f"replication factor: must be at least 1, got {replication_factor}")
    rf = replication_factor
    specs = [TopicSpec(settings.topic(ITEMS), CATALOG_PARTITIONS, dict(COMPACTED), rf)]
    specs += [TopicSpec(settings.topic(t), partitions, {}, rf) for t in EVENT_TOPICS]
    specs.append(TopicSpec(settings.topic(RECOMMENDATIONS), partitions, {}, rf))
    specs.append(TopicSpec(settings.topic(DLQ), 1, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}, rf))
    if include_changelogs:
        specs += [
            TopicSpec(
                settings.changelog(t),
                CATALOG_PARTITIONS if t == ITEMS_TABLE else partitions,
                {**COMPACTED, "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS)} if t in PER_USER_TABLES else dict(COMPACTED),
                rf,
            )
            for t in TABLES
        ]
    return specs


Outcome = Literal["created", "exists", "mismatch"]


@dataclass(frozen=True, slots=True)
class TopicStatus:
    name: str
    outcome: Outcome
    detail: str = ""


def admin_client(settings: KafkaSettings, timeout_s: float = 30.0):
    """A kafka-python admin client for the cluster (TLS and SASL as configured)."""
    from kafka.admin import KafkaAdminClient

    from .security import check_connection, kafka_python_kwargs

    check_connection(settings.bootstrap_servers, settings.security)
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        **kafka_python_kwargs(settings.security),
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )


def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0) -> list[TopicStatus]:
    """Create the topics that are missing; leave existing ones as they are.

    Idempotent: running it twice changes nothing. An existing topic whose partition count
    or cleanup policy differs from the spec is reported as ``mismatch`` (never altered:
    changing the partition count of a keyed topic would move keys between partitions).
    """
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

    specs = list(specs)
    admin = admin_client(settings, timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: set[str] = set()
        if missing:
            new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in missing]
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
                created = {s.name for s in missing}
            except TopicAuthorizationFailedError:
                # kafka-python's message repeats the whole request; name the topics instead
                raise TopicAuthorizationFailedError(f"creating {', '.join(s.name for s in missing)}") from None
            except TopicAlreadyExistsError:
                # a concurrent creator won the race for some of them: create the rest one by one
                for topic in new:
                    try:
                        admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                        created.add(topic.name)
                    except TopicAlreadyExistsError:
                        pass
        present = [s for s in specs if s.name not in created]
        described = {d["name"]: d for d in admin.describe_topics([s.name for s in present])} if present else {}
        configs: dict[str, dict] = {}
        if present:
            resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present]
            configs = admin.describe_configs(resources).get("topic", {})
        statuses = []
        for spec in specs:
            if spec.name in created:
                statuses.append(TopicStatus(spec.name, "created", f"{spec.partitions} partitions"))
                continue
            problems = []
            have = len(described.get(spec.name, {}).get("partitions", []))
            if have != spec.partitions:
                problems.append(f"has {have} partitions, recstream expects {spec.partitions}")
            policy = configs.get(spec.name, {}).get("cleanup.policy", {}).get("value", "delete")
            if spec.compacted and "compact" not in policy:
                problems.append(f"cleanup.policy is {policy!r}, recstream expects 'compact'")
            if problems:
                statuses.append(TopicStatus(spec.name, "mismatch", "; ".join(problems)))
            else:
                statuses.append(TopicStatus(spec.name, "exists", f"{have} partitions"))
        for status in statuses:
            log.info("topic %s: %s %s", status.name, status.outcome, status.detail)
        return statuses
    finally:
        admin.close()


def delete_topics(settings: KafkaSettings, names: Iterable[str], *, timeout_s: float = 30.0) -> None:
    """Delete topics (used by tests and ``recstream topics delete``); missing ones are ignored."""
    from kafka.errors import UnknownTopicOrPartitionError

    admin = admin_client(settings, timeout_s)
    try:
        wanted = [n for n in names if n in set(admin.list_topics())]
        if wanted:
            try:
                admin.delete_topics(wanted, timeout_ms=int(timeout_s * 1000))
            except UnknownTopicOrPartitionError:
                pass
    finally:
        admin.close()


def belongs_to(settings: KafkaSettings, name: str) -> bool:
    """Is ``name`` one of this deployment's topics: a recstream topic under its prefix, or a
    topic of its Faust application (changelogs, faust's own ``<app id>-__assignor-__leader``)?

    Never other topics that merely share an empty prefix.
    """
    own = {settings.topic(t) for t in (ITEMS, *EVENT_TOPICS, RECOMMENDATIONS, DLQ)}
    return name in own or name.startswith(f"{settings.app_id}-")


def list_topics(settings: KafkaSettings, *, timeout_s: float = 30.0) -> dict[str, int]:
    """Topic name → partition count for the deployment's topics present on the cluster."""
    admin = admin_client(settings, timeout_s)
    try:
        names = sorted(n for n in admin.list_topics() if belongs_to(settings, n))
        return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)} if names else {}
    finally:
        admin.close()
