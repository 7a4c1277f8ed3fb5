"""The one place that creates Kafka client objects; everything else receives plain records.

Also resolves which cluster to talk to: the configured bootstrap, else the local broker that
``sentistream broker up`` started (its state file), else a plain error.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError

from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)

# settings.rebalance -> the group's assignors (eager: kafka-python's default pair)
ASSIGNORS = {"cooperative": (CooperativeStickyAssignor,),
             "eager": (RangePartitionAssignor, RoundRobinPartitionAssignor)}

# Large enough for any input record plus our dead-letter headers.
MAX_REQUEST_BYTES = 8 * 1024 * 1024


class NoBrokerConfigured(RuntimeError):
    pass


def resolve_bootstrap(settings: Settings) -> str:
    """The configured cluster. (The ``sentistream`` command fills it in with the local broker's
    address when ``sentistream broker up`` started one and nothing else is configured.)"""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    raise NoBrokerConfigured("no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or run `sentistream broker up`")


def brokers_answering(bootstrap: str, **config: Any) -> int:
    """How many brokers the cluster reports; 0 when it does not answer."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=3000,
                                 client_id="sentistream-probe", **config)
    except KafkaError:
        return 0
    try:
        return len(admin.describe_cluster().get("brokers", []))
    except KafkaError:
        return 0
    finally:
        admin.close()


def admin(settings: Settings, bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(**settings.kafka_client_config(bootstrap))


def consumer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaConsumer:
    cfg: dict[str, Any] = {
        **settings.kafka_client_config(bootstrap),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": max(500, settings.batch_size * 4),
        "fetch_max_wait_ms": 500,  # a long poll: returns as soon as data arrives; idle = 2 fetches/s
        "isolation_level": "read_committed",
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
        "max_poll_interval_ms": 300_000,
        "partition_assignment_strategy": ASSIGNORS[settings.rebalance],
    }
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


def producer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaProducer:
    cfg: dict[str, Any] = {
        **settings.kafka_client_config(bootstrap),
        "acks": "all",
        # kafka-python's idempotent producer turns one refused record (too large, not authorized)
        # into a fatal state in which every later send fails. Without it, one request in flight
        # per connection keeps each partition's order; a retried send may duplicate, which
        # at-least-once allows. Transactions (exactly-once) switch idempotence back on.
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "linger_ms": 0,  # results go out at once (latency); under load batches form anyway
        "batch_size": 64 * 1024,
        "max_request_size": MAX_REQUEST_BYTES,
        "compression_type": None,
        # send() blocks at most this long for metadata or buffer space (a broker outage): then
        # the send fails, its partition is rewound and retried (worker/delivery.py)
        "max_block_ms": 10_000,
    }
    cfg.update(overrides)
    return KafkaProducer(**cfg)


BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def topic_max_bytes(client: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (the broker default where it cannot be read), so the
    worker refuses an oversized result itself instead of having the broker refuse it."""
    from kafka.admin import ConfigResource, ConfigResourceType

    limits = dict.fromkeys(topics, BROKER_DEFAULT_MAX_MESSAGE_BYTES)
    try:
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t, ["max.message.bytes"])
                                             for t in topics])
        for topic, configs in described.get("topic", {}).items():
            value = configs.get("max.message.bytes", {}).get("value")
            if value is not None:
                limits[topic] = int(value)
    except KafkaError as exc:
        log.warning("cannot read max.message.bytes of %s (%s); assuming the broker default", topics, exc)
    return limits


def coordinator_unknown(consumer: KafkaConsumer) -> bool:
    """Whether the consumer has lost its group coordinator (the broker is unreachable or moving).
    kafka-python has no public call for this; it is read here, in the one module that knows the
    client."""
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and coordinator.coordinator_unknown()


def topic_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The project's three topics. The dead-letter topic accepts records as large as any input."""
    return {
        settings.input_topic: {"num_partitions": settings.partitions},
        settings.output_topic: {"num_partitions": settings.partitions},
        settings.dlq_topic: {"num_partitions": settings.partitions,
                             "configs": {"max.message.bytes": str(MAX_REQUEST_BYTES)}},
    }


def ensure_topics(client: KafkaAdminClient, specs: dict[str, dict[str, Any]]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    existing = set(client.list_topics())
    missing = {name: spec for name, spec in specs.items() if name not in existing}
    if not missing:
        return []
    with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
        client.create_topics(missing, wait_for_metadata=True)
    log.info("created topics %s", sorted(missing))
    return sorted(missing)


def describe_topics(client: KafkaAdminClient, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for topic in client.describe_topics(names):
        rows.append({
            "topic": topic["topic"] if "topic" in topic else topic.get("name"),
            "partitions": len(topic.get("partitions", [])),
            "error_code": topic.get("error_code", 0),
        })
    return rows
