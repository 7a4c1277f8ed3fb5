"""Sentence splitting for whole reviews (option ``split_sentences``), with pysbd."""

from __future__ import annotations

from collections.abc import Callable


def make_splitter(language: str = "en") -> Callable[[str], list[str]]:
    import pysbd

    segmenter = pysbd.Segmenter(language=language, clean=False)
    return segmenter.segment
