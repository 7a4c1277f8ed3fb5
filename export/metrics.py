"""Classification figures shared by training, export gates and evaluation."""

from __future__ import annotations

import numpy as np


def classification_figures(y_true, y_pred, n_classes: int | None = None) -> dict:
    """Accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    k = n_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(k), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
    }
