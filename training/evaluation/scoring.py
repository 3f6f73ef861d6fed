"""`autolabel evaluate`: score the models the repository serves on a labeled dataset.

It loads the same SavedModels Triton loads (``model_repository/``) with TensorFlow:
the shared ``backbone`` + ``<task>_head`` pair when present (what the ``autolabel``
ensemble runs: one backbone pass for all tasks), else the standalone ``<task>`` model.
``--from-heads`` instead stacks the committed heads (``models/``) on the backbone in
process, for a machine where the repository has not been built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from services.errors import BadInput
from services.images import ResizeMode, prepare
from training.data.rows import Dataset, Sample
from training.data.split import category_of
from training.evaluation.served import Gate, TaskModel
from training.heads.metrics import classification_metrics, confusion


@dataclass
class TaskEvaluation:
    metrics: dict[str, Any]
    confusion: np.ndarray
    classes: tuple[str, ...]
    skipped: dict[str, int]
    keys: list[str]  # the scored rows, in the order of ``y`` and ``probs``
    y: np.ndarray
    probs: np.ndarray
    threshold: float | Sequence[float] | None = None


def score(classes: tuple[str, ...], keys: Sequence[str], y: np.ndarray, probs: np.ndarray,
          threshold: float | Sequence[float] | None, skipped: dict[str, int] | None = None) -> TaskEvaluation:
    """Metrics of one task's predictions: classification, calibration error and, with a
    threshold, coverage and precision of the auto-accepted labels."""
    from training.heads.calibration import accept_stats, expected_calibration_error

    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    m = classification_metrics(y, pred, classes)
    m["ece"] = expected_calibration_error(probs, y) if len(y) else 0.0
    if threshold is not None:
        m["auto_accept"] = accept_stats(probs, y, threshold)
    return TaskEvaluation(m, confusion(y, pred, len(classes)), classes, skipped or {}, list(keys), y, probs, threshold)


def subset(ev: TaskEvaluation, keep: set[str]) -> TaskEvaluation:
    """The same task scored on the rows whose key is in ``keep``."""
    idx = [i for i, k in enumerate(ev.keys) if k in keep]
    probs = ev.probs[idx] if len(idx) else np.zeros((0, len(ev.classes)))
    return score(ev.classes, [ev.keys[i] for i in idx], ev.y[idx], probs, ev.threshold)


def _rows(dataset: Dataset, m: TaskModel, keys: dict[str, set[str]] | None, skipped: dict[str, int]) -> list[Sample]:
    rows = dataset.labeled(m.task)
    if keys is not None and m.task in keys:
        rows = [s for s in rows if s.key in keys[m.task]]
    known = [s for s in rows if s.label(m.task) in m.classes]
    skipped["unknown class"] = len(rows) - len(known)
    return known


def _load(s: Sample, size: tuple[int, int], resize: ResizeMode) -> np.ndarray | None:
    try:
        return prepare(s.path.read_bytes(), size, resize)
    except (OSError, BadInput):
        return None


def evaluate(
    dataset: Dataset,
    models: Sequence[TaskModel],
    keys: dict[str, set[str]] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    gate: Gate | None = None,
) -> dict[str, TaskEvaluation]:
    """Predict every labeled row of every task and score it (and, with ``gate``, record its verdict
    on every photo of the shared backbone pass).

    ``keys`` restricts a task to those sample keys (e.g. a split's test part). Rows whose
    class the model does not know are skipped and counted, as are unreadable images.
    Models with a shared backbone are run in one pass over the union of their rows."""
    models = [m for m in models if m.task in dataset.tasks]
    skipped = {m.key: {"unknown class": 0, "unreadable": 0} for m in models}
    rows = {m.key: _rows(dataset, m, keys, skipped[m.key]) for m in models}
    scored: dict[str, list[str]] = {m.key: [] for m in models}
    y_true: dict[str, list[int]] = {m.key: [] for m in models}
    probs_of: dict[str, list[np.ndarray]] = {m.key: [] for m in models}
    groups: list[list[TaskModel]] = []
    shared = [m for m in models if m.backbone is not None]
    if shared:
        groups.append(shared)
    groups += [[m] for m in models if m.backbone is None]
    for group in groups:
        first = group[0]
        wanted = {m.key: {s.key for s in rows[m.key]} for m in group}
        union = [s for s in dataset.samples if any(s.key in w for w in wanted.values())]
        desc = f"evaluate {'+'.join(dict.fromkeys(m.task for m in group))}"
        for start in tqdm(range(0, len(union), batch_size), desc=desc, unit="batch", disable=not progress):
            batch, arrays = [], []
            for s in union[start : start + batch_size]:
                arr = _load(s, first.input_size, first.resize)
                if arr is None:
                    for m in group:
                        skipped[m.key]["unreadable"] += s.key in wanted[m.key]
                    continue
                batch.append(s)
                arrays.append(arr)
            if not batch:
                continue
            x = np.stack(arrays)
            if first.backbone is not None:
                x = first.backbone(x)
                if gate is not None:
                    gate.p_out.update(zip([s.key for s in batch], np.asarray(gate.run(x))[:, 1].tolist(), strict=True))
            for m in group:
                pick = [i for i, s in enumerate(batch) if s.key in wanted[m.key]]
                if not pick:
                    continue
                probs = m.predict(x[pick], [batch[i].title for i in pick]) if m.inputs != "image" else m.predict(x[pick])
                probs_of[m.key].append(np.asarray(probs, np.float64))
                y_true[m.key] += [m.classes.index(batch[i].label(m.task)) for i in pick]  # type: ignore[arg-type]
                scored[m.key] += [batch[i].key for i in pick]
    out = {}
    for m in models:
        probs = np.concatenate(probs_of[m.key]) if probs_of[m.key] else np.zeros((0, len(m.classes)))
        out[m.key] = score(m.classes, scored[m.key], np.asarray(y_true[m.key], int), probs, m.threshold, skipped[m.key])
    return out


def by_category(samples: Sequence[Sample], every: dict[str, TaskEvaluation], headline: set[str]) -> dict[str, dict[str, Any]]:
    """Per catalog category outside the headline rows, per task: n, accuracy, balanced accuracy, macro-F1."""
    cats: dict[str, set[str]] = {}
    for s in samples:
        if s.key not in headline:
            cats.setdefault(category_of(s), set()).add(s.key)
    out: dict[str, dict[str, Any]] = {}
    for cat, keys in sorted(cats.items()):
        row = {}
        for t, r in every.items():
            m = subset(r, keys).metrics
            if m["n"]:
                row[t] = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
        if row:
            out[cat] = row
    return out

