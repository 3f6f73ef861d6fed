"""The title as a second signal: a text model per task, fused with the image model's logits.

Measured on validation (docs/accuracy.md, "The title as a second signal"): a joint network on
the image readout and the title features learns the image side from the training rows, where
the fine-tuned readout is overconfident, and falls far below both signals (season 0.71 vs
0.79). What works is **late fusion**:

1. **Text model** per task: logistic regression (class-weighted) on the title's TF-IDF vector
   (:mod:`training.features.text`), trained on the training part; its strength ``C`` is chosen on
   validation by the fused balanced accuracy.
2. **Fusion** per task, fitted on validation (where neither model has seen the rows):
   ``logits = a * image_logits + b * title_logits + c`` (``a``, ``b``, ``c`` one per class,
   class-weighted cross-entropy, a little L2), then a temperature for calibration and the
   auto-accept threshold, as for the image model.
3. **Served**: the exported head computes both and keeps the image model's output where the
   title has no words (:func:`training.serving.servables.fused_probs`): an upload without a title gets exactly the
   image-only labels; title dropout in training is not needed for that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.features.text import TextConfig, fit_idf, present_buckets, tfidf
from training.heads.calibration import (
    DEFAULT_TARGET_PRECISION,
    ClassThresholds,
    accept_stats,
    choose_class_thresholds,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from training.heads.metrics import classification_metrics

TITLE_FILE = "heads/title.npz"  # under the models folder
STRENGTHS = (0.1, 0.3, 1.0, 3.0)  # logistic regression C, chosen on validation
INPUTS = ("image", "title", "image+title")
MIN_FUSION_ROWS = 30  # validation rows below which the fusion is not fitted (a = b = 1, c = 0)


@dataclass
class TaskTitle:
    """One task's text model and fusion weights (numpy; the exported head rebuilds them in TensorFlow)."""

    classes: tuple[str, ...]
    weights: np.ndarray  # [buckets, k] text logistic regression
    bias: np.ndarray  # [k]
    title_temperature: float  # title-only probabilities: softmax(title_logits / t)
    fuse_image: np.ndarray  # [k] a
    fuse_title: np.ndarray  # [k] b
    fuse_bias: np.ndarray  # [k] c
    fused_temperature: float
    strength: float = 1.0
    threshold: ClassThresholds | None = None  # auto-accept thresholds of the fused probabilities, per class (val)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # inputs -> part -> metrics

    def title_logits(self, x: Any) -> np.ndarray:
        return np.asarray(x @ self.weights, np.float64) + self.bias

    def fused_logits(self, image_logits: np.ndarray, title_logits: np.ndarray) -> np.ndarray:
        z = self.fuse_image * image_logits + self.fuse_title * title_logits + self.fuse_bias
        return z / self.fused_temperature


@dataclass
class TitleModel:
    text: TextConfig
    idf: np.ndarray
    tasks: dict[str, TaskTitle]

    def save(self, path: Path) -> Path:
        arrays: dict[str, np.ndarray] = {"idf": self.idf.astype(np.float32)}
        for t, m in self.tasks.items():
            arrays |= {f"{t}/weights": m.weights.astype(np.float32), f"{t}/bias": m.bias.astype(np.float32),
                       f"{t}/fuse_image": m.fuse_image.astype(np.float32), f"{t}/fuse_title": m.fuse_title.astype(np.float32),
                       f"{t}/fuse_bias": m.fuse_bias.astype(np.float32),
                       f"{t}/temperatures": np.array([m.title_temperature, m.fused_temperature], np.float32)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: Path, text: TextConfig, classes: Mapping[str, Sequence[str]]) -> TitleModel:
        with np.load(path) as z:
            tasks = {}
            for t, cl in classes.items():
                if f"{t}/weights" not in z:
                    continue
                temps = z[f"{t}/temperatures"]
                tasks[t] = TaskTitle(tuple(cl), z[f"{t}/weights"], z[f"{t}/bias"], float(temps[0]), z[f"{t}/fuse_image"],
                                     z[f"{t}/fuse_title"], z[f"{t}/fuse_bias"], float(temps[1]))
            return cls(text, z["idf"], tasks)


