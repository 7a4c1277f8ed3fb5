"""Classification figures shared by training (validation) and evaluation (test)."""

from __future__ import annotations


def classification_figures(y_true, y_pred, n_classes: int) -> dict:
    """Accuracy, macro-F1 over all ``n_classes`` and the confusion matrix (rows: true class)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    classes = list(range(n_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }
