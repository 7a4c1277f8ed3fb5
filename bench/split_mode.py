"""Split mode against sentence mode, in the worker's pipeline (no Kafka): sentences/s when each
record is a whole review that the worker splits, and when each of the same sentences is a record
of its own. Rounds interleave the two modes; the ratio is split / sentence.

    python -m sentistream.bench.split_mode [--reviews 200] [--rounds 5] [--seed 0]

Work is handed to the pipeline as the run loop does: decoded records gathered until they hold
``batch_size`` sentences, then one ``handle`` call (which cuts length-sorted batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import namedtuple
from collections.abc import Sequence

from sentistream.bench.splitter_study import build_reviews, held_out_sentences
from sentistream.worker.bundle import Bundle, default_bundle_path
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.settings import Settings
from sentistream.worker.splitting import split

Record = namedtuple("Record", "topic partition offset timestamp key value headers")


def records(texts: Sequence[str]) -> list[Record]:
    return [Record("in", 0, i, 0, None, json.dumps({"id": f"r{i}", "text": t}).encode(), [])
            for i, t in enumerate(texts)]


def sentences_per_s(pipeline: Pipeline, work: Sequence[Record], batch_size: int) -> float:
    """Decode and handle ``work`` in pieces of about ``batch_size`` sentences; sentences/s."""
    started, sentences, piece, weight = time.perf_counter(), 0, [], 0
    for record in work:
        decoded = pipeline.decode(record)
        piece.append(decoded)
        weight += max(1, len(decoded.sentences))
        if weight >= batch_size:
            sentences += sum(len(d.sentences) for d in piece)
            pipeline.handle(piece)
            piece, weight = [], 0
    if piece:
        sentences += sum(len(d.sentences) for d in piece)
        pipeline.handle(piece)
    return sentences / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reviews = [r.text for r in build_reviews(held_out_sentences(), args.reviews, args.seed)]
    pieces = [p.strip() for text in reviews for p in split(text) if p.strip()]  # what split mode classifies
    bundle = Bundle(default_bundle_path())
    settings = Settings()
    modes = {"sentence": (Pipeline(settings, bundle, WorkerMetrics(None)), records(pieces)),
             "split": (Pipeline(settings.model_copy(update={"split_sentences": True}), bundle, WorkerMetrics(None)),
                       records(reviews))}
    for pipeline, work in modes.values():  # warm-up
        sentences_per_s(pipeline, work[:20], settings.batch_size)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(args.rounds):
        order = list(modes) if i % 2 == 0 else list(modes)[::-1]
        for mode in order:
            pipeline, work = modes[mode]
            rates[mode].append(sentences_per_s(pipeline, work, settings.batch_size))
    print(f"{len(reviews)} reviews = {len(pieces)} sentences; {args.rounds} interleaved rounds, 1 thread")
    for mode, values in rates.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{mode} mode: {shown} sentences/s (median {statistics.median(values):.0f})")
    ratios = [s / t for s, t in zip(rates["split"], rates["sentence"], strict=True)]
    print("split / sentence per round: " + ", ".join(f"{r:.3f}" for r in ratios)
          + f" (median {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
