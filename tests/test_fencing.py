"""Exactly-once fencing on the real broker: a transaction's input offsets are committed only for
a member of the group's current generation.

kafka-python's heartbeat thread drops the consumer's generation when the group refuses a
heartbeat (the member was expelled, for instance after a network cut); the consumer rejoins on
its next poll. In between, work the worker still holds must not commit: the broker takes a
transaction's offsets *without* a generation unchecked (shown below with a plain producer), so
they would land next to the new owner's results for the same records. Found through
``test_cutoff``, where it showed once in a few runs as one duplicate.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import namedtuple

import pytest
from kafka import ConsumerGroupMetadata, OffsetAndMetadata, TopicPartition

from sentistream.worker import kafka_clients
from sentistream.worker.delivery import ExactlyOnce
from sentistream.worker.health import Health
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.outgoing import Handled, Outgoing
from tests.cluster import KafkaCluster

pytestmark = pytest.mark.kafka

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")


def _joined(kafka: KafkaCluster, s):
    consumer = kafka_clients.consumer(s, kafka.bootstrap)
    consumer.subscribe([s.input_topic])
    deadline = time.monotonic() + 60
    while len(consumer.assignment()) < s.partitions:
        assert time.monotonic() < deadline, "the consumer did not join its group"
        consumer.poll(timeout_ms=300)
    return consumer


def _work(s, partition: int, offsets: range) -> list[Handled]:
    return [Handled(Rec(s.input_topic, partition, o, int(time.time() * 1000), None, b"x", []),
                    [Outgoing(s.output_topic, None, f"r{o}".encode(), [])], labels=["L"]) for o in offsets]


def _committed_becomes(kafka: KafkaCluster, s, offset: int, timeout: float = 30) -> int | None:
    """The group's committed offset of partition 0 once it is ``offset`` (a transaction's offsets
    become readable a moment after its commit returns), or what it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        now = kafka.committed(s.group_id, s.input_topic).get(0)
        if now == offset or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def _exactly_once(kafka: KafkaCluster, s, consumer) -> ExactlyOnce:
    producer = kafka_clients.producer(s, kafka.bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}",
                                      enable_idempotence=True, max_in_flight_requests_per_connection=5)
    return ExactlyOnce(consumer, producer, None, WorkerMetrics(None), Health(60), retry_max_s=30)


def test_work_of_a_member_out_of_its_group_is_aborted_and_given_back(kafka: KafkaCluster, topics) -> None:
    s = topics(partitions=2)
    kafka.produce(s.input_topic, [(None, b"x")] * 8)
    with contextlib.ExitStack() as stack:
        consumer = _joined(kafka, s)
        stack.callback(consumer.close, autocommit=False)
        delivery = _exactly_once(kafka, s, consumer)
        stack.callback(delivery.producer.close, 5)

        delivery.deliver(_work(s, 0, range(0, 2)))  # a member: committed
        assert _committed_becomes(kafka, s, 2) == 2

        consumer._coordinator.reset_generation()  # what a refused heartbeat does
        rewound = delivery.deliver(_work(s, 0, range(2, 4)))
        assert rewound == {TopicPartition(s.input_topic, 0)}
        published = sorted(r.value for r in kafka.collect([s.output_topic], want=3, timeout=5))
        assert published == [b"r0", b"r1"], "the aborted transaction's results are visible to read_committed"
        assert kafka.committed(s.group_id, s.input_topic).get(0) == 2


def test_the_broker_takes_transaction_offsets_without_a_generation_unchecked(kafka: KafkaCluster, topics) -> None:
    """Why the worker checks: with a stable member in the group, a transaction that carries the
    group's id alone still commits its offsets (Kafka 4.1; a broker that refused them would fail
    this test, and the worker's check would only be redundant there)."""
    s = topics(partitions=1)
    kafka.produce(s.input_topic, [(None, b"x")] * 8)
    tp = TopicPartition(s.input_topic, 0)
    with contextlib.ExitStack() as stack:
        consumer = _joined(kafka, s)
        stack.callback(consumer.close, autocommit=False)
        producer = kafka.producer(transactional_id=f"tx-{uuid.uuid4().hex[:8]}", enable_idempotence=True)
        stack.callback(producer.close, 5)
        producer.init_transactions()
        producer.begin_transaction()
        producer.send_offsets_to_transaction({tp: OffsetAndMetadata(7, "", -1)}, ConsumerGroupMetadata(s.group_id))
        producer.commit_transaction()
        assert _committed_becomes(kafka, s, 7) == 7
