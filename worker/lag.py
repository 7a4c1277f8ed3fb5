"""Consumer lag measured from outside the group: end offset minus the group's committed offset.

The supervisor of ``--processes N`` runs one :class:`LagMonitor` (its children report none), so
the lag of a partition whose worker is down (crashed, restarting, stuck) keeps growing in
``sentistream_consumer_lag`` instead of vanishing with that worker's metrics. A partition with no
committed offset counts from its first offset: the group starts at ``earliest``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import TopicPartition

from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)

EVERY_S = 5.0
ERROR_LOG_EVERY_S = 60.0
OFFSETS_TIMEOUT_MS = 10_000


def partition_lag(ends: Mapping[int, int], beginnings: Mapping[int, int],
                  committed: Mapping[int, int]) -> dict[int, int]:
    """Records not yet processed, per partition. ``committed`` holds only the partitions the group
    committed; an offset below the partition's first one (deleted by retention) counts from there."""
    lag = {}
    for partition, end in ends.items():
        start = max(committed.get(partition, 0), beginnings.get(partition, 0))
        lag[partition] = max(0, end - start)
    return lag


class LagMonitor:
    """A daemon thread that sets ``gauge.labels(topic, partition)`` every ``every_s`` seconds.

    Errors (broker down, topic missing) are logged at most once a minute and never end the thread;
    the gauge keeps its last values meanwhile. :meth:`stop` ends it."""

    def __init__(self, settings: Settings, gauge: Any, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.gauge = gauge
        self.every_s = every_s
        self.clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
        self._admin: Any = None
        self._consumer: Any = None
        self._last_error_logged: float | None = None
        self._failing = False

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.measure()
            except Exception as exc:  # whatever it is, the next round tries again
                self._failed(exc)
            self._stopped.wait(self.every_s)
        self._close()

    def measure(self) -> dict[int, int]:
        """One round: read the offsets, set the gauge, return the lag per partition."""
        topic, group = self.settings.input_topic, self.settings.group_id
        admin, consumer = self._clients()
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            raise LookupError(f"topic {topic} does not exist (yet)")
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = consumer.end_offsets(tps, timeout_ms=OFFSETS_TIMEOUT_MS)
        beginnings = consumer.beginning_offsets(tps, timeout_ms=OFFSETS_TIMEOUT_MS)
        offsets = admin.list_group_offsets(group).get(group, {})
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()
                     if tp.topic == topic and meta.offset is not None and meta.offset >= 0}
        lag = partition_lag({tp.partition: ends[tp] for tp in tps if tp in ends},
                            {tp.partition: beginnings[tp] for tp in tps if tp in beginnings}, committed)
        for partition, n in lag.items():
            self.gauge.labels(topic, str(partition)).set(n)
        if self._failing:
            self._failing = False
            log.info("lag monitor: reading offsets of group %s again", group)
        return lag

    def _clients(self) -> tuple[Any, Any]:
        if self._consumer is None or self._admin is None:
            s = self.settings
            bootstrap = kafka_clients.resolve_bootstrap(s)
            if self._consumer is None:
                self._consumer = kafka_clients.consumer(s, bootstrap, group_id=None, client_id=f"{s.client_id}-lag")
            if self._admin is None:
                self._admin = kafka_clients.admin(s, bootstrap)
        return self._admin, self._consumer

    def _failed(self, exc: Exception) -> None:
        self._failing = True
        now = self.clock()
        if self._last_error_logged is None or now - self._last_error_logged >= ERROR_LOG_EVERY_S:
            self._last_error_logged = now
            log.warning("lag monitor: cannot read the lag of group %s on %s (%s: %s); retrying every %.0f s",
                        self.settings.group_id, self.settings.input_topic, type(exc).__name__, exc, self.every_s)

    def _close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing on the way out; nothing left to do
                    log.debug("lag monitor: closing a client failed", exc_info=True)
        self._consumer = self._admin = None
