"""Pure: probabilities -> labels with confidences and the needs_review decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.events import ReviewPolicy, ScopeCheck, TaskLabel

FALLBACK_THRESHOLD = 0.5  # a model that ships no threshold (older builds, test models), no override set


def resolve_title_thresholds(
    overrides: Mapping[str, float | None], shipped: Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, ...]]:
    """Per task, the per-class thresholds shipped for labels read with a title, unless the
    operator set one threshold for the task (it then applies to every label of the task)."""
    return {task: tuple(values) for task, values in shipped.items() if overrides.get(task) is None}


def resolve_thresholds(
    tasks: Sequence[str], overrides: Mapping[str, float | None], shipped: Mapping[str, float]
) -> dict[str, float]:
    """Per task: the operator's override, else the threshold shipped with the model, else 0.5."""
    out = {}
    for task in tasks:
        override = overrides.get(task)
        out[task] = override if override is not None else shipped.get(task, FALLBACK_THRESHOLD)
    return out


def _rows(probs: np.ndarray, classes: Sequence[str], threshold: float,
          per_class: Sequence[float] | None = None, use_per_class: Sequence[bool] | None = None) -> list[TaskLabel]:
    """(N, C) probabilities -> N labels; the numpy work is done once for the whole batch.

    ``per_class``: thresholds by predicted class, used for the rows where ``use_per_class`` is
    true (labels read from photo and title; training/heads/title.py says why one per class)."""
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"expected {len(classes)} probabilities per row, got shape {probs.shape}")
    clipped = np.clip(probs.astype(np.float64), 0.0, 1.0)
    best = clipped.argmax(axis=1).tolist()
    which = use_per_class if per_class is not None and use_per_class is not None else [False] * len(best)
    out = []
    for row, b, own in zip(np.round(clipped, 6).tolist(), best, which, strict=True):
        confidence = row[b]
        cut = float(per_class[b]) if own else threshold  # type: ignore[index]
        out.append(TaskLabel(
            label=classes[b],
            confidence=confidence,
            probabilities=dict(zip(classes, row, strict=True)),
            threshold=cut,
            needs_review=confidence < cut,
            status="review" if confidence < cut else "accepted",
        ))
    return out


def task_label(probs: np.ndarray, classes: Sequence[str], threshold: float) -> TaskLabel:
    """One task's label from its probability vector (order = ``classes``)."""
    if probs.ndim != 1:
        raise ValueError(f"expected {len(classes)} probabilities, got shape {probs.shape}")
    return _rows(probs[None, :], classes, threshold)[0]


def scope_checks(p_out: np.ndarray | None, threshold: float | None, n: int, routed_above: float | None = None) -> list[ScopeCheck | None]:
    """Per image, the scope gate's verdict from its (N, 2) ``[P(in), P(out)]`` output; None where the model has no gate.
    ``routed_above``: the model has heads for the other categories and gives their labels above this P(out of scope)
    (their routing threshold, served with the model; ``threshold`` may be the operator's)."""
    if p_out is None or threshold is None:
        return [None] * n
    p = np.clip(np.asarray(p_out, np.float64), 0.0, 1.0)
    if p.shape != (n, 2):
        raise ValueError(f"expected {n} x 2 scope probabilities, got shape {p.shape}")
    return [ScopeCheck(in_scope=bool(v <= threshold), probability=round(float(v), 6), threshold=threshold,
                       other_heads=bool(routed_above is not None and v > routed_above)) for v in p[:, 1]]


def with_scope(labels: dict[str, TaskLabel], check: ScopeCheck | None, others: Mapping[str, float] | None = None) -> dict[str, TaskLabel]:
    """Labels from the heads for the other categories (``check.other_heads``) need review under ``others[task]``,
    their threshold chosen on validation (a task without one: review); any other label of a photo out of scope
    needs review, whatever its confidence (the labels themselves are kept)."""
    if check is None:
        return labels
    own = others if check.other_heads and others else {}
    if check.in_scope and not own:
        return labels
    return {t: _judged(lab, own[t]) if t in own else _judged(lab, None) for t, lab in labels.items()}


def _judged(lab: TaskLabel, threshold: float | None) -> TaskLabel:
    """``lab`` judged by ``threshold`` (None: review, whatever its confidence)."""
    if threshold is None:
        return lab.model_copy(update={"needs_review": True, "status": "review"})
    sure = lab.confidence >= threshold
    return lab.model_copy(update={"threshold": threshold, "needs_review": not sure, "status": "accepted" if sure else "review"})


def with_policy(labels: dict[str, TaskLabel], policies: Mapping[str, ReviewPolicy]) -> dict[str, TaskLabel]:
    """Each task's review policy applied to its judged label: ``threshold`` (the default) keeps it; ``advisory``
    never queues the task (a label under its threshold is published as advisory: not accepted, not queued);
    ``always`` queues the task whatever its confidence."""
    out = {}
    for task, lab in labels.items():
        policy = policies.get(task, "threshold")
        if policy == "advisory" and lab.needs_review:
            lab = lab.model_copy(update={"needs_review": False, "status": "advisory"})
        elif policy == "always" and not lab.needs_review:
            lab = lab.model_copy(update={"needs_review": True, "status": "review"})
        out[task] = lab
    return out


def resolve_other_thresholds(overrides: Mapping[str, float | None], shipped: Mapping[str, float]) -> dict[str, float]:
    """Per task with heads for the other categories: the operator's threshold for the task (it applies to every
    label of the task), else the one shipped for those heads."""
    return {task: overrides[task] if overrides.get(task) is not None else value for task, value in shipped.items()}  # type: ignore[misc]


def label_batch(
    probs: Mapping[str, np.ndarray],
    classes: Mapping[str, Sequence[str]],
    thresholds: Mapping[str, float],
    title_thresholds: Mapping[str, Sequence[float]] | None = None,
    read_title: Sequence[bool] | None = None,
) -> list[dict[str, TaskLabel]]:
    """Per image, per task labels for a batch: ``probs[task]`` is (N, C).

    Rows where the model read a title (``read_title``) are judged by ``title_thresholds[task]``
    (one per class) where the task has them, the others by ``thresholds[task]``."""
    title_thresholds = title_thresholds or {}
    per_task = {task: _rows(np.asarray(p), classes[task], thresholds[task], title_thresholds.get(task), read_title)
                for task, p in probs.items()}
    n = len(next(iter(per_task.values())))
    return [{task: per_task[task][i] for task in per_task} for i in range(n)]
