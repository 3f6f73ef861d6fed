"""Pure: probabilities -> labels with confidences and the needs_review decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.events import TaskLabel

FALLBACK_THRESHOLD = 0.5  # a model that ships no threshold (older builds, test models), no override set


def resolve_thresholds(
    tasks: Sequence[str], overrides: Mapping[str, float | None], shipped: Mapping[str, float]
) -> dict[str, float]:
    """Per task: the operator's override, else the threshold shipped with the model, else 0.5."""
    out = {}
    for task in tasks:
        override = overrides.get(task)
        out[task] = override if override is not None else shipped.get(task, FALLBACK_THRESHOLD)
    return out


def _rows(probs: np.ndarray, classes: Sequence[str], threshold: float) -> list[TaskLabel]:
    """(N, C) probabilities -> N labels; the numpy work is done once for the whole batch."""
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"expected {len(classes)} probabilities per row, got shape {probs.shape}")
    clipped = np.clip(probs.astype(np.float64), 0.0, 1.0)
    best = clipped.argmax(axis=1).tolist()
    out = []
    for row, b in zip(np.round(clipped, 6).tolist(), best, strict=True):
        confidence = row[b]
        out.append(TaskLabel(
            label=classes[b],
            confidence=confidence,
            probabilities=dict(zip(classes, row, strict=True)),
            threshold=threshold,
            needs_review=confidence < threshold,
        ))
    return out


def task_label(probs: np.ndarray, classes: Sequence[str], threshold: float) -> TaskLabel:
    """One task's label from its probability vector (order = ``classes``)."""
    if probs.ndim != 1:
        raise ValueError(f"expected {len(classes)} probabilities, got shape {probs.shape}")
    return _rows(probs[None, :], classes, threshold)[0]


def label_batch(
    probs: Mapping[str, np.ndarray],
    classes: Mapping[str, Sequence[str]],
    thresholds: Mapping[str, float],
) -> list[dict[str, TaskLabel]]:
    """Per image, per task labels for a batch: ``probs[task]`` is (N, C)."""
    per_task = {task: _rows(np.asarray(p), classes[task], thresholds[task]) for task, p in probs.items()}
    n = len(next(iter(per_task.values())))
    return [{task: per_task[task][i] for task in per_task} for i in range(n)]
