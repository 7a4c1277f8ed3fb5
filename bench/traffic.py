"""Traffic around running workers: a steady input stream and a downstream reader, shared by the soak
(bench/soak.py) and the tests that change things while records flow (tests/streams.py):

- :class:`Feeder` sends ``{"id", "text"}`` records at a steady rate and remembers when each id was
  sent and which ids the cluster acknowledged;
- :class:`Monitor` reads the output and dead-letter topics as a downstream read_committed
  consumer: each id's first arrival, how many times it came, every arrival's time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

KEYS = 12  # records are keyed k0 … k11


class Feeder:
    """Sends ``{"id": f"{prefix}{i}", "text"}`` at ``rate`` per second until stopped (wall-clock
    send times, to compare with arrivals)."""

    def __init__(self, producer: Any, topic: str, rate: float, texts: Sequence[str], prefix: str = "r",
                 flush_timeout_s: float = 150.0) -> None:
        self.producer, self.topic, self.rate, self.texts, self.prefix = producer, topic, rate, texts, prefix
        self.flush_timeout_s = flush_timeout_s
        self.sent_at: dict[str, float] = {}
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait for the acknowledgements of what was sent."""
        self._stop.set()
        self._thread.join()
        self.producer.flush(timeout=self.flush_timeout_s)
        self.producer.close(timeout=10)

    def close(self) -> None:
        """Stop at once (a run that failed midway): records still in flight are dropped."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(Exception):
                self.producer.close(timeout=0)

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            for i in range(sent, due):
                self._send(i)
            sent = max(sent, due)
            self._stop.wait(0.01)

    def _send(self, i: int) -> None:
        record_id = f"{self.prefix}{i}"
        value = json.dumps({"id": record_id, "text": self.texts[i % len(self.texts)]}).encode()
        self.sent_at[record_id] = time.time()
        future = self.producer.send(self.topic, key=f"k{i % KEYS}".encode(), value=value)
        future.add_callback(lambda _meta: self.acked.add(record_id))
        future.add_errback(lambda exc: self.failed.__setitem__(record_id, repr(exc)))


def record_id(value: bytes | None) -> str | None:
    """The ``id`` of a result or dead letter of ours; None for anything else."""
    try:
        return str(json.loads(value)["id"])  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError):
        return None


class Monitor:
    """Reads with ``consumer`` (already subscribed or assigned) until stopped; ``dlq_topic``:
    records from it are counted as dead letters."""

    def __init__(self, consumer: Any, dlq_topic: str | None = None) -> None:
        self.consumer, self.dlq_topic = consumer, dlq_topic
        self.first_seen: dict[str | None, float] = {}
        self.counts: Counter[str | None] = Counter()
        self.arrivals: list[float] = []
        self.dead_letters = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()

    def close(self) -> None:
        if not self._stop.is_set():
            self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=200)
            now = time.time()
            with self._lock:
                for records in polled.values():
                    for r in records:
                        rid = record_id(r.value)
                        self.first_seen.setdefault(rid, now)
                        self.counts[rid] += 1
                        self.arrivals.append(now)
                        self.dead_letters += r.topic == self.dlq_topic

    def seen(self) -> dict[str | None, float]:
        with self._lock:
            return dict(self.first_seen)

    def has_all(self, ids: set[str]) -> bool:
        with self._lock:
            return ids <= self.first_seen.keys()

    def wait(self, done: Callable[[dict[str | None, float]], bool], timeout: float, what: str) -> None:
        """Until ``done(seen)``; AssertionError with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.seen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.2)

    def first_fresh(self, since: float, sent_at: dict[str, float]) -> float | None:
        """Seconds from ``since`` until the first result of an input sent after ``since`` arrived."""
        fresh = [t for rid, t in self.seen().items() if sent_at.get(rid, 0.0) > since]  # type: ignore[arg-type]
        return min(fresh) - since if fresh else None

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between two arrivals (or ``start``/``end``) within [start, end]."""
        with self._lock:
            times = [start] + [t for t in self.arrivals if start <= t <= end] + [end]
        return max(b - a for a, b in pairwise(times))
