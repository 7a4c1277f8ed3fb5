"""Delivery: publish what the pipeline built, and commit input offsets only past records that are
fully accounted for. The run loop hands work over; nothing else commits.

Per partition, offsets are committed up to the first record that is not yet acknowledged — on
the loop, on revoke, on close and on error, in both modes:

- :class:`AtLeastOnce`: results are sent (acks=all, idempotent producer) and the loop moves on;
  a record counts once all its sends are acknowledged.
- :class:`ExactlyOnce`: each piece of work is one Kafka transaction with its input offsets.

When a send fails:
- the broker or client refuses *this record* (too large, invalid): the record is dead-lettered
  instead (``publish_failed``); a refused dead letter is re-sent as a stub (our headers only);
- anything else (not authorized, broker unreachable, timed out): that partition is rewound to
  the record, paused, and retried after a back-off (1 s, doubling, at most
  ``publish_retry_max_s``); other partitions flow on; ``/readyz`` says ``publish_blocked``.

Both modes answer the loop alike: ``deliver`` (hand work over), ``advance`` (each turn: account for
what settled since, resume partitions whose back-off ended) and ``settle`` (a record tried alone)
return the partitions they rewound, whose held records the loop drops; ``has_room`` and ``wait``
are the backpressure; ``revoke``, ``lose`` and ``close`` end partitions or the work. The dead
letters sent instead of refused records are built by worker/dead_letters.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka import OffsetAndMetadata, TopicPartition
from kafka import errors as kerr

from sentistream.worker import kafka_clients
from sentistream.worker.batching import cut_by_size
from sentistream.worker.contract import Reason, Rejection, encoded_size
from sentistream.worker.faults import one_line
from sentistream.worker.health import PUBLISH_BLOCKED, Health

if TYPE_CHECKING:
    from sentistream.worker.dead_letters import DeadLetters
    from sentistream.worker.metrics import WorkerMetrics
    from sentistream.worker.outgoing import Handled, Outgoing
    from sentistream.worker.quarantine import Quarantine

log = logging.getLogger(__name__)

# The client refuses this very record before it leaves (types, larger than it may send).
CLIENT_RECORD_ERRORS = (TypeError, ValueError, AssertionError, kerr.MessageSizeTooLargeError)
# The broker refuses this very record (the worker checks sizes against the topics' limits
# beforehand, so this is rare).
BROKER_RECORD_ERRORS = (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError, kerr.InvalidRecordError,
                        kerr.CorruptRecordError, kerr.UnsupportedForMessageFormatError)
# This producer may not go on (another instance took its transactional id, or worse).
FATAL_ERRORS = (kerr.ProducerFencedError, kerr.InvalidProducerEpochError,
                kerr.TransactionalIdAuthorizationFailedError, kerr.TransactionCoordinatorFencedError)
# The group no longer knows this member as it was (expelled after a network cut, or rebalancing):
# the work's partitions may belong to another member already.
MEMBERSHIP_ERRORS = (kerr.CommitFailedError, kerr.UnknownMemberIdError, kerr.IllegalGenerationError,
                     kerr.FencedInstanceIdError, kerr.RebalanceInProgressError)
MAX_TRANSACTION_ATTEMPTS = 4
# kafka-python waits for transaction calls without a limit, and can lose such a request when a
# coordinator connection drops (the call then never returns): the worker gives up after this long
# and exits; its replacement's init_transactions() aborts what was left open.
TRANSACTION_CALL_TIMEOUT_S = 30.0
# At-least-once: a partition whose oldest send is unacknowledged this long stops fetching (and
# /readyz says publish_blocked) until it settles: e.g. a send made just before its topic was
# deleted waits in the client until its delivery timeout, and the records behind it must not pile up.
STUCK_AFTER_S = 5.0


class DeliveryFailed(RuntimeError):
    """The producer cannot go on (fenced, or a fatal transaction state). Nothing was committed
    past what is acknowledged, so a restarted worker re-reads the rest."""


def partition_of(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


class Failed:
    """Stands in for a send's future when ``producer.send`` itself raised."""

    is_done = True

    def __init__(self, exc: Exception) -> None:
        self.exception = exc


