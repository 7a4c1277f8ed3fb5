"""Delivery strategies with a fake consumer and producer: what gets committed, when sends fail."""

from __future__ import annotations

from collections import namedtuple

import pytest
from kafka import ConsumerGroupMetadata, TopicPartition
from kafka import errors as kerr

from sentistream.worker.contract import Reason, Rejection
from sentistream.worker.delivery import AtLeastOnce, ExactlyOnce
from sentistream.worker.health import PUBLISH_BLOCKED, Health
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.outgoing import Handled, Outgoing

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class FakeFuture:
    def __init__(self) -> None:
        self.is_done, self.exception, self.callbacks = False, None, []

    def add_callback(self, fn, *args) -> None:
        self.callbacks.append((fn, args))

    def get(self, timeout: float | None = None) -> None:
        pass

    def succeed(self) -> None:
        self.is_done = True

    def fail(self, exc: Exception) -> None:
        self.is_done, self.exception = True, exc


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, FakeFuture]] = []
        self.refuse: dict[str, Exception] = {}  # topic -> what send() raises
        self.commit_error: Exception | None = None
        self.transactions: list[str] = []
        self.offsets: list[dict] = []
        self.groups: list[ConsumerGroupMetadata] = []

    def send(self, topic, value=None, key=None, headers=None) -> FakeFuture:
        if topic in self.refuse:
            raise self.refuse[topic]
        f = FakeFuture()
        self.sent.append((topic, value, f))
        return f

    def flush(self, timeout=None) -> None:
        pass

    def init_transactions(self) -> None:
        pass

    def begin_transaction(self) -> None:
        self.transactions.append("begin")

    def send_offsets_to_transaction(self, offsets, group) -> None:
        self.offsets.append({tp: o.offset for tp, o in offsets.items()})
        self.groups.append(group)

    def commit_transaction(self) -> None:
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            raise error
        for _, _, f in self.sent:
            if not f.is_done:
                f.succeed()
        self.transactions.append("commit")

    def abort_transaction(self) -> None:
        self.transactions.append("abort")


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused_tps: set[TopicPartition] = set()
        self.group = ConsumerGroupMetadata("g", 3, "member-1")

    def commit(self, offsets) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    commit_async = commit

    def seek(self, tp, offset) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps) -> None:
        self.paused_tps.difference_update(tps)

    def group_metadata(self) -> ConsumerGroupMetadata:
        return self.group

    def committed_to(self, tp: TopicPartition) -> int | None:
        return max((c[tp] for c in self.commits if tp in c), default=None)


class FakeDeadLetters:
    def build(self, rejection: Rejection, stub: bool = False) -> Handled:
        return Handled(rejection.record, [Outgoing("dlq", None, b"", [], dead_letter=True, stub=stub)], rejection)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def handled(partition: int, offsets: range) -> list[Handled]:
    return [Handled(Rec("in", partition, o, 0, None, b"x", []), [Outgoing("out", None, b"r", [])], labels=["L"])
            for o in offsets]


def make(mode, **extra):
    consumer, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    health = Health(60, clock=clock)
    delivery = mode(consumer, producer, FakeDeadLetters(), WorkerMetrics(None), health, retry_max_s=30, clock=clock,
                    **extra)
    return delivery, consumer, producer, clock


def futures_of(producer: FakeProducer, offsets: range) -> list[FakeFuture]:
    return [producer.sent[i][2] for i in offsets]


def test_a_failed_unit_then_a_successful_one_commits_nothing_past_the_failure_on_the_loop() -> None:
    d, consumer, producer, clock = make(AtLeastOnce, max_in_flight=10_000)
    d.deliver(handled(0, range(0, 100)))
    d.deliver(handled(0, range(100, 200)))
    for f in futures_of(producer, range(100, 200)):
        f.succeed()
    for f in futures_of(producer, range(0, 100)):
        f.fail(kerr.KafkaTimeoutError("no broker"))
    rewound = d.advance()
    assert rewound == {P0}
    assert consumer.committed_to(P0) is None, "committed past records that failed"
    assert consumer.seeks == [(P0, 0)] and P0 in consumer.paused_tps
    assert PUBLISH_BLOCKED in d.health.problems
    clock.now += 1.5  # back-off over: read again
    d.advance()
    assert P0 not in consumer.paused_tps


@pytest.mark.parametrize("path", ["revoke", "close"])
def test_a_failed_unit_then_a_successful_one_commits_nothing_past_the_failure_on_revoke_and_close(path) -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000)
    d.deliver(handled(0, range(0, 100)))
    d.deliver(handled(0, range(100, 200)))
    d.deliver(handled(1, range(0, 10)))
    for f in futures_of(producer, range(100, 210)):
        f.succeed()
    for f in futures_of(producer, range(50, 100)):
        f.fail(kerr.KafkaTimeoutError("no broker"))
    for f in futures_of(producer, range(0, 50)):
        f.succeed()
    if path == "revoke":
        d.revoke({P0, P1})
    else:
        d.close(timeout=0.5)
    assert consumer.committed_to(P0) == 50
    assert consumer.committed_to(P1) == 10


