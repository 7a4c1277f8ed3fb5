"""Sentence splitters compared: pysbd (what split_sentences used until 2026-12) and
worker/splitting.py (what it uses now), for quality and for cost beside classifying, in one run.

    python -m sentistream.bench.splitter_study [--reviews 500] [--seed 0] [--rounds 5]

Quality: reviews made by joining held-out sentences with one space (the test split of the
project's data, export/data.py; the source distribution must already be in its cache, nothing is
downloaded), scored on the boundaries between them; then the hard cases of bench/sentence_cases.py.
A sentence of the data that holds two is a boundary neither side knows of: a split there counts
against precision for both, and the sentences each splitter splits on their own are listed.

Cost: microseconds per sentence for both splitters on the same reviews, rounds interleaved, and
classifying the same sentences with the shipped bundle (1 thread, batches of 32), each figure the
median of its rounds. Timings on a shared machine are noisy: compare the ratios, not the digits.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sentistream.bench.sentence_cases import CASES
from sentistream.worker.splitting import split

Splitter = Callable[[str], list[str]]
BATCH = 32  # sentences per classify call
SPEED_REVIEWS = 120  # pysbd takes ~0.45 ms a sentence: a round over ~800 sentences is ~0.4 s


@dataclass(frozen=True)
class Review:
    text: str
    boundaries: frozenset[int]  # where each sentence after the first starts
    sentences: int


@dataclass
class Scores:
    found: int = 0  # boundaries found
    extra: int = 0  # splits where the review has no boundary
    missed: int = 0
    exact: int = 0  # reviews split exactly at their boundaries

    @property
    def precision(self) -> float:
        return self.found / max(1, self.found + self.extra)

    @property
    def recall(self) -> float:
        return self.found / max(1, self.found + self.missed)

    @property
    def f1(self) -> float:
        return 2 * self.precision * self.recall / max(1e-12, self.precision + self.recall)


def held_out_sentences() -> list[str]:
    """The test split's sentences, from the cached source distribution (never downloaded here)."""
    from sentistream.export import data

    cache = data.default_cache_dir()
    if not (cache / data.SDIST).exists():
        sys.exit(f"{cache / data.SDIST} is missing: train once (sentistream export) or put it there")
    texts, _, _ = data.load(cache).part("test")
    return texts


def build_reviews(sentences: Sequence[str], count: int, seed: int) -> list[Review]:
    """``count`` reviews of 3 to 12 distinct sentences each, joined by one space."""
    rng = random.Random(seed)
    reviews = []
    for _ in range(count):
        chosen = rng.sample(list(sentences), rng.randint(3, 12))
        starts, at = [], 0
        for sentence in chosen:
            starts.append(at)
            at += len(sentence) + 1
        reviews.append(Review(" ".join(chosen), frozenset(starts[1:]), len(chosen)))
    return reviews


def starts_of(text: str, pieces: Sequence[str]) -> list[int]:
    """Where each piece begins in ``text`` (pieces are in order; white space around them is skipped)."""
    starts, at = [], 0
    for piece in pieces:
        stripped = piece.strip()
        if not stripped:
            continue
        at = text.index(stripped, at)
        starts.append(at)
        at += len(stripped)
    return starts


def score(splitter: Splitter, reviews: Sequence[Review]) -> Scores:
    scores = Scores()
    for review in reviews:
        found = set(starts_of(review.text, splitter(review.text))[1:])
        scores.found += len(found & review.boundaries)
        scores.extra += len(found - review.boundaries)
        scores.missed += len(review.boundaries - found)
        scores.exact += found == review.boundaries
    return scores


def split_alone(splitters: dict[str, Splitter], sentences: Sequence[str]) -> dict[str, set[int]]:
    """Per splitter, which of the data's sentences it splits in two or more on their own."""
    return {name: {i for i, s in enumerate(sentences) if len([p for p in splitter(s) if p.strip()]) > 1}
            for name, splitter in splitters.items()}


def time_into(run: Callable[[], object], rounds_out: list[float]) -> None:
    """Append the seconds ``run`` takes to ``rounds_out``."""
    gc.collect()
    started = time.perf_counter()
    run()
    rounds_out.append(time.perf_counter() - started)


def split_speed(splitters: dict[str, Splitter], reviews: Sequence[Review], rounds: int) -> dict[str, float]:
    """Microseconds per sentence, the median of ``rounds`` interleaved rounds (order alternating);
    the fast splitter does 20 passes a round, so each round runs long enough to time."""
    sentences = sum(r.sentences for r in reviews)
    texts = [r.text for r in reviews]
    passes = {name: 1 if name == "pysbd" else 20 for name in splitters}
    times: dict[str, list[float]] = {name: [] for name in splitters}
    names = list(splitters)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            splitter, n = splitters[name], passes[name]
            time_into(lambda splitter=splitter, n=n: [splitter(t) for _ in range(n) for t in texts], times[name])
    return {name: statistics.median(t) / (passes[name] * sentences) * 1e6 for name, t in times.items()}


