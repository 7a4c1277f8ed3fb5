"""The run loop: poll → decode → micro-batch → infer → produce → commit.

One thread owns the consumer, the producer and the offsets. Resources live in an ExitStack;
SIGTERM/SIGINT call :meth:`Worker.stop`; partitions being revoked get their finished work
committed first.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import ConsumerRebalanceListener, TopicPartition

from worker import kafka_clients
from worker.batching import Collector, length_sorted_batches, next_offsets
from worker.bundle import Bundle, Prediction, default_bundle_path
from worker.contract import (
    ModelRef,
    Reason,
    Rejection,
    Result,
    Sentence,
    SourceRef,
    dead_letter_headers,
    decode,
    result_headers,
    to_sentences,
)
from worker.delivery import AtLeastOnce, DeliveryFailed, ExactlyOnce, Unit
from worker.metrics import WorkerMetrics
from worker.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL = 0, 1
LAG_EVERY_S = 2.0
# A poll takes up to this many batches' worth of records; they are sorted by token count
# together, so the wider the window the less padding (bench/README "Performance").
POLL_BATCHES = 8


@dataclass
class Outcome:
    """Per input record: its sentences' results, or its rejection."""

    record: object
    sentences: list[Sentence]
    rejection: Rejection | None = None


class _Rebalance(ConsumerRebalanceListener):
    """Called inside ``consumer.poll()`` (on kafka-python's IO thread while the loop waits)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned) -> None:
        self.worker.on_assigned(assigned)


class Worker:
    def __init__(self, settings: Settings, metrics: WorkerMetrics, process_index: int = 0,
                 bundle: Bundle | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.process_index = process_index
        self.bundle = bundle or Bundle(settings.bundle or default_bundle_path(), threads=settings.threads,
                                       max_tokens=settings.max_tokens)
        m = self.bundle.manifest
        self.model = ModelRef(name=m.name, version=m.version)
        metrics.serving(m.name, m.version, m.files["model.onnx"], m.labels)
        self.splitter = None
        if settings.split_sentences:
            from worker.splitting import make_splitter

            self.splitter = make_splitter()
        self.running = False
        self.collector = Collector(settings.batch_size, settings.max_wait_ms / 1000)
        self.assignment: set[TopicPartition] = set()
        self._next_lag_at = 0.0
        self.consumer = None
        self.producer = None
        self.delivery: AtLeastOnce | ExactlyOnce | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self.running = False

    def is_ready(self) -> bool:
        return bool(self.assignment)

    def run(self) -> int:
        s = self.settings
        bootstrap = kafka_clients.resolve_bootstrap(s)
        with contextlib.ExitStack() as stack:
            self.consumer = kafka_clients.consumer(s, bootstrap)
            stack.callback(self._close_consumer)
            producer_extra = {}
            if s.delivery == "exactly-once":
                producer_extra = {"transactional_id": self._transactional_id(),
                                  "transaction_timeout_ms": 15_000}
            self.producer = kafka_clients.producer(s, bootstrap, **producer_extra)
            stack.callback(self.producer.close, 30)
            if s.delivery == "exactly-once":
                self.delivery = ExactlyOnce(self.consumer, self.producer)
            else:
                self.delivery = AtLeastOnce(self.consumer, self.producer, s.max_in_flight_batches)
            self.consumer.subscribe([s.input_topic], listener=_Rebalance(self))
            log.info("worker %d consuming %s as group %s (%s), model %s %s", self.process_index,
                     s.input_topic, s.group_id, s.delivery, self.model.name, self.model.version)
            self.running = True
            try:
                while self.running:
                    self.poll_once()
                    self._report_lag()
                # Graceful stop: finish the batch in hand, publish, commit, leave the group.
                if len(self.collector):
                    self.process(self.collector.take())
                self.delivery.drain()
            except DeliveryFailed as exc:
                log.error("stopping: %s", exc)
                return EXIT_FATAL
        log.info("worker %d stopped cleanly", self.process_index)
        return EXIT_OK

    def _close_consumer(self) -> None:
        self.metrics.ready.set(0)
        self.consumer.close(autocommit=False)

    def _transactional_id(self) -> str:
        base = self.settings.transactional_id or f"{self.settings.group_id}-{socket.gethostname()}"
        return f"{base}-{self.process_index}"

    # -- one turn of the loop ------------------------------------------------------------------
    def poll_once(self) -> None:
        # Idle: a long poll. Holding records: only look at what is already waiting (timeout 0).
        timeout_ms = 0 if len(self.collector) else 500
        room = max(1, self.settings.batch_size * POLL_BATCHES - len(self.collector))
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
        for records in polled.values():
            self.collector.add(records)
        if self.collector.ready(drained=timeout_ms == 0 and not polled):
            self.process(self.collector.take())
        else:
            self.delivery.commit_done()

    def process(self, records: Sequence) -> None:
        """Classify and publish ``records``; hand their offsets to the delivery strategy."""
        # Counted here, not at poll: records dropped on a revoke are counted once, by their new owner.
        self.metrics.consumed.inc(len(records))
        outcomes = [self._decode(r) for r in records]
        predictions = self._infer([s for o in outcomes for s in o.sentences], outcomes)
        self.delivery.begin()
        futures = []
        try:
            for o in outcomes:
                futures.extend(self._publish(o, predictions))
        except Exception:
            self.delivery.abandon()
            raise
        self.delivery.submit(Unit(next_offsets(records), futures))
        if self.delivery.transactional:
            now = time.time()
            for o in outcomes:
                if o.rejection is None:
                    self.metrics.end_to_end_seconds.observe(max(0.0, now - o.record.timestamp / 1000))

    def _decode(self, record) -> Outcome:
        decoded = decode(record, self.settings.max_message_bytes)
        if isinstance(decoded, Rejection):
            return Outcome(record, [], decoded)
        return Outcome(record, to_sentences(record, decoded, self.splitter))

    def _infer(self, sentences: list[Sentence], outcomes: list[Outcome]) -> dict[int, Prediction]:
        """Tokenize the poll's sentences together, then batch them by token count (least padding).
        A batch that fails sends its records to the DLQ (model_error)."""
        predictions: dict[int, Prediction] = {}
        try:
            encoded = list(zip(sentences, self.bundle.tokenize([s.text for s in sentences]), strict=True))
        except Exception as exc:  # tokenizers' errors are untyped too
            log.exception("tokenization failed for %d sentences", len(sentences))
            self._reject({id(s.record) for s in sentences}, outcomes, exc)
            return predictions
        for batch in length_sorted_batches(encoded, self.settings.batch_size, lambda pair: len(pair[1].ids)):
            started = time.perf_counter()
            try:
                preds = self.bundle.classify_encoded([e for _, e in batch])
            except Exception as exc:  # onnxruntime errors are untyped; the records go to the DLQ
                log.exception("inference failed on a batch of %d", len(batch))
                self._reject({id(s.record) for s, _ in batch}, outcomes, exc)
                continue
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(batch))
            for (s, _), p in zip(batch, preds, strict=True):
                predictions[id(s)] = p
        return predictions

    @staticmethod
    def _reject(records: set[int], outcomes: list[Outcome], exc: Exception) -> None:
        for o in outcomes:
            if id(o.record) in records and o.rejection is None:
                o.rejection = Rejection(o.record, Reason.MODEL_ERROR, repr(exc)[:200])

    def _publish(self, o: Outcome, predictions: dict[int, Prediction]) -> list:
        r = o.record
        if o.rejection is not None:
            self.metrics.dead_lettered.labels(o.rejection.reason.value).inc()
            log.warning("dead-lettered %s[%d]@%d: %s (%s)", r.topic, r.partition, r.offset,
                        o.rejection.reason.value, o.rejection.detail)
            return [self.producer.send(self.settings.dlq_topic, value=r.value, key=r.key,
                                       headers=dead_letter_headers(o.rejection))]
        headers = result_headers(r, self.model)
        source = SourceRef(topic=r.topic, partition=r.partition, offset=r.offset)
        futures = []
        for s in o.sentences:
            p = predictions[id(s)]
            result = Result(id=s.id, text=s.text, label=p.label, label_id=p.label_id, scores=p.scores,
                            model=self.model, source=source, meta=s.meta, doc_id=s.doc_id,
                            sentence_index=s.sentence_index)
            future = self.producer.send(self.settings.output_topic, value=result.model_dump_json().encode(),
                                        key=r.key, headers=headers)
            if not self.delivery.transactional:
                future.add_callback(self._acked, r.timestamp)
            futures.append(future)
            self.metrics.classified.labels(p.label).inc()
        return futures

    def _acked(self, timestamp_ms: int, _metadata: object) -> None:
        self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - timestamp_ms / 1000))

    # -- rebalance -----------------------------------------------------------------------------
    def on_revoked(self, revoked) -> None:
        revoked = set(revoked)
        kept = [r for r in self.collector.take() if TopicPartition(r.topic, r.partition) not in revoked]
        self.collector.add(kept)  # the revoked ones were not produced: their new owner reads them
        self.delivery.drain(blocking=False)
        self.assignment -= revoked
        for tp in revoked:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(0)
        self._report_ready()
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_assigned(self, assigned) -> None:
        self.assignment = set(assigned)
        self._report_ready()
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def _report_ready(self) -> None:
        self.metrics.ready.set(1 if self.assignment else 0)
        self.metrics.assigned.set(len(self.assignment))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_at or not self.assignment:
            return
        self._next_lag_at = now + LAG_EVERY_S
        for tp in self.assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            done = self.delivery.committed.get((tp.topic, tp.partition))
            if done is None:
                with contextlib.suppress(Exception):
                    done = self.consumer.position(tp, timeout_ms=100)
            if done is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - done))


def install_signal_handlers(worker: Worker) -> None:
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
