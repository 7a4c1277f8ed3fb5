"""ACLs on the session broker: tests/kafka_acl.py really denies, and really allows again."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import TopicAuthorizationFailedError

from sentistream.worker import kafka_clients
from tests.kafka_acl import allow_writes, deny_writes

pytestmark = pytest.mark.kafka


def _send(bootstrap: str, topic: str, value: bytes, **config) -> int:
    """One record through a fresh producer; its offset."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **config)
    try:
        return producer.send(topic, value=value).get(timeout=15).offset
    finally:
        producer.close(timeout=5)


def _values(bootstrap: str, topic: str, want: int) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    got = []
    for record in consumer:
        got.append(record.value)
        if len(got) == want:
            break
    consumer.close()
    return got


@pytest.fixture
def two_topics(acl_bootstrap: str, settings_for):
    s = settings_for(partitions=1)
    admin = kafka_clients.admin(s, acl_bootstrap)
    kafka_clients.ensure_topics(admin, {s.dlq_topic: {"num_partitions": 1}, s.output_topic: {"num_partitions": 1}})
    admin.close()
    yield s.dlq_topic, s.output_topic
    allow_writes(acl_bootstrap, s.dlq_topic)


def test_deny_writes_fails_that_topic_only_and_allow_writes_restores_it(acl_bootstrap, two_topics) -> None:
    locked, other = two_topics
    assert _send(acl_bootstrap, locked, b"before") == 0
    deny_writes(acl_bootstrap, locked)
    with pytest.raises(TopicAuthorizationFailedError):
        _send(acl_bootstrap, locked, b"denied")
    assert _send(acl_bootstrap, other, b"still fine") == 0
    assert _values(acl_bootstrap, locked, 1) == [b"before"]  # reading a denied topic still works
    allow_writes(acl_bootstrap, locked)
    assert _send(acl_bootstrap, locked, b"after") == 1
    assert _values(acl_bootstrap, locked, 2) == [b"before", b"after"]


def test_one_denied_write_breaks_an_idempotent_producer_for_good(acl_bootstrap, two_topics) -> None:
    """kafka-python 3.0.12 files a refused produce of an idempotent producer as a fatal error:
    every later send fails, to any topic, even once writes are allowed again. A plain producer
    only loses the refused record. Whoever is refused a write must build a new producer."""
    locked, other = two_topics
    idempotent = KafkaProducer(bootstrap_servers=acl_bootstrap, acks="all", enable_idempotence=True)
    plain = KafkaProducer(bootstrap_servers=acl_bootstrap, acks="all", enable_idempotence=False)
    try:
        for producer in (idempotent, plain):  # both know the topic's leader before the ACL
            producer.send(locked, value=b"warm").get(timeout=15)
        deny_writes(acl_bootstrap, locked)
        for producer in (idempotent, plain):
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(locked, value=b"denied").get(timeout=15)
        assert plain.send(other, value=b"fine").get(timeout=15).offset == 0
        allow_writes(acl_bootstrap, locked)
        with pytest.raises(TopicAuthorizationFailedError):
            idempotent.send(other, value=b"poisoned").get(timeout=15)
        assert plain.send(locked, value=b"again").get(timeout=15).offset == 2
    finally:
        idempotent.close(timeout=5)
        plain.close(timeout=5)
