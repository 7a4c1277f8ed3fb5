"""ACLs on the session broker: KafkaCluster.deny_writes (tests/cluster.py) really denies, and
allow_writes really allows again."""

from __future__ import annotations

import pytest
from kafka.errors import TopicAuthorizationFailedError

from tests.cluster import KafkaCluster

pytestmark = pytest.mark.kafka


def _send(kafka: KafkaCluster, topic: str, value: bytes, **config) -> int:
    """One record through a fresh producer; its offset."""
    producer = kafka.producer(**config)
    try:
        return producer.send(topic, value=value).get(timeout=15).offset
    finally:
        producer.close(timeout=5)


def _values(kafka: KafkaCluster, topic: str, want: int) -> list[bytes]:
    consumer = kafka.consumer(topic, isolation_level="read_uncommitted", consumer_timeout_ms=3000)
    got = []
    for record in consumer:
        got.append(record.value)
        if len(got) == want:
            break
    consumer.close()
    return got


@pytest.fixture
def two_topics(acl_kafka: KafkaCluster, settings_for):
    s = settings_for(partitions=1)
    created = acl_kafka.create_topics(s, {s.dlq_topic: {"num_partitions": 1}, s.output_topic: {"num_partitions": 1}})
    yield s.dlq_topic, s.output_topic
    acl_kafka.allow_writes(s.dlq_topic)
    acl_kafka.delete_topics(created)


def test_deny_writes_fails_that_topic_only_and_allow_writes_restores_it(acl_kafka, two_topics) -> None:
    locked, other = two_topics
    assert _send(acl_kafka, locked, b"before") == 0
    acl_kafka.deny_writes(locked)
    with pytest.raises(TopicAuthorizationFailedError):
        _send(acl_kafka, locked, b"denied")
    assert _send(acl_kafka, other, b"still fine") == 0
    assert _values(acl_kafka, locked, 1) == [b"before"]  # reading a denied topic still works
    acl_kafka.allow_writes(locked)
    assert _send(acl_kafka, locked, b"after") == 1
    assert _values(acl_kafka, locked, 2) == [b"before", b"after"]


def test_one_denied_write_breaks_an_idempotent_producer_for_good(acl_kafka, two_topics) -> None:
    """kafka-python 3.0.12 files a refused produce of an idempotent producer as a fatal error:
    every later send fails, to any topic, even once writes are allowed again. A plain producer
    only loses the refused record. Whoever is refused a write must build a new producer."""
    locked, other = two_topics
    idempotent = acl_kafka.producer(enable_idempotence=True)
    plain = acl_kafka.producer(enable_idempotence=False)
    try:
        for producer in (idempotent, plain):  # both know the topic's leader before the ACL
            producer.send(locked, value=b"warm").get(timeout=15)
        acl_kafka.deny_writes(locked)
        for producer in (idempotent, plain):
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(locked, value=b"denied").get(timeout=15)
        assert plain.send(other, value=b"fine").get(timeout=15).offset == 0
        acl_kafka.allow_writes(locked)
        with pytest.raises(TopicAuthorizationFailedError):
            idempotent.send(other, value=b"poisoned").get(timeout=15)
        assert plain.send(locked, value=b"again").get(timeout=15).offset == 2
    finally:
        idempotent.close(timeout=5)
        plain.close(timeout=5)
