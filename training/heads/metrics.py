"""Classification metrics, the same for `train` and `evaluate` (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, object]:
    """``{"accuracy", "balanced_accuracy", "macro_f1", "n", "per_class": {c: {precision, recall, f1, support}}}``.

    Balanced accuracy and macro-F1 average over the classes present in ``y_true``
    (a class absent from the data has no recall to average)."""
    yt = np.asarray(y_true, dtype=int)
    yp = np.asarray(y_pred, dtype=int)
    n = int(yt.size)
    per_class: dict[str, dict[str, float | int]] = {}
    recalls, f1s = [], []
    for i, c in enumerate(classes):
        tp = int(np.sum((yt == i) & (yp == i)))
        support = int(np.sum(yt == i))
        predicted = int(np.sum(yp == i))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            recalls.append(recall)
            f1s.append(f1)
    return {
        "accuracy": float(np.mean(yt == yp)) if n else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "n": n,
        "per_class": per_class,
    }


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=int)
    for t, p in zip(y_true, y_pred):
        m[int(t), int(p)] += 1
    return m
