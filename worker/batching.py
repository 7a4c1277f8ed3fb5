"""Micro-batching, pure: collect by size *and* time, then cut length-sorted batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class Collector:
    """Holds items until ``size`` of them are in, the oldest has waited ``max_wait`` seconds, or
    the input is drained: waiting for records that are not there only adds latency, while under
    load records pile up during inference and batches fill by themselves."""

    def __init__(self, size: int, max_wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_wait = max_wait
        self.clock = clock
        self.items: list = []
        self._first_at: float | None = None

    def add(self, items: Sequence) -> None:
        if items and self._first_at is None:
            self._first_at = self.clock()
        self.items.extend(items)

    def __len__(self) -> int:
        return len(self.items)

    def ready(self, drained: bool = False) -> bool:
        """``drained``: the last look at the input found nothing more waiting."""
        if not self.items:
            return False
        return drained or len(self.items) >= self.size or self.clock() - self._first_at >= self.max_wait  # type: ignore[operator]

    def take(self) -> list:
        items, self.items, self._first_at = self.items, [], None
        return items


def length_sorted_batches(items: Sequence[T], size: int, length: Callable[[T], int]) -> list[list[T]]:
    """Sort by length, cut into batches of ``size``: similar lengths share a batch, less padding."""
    ordered = sorted(items, key=length)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def next_offsets(records: Sequence) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the offset to commit once ``records`` are all accounted for."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset + 1 > out.get(key, -1):
            out[key] = r.offset + 1
    return out