def _failure(future: Any) -> Exception | None:
    return future.exception if future.is_done else None


def record_refused(future: Any) -> bool:
    """Whether ``future`` failed because of its own record (so it is dead-lettered instead)."""
    if isinstance(future, Failed):
        return isinstance(future.exception, CLIENT_RECORD_ERRORS)
    return isinstance(_failure(future), BROKER_RECORD_ERRORS)


@dataclass
class Entry:
    """One input record in flight: its messages and their futures."""

    handled: Handled
    futures: list = field(default_factory=list)
    sent_at: float = 0.0
    size: int = field(init=False)  # its messages' bytes, counted once (has_room reads it every turn)

    def __post_init__(self) -> None:
        self.size = sum(encoded_size(m.key, m.value, m.headers) for m in self.handled.messages)

    @property
    def offset(self) -> int:
        return self.handled.record.offset

    def settled(self) -> bool:
        return all(f.is_done for f in self.futures)

    def failure(self) -> tuple[Outgoing, Any] | None:
        """The first failed send: its message and future."""
        for message, f in zip(self.handled.messages, self.futures, strict=True):
            if _failure(f) is not None:
                return message, f
        return None


@dataclass
class Blocked:
    offset: int
    attempts: int
    until: float
    paused: bool = True


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, int]:
    """Per partition: the offset to commit once ``records`` are all accounted for."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = partition_of(r)
        out[tp] = max(out.get(tp, -1), r.offset + 1)
    return out


def bounded(call: Callable[..., Any], *args: Any, timeout_s: float = TRANSACTION_CALL_TIMEOUT_S) -> None:
    """Run ``call(*args)`` in a helper thread; raise DeliveryFailed when it has not returned in time."""
    what = getattr(call, "__name__", "a client call")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name=f"sentistream-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise DeliveryFailed(f"{what} did not return in {timeout_s:.0f} s (the client lost the request)")
    if outcome[0] is not None:
        raise outcome[0]


def commit_map(offsets: dict[TopicPartition, int],
               notes: Callable[[TopicPartition], str] = lambda _tp: "") -> dict[TopicPartition, OffsetAndMetadata]:
    """kafka-python's form of ``offsets``, each with its metadata (``notes``: worker/quarantine.py)."""
    return {tp: OffsetAndMetadata(o, notes(tp), -1) for tp, o in offsets.items()}


