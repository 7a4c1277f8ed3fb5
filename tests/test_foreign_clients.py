"""The foreign producers tests use for records kafka-python cannot write, checked on the broker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka.errors import CorruptRecordError

from tests.cluster import ForeignRecord, KafkaCluster

pytestmark = pytest.mark.kafka


@pytest.fixture
def topic(kafka: KafkaCluster, settings_for) -> Iterator[str]:
    s = settings_for(partitions=1)
    created = kafka.create_topics(s, {s.input_topic: {"num_partitions": 1}})
    yield s.input_topic
    kafka.delete_topics(created)


def _poll(kafka: KafkaCluster, topic: str, want: int, timeout: float = 15) -> list:
    consumer = kafka.consumer(topic, isolation_level="read_uncommitted")
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got.extend(records)
    finally:
        consumer.close()
    return got


def test_confluent_writes_null_and_empty_header_values(kafka, topic) -> None:
    kafka.produce_foreign(topic, [
        ForeignRecord(b'{"id": "a", "text": "fine"}', key=b"k", headers=[("nothing", None), ("empty", b"")]),
        ForeignRecord(b"", partition=0),
        ForeignRecord(None),
    ])
    got = _poll(kafka, topic, 3)
    assert [(r.key, r.value, r.headers) for r in got] == [
        (b"k", b'{"id": "a", "text": "fine"}', [("nothing", None), ("empty", b"")]),
        (None, b"", []),
        (None, None, []),
    ]


def test_kcat_writes_exact_bytes_null_headers_and_non_utf8_header_keys(kafka, topic) -> None:
    value = b"two\nlines, a NUL \x00 and \xff"
    kafka.produce_kcat(topic, 0, value, ["trace=t-1", "nothing", "a=b=c"])
    got = _poll(kafka, topic, 1)
    assert [(r.value, r.headers) for r in got] == [(value, [("trace", b"t-1"), ("nothing", None), ("a", b"b=c")])]
    kafka.produce_kcat(topic, 0, b"bad key", [b"\xff\xfekey=v"])
    consumer = kafka.consumer(topic, isolation_level="read_uncommitted")
    try:
        with pytest.raises(CorruptRecordError, match="UnicodeDecodeError"):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=300)
    finally:
        consumer.close()
