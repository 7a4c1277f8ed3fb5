"""The foundation: a real broker behaves as the worker relies on it to."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from sentistream.worker import kafka_clients
from tests.cluster import KafkaCluster

pytestmark = pytest.mark.kafka


def _drain(consumer: KafkaConsumer, want: int, timeout: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    return got


def test_round_trip(kafka: KafkaCluster, topics) -> None:
    s = topics()
    values = [f"hello {i}".encode() for i in range(20)]
    kafka.produce(s.input_topic, [(b"k", v) for v in values])
    consumer = kafka_clients.consumer(s, s.bootstrap_servers)
    consumer.subscribe([s.input_topic])
    got = _drain(consumer, 20)
    consumer.close()
    assert [r.value for r in got] == values  # one key: one partition, in order


def test_topic_creation_is_idempotent(settings_for) -> None:
    s = settings_for(partitions=3)
    admin = kafka_clients.admin(s, s.bootstrap_servers)
    try:
        specs = kafka_clients.topic_specs(s)
        assert kafka_clients.ensure_topics(admin, specs) == sorted(specs)
        assert kafka_clients.ensure_topics(admin, specs) == []
        rows = kafka_clients.describe_topics(admin, list(specs))
        assert {r["topic"]: r["partitions"] for r in rows} == {name: 3 for name in specs}
    finally:
        admin.close()


def test_group_of_two_splits_partitions(topics) -> None:
    s = topics(partitions=4)
    # Each member polls on its own thread, as two worker processes would.
    consumers = [kafka_clients.consumer(s, s.bootstrap_servers) for _ in range(2)]
    done = threading.Event()

    def member(c) -> None:
        c.subscribe([s.input_topic])
        while not done.is_set():
            c.poll(timeout_ms=100)

    threads = [threading.Thread(target=member, args=(c,), daemon=True) for c in consumers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sorted(len(c.assignment()) for c in consumers) != [2, 2]:
        time.sleep(0.2)
    a, b = (set(c.assignment()) for c in consumers)
    done.set()
    for t in threads:
        t.join(10)
    for c in consumers:
        c.close()
    assert len(a) == 2 and len(b) == 2
    assert not (a & b)


def test_committed_offsets_survive_restart(kafka: KafkaCluster, topics) -> None:
    s = topics(partitions=1)
    kafka.produce(s.input_topic, [(None, f"m{i}".encode()) for i in range(10)])
    first = kafka_clients.consumer(s, s.bootstrap_servers, max_poll_records=4)
    first.subscribe([s.input_topic])
    got = _drain(first, 4)[:4]
    tp = TopicPartition(s.input_topic, 0)
    first.commit({tp: __import__("kafka").OffsetAndMetadata(got[-1].offset + 1, "", -1)})
    first.close()
    second = kafka_clients.consumer(s, s.bootstrap_servers)
    second.subscribe([s.input_topic])
    rest = _drain(second, 6)
    second.close()
    assert [r.value for r in rest] == [f"m{i}".encode() for i in range(4, 10)]


def test_end_offsets_match_what_was_produced(kafka: KafkaCluster, topics) -> None:
    s = topics(partitions=2)
    producer = kafka.producer()
    for _ in range(7):
        producer.send(s.input_topic, value=b"x", partition=0)
    for _ in range(5):
        producer.send(s.input_topic, value=b"y", partition=1)
    producer.flush()
    producer.close()
    consumer = kafka_clients.consumer(s, s.bootstrap_servers)
    ends = consumer.end_offsets([TopicPartition(s.input_topic, 0), TopicPartition(s.input_topic, 1)])
    consumer.close()
    assert ends == {TopicPartition(s.input_topic, 0): 7, TopicPartition(s.input_topic, 1): 5}
