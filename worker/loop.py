"""The run loop: poll → decode → micro-batch → classify → publish → checkpoint.

One thread owns the consumer, the producer and the offsets. Resources live in an ExitStack;
SIGTERM/SIGINT set the stop event the worker was given (worker/supervisor.py installs the
handlers before anything loads, so a stop during start-up is kept); partitions being revoked get
their acknowledged work committed first. The delivery strategy (worker/delivery.py) decides what may be committed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from sentistream.worker import intake, kafka_clients
from sentistream.worker.batching import BusyMeter, Collector, CostModel, LatencyTarget, cut_by_size
from sentistream.worker.breaker import Breaker, Trip
from sentistream.worker.bundle import Bundle, default_bundle_path
from sentistream.worker.control import ControlFeed, ControlReader
from sentistream.worker.delivery import AtLeastOnce, DeliveryFailed, ExactlyOnce, partition_of
from sentistream.worker.exits import EXIT_FAILED, EXIT_OK
from sentistream.worker.faults import one_line
from sentistream.worker.health import BROKER_UNREACHABLE, DLQ_BREAKER, STARTING, STOPPING, Health
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.model_ops import ModelOps
from sentistream.worker.outgoing import Handled
from sentistream.worker.pipeline import Decoded, Pipeline
from sentistream.worker.quarantine import Quarantine
from sentistream.worker.settings import Settings
from sentistream.worker.status_publisher import open_publisher

log = logging.getLogger(__name__)

LAG_EVERY_S = 2.0
# A turn takes up to this many batches' worth of sentences; they are sorted by token count
# together, so the wider the window the less padding (docs/performance.md).
POLL_BATCHES = 8
IDLE_POLL_MS = 500
NOTE_BATCHES = 2  # how far ahead of what it reads a worker's note reaches, in turns' worth of records
CONTROL_RETRY_S = 30.0  # the control feed's pause after the topic could not be read


class _Rebalance(ConsumerRebalanceListener):
    """Called inside ``consumer.poll()``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        self.worker.on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned) -> None:
        self.worker.on_assigned(set(assigned))

    def on_partitions_lost(self, lost) -> None:
        self.worker.on_lost(set(lost))


