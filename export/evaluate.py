"""Figures of a bundle on the fixed test split, and the training report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from export import data as data_mod
from export.metrics import classification_figures
from export.quantize import batched_logits
from worker.bundle import Bundle, softmax

# Same split, measured 2026-11-25 (shared/design/default-model.md): the rows to beat.
REFERENCES = [
    ("VADER lexicon compound score, five bands", 0.307, 0.293),
    ("TF-IDF (1–2 grams) + logistic regression", 0.569, 0.379),
    ("frozen MiniLM mean-pooled embedding + logistic regression", 0.545, 0.413),
    ("MiniLM fine-tuned 4 epochs, untuned, plain cross-entropy", 0.659, 0.546),
]


def evaluate_bundle(bundle_dir: Path, dataset: data_mod.Dataset, part: str = "test") -> dict:
    texts, labels, ratings = dataset.part(part)
    bundle = Bundle(bundle_dir, threads=2)
    if bundle.labels != list(data_mod.LABELS):
        raise ValueError(f"{bundle_dir} labels {bundle.labels} are not the five SST classes")
    started = time.perf_counter()
    logits = batched_logits(bundle, texts)
    seconds = time.perf_counter() - started
    figures = classification_figures(labels, logits.argmax(1), len(data_mod.LABELS))
    # Expected position on the [0, 1] scale from the class probabilities, against the crowd.
    centers = (np.arange(len(data_mod.LABELS)) + 0.5) / len(data_mod.LABELS)
    expected = softmax(logits.astype(np.float64)) @ centers
    figures["pearson_r"] = float(np.corrcoef(expected, (ratings + 4) / 8)[0, 1])
    figures["sentences"] = len(texts)
    figures["seconds"] = round(seconds, 2)
    return figures


def tfidf_baseline(dataset: data_mod.Dataset) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_texts, train_y, _ = dataset.part("train")
    test_texts, test_y, _ = dataset.part("test")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train_texts), train_y)
    return classification_figures(test_y, clf.predict(vec.transform(test_texts)), len(data_mod.LABELS))


def report_markdown(name: str, figures: dict, extra: dict | None = None) -> str:
    labels = data_mod.LABELS
    lines = [f"# {name}: figures on the fixed test split ({figures['sentences']} sentences)", "",
             "| model | accuracy | macro-F1 |", "|---|---|---|"]
    for ref, acc, f1 in REFERENCES:
        lines.append(f"| {ref} (design note) | {acc:.3f} | {f1:.3f} |")
    for key, row in (extra or {}).items():
        lines.append(f"| {key} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} |")
    lines.append(f"| **{name}** | **{figures['accuracy']:.3f}** | **{figures['macro_f1']:.3f}** |")
    lines += ["", f"Pearson r of the expected class position against the mean crowd rating: "
              f"{figures['pearson_r']:.3f}", "", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, figures["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
