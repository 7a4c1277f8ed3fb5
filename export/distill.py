"""Distillation: a fine-tuned teacher labels text, the small student learns from its probabilities.

``label`` fine-tunes the teacher (``export/teacher.py``) on the fixed train split, chooses its
epoch on validation, and writes its logits for the *transfer set* to a ``TeacherLabels`` file
(``export/teacher_labels.py``):

- ``train``: the fixed train split's sentences (they keep their crowd target too);
- ``amazon``, ``nyt``, ``tweets``: the other crowd-rated sets of the same archive (VADER, MIT
  licence; product reviews, editorials, tweets), with their crowd ratings;
- ``fragments``: clauses of the training sentences (cut at , ; : -- and "but"), in-domain text
  that only the teacher labels, much as the Treebank labels phrases of its sentences;
- ``spans``: word windows of the training sentences (up to four per sentence, 4+ words, drawn by a
  generator seeded with the sentence), phrases without a parser; only the teacher labels them.

Any text equal to a validation or test sentence (case and spaces ignored) is left out, so the
student never sees, even unlabelled, what it is chosen or scored on. ``train.train(…, teacher=)``
then fits the student on it (``train.fit``'s loss).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from sentistream.export import data as data_mod
from sentistream.export.data import normalise
from sentistream.export.teacher_labels import TeacherLabels

_CUTS = re.compile(r"\s*(?:[,;:]|--| - )\s*|\s+but\s+", re.IGNORECASE)
MIN_FRAGMENT_WORDS = 4
SPANS_PER_SENTENCE = 4


def _distinct(sentences: list[str], exclude: set[str], cut: Callable[[str], Iterable[str]]) -> list[str]:
    """The pieces ``cut`` makes of each sentence that have at least four words, each once, none in
    ``exclude`` (normalised texts) and none equal to a whole sentence."""
    whole = {normalise(s) for s in sentences}
    seen: set[str] = set()
    out = []
    for sentence in sentences:
        for piece in cut(sentence):
            key = normalise(piece)
            if len(key.split()) < MIN_FRAGMENT_WORDS or key in seen or key in whole or key in exclude:
                continue
            seen.add(key)
            out.append(piece)
    return out


def fragments(sentences: list[str], exclude: set[str]) -> list[str]:
    """Clauses of ``sentences`` (cut at , ; : -- and "but"), as ``_distinct`` keeps them."""
    return _distinct(sentences, exclude, lambda s: (piece.strip(" .!?\"'") for piece in _CUTS.split(s)))


def _windows(sentence: str, count: int) -> Iterator[str]:
    """``count`` word windows of ``sentence``, at least four words and shorter than it, drawn by a
    generator seeded with the sentence's own text (so they do not depend on the sentences' order)."""
    words = sentence.split()
    if len(words) <= MIN_FRAGMENT_WORDS:
        return
    rng = random.Random(zlib.crc32(sentence.encode()))
    for _ in range(count):
        length = rng.randint(MIN_FRAGMENT_WORDS, len(words) - 1)
        start = rng.randint(0, len(words) - length)
        yield " ".join(words[start:start + length]).strip(" .,;:!?\"'-")


def spans(sentences: list[str], exclude: set[str], per_sentence: int = SPANS_PER_SENTENCE) -> list[str]:
    """Up to ``per_sentence`` word windows of each of ``sentences``, as ``_distinct`` keeps them."""
    return _distinct(sentences, exclude, lambda s: _windows(s, per_sentence))


def transfer_set(dataset: data_mod.Dataset, cache_dir: Path,
                 sources: tuple[str, ...] = ("train", *data_mod.TRANSFER_SOURCES)
                 ) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, crowd ratings (NaN where none) and the source of each, as described above."""
    held_out = {normalise(t) for part in ("validation", "test") for t in dataset.part(part)[0]}
    train_texts, _, train_ratings = dataset.part("train")
    texts, ratings, origin = list(train_texts), list(train_ratings), ["train"] * len(train_texts)
    seen = {normalise(t) for t in train_texts}
    others = data_mod.load_other_sets(cache_dir) if {"amazon", "nyt", "tweets"} & set(sources) else {}
    for name, (other_texts, other_ratings) in others.items():
        if name not in sources:
            continue
        for text, rating in zip(other_texts, other_ratings, strict=True):
            key = normalise(text)
            if key and key not in held_out and key not in seen:
                seen.add(key)
                texts.append(text)
                ratings.append(rating)
                origin.append(name)
    for name, cut in (("fragments", fragments), ("spans", spans)):
        if name in sources:
            for piece in cut(train_texts, held_out | seen):
                seen.add(normalise(piece))
                texts.append(piece)
                ratings.append(np.nan)
                origin.append(name)
    return texts, np.asarray(ratings, dtype=np.float64), origin


def label(cfg, dataset: data_mod.Dataset, cache_dir: Path, progress: bool = True) -> TeacherLabels:
    """Fine-tune the teacher at ``cfg.base_model`` (a ``train.TrainConfig``; its epoch chosen on
    validation) and label the transfer set with it; its validation and test figures go in ``meta``."""
    import torch

    from sentistream.export import teacher as teacher_mod
    from sentistream.export import train as train_mod
    from sentistream.export.scores import classification_figures

    train_mod.start_run(cfg)
    n_classes = len(dataset.label_names)
    model, tokenizer = teacher_mod.build(Path(cfg.base_model), n_classes)
    val_texts, val_y, _ = dataset.part("validation")
    test_texts, test_y, _ = dataset.part("test")
    examples, weights = train_mod.crowd_examples(cfg, dataset)
    result = train_mod.fit(model, tokenizer, cfg, examples, val_texts, val_y, weights, progress)

    texts, ratings, sources = transfer_set(dataset, cache_dir)
    device = train_mod.device_of(cfg.device)
    logits = train_mod.predict_logits(model.to(device), tokenizer, texts + val_texts + test_texts, cfg.max_length,
                                      device=device, precision=cfg.precision)
    n, v = len(texts), len(val_texts)
    figures = {part: {k: round(x, 4) for k, x in classification_figures(y, lg.argmax(1), n_classes).items()
                      if k != "confusion"}
               for part, y, lg in (("validation", val_y, logits[n:n + v]), ("test", test_y, logits[n + v:]))}
    config = {k: val for k, val in vars(cfg).items() if k not in ("out_dir", "base_model")}
    meta = {"teacher": teacher_mod.describe(), "split_sha256": data_mod.split_sha256(dataset), "config": config,
            **result, "figures": figures,
            "torch_threads": torch.get_num_threads()}
    return TeacherLabels(texts, logits[:n], ratings, sources, meta)
