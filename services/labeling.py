"""Pure: probabilities -> labels with confidences and the needs_review decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.events import TaskLabel


def task_label(probs: np.ndarray, classes: Sequence[str], threshold: float) -> TaskLabel:
    """One task's label from its probability vector (order = ``classes``)."""
    if probs.ndim != 1 or probs.shape[0] != len(classes):
        raise ValueError(f"expected {len(classes)} probabilities, got shape {probs.shape}")
    probs = np.clip(probs.astype(np.float64), 0.0, 1.0)
    best = int(np.argmax(probs))
    confidence = float(probs[best])
    return TaskLabel(
        label=classes[best],
        confidence=round(confidence, 6),
        probabilities={c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
        threshold=threshold,
        needs_review=confidence < threshold,
    )


def label_batch(
    probs: Mapping[str, np.ndarray],
    classes: Mapping[str, Sequence[str]],
    thresholds: Mapping[str, float],
) -> list[dict[str, TaskLabel]]:
    """Per image, per task labels for a batch: ``probs[task]`` is (N, C)."""
    n = len(next(iter(probs.values())))
    return [{task: task_label(probs[task][i], classes[task], thresholds[task]) for task in probs} for i in range(n)]
