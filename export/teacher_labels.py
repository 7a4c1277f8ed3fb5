"""The teacher's logits for the transfer set (``export teacher`` writes them, ``export train
--teacher-labels`` reads them): what the student learns from (``export/distill.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sentistream.export.data import normalise, to_class
from sentistream.export.errors import DataError
from sentistream.export.examples import Examples, soft_targets


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
            targets[rated] = soft_targets(ratings[rated], n_classes, mix, sigma, to_class(ratings[rated]))
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