class _Delivery:
    """What both modes share: sending, metrics, blocking and resuming partitions."""

    transactional = False

    def __init__(self, consumer, producer, dead_letters: DeadLetters, metrics: WorkerMetrics, health: Health,
                 retry_max_s: float, clock=time.monotonic, notes: Quarantine | None = None) -> None:
        self.consumer = consumer
        self.notes = notes
        self.producer = producer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.health = health
        self.retry_max_s = retry_max_s
        self.clock = clock
        self.committed: dict[TopicPartition, int] = {}
        self.blocked: dict[TopicPartition, Blocked] = {}
        self.missing: set[str] = set()  # topics without metadata (worker/kafka_clients.py topic_known)

    def _commit_map(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
        return commit_map(offsets, self.notes.metadata) if self.notes is not None else commit_map(offsets)

    def _committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Commits of ``offsets`` were sent (at-least-once) or are done (exactly-once)."""
        self.committed.update(offsets)
        if self.notes is not None:
            self.notes.sent(offsets)

    def assigned(self, tps: set[TopicPartition]) -> None:
        """Partitions (re)assigned: none of them stays paused unless it is blocked now. (An eager
        rebalance may hand a partition straight back, and kafka-python keeps its paused flag.)"""
        for tp in tps - set(self.blocked):
            with contextlib.suppress(Exception):  # not assigned after all: nothing to resume
                self.consumer.resume(tp)
        self._count_paused()

    def _count_paused(self) -> None:
        self.metrics.paused.set(sum(b.paused for b in self.blocked.values()) + len(self._waiting()))

    def _waiting(self) -> set[TopicPartition]:
        """Partitions paused until their oldest send settles (at-least-once)."""
        return set()

    def _clear_if_flowing(self) -> None:
        if not self.blocked and not self._waiting():
            self.health.clear(PUBLISH_BLOCKED)

    # -- sending -------------------------------------------------------------------------------
    def _send(self, m: Outgoing):
        """Send ``m``; a :class:`Failed` when the client refused it before it left (size, types,
        no metadata). A topic whose metadata did not come within ``publish_block_ms`` (deleted,
        and auto-creation off) fails at once until it appears, so that one missing topic costs
        the loop one wait, not one per message."""
        if m.topic in self.missing:
            if not kafka_clients.topic_known(self.producer, m.topic):
                return Failed(kerr.KafkaTimeoutError(f"no metadata for topic {m.topic}: does it exist?"))
            self.missing.discard(m.topic)
        try:
            return self.producer.send(m.topic, value=m.value, key=m.key, headers=m.headers)
        except kerr.KafkaTimeoutError as exc:
            self.missing.add(m.topic)
            return Failed(exc)
        except Exception as exc:
            return Failed(exc)

    def _count(self, h: Handled) -> None:
        if h.rejection is not None:
            r = h.record
            self.metrics.dead_lettered.labels(h.rejection.reason.value).inc()
            log.warning("dead-lettered %s[%d]@%d: %s (%s)", r.topic, r.partition, r.offset,
                        h.rejection.reason.value, h.rejection.detail)
        for label in h.labels:
            self.metrics.classified.labels(label).inc()

    def _replacement(self, h: Handled, message: Outgoing, future: Any) -> Handled | None:
        """What to publish instead of a record whose ``message`` was refused: its dead letter, or
        a stub of it; ``None`` when the failure is not the record's own (retry the partition)."""
        exc = _failure(future)
        if not record_refused(future) or message.stub:
            return None
        if message.dead_letter:
            return self.dead_letters.build(h.rejection, stub=True)  # type: ignore[arg-type]
        return self.dead_letters.build(Rejection(h.record, Reason.PUBLISH_FAILED,
                                                 f"{message.topic}: {one_line(exc)}", type(exc).__name__))

    # -- blocked partitions --------------------------------------------------------------------
    def _block(self, tp: TopicPartition, offset: int, topic: str, exc: BaseException) -> None:
        """Rewind ``tp`` to ``offset`` and pause it; the loop re-reads it after the back-off."""
        attempts = self.blocked[tp].attempts + 1 if tp in self.blocked else 1
        delay = min(self.retry_max_s, 2.0 ** (attempts - 1))
        self.blocked[tp] = Blocked(offset, attempts, self.clock() + delay)
        with contextlib.suppress(ValueError, AssertionError):  # no longer assigned: nothing to rewind
            self.consumer.seek(tp, offset)
            self.consumer.pause(tp)
        self.metrics.publish_blocked.labels(topic).inc()
        self._count_paused()
        self.health.set(PUBLISH_BLOCKED, f"cannot publish to {topic} ({one_line(exc)})")
        if attempts == 1:
            log.error("cannot publish to %s for %s[%d]@%d: %s; partition paused, retrying with back-off",
                      topic, tp.topic, tp.partition, offset, one_line(exc))

    def _resume_due(self) -> None:
        now = self.clock()
        for tp, b in self.blocked.items():
            if b.paused and now >= b.until:
                b.paused = False
                with contextlib.suppress(ValueError, AssertionError):
                    self.consumer.resume(tp)
        self._count_paused()

    def _passed(self, advanced: dict[TopicPartition, int]) -> None:
        """Commits moved past a blocked record: its partition flows again."""
        for tp, offset in advanced.items():
            b = self.blocked.get(tp)
            if b is not None and offset > b.offset:
                del self.blocked[tp]
                log.info("publishing for %s[%d] works again", tp.topic, tp.partition)
        self._clear_if_flowing()

    def _forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.blocked.pop(tp, None)
        self._count_paused()
        self._clear_if_flowing()


class AtLeastOnce(_Delivery):
    """Sends and moves on; commits (asynchronously, in the loop) each partition's prefix of
    acknowledged records, at most once per ``commit_interval`` seconds (a commit per turn costs
    the client and the broker a request each time), and at once on revoke and close. A lost or
    late commit only means re-reading acknowledged input."""

    def __init__(self, *args: Any, max_in_flight: int, max_in_flight_bytes: int = 1 << 62,
                 commit_interval: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.pending: dict[TopicPartition, deque[Entry]] = {}
        self.commit_interval = commit_interval
        self.uncommitted: dict[TopicPartition, int] = {}  # acknowledged, waiting for the next commit
        self.waiting: set[TopicPartition] = set()  # paused: their oldest send is stuck (STUCK_AFTER_S)
        self._commit_due = 0.0

    def in_flight(self) -> int:
        return sum(len(q) for q in self.pending.values())

    def unsettled(self) -> set[TopicPartition]:
        """Partitions with sends not yet acknowledged and committed."""
        return {tp for tp, q in self.pending.items() if q}

    def in_flight_bytes(self) -> int:
        return sum(e.size for q in self.pending.values() for e in q)

    def has_room(self) -> bool:
        return self.in_flight() < self.max_in_flight and self.in_flight_bytes() < self.max_in_flight_bytes

    def settle(self, tp: TopicPartition) -> set[TopicPartition]:
        """Wait for ``tp``'s sends and commit them (a record tried alone is done before the next)."""
        try:
            self.producer.flush(timeout=30)
        except kerr.KafkaError as exc:
            log.warning("sends still in flight: %s", one_line(exc))
        return self._commit_acknowledged(blocking=True, only={tp})

    def deliver(self, handled: Sequence[Handled]) -> set[TopicPartition]:
        for h in handled:
            entry = Entry(h, [self._send(m) for m in h.messages], self.clock())
            self.pending.setdefault(partition_of(h.record), deque()).append(entry)
            self._count(h)
            if h.rejection is None:
                for f in entry.futures:
                    if not isinstance(f, Failed):
                        f.add_callback(self._acked, h.record.timestamp)
        return self._commit_acknowledged()

    def _acked(self, timestamp_ms: int, _metadata: object) -> None:
        self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - timestamp_ms / 1000))

    def wait(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the oldest record in flight."""
        oldest = min((q[0] for q in self.pending.values() if q), key=lambda e: e.handled.record.timestamp,
                     default=None)
        if oldest is None:
            return
        for f in oldest.futures:
            if not f.is_done:
                with contextlib.suppress(Exception):  # the failure is read from the future later
                    f.get(timeout=timeout)

    def advance(self) -> set[TopicPartition]:
        """Each turn: commit (at most every ``commit_interval``) what was acknowledged since, and
        the rest of :meth:`_commit_acknowledged`. Returns the partitions rewound."""
        return self._commit_acknowledged()

    def _commit_acknowledged(self, blocking: bool = False, only: set[TopicPartition] | None = None,
                             replace: bool = True) -> set[TopicPartition]:
        """Commit each partition's acknowledged prefix; dead-letter refused records (unless not
        ``replace``); block the partitions that cannot publish; resume those whose back-off ended.
        Returns the partitions rewound (the loop drops what it holds of them)."""
        advanced: dict[TopicPartition, int] = {}
        rewound: set[TopicPartition] = set()
        for tp, queue in list(self.pending.items()):
            if only is not None and tp not in only:
                continue
            while queue and queue[0].settled():
                entry = queue[0]
                failed = entry.failure()
                if failed is None:
                    queue.popleft()
                    advanced[tp] = entry.offset + 1
                    continue
                if not replace:
                    break
                replacement = self._replacement(entry.handled, *failed)
                if replacement is None:
                    self._block(tp, entry.offset, failed[0].topic, _failure(failed[1]))
                    del self.pending[tp]
                    rewound.add(tp)
                    break
                queue[0] = Entry(replacement, [self._send(m) for m in replacement.messages], self.clock())
                self._count(replacement)
        self._passed(advanced)
        self._resume_due()
        self._watch_heads()
        self.uncommitted.update(advanced)
        if self.uncommitted and (blocking or only is not None or self.clock() >= self._commit_due):
            self._commit(blocking)
        return rewound

    def _waiting(self) -> set[TopicPartition]:
        return self.waiting

    def _watch_heads(self) -> None:
        """Pause a partition whose oldest send is stuck; resume it once that settles."""
        now = self.clock()
        for tp, queue in self.pending.items():
            head = queue[0] if queue else None
            stuck = head is not None and not head.settled() and now - head.sent_at > STUCK_AFTER_S
            if stuck and tp not in self.waiting:
                topic = next(m.topic for m, f in zip(head.handled.messages, head.futures, strict=True) if not f.is_done)
                self.waiting.add(tp)
                with contextlib.suppress(ValueError, AssertionError):
                    self.consumer.pause(tp)
                self.health.set(PUBLISH_BLOCKED, f"{topic} has not acknowledged a send for {tp.topic}[{tp.partition}]"
                                f"@{head.offset} in {STUCK_AFTER_S:.0f} s")
                log.error("%s[%d]@%d: %s has not acknowledged its send in %.0f s; partition paused until it settles",
                          tp.topic, tp.partition, head.offset, topic, STUCK_AFTER_S)
        for tp in [tp for tp in self.waiting if not self._stuck(tp, now)]:
            self.waiting.discard(tp)
            if tp not in self.blocked:
                with contextlib.suppress(ValueError, AssertionError):
                    self.consumer.resume(tp)
        self._count_paused()
        self._clear_if_flowing()

    def _stuck(self, tp: TopicPartition, now: float) -> bool:
        queue = self.pending.get(tp)
        return bool(queue) and not queue[0].settled() and now - queue[0].sent_at > STUCK_AFTER_S

    def revoke(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions are leaving: commit their acknowledged prefix (sends in flight get a
        bounded wait); their new owner re-reads the rest. Returns, per partition, the first
        offset not committed here (where reading must resume)."""
        try:
            self.producer.flush(timeout=30)
        except kerr.KafkaError as exc:  # the broker is gone: commit what is acknowledged, no more
            log.warning("sends still in flight at revoke: %s", one_line(exc))
        self._commit_acknowledged(blocking=False, only=tps, replace=False)
        unfinished = {tp: self.pending[tp][0].offset for tp in tps if self.pending.get(tp)}
        for tp in tps:
            self.pending.pop(tp, None)
        self.waiting -= tps
        self._forget(tps)
        return unfinished

    def lose(self, tps: set[TopicPartition]) -> None:
        """The partitions were taken away (this member was expelled): forget them, commit
        nothing. Sends still in flight may land: their records come again from the new owner
        (duplicates, which at-least-once allows)."""
        for tp in tps:
            self.pending.pop(tp, None)
            self.uncommitted.pop(tp, None)  # no longer ours to commit
        self.waiting -= tps
        self._forget(tps)

    def close(self, timeout: float = 30.0) -> None:
        deadline = self.clock() + timeout
        while self.in_flight() and self.clock() < deadline:
            try:
                self.producer.flush(timeout=max(0.1, deadline - self.clock()))
            except kerr.KafkaError as exc:
                log.warning("sends still in flight at close: %s", one_line(exc))
            self._commit_acknowledged(blocking=True)
        self._commit_acknowledged(blocking=True)  # what was acknowledged before and not committed yet

    def _commit(self, blocking: bool) -> None:
        """Commit every partition's acknowledged prefix held so far."""
        offsets, self.uncommitted = self.uncommitted, {}
        self._commit_due = self.clock() + self.commit_interval
        try:
            if blocking:
                self.consumer.commit(self._commit_map(offsets))
            else:
                self.consumer.commit_async(self._commit_map(offsets))
            self._committed(offsets)
        except kerr.CommitFailedError as exc:  # rebalanced away: the new owner re-reads; duplicates only
            log.warning("commit failed (partitions moved): %s", exc)