def test_unacknowledged_sends_hold_the_commit_back() -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000)
    d.deliver(handled(0, range(0, 3)))
    futures_of(producer, range(1, 3))[0].succeed()
    futures_of(producer, range(2, 3))[0].succeed()
    d.advance()
    assert consumer.committed_to(P0) is None
    futures_of(producer, range(0, 1))[0].succeed()
    d.advance()
    assert consumer.committed_to(P0) == 3


def _acknowledge(producer: FakeProducer, offsets: range) -> None:
    for f in futures_of(producer, offsets):
        f.succeed()


def test_a_commit_interval_holds_commits_back_until_due_then_commits_the_latest() -> None:
    d, consumer, producer, clock = make(AtLeastOnce, max_in_flight=10_000, commit_interval=0.1)
    d.deliver(handled(0, range(0, 10)))  # the first commit is due at once
    _acknowledge(producer, range(0, 10))
    d.advance()
    assert consumer.commits == [{P0: 10}]
    d.deliver(handled(0, range(10, 20)))
    _acknowledge(producer, range(10, 20))
    d.deliver(handled(1, range(0, 5)))
    _acknowledge(producer, range(20, 25))
    d.advance()
    assert len(consumer.commits) == 1, "committed again before the interval was over"
    clock.now += 0.1
    d.advance()
    assert consumer.commits[1:] == [{P0: 20, P1: 5}]


@pytest.mark.parametrize("path", ["revoke", "close"])
def test_offsets_held_by_the_commit_interval_are_committed_at_once_on_revoke_and_close(path) -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000, commit_interval=60.0)
    d.deliver(handled(0, range(0, 10)))
    _acknowledge(producer, range(0, 10))
    d.advance()  # the first one
    d.deliver(handled(0, range(10, 20)))
    _acknowledge(producer, range(10, 20))
    d.advance()
    assert consumer.committed_to(P0) == 10
    if path == "revoke":
        d.revoke({P0})
    else:
        d.close(timeout=0.5)
    assert consumer.committed_to(P0) == 20


def test_offsets_held_for_lost_partitions_are_never_committed() -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000, commit_interval=60.0)
    d.deliver(handled(0, range(0, 10)))
    _acknowledge(producer, range(0, 10))
    d.advance()
    d.deliver(handled(0, range(10, 20)))
    d.deliver(handled(1, range(0, 5)))
    _acknowledge(producer, range(10, 25))
    d.advance()
    d.lose({P0})  # expelled: P0 belongs to another member now
    d.close(timeout=0.5)
    assert consumer.committed_to(P0) == 10
    assert consumer.committed_to(P1) == 5


def test_a_record_the_client_refuses_is_dead_lettered_and_committed_once_that_is_acknowledged() -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000)
    producer.refuse["out"] = TypeError("All headers items must be (str, bytes) tuples")
    d.deliver(handled(0, range(0, 1)))  # which sends record 0's dead letter in its place
    del producer.refuse["out"]
    d.deliver(handled(0, range(1, 2)))
    assert [t for t, _, _ in producer.sent] == ["dlq", "out"]
    for _, _, f in producer.sent:
        f.succeed()
    d.advance()
    assert consumer.committed_to(P0) == 2


def test_a_record_the_broker_refuses_is_dead_lettered_the_others_commit() -> None:
    d, consumer, producer, _ = make(AtLeastOnce, max_in_flight=10_000)
    d.deliver(handled(0, range(0, 2)))
    futures_of(producer, range(0, 1))[0].fail(kerr.MessageSizeTooLargeError())
    futures_of(producer, range(1, 2))[0].succeed()
    d.advance()
    assert consumer.committed_to(P0) is None  # record 0's dead letter is not acknowledged yet
    assert producer.sent[-1][0] == "dlq"
    producer.sent[-1][2].succeed()
    d.advance()
    assert consumer.committed_to(P0) == 2


def test_backpressure_counts_records_in_flight() -> None:
    d, _, producer, _ = make(AtLeastOnce, max_in_flight=3)
    d.deliver(handled(0, range(0, 3)))
    assert not d.has_room()
    futures_of(producer, range(0, 1))[0].succeed()
    d.advance()
    assert d.has_room()


def test_exactly_once_blocks_the_partition_whose_dead_letter_topic_is_refused_and_commits_the_others() -> None:
    d, consumer, producer, _ = make(ExactlyOnce)
    bad = Handled(Rec("in", 0, 5, 0, None, b"x", []), [Outgoing("dlq", None, b"x", [], dead_letter=True)],
                  Rejection(Rec("in", 0, 5, 0, None, b"x", []), Reason.INVALID_JSON, "nope"))
    work = [*handled(0, range(0, 5)), bad, *handled(0, range(6, 8)), *handled(1, range(0, 4))]
    producer.commit_error = kerr.TopicAuthorizationFailedError({"dlq"})
    rewound = d.deliver(work)
    assert rewound == {P0}
    assert producer.transactions == ["begin", "abort", "begin", "commit"]
    # the second transaction carries only what precedes the refused record, and partition 1
    assert producer.offsets[-1] == {P0: 5, P1: 4}
    assert consumer.seeks == [(P0, 5)] and P0 in consumer.paused_tps
    assert d.committed == {P0: 5, P1: 4}


