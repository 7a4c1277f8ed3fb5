"""The dead-letter breaker: a worker whose dead letters explode (a bad model or configuration
deployed, a producer gone wrong) stops dead-lettering instead of emptying the stream into the DLQ.

Per partition, over its last ``window`` records: when ``max_consecutive`` dead letters come in a
row, or the window is full and at least ``max_ratio`` of it are dead letters, the breaker opens
for that partition. The record that opens it and everything after it stay in the input: nothing
of them is published or committed, the partition is rewound to that record and paused, and
``/readyz`` says ``dlq_breaker``. It closes on ``sentistream dlq resume`` (a control command
every worker follows), on a model swap, or when the worker restarts. Pure: the run loop does
the pausing (worker/loop.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kafka import TopicPartition

if TYPE_CHECKING:
    from sentistream.worker.outgoing import Handled


@dataclass
class _Window:
    outcomes: deque[bool] = field(default_factory=deque)  # True: dead-lettered
    dead: int = 0
    consecutive: int = 0


@dataclass(frozen=True, slots=True)
class Trip:
    """Where and why a partition's breaker opened."""

    partition: TopicPartition
    offset: int  # the first record held back
    why: str


class Breaker:
    """``window`` 0: never opens."""

    def __init__(self, max_ratio: float, window: int, max_consecutive: int) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self.max_consecutive = max_consecutive
        self._windows: dict[TopicPartition, _Window] = {}
        self.open: dict[TopicPartition, Trip] = {}

    def admit(self, handled: Sequence[Handled]) -> tuple[list[Handled], list[Trip]]:
        """What may be published, in order, and the partitions that opened now. A partition that
        is open admits nothing."""
        admitted: list[Handled] = []
        tripped: list[Trip] = []
        for h in handled:
            tp = TopicPartition(h.record.topic, h.record.partition)
            if tp in self.open:
                continue
            why = self._observe(tp, h.rejection is not None)
            if why is None:
                admitted.append(h)
                continue
            trip = Trip(tp, h.record.offset, why)
            self.open[tp] = trip
            tripped.append(trip)
        return admitted, tripped

    def _observe(self, tp: TopicPartition, dead: bool) -> str | None:
        """Count one record; why the breaker opens on it, or None."""
        if self.window <= 0:
            return None
        w = self._windows.setdefault(tp, _Window())
        w.consecutive = w.consecutive + 1 if dead else 0
        if self.max_consecutive and w.consecutive >= self.max_consecutive:
            return f"{w.consecutive} dead letters in a row (dlq_max_consecutive {self.max_consecutive})"
        w.outcomes.append(dead)
        w.dead += dead
        if len(w.outcomes) > self.window:
            w.dead -= w.outcomes.popleft()
        if len(w.outcomes) >= self.window and w.dead / len(w.outcomes) >= self.max_ratio:
            return (f"{w.dead} dead letters in the last {len(w.outcomes)} records (dlq_max_ratio {self.max_ratio} "
                    f"over dlq_window {self.window})")
        return None

    def reset(self) -> list[TopicPartition]:
        """Close every breaker (``dlq resume``, a new model); the partitions to resume."""
        opened = list(self.open)
        self.open.clear()
        self._windows.clear()
        return opened

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions gone to another worker: it judges them afresh."""
        for tp in tps:
            self._windows.pop(tp, None)
            self.open.pop(tp, None)
