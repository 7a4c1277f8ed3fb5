"""The foreign producers tests use for records kafka-python cannot write, checked on the broker."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError

from sentistream.worker import kafka_clients
from tests.workers import ForeignRecord, foreign_produce, kcat_produce

pytestmark = pytest.mark.kafka


@pytest.fixture
def topic(settings_for) -> str:
    s = settings_for(partitions=1)
    admin = kafka_clients.admin(s, s.bootstrap_servers)
    kafka_clients.ensure_topics(admin, {s.input_topic: {"num_partitions": 1}})
    admin.close()
    return s.input_topic


def _poll(bootstrap: str, topic: str, want: int, timeout: float = 15) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got.extend(records)
    finally:
        consumer.close()
    return got


def test_confluent_writes_null_and_empty_header_values(kafka_bootstrap, topic) -> None:
    foreign_produce(kafka_bootstrap, topic, [
        ForeignRecord(b'{"id": "a", "text": "fine"}', key=b"k", headers=[("nothing", None), ("empty", b"")]),
        ForeignRecord(b"", partition=0),
        ForeignRecord(None),
    ])
    got = _poll(kafka_bootstrap, topic, 3)
    assert [(r.key, r.value, r.headers) for r in got] == [
        (b"k", b'{"id": "a", "text": "fine"}', [("nothing", None), ("empty", b"")]),
        (None, b"", []),
        (None, None, []),
    ]


def test_kcat_writes_exact_bytes_null_headers_and_non_utf8_header_keys(kafka_bootstrap, topic) -> None:
    value = b"two\nlines, a NUL \x00 and \xff"
    kcat_produce(kafka_bootstrap, topic, 0, value, ["trace=t-1", "nothing", "a=b=c"])
    got = _poll(kafka_bootstrap, topic, 1)
    assert [(r.value, r.headers) for r in got] == [(value, [("trace", b"t-1"), ("nothing", None), ("a", b"b=c")])]
    kcat_produce(kafka_bootstrap, topic, 0, b"bad key", [b"\xff\xfekey=v"])
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest")
    try:
        with pytest.raises(CorruptRecordError, match="UnicodeDecodeError"):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=300)
    finally:
        consumer.close()