class ExactlyOnce(_Delivery):
    """Each piece of work is one transaction: its results, dead letters and input offsets."""

    transactional = True

    def __init__(self, *args: Any, max_transaction_bytes: int = 1 << 62, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_transaction_bytes = max_transaction_bytes
        self.producer.init_transactions()

    def has_room(self) -> bool:
        return True

    def wait(self, timeout: float) -> None:
        pass

    def deliver(self, handled: Sequence[Handled]) -> set[TopicPartition]:
        """One transaction per slice of at most ``max_transaction_bytes`` (what the producer holds
        until the commit), in order; a partition rewound by one slice sits out the later ones."""
        rewound: set[TopicPartition] = set()
        for piece in cut_by_size(handled, self.max_transaction_bytes, lambda h: Entry(h).size):
            rewound |= self._transact([h for h in piece if partition_of(h.record) not in rewound])
        return rewound

    def _transact(self, handled: Sequence[Handled]) -> set[TopicPartition]:
        work = list(handled)
        rewound: set[TopicPartition] = set()
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            if not work:
                break
            sent: list[tuple[Handled, Outgoing, Any]] = []
            offsets = next_offsets(h.record for h in work)
            try:
                self.producer.begin_transaction()
                sent = [(h, m, self._send(m)) for h in work for m in h.messages]
                refused = next((f.exception for _, _, f in sent if isinstance(f, Failed)), None)
                if refused is not None:  # not sent at all: committing would skip its record
                    raise kerr.KafkaError(f"a send was refused: {one_line(refused)}")
                bounded(self.producer.send_offsets_to_transaction, self._commit_map(offsets), self._membership())
                bounded(self.producer.commit_transaction)
            except kerr.KafkaError as exc:
                self._abort(exc)
                if isinstance(exc, MEMBERSHIP_ERRORS):
                    rewound |= self._give_back(work, exc)
                    work = []
                    break
                work = self._after_abort(work, sent, exc, rewound)
                continue
            now = time.time()
            for h in work:
                self._count(h)
                if h.rejection is None:
                    for _ in h.messages:
                        self.metrics.end_to_end_seconds.observe(max(0.0, now - h.record.timestamp / 1000))
            self._committed(offsets)
            self._passed(offsets)
            work = []
        if work:  # still failing: retry the whole lot after a back-off
            for tp, first in _first_offsets(work).items():
                self._block(tp, first, "a transaction", RuntimeError("transaction kept failing"))
                rewound.add(tp)
        self._resume_due()
        return rewound

    def advance(self) -> set[TopicPartition]:
        """Each turn: resume the partitions whose back-off ended. Nothing to commit or rewind here:
        deliver() commits or rewinds every piece of work before it returns."""
        self._resume_due()
        return set()

    def settle(self, tp: TopicPartition) -> set[TopicPartition]:
        return set()  # deliver() commits or rewinds before it returns

    def unsettled(self) -> set[TopicPartition]:
        return set()

    def revoke(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        self._forget(tps)  # nothing is in flight between transactions
        return {}

    def lose(self, tps: set[TopicPartition]) -> None:
        self._forget(tps)

    def close(self, timeout: float = 30.0) -> None:
        pass

    def _membership(self) -> Any:
        """The consumer's group membership, for the broker to check the offsets against (KIP-447).
        A member that has fallen out of its group (its heartbeat was refused after a network cut,
        and it has not rejoined yet) holds no generation, and the broker accepts a transaction's
        offsets *without* a generation unchecked: they could land beside the new owner's results
        for the same records. Such work is refused here as the broker would refuse a stale one."""
        group = self.consumer.group_metadata()
        if group.generation_id < 0 or not group.member_id:
            raise kerr.CommitFailedError("this member is out of its group (it rejoins on its next poll)")
        return group

    def _abort(self, exc: BaseException) -> None:
        if isinstance(exc, FATAL_ERRORS):
            raise DeliveryFailed(f"the transactional producer cannot go on: {one_line(exc)}") from exc
        try:
            bounded(self.producer.abort_transaction)
        except kerr.KafkaError as abort_exc:
            raise DeliveryFailed(f"transaction failed ({one_line(exc)}) and could not be aborted: "
                                 f"{one_line(abort_exc)}") from abort_exc

    def _give_back(self, work: list[Handled], exc: BaseException) -> set[TopicPartition]:
        """The aborted work is not retried: its partitions may have a new owner, who reads the
        records again (retrying here would publish them twice, in a transaction the group then
        accepts once this member has rejoined). Seek back in case they stay ours."""
        firsts = _first_offsets(work)
        for tp, first in firsts.items():
            with contextlib.suppress(Exception):  # no longer assigned: nothing to seek
                self.consumer.seek(tp, first)
        log.warning("transaction aborted: %s; partitions %s are left to the group's current owners",
                    one_line(exc), sorted((tp.topic, tp.partition) for tp in firsts))
        return set(firsts)

    def _after_abort(self, work: list[Handled], sent: list[tuple[Handled, Outgoing, Any]],
                     exc: BaseException, rewound: set[TopicPartition]) -> list[Handled]:
        """Work for the next attempt: records refused for themselves are dead-lettered instead;
        partitions whose topic cannot be written are rewound and paused; the rest goes again."""
        # topics named by an authorization error, and those a send failed on for no fault of its record
        named = refused_topics(exc) | {m.topic for _, m, f in sent if isinstance(f, Failed) and not record_refused(f)}
        culprits: dict[int, tuple[Outgoing, Any]] = {}
        for h, m, f in sent:
            if record_refused(f):
                culprits.setdefault(id(h), (m, f))
        blocked_tps: dict[TopicPartition, tuple[int, str]] = {}
        for h, m, _ in sent:  # e.g. TopicAuthorizationFailedError names the topics it refused
            if m.topic in named and id(h) not in culprits:
                tp = partition_of(h.record)
                if tp not in blocked_tps or h.record.offset < blocked_tps[tp][0]:
                    blocked_tps[tp] = (h.record.offset, m.topic)
        if not culprits and not blocked_tps:
            log.warning("transaction aborted (%s); retrying", one_line(exc))
            return work
        for tp, (offset, topic) in blocked_tps.items():
            self._block(tp, offset, topic, exc)
            rewound.add(tp)
        out = []
        for h in work:
            tp = partition_of(h.record)
            if tp in blocked_tps and h.record.offset >= blocked_tps[tp][0]:
                continue
            culprit = culprits.get(id(h))
            if culprit is not None:
                replacement = self._replacement(h, *culprit)
                if replacement is None:  # even the stub was refused: retry its partition later
                    self._block(tp, h.record.offset, culprit[0].topic, _failure(culprit[1]))
                    rewound.add(tp)
                    blocked_tps[tp] = (h.record.offset, culprit[0].topic)
                    continue
                h = replacement
            out.append(h)
        # records behind a newly blocked record on the same partition wait for it
        return [h for h in out if not (partition_of(h.record) in blocked_tps
                                       and h.record.offset >= blocked_tps[partition_of(h.record)][0])]


def refused_topics(exc: BaseException) -> set[str]:
    """The topics an authorization error names (kafka-python passes them as its argument)."""
    if not isinstance(exc, kerr.AuthorizationError):
        return set()
    names: set[str] = set()
    for arg in exc.args:
        names.update([arg] if isinstance(arg, str) else arg if isinstance(arg, set | list | tuple | frozenset) else [])
    return names


def _first_offsets(work: Iterable[Handled]) -> dict[TopicPartition, int]:
    out: dict[TopicPartition, int] = {}
    for h in work:
        tp = partition_of(h.record)
        out[tp] = min(out.get(tp, h.record.offset), h.record.offset)
    return out
