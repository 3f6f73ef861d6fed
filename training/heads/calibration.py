"""Calibrated confidence and auto-accept thresholds (pure numpy; no model needed).

- :func:`fit_temperature`: the temperature T that makes ``softmax(logits / T)`` fit the
  validation labels best (lowest negative log-likelihood); T > 1 softens over-confident models.
- :func:`expected_calibration_error`: |accuracy - confidence| over equal-width confidence bins,
  weighted by the bins' shares (what a reliability diagram shows).
- :func:`choose_threshold`: the lowest confidence threshold whose auto-accepted labels reach
  the target precision on validation, judged by the Wilson lower bound (so a threshold that
  only just reaches the target on validation by luck is not taken).
- :func:`coverage_curve`: coverage and precision of the accepted labels at every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_TARGET_PRECISION = 0.95
DEFAULT_Z = 1.0  # one standard error below the precision estimate must still reach the target
MIN_ACCEPTED = 30  # thresholds that accept fewer validation rows than this are not judged


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(np.asarray(logits, np.float64) / temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """argmin over T in [0.05, 20] of the NLL of ``softmax(logits / T)`` (1.0 without rows)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    n: int
    confidence: float
    accuracy: float


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> list[ReliabilityBin]:
    """Per equal-width confidence bin: how many rows, mean confidence and accuracy."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), int(m.sum()),
                                  float(conf[m].mean()) if m.any() else 0.0, float(correct[m].mean()) if m.any() else 0.0))
    return out


def wilson_lower(successes: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion (0 where n is 0)."""
    n = np.asarray(n, np.float64)
    p = np.divide(successes, n, out=np.zeros_like(n), where=n > 0)
    denom = 1 + z * z / np.maximum(n, 1)
    centre = p + z * z / (2 * np.maximum(n, 1))
    margin = z * np.sqrt(p * (1 - p) / np.maximum(n, 1) + z * z / (4 * np.maximum(n, 1) ** 2))
    return np.where(n > 0, (centre - margin) / denom, 0.0)


@dataclass(frozen=True)
class Curve:
    """Accepting every row with confidence >= ``thresholds[i]``: its coverage and precision."""

    thresholds: np.ndarray
    coverage: np.ndarray
    precision: np.ndarray
    accepted: np.ndarray
    correct: np.ndarray


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> Curve:
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(np.float64)
    # one point per distinct confidence: the last row of each run of equal values
    last = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.zeros(0, bool)
    accepted = np.arange(1, len(conf) + 1)[last]
    hits = np.cumsum(ok)[last]
    n = max(len(conf), 1)
    return Curve(conf[last], accepted / n, hits / np.maximum(accepted, 1), accepted, hits)


@dataclass(frozen=True)
class Threshold:
    """The chosen threshold and what it gives on the rows it was chosen on."""

    threshold: float
    target_precision: float
    coverage: float
    precision: float
    accepted: int
    rows: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = DEFAULT_TARGET_PRECISION,
                     z: float = DEFAULT_Z, min_accepted: int = MIN_ACCEPTED) -> Threshold:
    """The lowest threshold t (the most labels accepted) whose accepted rows, at least
    ``min_accepted`` of them, have a Wilson lower bound of their precision >= ``target``.

    Not "every higher threshold too": a few confidently wrong catalog labels at the very top
    would then veto every threshold.

    Where no threshold qualifies, t is just above the highest confidence: nothing is
    auto-accepted (every label goes to review), which is the honest answer."""
    if not 0 < target <= 1:
        raise ValueError(f"target precision must be in (0, 1] (got {target})")
    curve = coverage_curve(np.asarray(confidence, np.float64), np.asarray(correct, bool))
    rows = len(confidence)
    lower = wilson_lower(curve.correct, curve.accepted, z)
    ok = np.nonzero((lower >= target) & (curve.accepted >= min_accepted))[0]
    best = int(ok[-1]) if len(ok) else None  # the lowest such threshold: the most labels accepted
    if best is None:
        top = float(np.max(confidence)) if rows else 1.0
        return Threshold(float(np.nextafter(min(top, 1.0), 2.0)), target, 0.0, float("nan"), 0, rows)
    return Threshold(float(curve.thresholds[best]), target, float(curve.coverage[best]), float(curve.precision[best]),
                     int(curve.accepted[best]), rows)


def accepted_mask(probs: np.ndarray, threshold: float | Sequence[float]) -> np.ndarray:
    """Rows whose label is auto-accepted: confidence >= the threshold (one number, or one per predicted class)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    if np.ndim(threshold) == 0:
        return conf >= float(threshold)  # type: ignore[arg-type]
    return conf >= np.asarray(threshold, np.float64)[pred]


def accept_stats(probs: np.ndarray, y: np.ndarray, threshold: float | Sequence[float]) -> dict[str, object]:
    """Coverage and precision of the labels at or above ``threshold`` (on any rows)."""
    correct = probs.argmax(axis=1) == y
    accepted = accepted_mask(probs, threshold)
    n = int(accepted.sum())
    shown = float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in threshold]  # type: ignore[arg-type, union-attr]
    return {"threshold": shown, "coverage": float(accepted.mean()) if len(y) else 0.0,
            "precision": float(correct[accepted].mean()) if n else float("nan"), "accepted": n, "rows": int(len(y))}


@dataclass(frozen=True)
class ClassThresholds:
    """One threshold per predicted class (class order), and what they give on the rows they were chosen on.

    For a model whose decisions are weighted towards rare classes (balanced accuracy), the
    confident labels of a rare class are wrong more often than those of a common one at the
    same probability: one threshold for all would accept almost nothing."""

    thresholds: tuple[float, ...]
    target_precision: float
    coverage: float
    precision: float
    accepted: int
    rows: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"thresholds": list(self.thresholds)}


def choose_class_thresholds(probs: np.ndarray, y: np.ndarray, target: float = DEFAULT_TARGET_PRECISION,
                            z: float = DEFAULT_Z, min_accepted: int = MIN_ACCEPTED) -> ClassThresholds:
    """:func:`choose_threshold` on the rows predicted as each class in turn."""
    pred, correct = probs.argmax(axis=1), probs.argmax(axis=1) == y
    values = []
    for k in range(probs.shape[1]):
        rows = pred == k
        values.append(choose_threshold(probs[rows].max(axis=1), correct[rows], target, z, min_accepted).threshold
                      if rows.any() else 1.0)
    stats = accept_stats(probs, y, values)
    return ClassThresholds(tuple(values), target, float(stats["coverage"]), float(stats["precision"]),  # type: ignore[arg-type]
                           int(stats["accepted"]), len(y))  # type: ignore[call-overload]
