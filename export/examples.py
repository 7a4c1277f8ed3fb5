"""What a model is fitted on (:class:`Examples`) and the crowd's ordinal soft targets: shared by
training (``export/train.py``) and the teacher's labels (``export/teacher_labels.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """What a model is fitted on: a target distribution per text (a NaN row: none, such as text
    only the teacher labelled) and, when distilling, the teacher's logits per text."""

    texts: list[str]
    targets: np.ndarray  # (n, classes) float32
    teacher: np.ndarray | None = None  # (n, classes) logits


def soft_targets(ratings: np.ndarray, n_classes: int, mix: float, sigma: float,
                 labels: np.ndarray) -> np.ndarray:
    """Ordinal soft labels: one-hot mixed with a Gaussian around the crowd's mean rating.

    A sentence rated 0.39 (just "Negative") should cost little when called "Neutral", and one
    rated 0.05 a lot when called "Positive": the continuous rating carries that, a class id not.
    """
    x = (np.asarray(ratings, dtype=np.float64) + 4) / 8
    centers = (np.arange(n_classes) + 0.5) / n_classes
    gauss = np.exp(-((x[:, None] - centers[None, :]) ** 2) / (2 * sigma**2))
    gauss /= gauss.sum(1, keepdims=True)
    onehot = np.eye(n_classes)[labels]
    mixed = (1 - mix) * onehot + mix * gauss
    return np.where(np.isnan(x)[:, None], onehot, mixed).astype(np.float32)  # no rating: the label alone
