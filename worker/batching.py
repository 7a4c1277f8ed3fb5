"""Micro-batching, pure: collect by size *and* time, then cut length-sorted batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Collector:
    """Holds items until ``size`` of them (by ``weight``: a review split into sentences weighs
    its sentence count) are in, the oldest has waited ``max_wait`` seconds, or the input is
    drained: waiting for records that are not there only adds latency, while under load records
    pile up during inference and batches fill by themselves."""

    def __init__(self, size: int, max_wait: float, clock: Callable[[], float] = time.monotonic,
                 weight: Callable[[Any], int] = lambda _item: 1) -> None:
        self.size = size
        self.max_wait = max_wait
        self.clock = clock
        self.weight = weight
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
        full = sum(self.weight(i) for i in self.items) >= self.size
        return drained or full or self.clock() - self._first_at >= self.max_wait  # type: ignore[operator]

    def take(self, limit: int | None = None) -> list:
        """The oldest items, up to ``limit`` in weight (always at least one); the rest wait."""
        count, total = 0, 0
        for item in self.items:
            total += self.weight(item)
            if limit is not None and count and total > limit:
                break
            count += 1
        taken, self.items = self.items[:count], self.items[count:]
        self._first_at = self.clock() if self.items else None
        return taken

    def drop(self, unwanted: Callable[[Any], bool]) -> None:
        """Forget the items ``unwanted`` picks (their partition was revoked or rewound)."""
        self.items = [i for i in self.items if not unwanted(i)]
        if not self.items:
            self._first_at = None


def length_sorted_batches(items: Sequence[T], size: int, length: Callable[[T], int],
                          tolerance: int = 1) -> list[list[T]]:
    """Sort by length and cut into batches of at most ``size`` items whose lengths differ by at
    most ``tolerance``. On CPU a padding token costs as much as a real one while one more
    onnxruntime call costs little, so batches hold only (nearly) equal lengths (README
    "Performance" has the measurements)."""
    batches: list[list[T]] = []
    current: list[T] = []
    shortest = 0
    for item in sorted(items, key=length):
        n = length(item)
        if current and (len(current) >= size or n - shortest > tolerance):
            batches.append(current)
            current = []
        if not current:
            shortest = n
        current.append(item)
    if current:
        batches.append(current)
    return batches


def token_batches(encodings: Sequence, size: int) -> list[list[int]]:
    """Indices of ``encodings`` (tokenizers ``Encoding``) grouped the way the worker batches them:
    ≤ ``size`` per batch, token counts within 1. For tools that compare models on the worker's
    batches (export gate, calibration, benchmarks)."""
    return length_sorted_batches(list(range(len(encodings))), size, lambda i: len(encodings[i].ids))