def classify_speed(sentences: Sequence[str], rounds: int) -> float:
    """Microseconds per sentence for the shipped bundle, 1 thread, batches of 32."""
    from sentistream.worker.bundle import Bundle, default_bundle_path

    bundle = Bundle(default_bundle_path(), threads=1)
    bundle.classify(list(sentences[:BATCH]))  # warm up
    times: list[float] = []
    for _ in range(rounds):
        time_into(lambda: [bundle.classify(list(sentences[i:i + BATCH])) for i in range(0, len(sentences), BATCH)],
                       times)
    return statistics.median(times) / len(sentences) * 1e6


def worst_cases_ms(splitter: Splitter) -> dict[str, float]:
    """Milliseconds for 100,000 characters of texts made to be slow (long runs, no spaces)."""
    texts = {"dots": "." * 100_000, "spaces": " " * 100_000, "no spaces": "x.Yx" * 25_000,
             "emoji": "\U0001F60D" * 100_000, "a. a.": "a. " * 33_333, "Mr. Mr.": "Mr. " * 25_000}
    out = {}
    for name, text in texts.items():
        started = time.perf_counter()
        splitter(text)
        out[name] = (time.perf_counter() - started) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    import pysbd

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, interleaved")
    args = parser.parse_args(argv)

    splitters: dict[str, Splitter] = {"pysbd": pysbd.Segmenter(language="en", clean=False).segment, "new": split}
    sentences = held_out_sentences()
    reviews = build_reviews(sentences, args.reviews, args.seed)
    bare = sum(s.rstrip()[-1:] not in ".!?\u2026\"')" for s in sentences)
    print(f"data: {len(sentences)} test sentences ({bare} end without a mark); {len(reviews)} reviews of 3-12, "
          f"{sum(r.sentences for r in reviews)} sentences, {sum(len(r.boundaries) for r in reviews)} boundaries, "
          f"seed {args.seed}")

    print("\nboundaries between joined sentences:")
    print(f"  {'':6} {'precision':>9} {'recall':>7} {'F1':>7} {'found':>6} {'extra':>6} {'missed':>6} {'exact reviews':>14}")
    for name, splitter in splitters.items():
        s = score(splitter, reviews)
        print(f"  {name:6} {s.precision:9.4f} {s.recall:7.4f} {s.f1:7.4f} {s.found:6} {s.extra:6} {s.missed:6} "
              f"{s.exact:7}/{len(reviews)}")

    alone = split_alone(splitters, sentences)
    both = alone["pysbd"] & alone["new"]
    print(f"\ndata sentences split on their own: pysbd {len(alone['pysbd'])}, new {len(alone['new'])}, both {len(both)}")
    for name, other in (("pysbd", "new"), ("new", "pysbd")):
        for i in sorted(alone[name] - alone[other])[:8]:
            pieces = " | ".join(p.strip() for p in splitters[name](sentences[i]))
            print(f"  only {name}: {pieces[:150]}")

    print(f"\nhard cases ({len(CASES)}):")
    right = dict.fromkeys(splitters, 0)
    for case in CASES:
        marks = []
        for name, splitter in splitters.items():
            ok = tuple(p.strip() for p in splitter(case.text) if p.strip()) == case.expected
            right[name] += ok
            marks.append("ok  " if ok else "MISS")
        print(f"  {'  '.join(marks)}  {case.name}")
    print("  " + ", ".join(f"{name} {n}/{len(CASES)}" for name, n in right.items()) + "  (columns: pysbd, new)")

    speed_reviews = reviews[:SPEED_REVIEWS]
    per_sentence = split_speed(splitters, speed_reviews, args.rounds)
    classify = classify_speed(sentences[:256], max(3, args.rounds // 2))
    print(f"\ncost per sentence ({sum(r.sentences for r in speed_reviews)} sentences in {len(speed_reviews)} reviews, "
          f"median of {args.rounds} interleaved rounds; noisy on a shared machine):")
    for name, us in per_sentence.items():
        print(f"  {name:6} split {us:8.2f} us   = {us / classify:7.2%} of classifying one")
    print(f"  classify {classify:8.1f} us   (shipped bundle, 1 thread, batches of {BATCH}, 256 sentences)")
    print(f"  new / pysbd: {per_sentence['new'] / per_sentence['pysbd']:.4f} "
          f"(pysbd {per_sentence['pysbd'] / per_sentence['new']:.0f}x slower)")
    print("\nnew splitter on 100,000-character worst cases (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in worst_cases_ms(split).items()))


if __name__ == "__main__":
    main()
