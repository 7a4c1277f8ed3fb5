"""Read a worker's /metrics: counters and histogram quantiles (demo, top, benchmarks)."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Snapshot:
    samples: list[tuple[str, dict[str, str], float]]

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == val for k, val in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, lab, v in self.samples:
            if n == name and label in lab:
                out[lab[label]] = out.get(lab[label], 0.0) + v
        return out

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        acc: dict[float, float] = {}
        for n, lab, v in self.samples:
            if n == histogram + "_bucket":
                le = float(lab["le"])
                acc[le] = acc.get(le, 0.0) + v
        return sorted(acc.items())


def scrape(url: str, timeout: float = 2.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    samples = [(s.name, dict(s.labels), s.value)
               for family in text_string_to_metric_families(text) for s in family.samples]
    return Snapshot(samples)


def quantile(buckets: list[tuple[float, float]], q: float, before: list[tuple[float, float]] | None = None) -> float | None:
    """Prometheus-style histogram_quantile over cumulative buckets (optionally a difference)."""
    if before:
        prior = dict(before)
        buckets = [(le, c - prior.get(le, 0.0)) for le, c in buckets]
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


def wait_ready(url: str, processes: int = 1, timeout: float = 90, proc=None) -> None:
    """Until ``processes`` workers behind ``url`` report ready; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if scrape(url).total("sentistream_worker_ready") >= processes:
                return
        time.sleep(0.2)
    raise RuntimeError(f"workers at {url} not ready in {timeout:.0f} s")
