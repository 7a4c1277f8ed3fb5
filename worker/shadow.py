"""A candidate bundle running beside the serving one (``--shadow-bundle``, or the control topic's
``shadow`` command): it classifies every batch the serving model classified, and the two are
compared; only the serving model's results are published.

A shadow must never harm serving: one that fails to load or raises while classifying is dropped
(one log line, ``sentistream_shadow_dropped_total``) and the worker serves on. When a shadow has
earned promotion: worker/swap_rule.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sentistream.worker.batching import length_sorted_batches
from sentistream.worker.bundle import Bundle
from sentistream.worker.contract import ModelRef
from sentistream.worker.faults import one_line

if TYPE_CHECKING:
    from sentistream.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Shadow:
    """A loaded candidate bundle and its running comparison with the serving model."""

    def __init__(self, bundle: Bundle, metrics: WorkerMetrics, batch_size: int) -> None:
        self.bundle = bundle
        self.metrics = metrics
        self.batch_size = batch_size
        m = bundle.manifest
        self.model = ModelRef(name=m.name, version=m.version, runtime=bundle.runtime)
        self.compared = 0
        self.agreed = 0
        metrics.shadow_info.labels(m.name, m.version, m.files["model.onnx"]).set(1)
        metrics.shadow_agreement.set(0)

    @classmethod
    def load(cls, path: Path, metrics: WorkerMetrics, batch_size: int, threads: int = 1,
             max_tokens: int | None = None, runtime: str = "onnxruntime") -> Shadow | None:
        """The shadow of the bundle at ``path``, or None (logged, counted) when it cannot load."""
        try:
            return cls(Bundle(path, threads=threads, max_tokens=max_tokens, runtime=runtime), metrics, batch_size)
        except Exception as exc:  # BundleError, or onnxruntime's untyped errors: serving goes on
            log.error("shadow bundle %s dropped: it cannot be loaded (%s)", path, one_line(exc))
            metrics.shadow_dropped.labels("load_failed").inc()
            return None

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    def compare(self, texts: list[str], serving_labels: list[str]) -> bool:
        """Classify ``texts`` with the candidate and count where it agrees with
        ``serving_labels``. False when the candidate failed: it is then retired (logged, counted)
        and must be dropped by the caller."""
        try:
            labels = self._classify(texts)
        except Exception as exc:  # whatever the candidate does, serving goes on without it
            log.error("shadow %s %s dropped: it failed on a batch of %d sentences (%s)", self.model.name,
                      self.model.version, len(texts), one_line(exc))
            self.metrics.shadow_dropped.labels("crashed").inc()
            self.retire()
            return False
        for served, candidate in zip(serving_labels, labels, strict=True):
            self.metrics.shadow_confusion.labels(served, candidate).inc()
            self.agreed += served == candidate
        self.compared += len(texts)
        self.metrics.shadow_agreement.set(self.agreement)
        return True

    def _classify(self, texts: list[str]) -> list[str]:
        """The candidate's labels, batched by token count as the serving model's are."""
        encoded = list(enumerate(self.bundle.tokenize(texts)))
        out: list[str] = [""] * len(texts)
        for batch in length_sorted_batches(encoded, self.batch_size, lambda pair: len(pair[1].ids)):
            started = time.perf_counter()
            predictions = self.bundle.classify_encoded([e for _, e in batch])
            self.metrics.shadow_inference_seconds.observe(time.perf_counter() - started)
            for (i, _), p in zip(batch, predictions, strict=True):
                out[i] = p.label
        return out

    def retire(self) -> None:
        """No longer running beside serving (promoted, replaced or dropped)."""
        m = self.bundle.manifest
        self.metrics.shadow_info.labels(m.name, m.version, m.files["model.onnx"]).set(0)