class Worker:
    def __init__(self, settings: Settings, metrics: WorkerMetrics, process_index: int = 0,
                 bundle: Bundle | None = None, report_lag: bool = True,
                 stop_event: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self.metrics = metrics
        self.process_index = process_index
        self.report_lag = report_lag
        bundle = bundle or Bundle(settings.bundle or default_bundle_path(), threads=settings.threads,
                                  max_tokens=settings.max_tokens, runtime=settings.runtime)
        metrics.serving(bundle)
        # a latency-target worker's batch costs, learnt from every batch the pipeline classifies
        cost = CostModel() if settings.latency_target_ms else None
        self.pipeline = Pipeline(settings, bundle, metrics, cost=cost)  # what serves, after any swap too
        self.ops = ModelOps(settings, self.pipeline, metrics,
                            on_resume=lambda resume: self.close_breaker(f"dlq resume by {resume.issued_by or '?'}"))
        if settings.shadow_bundle is not None:
            self.ops.start_shadow(settings.shadow_bundle)
        self.control: ControlFeed | None = None
        self.health = Health(settings.stall_timeout_s, on_change=self._problem_changed)
        self.collector = Collector(settings.batch_size, settings.max_wait_ms / 1000, weight=lambda d: d.weight)
        self.chunk = settings.batch_size * POLL_BATCHES
        self.piece_bytes = settings.max_in_flight_bytes // 4
        self.busy = BusyMeter()
        self.latency: LatencyTarget | None = None
        if cost is not None:
            self.latency = LatencyTarget(settings.latency_target_ms / 1000, settings.batch_size, cost,
                                         chars=lambda d: [len(s.text) for s in d.sentences])
        self.assignment: set[TopicPartition] = set()
        self._next_lag_at = 0.0
        self.consumer = None
        self.delivery: AtLeastOnce | ExactlyOnce | None = None
        # a note every NOTE_BATCHES batches' worth of records per partition (worker/quarantine.py)
        self.quarantine = Quarantine(settings.max_record_attempts, self.chunk * NOTE_BATCHES, self._commit_notes)
        self._notes_unread: set[TopicPartition] = set()
        self.breaker = Breaker(settings.dlq_max_ratio, settings.dlq_window, settings.dlq_max_consecutive)
        self._served = self.pipeline.model

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self.stop_event.set()

    def run(self) -> int:
        s = self.settings
        bootstrap = kafka_clients.resolve_bootstrap(s)
        with contextlib.ExitStack() as stack:
            self.consumer = kafka_clients.consumer(s, bootstrap)
            stack.callback(self._close_consumer)
            exactly_once = s.delivery == "exactly-once"
            producer_extra = {"transactional_id": self._transactional_id(), "enable_idempotence": True,
                              "max_in_flight_requests_per_connection": 5,
                              "transaction_timeout_ms": 15_000} if exactly_once else {}
            producer = kafka_clients.producer(s, bootstrap, **producer_extra)
            stack.callback(producer.close, 30)
            shared = (self.consumer, producer, self.pipeline.dead_letters, self.metrics, self.health)
            if exactly_once:
                self.delivery = ExactlyOnce(*shared, retry_max_s=s.publish_retry_max_s, notes=self.quarantine,
                                            max_transaction_bytes=s.max_in_flight_bytes)
            else:
                self.delivery = AtLeastOnce(*shared, retry_max_s=s.publish_retry_max_s, notes=self.quarantine,
                                            max_in_flight=s.max_in_flight_batches * self.chunk,
                                            max_in_flight_bytes=s.max_in_flight_bytes,
                                            commit_interval=s.commit_interval_ms / 1000)
            admin = kafka_clients.admin(s, bootstrap)
            try:
                self._ensure_outputs(admin)
                self.pipeline.fit_topics(kafka_clients.topic_max_bytes(admin, [s.output_topic, s.dlq_topic]))
                self.control = self._open_control(admin, bootstrap, stack)
                self.status = open_publisher(s, admin, producer, exactly_once, lambda: kafka_clients.producer(s, bootstrap),
                                             stack, self)
            finally:
                admin.close()
            self._probe = lambda: kafka_clients.consumer(s, bootstrap, group_id=None, client_id=f"{s.client_id}-probe")
            self.consumer.subscribe([s.input_topic], listener=_Rebalance(self))
            log.info("worker %d consuming %s as group %s (%s), model %s %s", self.process_index, s.input_topic,
                     s.group_id, s.delivery, self.pipeline.model.name, self.pipeline.model.version)
            try:
                while not self.stop_event.is_set():
                    self.turn()
                self.health.set(STOPPING, "finishing the work in hand")
                # Graceful stop: finish what is held, publish, commit, leave the group.
                while len(self.collector):
                    self.process(self.collector.take(self.chunk))
                self.delivery.close()
                self._hand_over(self.assignment, blocking=True)
                self.status.close()  # a tombstone: the console drops this worker's row
            except DeliveryFailed as exc:
                log.error("stopping: %s", exc)
                return EXIT_FAILED
        log.info("worker %d stopped cleanly", self.process_index)
        return EXIT_OK

    def _close_consumer(self) -> None:
        self.metrics.ready.set(0)
        self.consumer.close(autocommit=False)

    def _transactional_id(self) -> str:
        base = self.settings.transactional_id or f"{self.settings.group_id}-{socket.gethostname()}"
        return f"{base}-{self.process_index}"

    # -- one turn of the loop ------------------------------------------------------------------
    def turn(self) -> None:
        self._turned()
        self._model_ops()
        if self.delivery.has_room():
            # Idle: a long poll. Holding records: only look at what is already waiting.
            timeout_ms = 0 if len(self.collector) else IDLE_POLL_MS
            room = max(1, self.chunk - len(self.collector))
            records = intake.poll(self.consumer, self._probe, timeout_ms, room)
            self.collector.add(self._decode(records))
            # A poll returns what the client holds, up to ``room``: fewer means nothing more is
            # waiting, so another poll to find that out would only add a turn's latency.
            if self.collector.ready(drained=len(records) < room):
                started = time.monotonic()
                self.process(self.collector.take(self._cut()))
                self.busy.add(time.monotonic() - started)
        else:  # backpressure: no fetching until the oldest sends settle
            self.delivery.wait(0.2)
        self._rewound(self.delivery.advance())
        self._check_broker()
        self._report_lag()
        self.status.tick()

    def _ensure_outputs(self, admin) -> None:
        """The output and dead-letter topics are created if missing (the worker's producer never
        creates a topic by publishing to it); without the right to create topics, logged."""
        s = self.settings
        specs = kafka_clients.topic_specs(s)
        try:
            kafka_clients.ensure_topics(admin, {t: specs[t] for t in (s.output_topic, s.dlq_topic)})
        except KafkaError as exc:
            log.warning("cannot check or create topics %s and %s (%s)", s.output_topic, s.dlq_topic, one_line(exc))

    def _open_control(self, admin, bootstrap: str, stack: contextlib.ExitStack) -> ControlFeed | None:
        """The control topic's feed (the topic is created if missing), after replaying what it
        holds; None (run-time model control off, logged) when the topic cannot be read at all.
        Its records never turn it off: each is carried out or refused (worker/model_ops.py)."""
        s = self.settings
        try:
            kafka_clients.ensure_topics(admin, kafka_clients.control_topic_spec(s))
            consumer = kafka_clients.control_consumer(s, bootstrap)
            stack.callback(consumer.close)
            reader = ControlReader(consumer, s.control_topic,
                                   probe=lambda: kafka_clients.control_consumer(s, bootstrap))
            backlog = reader.backlog()
        except KafkaError as exc:
            log.warning("control topic %s cannot be read (%s): run-time model control is off", s.control_topic, exc)
            return None
        self.ops.replay(backlog)
        feed = ControlFeed(reader, CONTROL_RETRY_S).start()
        stack.callback(feed.close)  # before the consumer's close (the stack unwinds in reverse)
        return feed

    def _model_ops(self) -> None:
        """Between two pieces of work: carry out new control records, then ``--swap-when``."""
        if self.control is not None:
            try:  # taking what the feed's thread has read: no I/O here
                self.ops.follow(self.control)
            except Exception as exc:  # reading failed (the broker, an ACL), not a record: serving goes on
                log.warning("control topic %s cannot be read (%s); retrying in %.0f s", self.control.topic,
                            one_line(exc), CONTROL_RETRY_S)
        self.ops.check_rule()
        if self.pipeline.model != self._served:  # a new model: the breaker judges it afresh
            self._served = self.pipeline.model
            self.close_breaker(f"now serving {self._served.name} {self._served.version}")

    def _cut(self) -> int:
        """How much (in sentences) to classify now: up to POLL_BATCHES batches, or what the
        latency target allows."""
        limit = None if self.latency is None else self.latency.limit(self.collector.items, self.collector.oldest_age(),
                                                                      self.busy.share())
        return self.chunk if limit is None else min(self.chunk, limit)

    def _decode(self, records: list) -> list[Decoded]:
        """Records of partitions processed as usual are decoded now, once a note covers them;
        those of careful partitions wait, undecoded, to be processed one at a time."""
        self._read_notes()
        careful = {id(r) for r in records if self.quarantine.is_careful(partition_of(r))}
        usual = [r for r in records if id(r) not in careful]
        try:
            self.quarantine.cover(usual)
        except KafkaError as exc:  # no note, no work: read them again on a later turn
            self._read_again(usual, f"the quarantine note could not be committed ({one_line(exc)})")
            return [Decoded(r, [], deferred=True) for r in records if id(r) in careful]
        return [Decoded(r, [], deferred=True) if id(r) in careful else self.pipeline.decode(r) for r in records]

    def _read_notes(self) -> None:
        """The notes of newly assigned partitions (worker/quarantine.py): whether their last owner
        died on them."""
        if not self._notes_unread:
            return
        tps, self._notes_unread = self._notes_unread, set()
        try:
            self.quarantine.assigned(kafka_clients.committed_with_metadata(self.consumer, tps))
        except KafkaError as exc:  # then they are processed as usual
            log.warning("cannot read the notes of %s (%s)", sorted(tps), one_line(exc))

    def _read_again(self, records: list, why: str) -> None:
        firsts: dict[TopicPartition, int] = {}
        for r in records:
            firsts.setdefault(partition_of(r), r.offset)
        for tp, offset in firsts.items():
            with contextlib.suppress(Exception):  # not assigned any more: its new owner reads it
                self.consumer.seek(tp, offset)
        if firsts:
            log.warning("%s: reading %s again", why, sorted((tp.topic, tp.partition, o) for tp, o in firsts.items()))
        self._rewound(set(firsts))

    def process(self, decoded: list[Decoded]) -> None:
        """Classify and publish ``decoded``; the delivery strategy accounts for their offsets.
        Records of careful partitions go one at a time, after the rest (worker/quarantine.py)."""
        # Counted here, not at poll: records dropped on a revoke are counted once, by their new owner.
        self.metrics.consumed.inc(len(decoded))
        rewound: set[TopicPartition] = set()
        # in slices, so that what is built and sent at once stays within max_in_flight_bytes
        for piece in cut_by_size([d for d in decoded if not d.deferred], self.piece_bytes, lambda d: d.size):
            self._wait_for_room()
            piece = [d for d in piece if partition_of(d.record) not in rewound]
            rewound |= self._deliver(self.pipeline.handle(piece))
        for d in decoded:
            if d.deferred and partition_of(d.record) not in rewound:
                rewound |= self._process_alone(d)
        self._rewound(rewound)

    def _deliver(self, handled: list[Handled]) -> set[TopicPartition]:
        """Publish what the dead-letter breaker admits; hold back the partitions it opens on."""
        admitted, tripped = self.breaker.admit(handled)
        rewound = self.delivery.deliver(admitted) if admitted else set()
        for trip in tripped:
            self._hold(trip)
            rewound.add(trip.partition)
        return rewound

    def _hold(self, trip: Trip) -> None:
        tp = trip.partition
        with contextlib.suppress(Exception):  # not assigned any more: its new owner judges afresh
            self.consumer.seek(tp, trip.offset)
            self.consumer.pause(tp)
        self.metrics.breaker_trips.inc()
        log.error("%s[%d]@%d: dead-letter breaker open: %s; partition paused (sentistream dlq resume, or a new model, "
                  "resumes it)", tp.topic, tp.partition, trip.offset, trip.why)
        self._breaker_health()

    def _breaker_health(self) -> None:
        held = {tp: t for tp, t in self.breaker.open.items() if tp in self.assignment}
        self.metrics.breaker_open.set(len(held))
        if held:
            self.health.set(DLQ_BREAKER, "; ".join(f"{tp.topic}[{tp.partition}]@{t.offset}: {t.why}"
                                                   for tp, t in sorted(held.items())))
        else:
            self.health.clear(DLQ_BREAKER)

    def close_breaker(self, why: str) -> None:
        """Every partition the breaker holds flows again (``dlq resume``, a new model)."""
        opened = self.breaker.reset()
        for tp in opened:
            if tp in self.assignment and tp not in self.delivery.blocked:
                with contextlib.suppress(Exception):
                    self.consumer.resume(tp)
        if opened:
            log.warning("dead-letter breaker closed (%s): %s resume", why,
                        sorted((tp.topic, tp.partition) for tp in opened))
        self._breaker_health()

    def _wait_for_room(self, limit_s: float = 10.0) -> None:
        """At-least-once: let sends in flight settle (bounded) before more are built."""
        deadline = time.monotonic() + limit_s
        while not self.delivery.has_room() and time.monotonic() < deadline:
            self.delivery.wait(0.2)
            self._rewound(self.delivery.advance())

    def _process_alone(self, d: Decoded) -> set[TopicPartition]:
        """One record of a careful partition: its note, then its work, settled before the next."""
        tp = partition_of(d.record)
        try:
            crashed = self.quarantine.attempt(d.record)
        except KafkaError as exc:
            self._read_again([d.record], f"the quarantine note could not be committed ({one_line(exc)})")
            return {tp}
        if crashed is not None:
            log.error("%s[%d]@%d: %s; dead-lettering it (crashed_worker)", tp.topic, tp.partition, d.record.offset,
                      crashed.detail)
            handled = [self.pipeline.dead_letters.build(crashed)]
        else:
            self.metrics.tried_alone.inc()
            handled = self.pipeline.handle([self.pipeline.decode(d.record)])
        return self._deliver(handled) | self.delivery.settle(tp)

    def _commit_notes(self, notes: dict[TopicPartition, tuple[int, str]], blocking: bool = True) -> None:
        offsets = {tp: OffsetAndMetadata(offset, note, -1) for tp, (offset, note) in notes.items()}
        if blocking:
            self.consumer.commit(offsets)
        else:  # inside a rebalance callback, where kafka-python allows no blocking call
            self.consumer.commit_async(offsets)

    def _hand_over(self, tps: set[TopicPartition], blocking: bool = False) -> None:
        """Partitions leave cleanly: clear this worker's notes on those whose work is all committed.
        If that fails the next owner goes careful on them: slower, never wrong."""
        try:
            self.quarantine.handed_over(tps - self.delivery.unsettled(), blocking)
        except Exception as exc:  # nothing here may stop a rebalance
            log.warning("could not clear the quarantine notes of %s: %s", sorted(tps), one_line(exc))
            self.quarantine.forget(tps)

    def _rewound(self, tps: set[TopicPartition]) -> None:
        """Partitions seeked back (or revoked): what is held of them will be read again."""
        if tps:
            self.collector.drop(lambda d: partition_of(d.record) in tps)

    def _turned(self) -> None:
        self.health.turned()
        self.metrics.loop_turned.set(time.time())  # for dashboards
        self.metrics.loop_turned_monotonic.set(time.monotonic())  # for the supervisor (worker/supervisor.py)

    def _problem_changed(self, problem: str, holds: bool, none_left: bool) -> None:
        self.metrics.problem_changed(problem, holds)
        self.metrics.ready.set(1 if none_left else 0)

    def _check_broker(self) -> None:
        if kafka_clients.coordinator_unknown(self.consumer):
            self.health.set(BROKER_UNREACHABLE, "the group coordinator is unknown or unreachable")
        else:
            self.health.clear(BROKER_UNREACHABLE)

    # -- rebalance -----------------------------------------------------------------------------
    def on_revoked(self, revoked: set[TopicPartition]) -> None:
        held = {}
        for d in self.collector.items:  # read, not yet processed (the collector keeps offset order)
            held.setdefault(partition_of(d.record), d.record.offset)
        self._rewound(revoked)  # not produced: their new owner reads them
        unfinished = self.delivery.revoke(revoked)
        self._hand_over(revoked - set(unfinished))
        # An eager rebalance may hand a partition straight back, and kafka-python then keeps its
        # fetch position, past the records dropped here: seek back to the first one not done.
        for tp in revoked:
            offsets = [o for o in (held.get(tp), unfinished.get(tp)) if o is not None]
            if offsets:
                with contextlib.suppress(Exception):  # not assigned any more: nothing to keep
                    self.consumer.seek(tp, min(offsets))
        self._let_go(revoked)
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_lost(self, lost: set[TopicPartition]) -> None:
        """The group expelled this member (its session expired: a cut-off network, a long
        pause): the partitions already belong to others, so nothing is committed for them."""
        self._rewound(lost)
        self.delivery.lose(lost)
        self.quarantine.forget(lost)
        self._let_go(lost)
        log.warning("partitions lost (this member was expelled from the group): %s",
                    sorted((tp.topic, tp.partition) for tp in lost))

    def _let_go(self, tps: set[TopicPartition]) -> None:
        """Partitions no longer this worker's: out of its assignment, their lag no longer its to report."""
        self.assignment -= tps
        self._notes_unread -= tps
        if self.report_lag:
            for tp in tps:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(0)
        self.metrics.assigned.set(len(self.assignment))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # eager: the whole new assignment (everything was revoked first); cooperative: only the
        # partitions added to what this member keeps
        self.assignment |= assigned
        self.metrics.assigned.set(len(self.assignment))
        self.delivery.assigned(assigned)
        for tp in assigned & set(self.breaker.open):  # handed straight back: still held
            self.consumer.pause(tp)
        self._breaker_health()
        self._notes_unread |= assigned  # read before their records are decoded (no blocking call in here)
        self.health.clear(STARTING)
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if not self.report_lag or now < self._next_lag_at or not self.assignment:
            return
        self._next_lag_at = now + LAG_EVERY_S
        for tp in self.assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            done = self.delivery.committed.get(tp)
            if done is None:
                with contextlib.suppress(Exception):
                    done = self.consumer.position(tp, timeout_ms=100)
            if done is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - done))

