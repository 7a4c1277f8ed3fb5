"""Micro-batching, pure: collect by size *and* time, then cut length-sorted batches."""

from __future__ import annotations

import time
from collections import deque
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
        self._arrived: list[float] = []  # when each held item came in

    def add(self, items: Sequence) -> None:
        now = self.clock()
        if items and self._first_at is None:
            self._first_at = now
        self.items.extend(items)
        self._arrived.extend([now] * len(items))

    def __len__(self) -> int:
        return len(self.items)

    def ready(self, drained: bool = False) -> bool:
        """``drained``: the last look at the input found nothing more waiting."""
        if not self.items:
            return False
        full = sum(self.weight(i) for i in self.items) >= self.size
        return drained or full or self.clock() - self._first_at >= self.max_wait  # type: ignore[operator]

    def oldest_age(self) -> float:
        """Seconds the oldest held item has waited here (0 when empty)."""
        return self.clock() - self._arrived[0] if self._arrived else 0.0

    def take(self, limit: int | None = None) -> list:
        """The oldest items, up to ``limit`` in weight (always at least one); the rest wait."""
        count, total = 0, 0
        for item in self.items:
            total += self.weight(item)
            if limit is not None and count and total > limit:
                break
            count += 1
        taken, self.items = self.items[:count], self.items[count:]
        self._arrived = self._arrived[count:]
        self._first_at = self.clock() if self.items else None
        return taken

    def drop(self, unwanted: Callable[[Any], bool]) -> None:
        """Forget the items ``unwanted`` picks (their partition was revoked or rewound)."""
        kept = [(i, t) for i, t in zip(self.items, self._arrived, strict=True) if not unwanted(i)]
        self.items, self._arrived = [i for i, _ in kept], [t for _, t in kept]
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


def cut_by_size(items: Sequence[T], budget: int, size: Callable[[T], int]) -> list[list[T]]:
    """``items`` in order, cut where their sizes would add up past ``budget`` (an item alone may
    pass it)."""
    out: list[list[T]] = []
    total = 0
    for item in items:
        n = size(item)
        if not out or (out[-1] and total + n > budget):
            out.append([])
            total = 0
        out[-1].append(item)
        total += n
    return out


def token_batches(encodings: Sequence, size: int) -> list[list[int]]:
    """Indices of ``encodings`` (tokenizers ``Encoding``) grouped the way the worker batches them:
    ≤ ``size`` per batch, token counts within 1. For tools that compare models on the worker's
    batches (export gate, calibration, benchmarks)."""
    return length_sorted_batches(list(range(len(encodings))), size, lambda i: len(encodings[i].ids))


class CostModel:
    """What inference costs on this machine, learned from the batches the worker ran: seconds ≈
    ``fixed`` + ``per_token`` × padded tokens (least squares over the last ``window`` batches),
    and how many tokens a character of text makes."""

    def __init__(self, window: int = 256) -> None:
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.tokens_per_char = 0.3  # until texts are seen (English WordPiece: ~0.25-0.3)

    def observe_batch(self, padded_tokens: int, seconds: float) -> None:
        self.samples.append((padded_tokens, seconds))

    def observe_texts(self, chars: int, tokens: int) -> None:
        if chars > 0:
            self.tokens_per_char = 0.9 * self.tokens_per_char + 0.1 * tokens / chars

    def fit(self) -> tuple[float, float]:
        """(fixed seconds per batch, seconds per padded token); (0, 0) before any batch."""
        n = len(self.samples)
        if n == 0:
            return 0.0, 0.0
        mx = sum(x for x, _ in self.samples) / n
        my = sum(y for _, y in self.samples) / n
        var = sum((x - mx) ** 2 for x, _ in self.samples)
        if n < 4 or var == 0:
            return 0.0, my / mx if mx else 0.0
        per_token = max(0.0, sum((x - mx) * (y - my) for x, y in self.samples) / var)
        return max(0.0, my - per_token * mx), per_token

    def seconds(self, chars: Sequence[int], batch_size: int) -> float:
        """Estimated inference time of texts of these lengths, cut the worker's way."""
        if not chars:
            return 0.0
        fixed, per_token = self.fit()
        tokens = [2 + c * self.tokens_per_char for c in chars]  # 2: [CLS] and [SEP]
        batches = -(-len(chars) // batch_size)
        return fixed * batches + per_token * sum(tokens)


class BusyMeter:
    """The share of the last ``window`` seconds the worker spent classifying and publishing."""

    def __init__(self, window: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._spans: deque[tuple[float, float]] = deque()  # (ended at, seconds)

    def add(self, seconds: float) -> None:
        self._spans.append((self.clock(), seconds))

    def share(self) -> float:
        since = self.clock() - self.window
        while self._spans and self._spans[0][0] < since:
            self._spans.popleft()
        return min(1.0, sum(seconds for _, seconds in self._spans) / self.window)


class LatencyTarget:
    """``--latency-target-ms``: how much of what is held to classify now, so that the oldest held
    message's result goes out within the target. Takes the oldest items whose estimated cost
    fits in the time left (less ``headroom`` of the target for publishing and the broker's ack).

    No limit (the worker works exactly as one without a target) when nothing fits, or when the
    worker was busy more than ``max_busy`` of the last seconds: a smaller cut costs more per
    sentence (a cut of one batch does 0.92x the widest cut's sentences/s, one of 8 sentences 0.86x,
    docs/performance.md), and without idle time to absorb that the backlog, and the tail, grow;
    late, throughput is what shortens the queue."""

    def __init__(self, target_s: float, batch_size: int, cost: CostModel, chars: Callable[[Any], Sequence[int]],
                 headroom: float = 0.25, max_busy: float = 0.5) -> None:
        self.target_s = target_s
        self.batch_size = batch_size
        self.cost = cost
        self.chars = chars  # an item's sentences' lengths in characters
        self.headroom = headroom
        self.max_busy = max_busy

    def limit(self, items: Sequence, oldest_age: float, busy: float = 0.0) -> int | None:
        """The weight (sentences) to take from the front of ``items``; None: no limit. ``busy``:
        the share of the last seconds the worker spent working (:class:`BusyMeter`)."""
        if busy > self.max_busy:
            return None
        left = self.target_s * (1 - self.headroom) - oldest_age
        lengths: list[int] = []
        weight = 0
        for item in items:
            more = list(self.chars(item))
            if self.cost.seconds(lengths + more, self.batch_size) > left:
                break
            lengths += more
            weight += max(1, len(more))
        return weight or None  # nothing fits: late already
