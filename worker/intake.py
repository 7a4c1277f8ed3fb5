"""Polling that survives records the Kafka client cannot parse.

kafka-python raises ``CorruptRecordError`` inside ``poll()`` for a record it cannot read (a
header key that is not UTF-8, a bad checksum) without saying which partition, and leaves that
partition's fetch position on the record: every later poll fails the same way. So may any other
exception that is not a ``KafkaError`` (its parser's own bugs): both are treated as a record's
fault (:func:`about_a_record`), while Kafka's other errors (authorization, the broker) are the
process's. :func:`poll` finds the partition with a throw-away group-less consumer that reads each assigned partition
from the worker's position, hands the record on as an :class:`UnreadableRecord` (so it is
dead-lettered like any bad input, reason ``unreadable_record``) and seeks past it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaConnectionError, KafkaError

from sentistream.worker.contract import UnreadableRecord
from sentistream.worker.faults import kept, one_line

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


def poll(consumer: KafkaConsumer, probe: Callable[[], KafkaConsumer], timeout_ms: int,
         max_records: int) -> list:
    """Records from one poll, in order; an unreadable record comes back as an UnreadableRecord."""
    try:
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaConnectionError as exc:  # an outage: /readyz says so; poll again
        log.warning("no broker answers: %s", exc)
        time.sleep(timeout_ms / 1000)
        return []
    except BaseException as exc:
        if not about_a_record(kept(exc)):
            raise
        return [skip_unreadable(consumer, probe, exc)]
    return [r for records in polled.values() for r in records]


def about_a_record(exc: BaseException) -> bool:
    """Whether a failed poll may be one record's fault: the client's parser failed on it."""
    return isinstance(exc, CorruptRecordError) or not isinstance(exc, KafkaError)


def skip_unreadable(consumer: KafkaConsumer, probe: Callable[[], KafkaConsumer],
                    exc: BaseException) -> UnreadableRecord:
    positions = {tp: consumer.position(tp) for tp in consumer.assignment() if tp not in consumer.paused()}
    guilty = find_unreadable(probe, positions)
    if guilty is None:
        raise RuntimeError(f"poll failed and no assigned partition reproduces it: {exc}") from exc
    tp, offset = guilty
    log.error("unreadable record %s[%d]@%d: %s; dead-lettering it and moving on", tp.topic, tp.partition, offset, exc)
    consumer.seek(tp, offset + 1)
    return UnreadableRecord(tp.topic, tp.partition, offset, int(time.time() * 1000), one_line(exc))


def find_unreadable(probe: Callable[[], KafkaConsumer],
                    positions: dict[TopicPartition, int]) -> tuple[TopicPartition, int] | None:
    """The partition (and offset) whose next record cannot be parsed, read with a fresh consumer."""
    for tp, offset in sorted(positions.items()):
        reader = probe()
        try:
            reader.assign([tp])
            reader.seek(tp, offset)
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    if reader.poll(timeout_ms=500, max_records=1):
                        break  # this partition reads fine
                except BaseException as exc:
                    if about_a_record(kept(exc)):
                        return tp, offset
                    raise
                if reader.position(tp) >= (reader.end_offsets([tp]).get(tp) or 0):
                    break  # nothing to read there
        finally:
            reader.close(autocommit=False)
    return None
