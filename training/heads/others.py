"""Heads for the other categories: labels for the photos the scope gate sends away from the apparel heads.

The task heads were trained on the training categories (Apparel); on shoes, bags and perfume
they guess (gender right 44 % of the time on test footwear). The catalog labels those products
too (style, gender, season), so a second head set is fitted on them: per task, a logistic
regression on the same readout vector (one backbone pass, a 4096 x k layer more), strength
chosen on validation, calibrated by a temperature on validation.

Served inside each task's head, routed by the gate at a threshold ``t`` of its own:

    probs = other_probs if P(out of scope) > t else apparel_probs

so a photo below it gets exactly the apparel heads' probabilities (and their validated
thresholds), a photo above it exactly the other heads'. ``t`` is the gate's threshold or
higher, chosen on validation so that at most 0.25 % of in-scope photos are routed (the gate
flags up to 1 % for review; an apparel photo given shoe heads' labels costs the apparel
figures); photos between the two thresholds are flagged, with the apparel heads' labels.
(A soft mixture ``(1 - p) * apparel + p * other`` was tried first: it cost the apparel test
rows 0.001-0.005 of balanced accuracy and took gender labels read with a title from 100 %
auto-accepted to 35 %, their probabilities no longer reaching the 1.000 thresholds.)

For the routed photos, each task has its own auto-accept threshold, chosen on the routed
validation photos for the target precision (served as ``threshold_<task>_others``): the worker
lets their labels above it skip review (the label event's ``scope.other_heads``) and sends the
rest to review. Written by ``autolabel train-others`` into ``heads/others/<task>.keras`` and
the manifest's ``others`` record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADS_DIR = "heads/others"  # under the models folder
STRENGTHS = (0.0001, 0.0003, 0.001, 0.003, 0.01)  # logistic regression C, chosen on validation (balanced accuracy, then log-loss)
PARTS = ("train", "val", "test")
ROUTE_BUDGET = 0.0025  # share of in-scope validation photos the routing may give the other heads' labels


@dataclass
class OtherHead:
    """``softmax((x @ weights + bias) / temperature)`` on the raw readout (standardisation folded in)."""

    weights: np.ndarray  # [dims, classes]
    bias: np.ndarray  # [classes]
    temperature: float
    strength: float
    chosen_on: str = "val"  # where strength and temperature were chosen

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weights + self.bias

    def probs(self, x: np.ndarray) -> np.ndarray:
        from training.heads.calibration import softmax

        return softmax(self.logits(x) / self.temperature)

    def keras_head(self, name: str) -> Any:
        """features -> calibrated probabilities: the same function as :meth:`probs`."""
        import keras

        inputs = keras.Input(shape=(self.weights.shape[0],), name="features")
        dense = keras.layers.Dense(self.weights.shape[1], activation="softmax", name="probs")
        outputs = dense(inputs)
        t = self.temperature
        dense.set_weights([(self.weights / t).astype(np.float32), (self.bias / t).astype(np.float32)])
        return keras.Model(inputs, outputs, name=name)


def fit_head(x: np.ndarray, y: np.ndarray, parts: Mapping[str, np.ndarray], n_classes: int) -> OtherHead:
    """A class-weighted logistic regression on the training rows, C chosen on validation, temperature fitted there."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from training.heads.calibration import fit_temperature, nll

    tr, va = parts["train"], parts["val"]
    if len(set(y[tr].tolist())) < 2:
        raise ValueError(f"the training part needs labels of two classes or more (has {len(tr)} rows)")
    judged = len(set(y[va].tolist())) >= 2  # else (a small catalog): the middle strength, no temperature
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = (x - mean) / std
    best: tuple[tuple[float, float], OtherHead] | None = None
    for c in STRENGTHS if judged else STRENGTHS[len(STRENGTHS) // 2:][:1]:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(z[tr], y[tr])
        w, b = np.zeros((x.shape[1], n_classes)), np.full(n_classes, -30.0)  # a class absent from training: never chosen
        coef, icpt = (lr.coef_, lr.intercept_) if len(lr.classes_) > 2 else (np.r_[-lr.coef_, lr.coef_] / 2, np.r_[-lr.intercept_, lr.intercept_] / 2)
        w[:, lr.classes_] = (coef / std).T
        b[lr.classes_] = icpt - coef @ (mean / std)
        head = OtherHead(w, b, 1.0, c, "default (validation has fewer than two classes)")
        score = (0.0, 0.0)
        if judged:  # balanced accuracy (to 3 places), ties to the lower calibrated log-loss
            logits = head.logits(x[va])
            head.temperature, head.chosen_on = fit_temperature(logits, y[va]), "val"
            score = (round(balanced_accuracy_score(y[va], logits.argmax(1)), 3), -nll(logits, y[va], head.temperature))
        if best is None or score > best[0]:
            best = (score, head)
    assert best is not None
    return best[1]


def head_metrics(probs: np.ndarray, y: np.ndarray, categories: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1 and ECE of ``probs`` against ``y``, and balanced accuracy per category."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from training.heads.calibration import expected_calibration_error

    pred = probs.argmax(1)
    cats = np.asarray(categories)
    per = {str(c): round(float(balanced_accuracy_score(y[cats == c], pred[cats == c])), 4)
           for c in sorted(set(cats.tolist())) if (cats == c).sum() >= 20 and len(set(y[cats == c].tolist())) > 1}
    return {"n": len(y), "accuracy": round(float((pred == y).mean()), 4), "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 4), "ece": round(expected_calibration_error(probs, y), 4),
            "by_category": per}


def route_threshold(p_in_val: np.ndarray, gate_threshold: float, budget: float = ROUTE_BUDGET) -> float:
    """The P(out of scope) above which photos get the other heads' labels: the gate's threshold, or higher,
    so that at most ``budget`` of the in-scope validation photos are routed away from their own heads."""
    from training.heads.scope import budget_threshold

    return max(gate_threshold, budget_threshold(p_in_val, budget)) if len(p_in_val) else gate_threshold