def _class_weights(y: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return (len(y) / (k * np.maximum(counts, 1)))[y]


def fit_fusion(image_logits: np.ndarray, title_logits: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, ...]:
    """Per-class ``a``, ``b`` in [0, 10] and ``c`` minimising class-weighted cross-entropy of ``a*zi + b*zt + c``
    (``c[0] = 0``); with fewer than :data:`MIN_FUSION_ROWS` rows or a class missing, ``a = b = 1``, ``c = 0``."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    k = image_logits.shape[1]
    w = _class_weights(y, k)
    rows = np.arange(len(y))

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return p[:k], p[k : 2 * k], np.r_[0.0, p[2 * k :]]

    def loss(p: np.ndarray) -> float:
        a, b, c = unpack(p)
        lz = log_softmax(a * image_logits + b * title_logits + c, axis=1)
        return float(-(w * lz[rows, y]).sum() / w.sum() + l2 * (p**2).sum())

    if len(y) < MIN_FUSION_ROWS or len(np.unique(y)) < k:  # too few rows to fit: the plain product of the two models
        return np.ones(k), np.ones(k), np.zeros(k)
    bounds = [(0.0, 10.0)] * (2 * k) + [(None, None)] * (k - 1)  # each signal counts for or not at all, never against
    res = minimize(loss, np.r_[np.ones(2 * k), np.zeros(k - 1)], method="L-BFGS-B", bounds=bounds)
    return unpack(res.x)


def _metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], threshold: float | Sequence[float] | None) -> dict[str, Any]:
    m = classification_metrics(y, probs.argmax(1), list(classes))
    m["ece"] = expected_calibration_error(probs, y)
    if threshold is not None:
        m["auto_accept"] = accept_stats(probs, y, threshold)
    return m


def fit_task(classes: Sequence[str], x: Any, image_logits: np.ndarray, y: np.ndarray, parts: Mapping[str, np.ndarray],
             target_precision: float = DEFAULT_TARGET_PRECISION, image_threshold: float | None = None) -> TaskTitle:
    """Text model (C chosen on val by the fused balanced accuracy), fusion, temperature, threshold, metrics.

    ``x``: TF-IDF rows of every sample; ``image_logits``: the calibrated image logits; ``parts``:
    row indices of train / val / test for this task (rows with a label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    tr, va = parts["train"], parts["val"]
    k = len(classes)
    best: tuple[float, float, Any, tuple[np.ndarray, ...]] | None = None
    for c in STRENGTHS:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x[tr], y[tr])
        w = lr.coef_.T if k > 2 else np.c_[-lr.coef_.T / 2, lr.coef_.T / 2]
        b = lr.intercept_ if k > 2 else np.r_[-lr.intercept_ / 2, lr.intercept_ / 2]
        zt = np.asarray(x[va] @ w) + b
        fuse = fit_fusion(image_logits[va], zt, y[va])
        score = balanced_accuracy_score(y[va], (fuse[0] * image_logits[va] + fuse[1] * zt + fuse[2]).argmax(1))
        if best is None or score > best[0]:
            best = (score, c, (w, b), fuse)
    assert best is not None
    _, c, (w, b), (fa, fb, fc) = best
    zt_val = np.asarray(x[va] @ w) + b
    t_title = fit_temperature(zt_val, y[va])
    t_fused = fit_temperature(fa * image_logits[va] + fb * zt_val + fc, y[va])
    model = TaskTitle(tuple(classes), np.asarray(w, np.float32), np.asarray(b, np.float32), t_title, fa, fb, fc, t_fused, c)
    fused_val = softmax(model.fused_logits(image_logits[va], zt_val))
    model.threshold = choose_class_thresholds(fused_val, y[va], target_precision)
    for part, idx in parts.items():
        if not len(idx):
            continue
        zt = model.title_logits(x[idx])
        probs = {"image": softmax(image_logits[idx]), "title": softmax(zt / t_title),
                 "image+title": softmax(model.fused_logits(image_logits[idx], zt))}
        thresholds = {"image": image_threshold, "title": None, "image+title": model.threshold.thresholds}
        for inputs, p in probs.items():
            model.metrics.setdefault(inputs, {})[part] = _metrics(p, y[idx], classes, thresholds[inputs])
    return model


def fit_title_model(titles: Sequence[str], image_logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    parts: Mapping[str, Mapping[str, np.ndarray]], classes: Mapping[str, Sequence[str]],
                    text: TextConfig | None = None, target_precision: float = DEFAULT_TARGET_PRECISION,
                    image_thresholds: Mapping[str, float | None] | None = None) -> TitleModel:
    """One shared featurisation (IDF from the training titles of any task) and a :class:`TaskTitle` per task.

    ``image_logits[task]``: calibrated logits for every sample; ``labels[task]``: class index or -1;
    ``parts[task][part]``: row indices."""
    text = text or TextConfig()
    present = present_buckets(titles, text)
    train_rows = np.unique(np.concatenate([p["train"] for p in parts.values()]))
    idf = fit_idf(present[train_rows])
    x = tfidf(present, idf)
    tasks = {t: fit_task(classes[t], x, image_logits[t], labels[t], parts[t], target_precision,
                         (image_thresholds or {}).get(t)) for t in image_logits}
    return TitleModel(text, idf, tasks)
