"""Texts the benchmarks send: the example reviews (``bench/data/reviews.txt``, package data, also
``examples/reviews.txt`` in the checkout), read with :mod:`importlib.resources` so that an installed
package finds them too."""

from __future__ import annotations

from importlib.resources import files


def example_reviews() -> list[str]:
    """The example reviews, one per line (varied lengths), blank lines left out."""
    text = files("sentistream.bench").joinpath("data", "reviews.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
