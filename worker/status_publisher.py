"""Publishes the worker's status record (worker/status.py) from the run loop.

Publishing never blocks or stops the loop: the record goes through a producer the loop already
has, without waiting for the broker; a failure is logged once and counted in the next record.
A clean stop ends with a tombstone for the worker's key (the console drops its row); a worker
that crashed sends none and turns "gone" after three intervals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from sentistream.worker import kafka_clients
from sentistream.worker.faults import one_line
from sentistream.worker.settings import Settings
from sentistream.worker.status import ModelStatus, Rates, ShadowStatus, WorkerStatus

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 60.0  # a failed send may have blocked for publish_block_ms
TOMBSTONE_WAIT_S = 1.0  # the most a clean stop waits for its tombstone to reach the broker


def counter_total(metric: Any) -> dict[str, float]:
    """A prometheus counter's ``_total`` samples, by their first label value ('' without labels)."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = next(iter(sample.labels.values()), "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def histogram_buckets(metric: Any) -> list[tuple[float, float]]:
    """A prometheus histogram's cumulative buckets: (upper bound, count)."""
    return [(float(s.labels["le"]), s.value) for family in metric.collect() for s in family.samples
            if s.name.endswith("_bucket")]


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of cumulative ``buckets``; None when empty."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound if bound != float("inf") else buckets[-2][0] if len(buckets) > 1 else None
    return None


def _delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


class StatusPublisher:
    """Built once when the loop starts; ``tick()`` once per turn sends a record when one is due."""

    def __init__(self, settings: Settings, send: Callable[[str, bytes, bytes | None], Any], worker: Any,
                 clock: Callable[[], float] = time.time, flush: Callable[[float], Any] | None = None) -> None:
        self.settings = settings
        self.send = send
        self.flush = flush
        self.worker = worker
        self.clock = clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.key = f"{self.host}/{self.pid}"
        self.started_at = clock()
        self.failures = 0
        self._last_ok = False  # the last send went out (its topic's metadata known) and did not fail
        self._next_at = self.started_at  # the first record goes out at the first turn
        self._last: tuple[float, dict[str, dict[str, float]], list[tuple[float, float]]] = (
            self.started_at, {}, [])

    def tick(self) -> None:
        interval = self.settings.status_interval_s
        now = self.clock()
        if not interval or now < self._next_at:
            return
        self._next_at = now + interval
        try:
            record = self.build(now)
            sent = self.send(self.settings.status_topic, self.key.encode(), record.model_dump_json().encode())
            self._last_ok = True
            if hasattr(sent, "add_errback"):  # a kafka-python future: not waited for
                sent.add_errback(self._failed)
        except Exception as exc:  # never the loop's problem; a send that blocked is not tried again soon
            self._failed(exc)
            self._next_at = now + max(interval, RETRY_AFTER_FAILURE_S)

    def close(self) -> None:
        """A clean stop: a tombstone (the key, no value) so the console forgets this worker at once.
        Never raises and waits at most TOMBSTONE_WAIT_S; skipped when status records are off or
        the last send failed (the broker away: the row turns "gone" as after a crash)."""
        if not self.settings.status_interval_s or not self._last_ok:
            return
        try:
            self.send(self.settings.status_topic, self.key.encode(), None)
            if self.flush is not None:
                self.flush(TOMBSTONE_WAIT_S)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._last_ok = False
        self.failures += 1
        if self.failures == 1:
            log.warning("status record not sent to %s (%s); further failures are only counted",
                        self.settings.status_topic, one_line(exc))

    def build(self, now: float) -> WorkerStatus:
        w, s = self.worker, self.settings
        m = w.metrics
        counts = {"in": counter_total(m.consumed), "out": counter_total(m.classified),
                  "dead": counter_total(m.dead_lettered)}
        buckets = histogram_buckets(m.end_to_end_seconds)
        then, before, old_buckets = self._last
        self._last = (now, counts, buckets)
        span = max(now - then, 1e-3)
        if before:
            diff = {k: _delta(v, before.get(k, {})) for k, v in counts.items()}
            window = [(b, c - (old_buckets[i][1] if i < len(old_buckets) else 0)) for i, (b, c) in enumerate(buckets)]
        else:  # the first record: nothing to compare with, counts since start
            diff, window = counts, buckets
        p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
        ready, reason = w.health.ready()
        model = w.pipeline.model
        shadow = w.ops.shadow
        return WorkerStatus(
            worker=self.key, host=self.host, pid=self.pid, at=now, interval_s=s.status_interval_s,
            started_at=self.started_at, group=s.group_id, input_topic=s.input_topic, output_topic=s.output_topic,
            dlq_topic=s.dlq_topic, delivery=s.delivery, batch_size=s.batch_size, runtime=getattr(s, "runtime", None),
            partitions=sorted(tp.partition for tp in w.assignment),
            rates=Rates(records_in=sum(diff["in"].values()) / span, sentences_out=sum(diff["out"].values()) / span,
                        dead_letters=sum(diff["dead"].values()) / span),
            labels={k: int(v) for k, v in diff["out"].items() if v},
            p50_ms=None if p50 is None else p50 * 1000, p99_ms=None if p99 is None else p99 * 1000,
            ready=ready, reason=reason,
            model=ModelStatus(name=model.name, version=model.version, runtime=getattr(model, "runtime", None)),
            shadow=None if shadow is None else ShadowStatus(
                name=shadow.model.name, version=shadow.model.version, runtime=getattr(shadow.model, "runtime", None),
                agreement=shadow.agreement, compared=shadow.compared),
            publish_failures=self.failures)


def status_topic_spec(settings: Settings) -> dict[str, dict[str, Any]]:
    """One partition, compacted: the latest record of every worker, for a console that starts later."""
    return {settings.status_topic: {"num_partitions": 1,
                                    "configs": {"cleanup.policy": "compact", "segment.ms": "600000"}}}


def open_publisher(settings: Settings, admin: Any, producer: Any, transactional: bool,
                   make_producer: Callable[[], Any], stack: contextlib.ExitStack, worker: Any) -> StatusPublisher:
    """The loop's publisher: the topic created if missing (else logged: sends then fail, counted);
    the loop's producer, or, when that one is transactional (it sends only inside transactions),
    a small producer of its own. The loop calls its ``close()`` on a clean stop only."""
    if settings.status_interval_s:
        try:
            kafka_clients.ensure_topics(admin, status_topic_spec(settings))
        except Exception as exc:  # a send would wait for the topic's metadata each time: none are made
            log.warning("cannot check or create the status topic %s (%s): no status records", settings.status_topic,
                        one_line(exc))
            settings = settings.model_copy(update={"status_interval_s": 0})
        if transactional:
            producer = make_producer()
            stack.callback(producer.close, 5)
    return StatusPublisher(settings, lambda topic, key, value: producer.send(topic, key=key, value=value), worker,
                           flush=lambda timeout_s: producer.flush(timeout=timeout_s))
