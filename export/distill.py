"""Distillation: a fine-tuned teacher labels text, the small student learns from its probabilities.

``label`` fine-tunes the teacher (``export/teacher.py``) on the fixed train split, chooses its
epoch on validation, and writes its logits for the *transfer set* to a ``TeacherLabels`` file:

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

import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sentistream.export import data as data_mod
from sentistream.export.errors import DataError
from sentistream.export.train import Examples, soft_targets

_CUTS = re.compile(r"\s*(?:[,;:]|--| - )\s*|\s+but\s+", re.IGNORECASE)
MIN_FRAGMENT_WORDS = 4
SPANS_PER_SENTENCE = 4


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


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


@dataclass(frozen=True)
class TeacherLabels:
    """The teacher's logits for the transfer set (what the student learns from)."""

    texts: list[str]
    logits: np.ndarray  # (n, classes) float32
    ratings: np.ndarray  # crowd rating -4 … +4, NaN where none
    sources: list[str]
    meta: dict = field(default_factory=dict)  # the teacher, its training and its figures

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, texts=np.array(self.texts), logits=self.logits, ratings=self.ratings,
                                sources=np.array(self.sources), meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: Path) -> TeacherLabels:
        if not path.is_file():
            raise DataError(f"no teacher labels at {path}: run 'sentistream export teacher' first")
        with np.load(path, allow_pickle=False) as z:
            return cls([str(t) for t in z["texts"]], z["logits"].astype(np.float32), z["ratings"],
                       [str(s) for s in z["sources"]], json.loads(str(z["meta"])))

    @classmethod
    def ensemble(cls, members: list[TeacherLabels]) -> TeacherLabels:
        """Several teachers as one: per text, the mean of their probabilities (as log-probabilities,
        so that softmax gives it back at temperature 1). They must have labelled the same texts for
        the same split."""
        if len(members) == 1:
            return members[0]
        first = members[0]
        for other in members[1:]:
            if other.texts != first.texts or other.sources != first.sources:
                raise DataError("teacher labels to average must cover the same texts: make them with the same "
                                "version of 'sentistream export teacher'")
            if other.meta.get("split_sha256") != first.meta.get("split_sha256"):
                raise DataError("teacher labels to average were made for different splits")
        probs = np.mean([np.exp(m.logits - _logsumexp(m.logits)) for m in members], axis=0)
        meta = {"split_sha256": first.meta.get("split_sha256"), "ensemble": [m.meta for m in members]}
        return cls(first.texts, np.log(probs).astype(np.float32), first.ratings, first.sources, meta)

    def describe(self) -> dict:
        names, counts = np.unique(self.sources, return_counts=True)
        return {**self.meta, "transfer_set": {str(n): int(c) for n, c in zip(names, counts, strict=True)}}

    def examples_for(self, train: Examples, mix: float, sigma: float, exclude: set[str],
                     sources: tuple[str, ...] | None = None) -> tuple[Examples, dict]:
        """``train`` with the teacher's logits beside each target, plus the transfer set's other
        texts (``sources``: which; default all), none of them in ``exclude``."""
        row = {text: i for i, text in enumerate(self.texts)}
        missing = [t for t in train.texts if t not in row]
        if missing:
            raise DataError(f"the teacher labels lack {len(missing)} training sentences (first: {missing[0]!r}); "
                            "they were made for another split: run 'sentistream export teacher' again")
        absent = [s for s in sources or () if s not in self.sources]
        if absent:
            raise DataError(f"the teacher labels hold no {', '.join(absent)} text: they were made by an older "
                            "'sentistream export teacher': run it again, or leave them out with --transfer-sources")
        held_out = {normalise(t) for t in exclude}
        extra = [i for i, s in enumerate(self.sources) if s != "train" and (sources is None or s in sources)
                 and normalise(self.texts[i]) not in held_out]
        n_classes = self.logits.shape[1]
        ratings = self.ratings[extra]
        rated = ~np.isnan(ratings)
        targets = np.full((len(extra), n_classes), np.nan, dtype=np.float32)
        if rated.any():
            targets[rated] = soft_targets(ratings[rated], n_classes, mix, sigma, data_mod.to_class(ratings[rated]))
        examples = Examples(
            texts=train.texts + [self.texts[i] for i in extra],
            targets=np.concatenate([train.targets, targets]),
            teacher=np.concatenate([self.logits[[row[t] for t in train.texts]], self.logits[extra]]),
        )
        counts = {"train": len(train.texts)}
        for i in extra:
            counts[self.sources[i]] = counts.get(self.sources[i], 0) + 1
        return examples, counts


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def label(cfg, dataset: data_mod.Dataset, cache_dir: Path, progress: bool = True) -> TeacherLabels:
    """Fine-tune the teacher at ``cfg.base_model`` (a ``train.TrainConfig``; its epoch chosen on
    validation) and label the transfer set with it; its validation and test figures go in ``meta``."""
    import torch

    from sentistream.export import teacher as teacher_mod
    from sentistream.export import train as train_mod
    from sentistream.export.metrics import classification_figures

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
