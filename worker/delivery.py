"""Delivery strategies: when input offsets may be committed. The run loop owns the consumer;
nothing but these commits.

- :class:`AtLeastOnce`: results are sent (acks=all, idempotent producer); a unit's offsets are
  committed once every one of its sends is acknowledged. Units are pipelined (bounded): the
  next batch is classified while the previous one's acks are in flight.
- :class:`ExactlyOnce`: each unit is one Kafka transaction, offsets sent to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


@dataclass
class Unit:
    """Records accounted for together: their next offsets and the sends that account for them."""

    offsets: Offsets
    futures: list = field(default_factory=list)

    def done(self) -> bool:
        return all(f.is_done for f in self.futures)

    def failure(self) -> Exception | None:
        return next((f.exception for f in self.futures if f.is_done and f.failed()), None)


class DeliveryFailed(RuntimeError):
    """A send failed: the unit's offsets are not committed (its input will be re-read)."""


def _wait(unit: Unit, timeout: float = 120.0) -> None:
    for f in unit.futures:
        if not f.is_done:
            with contextlib.suppress(KafkaError):  # reported by commit_done() via unit.failure()
                f.get(timeout=timeout)


def _commit_map(offsets: Offsets) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


class AtLeastOnce:
    transactional = False

    def __init__(self, consumer, producer, max_in_flight: int) -> None:
        self.consumer = consumer
        self.producer = producer
        self.max_in_flight = max_in_flight
        self.in_flight: deque[Unit] = deque()
        self.committed: Offsets = {}

    def begin(self) -> None:
        pass

    def submit(self, unit: Unit) -> None:
        self.in_flight.append(unit)
        self.commit_done()
        while len(self.in_flight) > self.max_in_flight:  # backpressure: no fetching meanwhile
            _wait(self.in_flight[0])
            self.commit_done()

    def commit_done(self, blocking: bool = False) -> None:
        """Commit the leading units whose sends are all acknowledged (in order).

        In the loop the commit is asynchronous: a lost one only means re-reading acknowledged
        input (duplicates, never loss), and the loop does not wait a coordinator round trip per
        batch. Stopping commits synchronously (:meth:`drain`)."""
        ready: Offsets = {}
        while self.in_flight and self.in_flight[0].done():
            unit = self.in_flight.popleft()
            error = unit.failure()
            if error is not None:
                raise DeliveryFailed(f"a result could not be published: {error!r}")
            ready.update(unit.offsets)
        if ready:
            self._commit(ready, blocking)

    def drain(self, timeout: float = 60.0, blocking: bool = True) -> None:
        """Wait for every send in flight, then commit (graceful stop, partition revoke).

        ``blocking=False`` for the rebalance listener: kafka-python runs it on its IO thread,
        where a blocking commit is refused; the async commit is sent before the JoinGroup
        request on the same coordinator connection, so it lands first.
        """
        self.producer.flush(timeout=timeout)
        for unit in self.in_flight:
            _wait(unit, timeout)
        self.commit_done(blocking)

    def abandon(self) -> None:
        pass

    def _commit(self, offsets: Offsets, blocking: bool = True) -> None:
        try:
            if blocking:
                self.consumer.commit(_commit_map(offsets))
            else:
                self.consumer.commit_async(_commit_map(offsets))
            self.committed.update(offsets)
        except CommitFailedError as exc:  # rebalanced away: the new owner re-reads; duplicates only
            log.warning("commit failed (partitions moved): %s", exc)


class ExactlyOnce:
    transactional = True

    def __init__(self, consumer, producer) -> None:
        self.consumer = consumer
        self.producer = producer
        self.committed: Offsets = {}
        self.open = False
        producer.init_transactions()

    def begin(self) -> None:
        self.producer.begin_transaction()
        self.open = True

    def submit(self, unit: Unit) -> None:
        try:
            self.producer.send_offsets_to_transaction(_commit_map(unit.offsets),
                                                      self.consumer.group_metadata())
            self.producer.commit_transaction()
        except KafkaError as exc:
            self.abandon()
            raise DeliveryFailed(f"transaction failed: {exc!r}") from exc
        finally:
            self.open = False
        self.committed.update(unit.offsets)

    def commit_done(self, blocking: bool = True) -> None:
        pass

    def drain(self, timeout: float = 60.0, blocking: bool = True) -> None:
        pass  # every unit is committed (or aborted) before the loop polls again

    def abandon(self) -> None:
        if self.open:
            try:
                self.producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort failed: %r", exc)
            self.open = False
