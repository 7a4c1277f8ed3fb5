"""What a shadow bundle costs: the pipeline alone (no Kafka), 1 thread, sentences per CPU-second
without a shadow and with one (the shipped bundle shadowing itself), rounds interleaved.

    python -m sentistream.bench.shadow_cost [ROUNDS]
"""

from __future__ import annotations

import json
import sys
import time
from collections import namedtuple

from sentistream.bench.texts import example_reviews
from sentistream.worker.bundle import Bundle, default_bundle_path
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.settings import Settings
from sentistream.worker.shadow import Shadow

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
N, CHUNK = 1280, 256  # records, and records per piece of work (the worker's poll window)


def records() -> list[Rec]:
    texts = example_reviews()
    return [Rec("in", 0, i, 0, None, json.dumps({"id": f"m{i}", "text": f"{texts[i % len(texts)]} ({i % 7})"}).encode(),
                [])
            for i in range(N)]


def sentences_per_cpu_second(with_shadow: bool, recs: list[Rec]) -> float:
    metrics = WorkerMetrics(None)
    pipeline = Pipeline(Settings(), Bundle(default_bundle_path()), metrics)
    if with_shadow:
        pipeline.set_shadow(Shadow.load(default_bundle_path(), metrics, 32))
    pipeline.handle([pipeline.decode(r) for r in recs[:64]])  # warm up
    started = time.process_time()
    for i in range(0, N, CHUNK):
        pipeline.handle([pipeline.decode(r) for r in recs[i:i + CHUNK]])
    return N / (time.process_time() - started)


def main(rounds: int = 3) -> None:
    recs = records()
    for r in range(rounds):
        plain = sentences_per_cpu_second(False, recs)
        shadowed = sentences_per_cpu_second(True, recs)
        print(f"round {r}: without a shadow {plain:.1f}, with one {shadowed:.1f} sentences per CPU-second "
              f"(cost {plain / shadowed:.2f}x)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
