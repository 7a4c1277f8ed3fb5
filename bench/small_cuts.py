"""What batching saves on a cut smaller than one batch (issue #27 point 2).

At a moderate load each turn of the worker holds only a few records. Classified together they are
sorted by token count and batched with lengths within 1, which at that size is about one
inference call per sentence anyway; classified one record at a time, in offset order, each result
could leave as soon as it is ready (tried, and left out: docs/performance.md). This study times
both on the same random cuts of test-split sentences, interleaved, through the bundle (tokenizer +
model, 1 thread):

    python -m sentistream.bench.small_cuts --cuts 4 8 16 31 --rounds 40

and prints, per cut size, sentences/s of each way and their ratio (one at a time / together).
``--windows`` times instead what the width of a turn's cut is worth under load: the same
sentences taken ``window`` at a time, sorted and batched as the worker does, interleaved, each
width's sentences/s against the worker's widest cut (256 sentences, batches of 32).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sentistream.worker.batching import length_sorted_batches
from sentistream.worker.bundle import Bundle, default_bundle_path


def together(bundle: Bundle, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    for batch in length_sorted_batches(bundle.tokenize(texts), batch_size, lambda e: len(e.ids)):
        bundle.classify_encoded(batch)
    return time.perf_counter() - started


def one_at_a_time(bundle: Bundle, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        bundle.classify_encoded(bundle.tokenize([text]))
    return time.perf_counter() - started


def windows(bundle: Bundle, texts: list[str], rounds: int) -> None:
    from sentistream.bench.run import timed_batches

    widths = [(256, 32), (64, 32), (32, 32), (8, 8)]
    rates: dict[tuple[int, int], list[float]] = {w: [] for w in widths}
    for r in range(rounds):
        for w in widths if r % 2 == 0 else widths[::-1]:
            rates[w].append(timed_batches(bundle, texts, *w).rate)
    print(f"{'window':>6} {'batch':>5} {'sentences/s median':>19} {'against 256/32: median':>23} {'(min-max)':>12}")
    for w in widths:
        ratios = [x / y for x, y in zip(rates[w], rates[(256, 32)], strict=True)]
        print(f"{w[0]:6d} {w[1]:5d} {statistics.median(rates[w]):19.1f} {statistics.median(ratios):23.3f}"
              f"   {min(ratios):.3f}-{max(ratios):.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sentistream.bench.small_cuts", description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, nargs="+", default=[4, 8, 16, 31])
    parser.add_argument("--rounds", type=int, default=40, help="cuts timed per size, each both ways")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--windows", action="store_true", help="instead: the width of a cut, 256 down to 8")
    args = parser.parse_args(argv)
    from sentistream.bench.run import sentences

    bundle = Bundle(default_bundle_path(), threads=1)
    pool = sentences(4000)
    if args.windows:
        windows(bundle, pool[:600], rounds=max(2, args.rounds // 5))
        return
    rng = random.Random(1)
    bundle.classify(pool[:64])  # warm the session up
    print(f"{'cut':>4} {'together s/s':>13} {'one at a time s/s':>18} {'ratio median':>13} {'(min-max)':>13}")
    for n in args.cuts:
        ratios, rates = [], {"together": 0.0, "one": 0.0}
        for r in range(args.rounds):
            texts = rng.sample(pool, n)
            ways = [("together", lambda texts=texts: together(bundle, texts, args.batch_size)),
                    ("one", lambda texts=texts: one_at_a_time(bundle, texts))]
            seconds = {}
            for name, way in ways if r % 2 == 0 else ways[::-1]:
                seconds[name] = way()
                rates[name] += seconds[name]
            ratios.append(seconds["together"] / seconds["one"])
        total = n * args.rounds
        print(f"{n:4d} {total / rates['together']:13.1f} {total / rates['one']:18.1f} {statistics.median(ratios):13.3f} "
              f"  {min(ratios):.3f}-{max(ratios):.3f}", flush=True)


if __name__ == "__main__":
    main()
