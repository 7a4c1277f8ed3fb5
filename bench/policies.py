"""Bare onnxruntime throughput of one bundle under several batching policies, same sentences.

    python -m bench.policies [--bundle DIR] [-n 2000] [--rounds 2]

Why the worker batches as it does (docs/performance.md): how many polled records are sorted
together (the window), what they are sorted by, and how far lengths may differ inside a batch.
Rounds are interleaved so that a noisy neighbour hits every policy alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sentistream.bench.run import batched_throughput, sentences
from sentistream.worker.bundle import Bundle, default_bundle_path

# (name, window, sort key: "chars" or "tokens", length tolerance within a batch; None = any)
POLICIES: list[tuple[str, int, str, int | None]] = [
    ("128-record windows, by characters, any lengths", 128, "chars", None),
    ("256-record windows, by tokens, any lengths", 256, "tokens", None),
    ("256-record windows, by tokens, lengths within ±1 token (the worker's policy)", 256, "tokens", 1),
    ("4-record windows (light traffic), by tokens, any lengths", 4, "tokens", None),
    ("4-record windows (light traffic), by tokens, within ±1 token", 4, "tokens", 1),
    ("one sentence per call", 1, "tokens", 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bundle = Bundle(args.bundle, threads=1)
    texts = sentences(args.n)
    batched_throughput(bundle, texts[:256], 256, 32)  # warm-up
    results: dict[str, list[float]] = {name: [] for name, *_ in POLICIES}
    for _ in range(args.rounds):
        for name, window, key, tolerance in POLICIES:
            spread = 10**6 if tolerance is None else tolerance
            results[name].append(batched_throughput(bundle, texts, window, 32, spread, by=key))
    print(f"bare onnxruntime, {args.bundle.name}, 1 thread, {len(texts)} sentences, batches of ≤ 32; "
          f"sentences/s per round\n")
    print("| policy | sentences/s |\n|---|---:|")
    for name, rates in results.items():
        print(f"| {name} | {' / '.join(f'{r:.0f}' for r in rates)} |")


if __name__ == "__main__":
    main()
