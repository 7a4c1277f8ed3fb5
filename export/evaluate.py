"""Figures of a bundle on the fixed test split or on a labelled file, and the training report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sentistream.export import data as data_mod
from sentistream.export.errors import DataError
from sentistream.export.logits import batched_logits
from sentistream.export.scores import classification_figures
from sentistream.worker.bundle import Bundle, softmax

# Reference figures on the same split (docs/model-card.md): the rows to beat.
REFERENCES = [
    ("VADER lexicon compound score, five bands", 0.307, 0.293),
    ("TF-IDF (1–2 grams) + logistic regression", 0.569, 0.379),
    ("frozen MiniLM mean-pooled embedding + logistic regression", 0.545, 0.413),
    ("MiniLM fine-tuned 4 epochs, untuned, plain cross-entropy", 0.659, 0.546),
]


def has_default_labels(bundle: Bundle) -> bool:
    return bundle.labels == list(data_mod.LABELS)


def evaluate(bundle: Bundle, texts: list[str], y: np.ndarray, ratings: np.ndarray | None = None) -> dict:
    """Figures of ``bundle`` on ``texts`` labelled ``y`` (class ids in the bundle's label order);
    with the crowd ``ratings`` (-4 … +4), also Pearson r of the expected class position."""
    started = time.perf_counter()
    logits = batched_logits(bundle, texts)
    seconds = time.perf_counter() - started
    figures = classification_figures(y, logits.argmax(1), len(bundle.labels))
    if ratings is not None:
        # Expected position on the [0, 1] scale from the class probabilities, against the crowd.
        centers = (np.arange(len(bundle.labels)) + 0.5) / len(bundle.labels)
        expected = softmax(logits.astype(np.float64)) @ centers
        figures["pearson_r"] = float(np.corrcoef(expected, (ratings + 4) / 8)[0, 1])
    figures["sentences"] = len(texts)
    figures["seconds"] = round(seconds, 2)
    return figures


def evaluate_bundle(bundle_dir: Path, dataset: data_mod.Dataset, part: str = "test") -> dict:
    """Figures of a five-class SST bundle on a part of the fixed split."""
    bundle = Bundle(bundle_dir, threads=2)
    if not has_default_labels(bundle):
        raise DataError(not_default_labels(bundle_dir, bundle.labels))
    texts, labels, ratings = dataset.part(part)
    return evaluate(bundle, texts, labels, ratings)


def not_default_labels(bundle_dir: Path, labels: list[str]) -> str:
    return (f"{bundle_dir} has its own labels ({', '.join(labels)}), not the five SST classes of the fixed "
            'test split: evaluate it on your own data with --data FILE.jsonl (lines {"text": ..., "label": ...})')


def read_labelled(path: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """JSON lines ``{"text": str, "label": one of labels (or its index)}``; blank lines skipped."""
    index = {label: i for i, label in enumerate(labels)}
    texts, ids = [], []
    for number, text, label in data_mod.read_rows(path):
        if str(label) in index:  # a name first: numbers are names where the bundle's labels are numbers
            ids.append(index[str(label)])
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            ids.append(label)
        else:
            raise DataError(f"{path}:{number}: label {label!r} is not one of the bundle's labels "
                            f"({', '.join(labels)}) nor an index 0…{len(labels) - 1}")
        texts.append(text)
    if not texts:
        raise DataError(f"{path} holds no labelled sentences")
    return texts, np.asarray(ids, dtype=np.int64)


def tfidf_baseline(dataset: data_mod.Dataset) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_texts, train_y, _ = dataset.part("train")
    test_texts, test_y, _ = dataset.part("test")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train_texts), train_y)
    return classification_figures(test_y, clf.predict(vec.transform(test_texts)), len(data_mod.LABELS))


def report_markdown(name: str, figures: dict, extra: dict | None = None, *,
                    labels: list[str] | tuple[str, ...] = data_mod.LABELS, on: str = "the fixed test split",
                    references: list[tuple[str, float, float]] = REFERENCES) -> str:
    """The figures as markdown: the ``references`` rows, then the ``extra`` rows, then ``name``."""
    lines = [f"# {name}: figures on {on} ({figures['sentences']} sentences)", "",
             "| model | accuracy | macro-F1 |", "|---|---|---|"]
    for ref, acc, f1 in references:
        lines.append(f"| {ref} (reference) | {acc:.3f} | {f1:.3f} |")
    for key, row in (extra or {}).items():
        lines.append(f"| {key} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} |")
    lines.append(f"| **{name}** | **{figures['accuracy']:.3f}** | **{figures['macro_f1']:.3f}** |")
    if "pearson_r" in figures:
        lines += ["", f"Pearson r of the expected class position against the mean crowd rating: "
                  f"{figures['pearson_r']:.3f}"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, figures["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