def test_exactly_once_dead_letters_a_record_the_client_refuses_in_the_same_transaction() -> None:
    d, _, producer, _ = make(ExactlyOnce)
    real_send = producer.send

    def send(topic, value=None, key=None, headers=None):
        if value == b"poison":
            raise TypeError("All headers items must be (str, bytes) tuples")
        return real_send(topic, value=value, key=key, headers=headers)

    producer.send = send
    poison = Handled(Rec("in", 0, 1, 0, None, b"x", []), [Outgoing("out", None, b"poison", [])], labels=["L"])
    d.deliver([*handled(0, range(0, 1)), poison, *handled(0, range(2, 3))])
    assert producer.transactions == ["begin", "abort", "begin", "commit"]
    assert producer.offsets[-1] == {P0: 3}
    assert [t for t, _, _ in producer.sent][-3:] == ["out", "dlq", "out"]


def test_exactly_once_does_not_retry_work_the_group_took_away() -> None:
    """A member expelled while its link was cut comes back: the group refuses its offsets. A retry
    would commit them once it has rejoined, next to the new owner's results: duplicates."""
    d, consumer, producer, _ = make(ExactlyOnce)
    producer.commit_error = kerr.CommitFailedError("consumer group metadata mismatch: UnknownMemberIdError")
    rewound = d.deliver([*handled(0, range(3, 6)), *handled(1, range(7, 9))])
    assert producer.transactions == ["begin", "abort"]
    assert rewound == {P0, P1}
    assert sorted(consumer.seeks) == [(P0, 3), (P1, 7)] and not consumer.paused_tps
    assert d.committed == {}


def test_exactly_once_sends_offsets_with_the_members_generation() -> None:
    d, consumer, producer, _ = make(ExactlyOnce)
    d.deliver(handled(0, range(0, 2)))
    assert producer.groups == [consumer.group] and producer.transactions == ["begin", "commit"]


def test_exactly_once_commits_nothing_while_the_member_is_out_of_its_group() -> None:
    """A refused heartbeat (expelled during a network cut) leaves the consumer without a
    generation until its next poll; the broker takes offsets without one unchecked. The work is
    aborted and given back, never committed."""
    d, consumer, producer, _ = make(ExactlyOnce)
    consumer.group = ConsumerGroupMetadata("g")  # what kafka-python holds after reset_generation()
    rewound = d.deliver([*handled(0, range(3, 6)), *handled(1, range(7, 9))])
    assert producer.transactions == ["begin", "abort"] and producer.offsets == []
    assert rewound == {P0, P1}
    assert sorted(consumer.seeks) == [(P0, 3), (P1, 7)]
    assert d.committed == {}


def test_a_partition_whose_oldest_send_is_stuck_stops_fetching_until_it_settles() -> None:
    d, consumer, producer, clock = make(AtLeastOnce, max_in_flight=10_000)
    d.deliver(handled(0, range(0, 3)) + handled(1, range(0, 3)))
    for f in futures_of(producer, range(3, 6)):
        f.succeed()
    clock.now += 6  # partition 0's sends wait past STUCK_AFTER_S (e.g. its topic was deleted under them)
    d.advance()
    tp0 = TopicPartition("in", 0)
    assert consumer.paused_tps == {tp0}
    assert PUBLISH_BLOCKED in d.health.problems and "out" in d.health.problems[PUBLISH_BLOCKED]
    for f in futures_of(producer, range(0, 3)):
        f.succeed()
    d.advance()
    assert consumer.paused_tps == set() and PUBLISH_BLOCKED not in d.health.problems
    assert consumer.committed_to(tp0) == 3


def test_bytes_in_flight_are_bounded_as_well_as_records() -> None:
    d, _, producer, _ = make(AtLeastOnce, max_in_flight=10_000, max_in_flight_bytes=2_000)
    big = [Handled(Rec("in", 0, o, 0, None, b"x", []), [Outgoing("out", None, b"r" * 900, [])], labels=["L"])
           for o in range(3)]
    d.deliver(big[:2])
    assert d.has_room()  # 1,800 bytes
    d.deliver(big[2:])
    assert not d.has_room()
    producer.sent[0][2].succeed()
    d.advance()
    assert d.has_room()


def test_exactly_once_cuts_a_piece_into_transactions_of_bounded_bytes_in_order() -> None:
    d, _, producer, _ = make(ExactlyOnce, max_transaction_bytes=3)
    d.deliver(handled(0, range(0, 10)))  # one byte of result each
    commits = [t for t in producer.transactions if t == "commit"]
    assert len(commits) == 4  # 3 + 3 + 3 + 1
    ends = [o[TopicPartition("in", 0)] for o in producer.offsets]
    assert ends == sorted(ends) and ends[-1] == 10
