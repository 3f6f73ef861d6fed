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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
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


def _predict(head_file: Path, readout: np.ndarray) -> np.ndarray:
    """What a committed head (an apparel task's, the gate's) says of these readout vectors."""
    import keras

    head = keras.models.load_model(head_file, compile=False)
    return np.asarray(head.predict(readout.astype(np.float32), batch_size=512, verbose=0), np.float64)


def _auto_accept(served: np.ndarray, y: np.ndarray, parts: Mapping[str, np.ndarray], flagged: np.ndarray,
                 target_precision: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The threshold for the probabilities of the photos routed to these heads (``flagged``), chosen on
    validation for ``target_precision``; and what it gives on those test photos."""
    from training.heads.calibration import accept_stats, choose_threshold

    va, te = (idx[flagged[idx]] for idx in (parts["val"], parts["test"]))
    chosen = choose_threshold(served[va].max(1), served[va].argmax(1) == y[va], target_precision)
    return chosen.to_dict() | {"chosen_on": "val (photos routed to these heads)"}, accept_stats(served[te], y[te], chosen.threshold)


def route_threshold(p_in_val: np.ndarray, gate_threshold: float, budget: float = ROUTE_BUDGET) -> float:
    """The P(out of scope) above which photos get the other heads' labels: the gate's threshold, or higher,
    so that at most ``budget`` of the in-scope validation photos are routed away from their own heads."""
    from training.heads.scope import budget_threshold

    return max(gate_threshold, budget_threshold(p_in_val, budget)) if len(p_in_val) else gate_threshold


def _in_scope_val_p_out(models: Any, dataset: Any, part_of: Mapping[str, str], inside: set[str], cache_dir: Path,
                        progress: bool) -> np.ndarray:
    """The gate's P(out of scope) of the in-scope validation photos (their readout is cached by training)."""
    from training.features.backbones import cut_layer
    from training.heads.joint import cut_features

    rows = [s for s in dataset.samples if part_of.get(s.key) == "val" and s.meta.get("category", "").lower() in inside]
    if not rows:
        return np.zeros(0)
    feats = cut_features(replace(dataset, samples=rows), models.backbone, cut_layer(models.backbone.name, 1), cache_dir,
                         keep_maps=False, progress=progress)
    return _predict(models.scope.head, feats.readout)[:, 1]


def train_others(models_dir: Path, dataset: Any, split: Any, cache_dir: Path, command: str, target_precision: float = 0.95,
                 route_budget: float = ROUTE_BUDGET, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fit a head per task on the split's photos outside the gate's categories, the P(out of scope) above which
    photos get their labels, and each task's auto-accept threshold for those photos; write them and the manifest's ``others``."""
    from training.features.backbones import cut_layer
    from training.heads.joint import cut_features
    from training.manifest.read import read_models
    from training.heads.per_task import addon_version

    models = read_models(models_dir)
    if models.scope is None:
        raise ValueError(f"{models_dir} has no scope gate: the other heads are chosen by it; run `autolabel train-scope` first")
    inside = {c.lower() for c in models.scope.in_scope}
    part_of = split.part_of()
    rows = [s for s in dataset.samples if s.key in part_of and s.meta.get("category", "").lower() not in inside]
    if not rows:
        raise ValueError(f"the data has no photos outside {sorted(models.scope.in_scope)} in the split's parts")
    feats = cut_features(replace(dataset, samples=rows), models.backbone, cut_layer(models.backbone.name, 1), cache_dir,
                         keep_maps=False, progress=progress)
    x, samples = feats.readout, feats.samples
    categories = [s.meta.get("category", "") for s in samples]
    p_out = _predict(models.scope.head, x)[:, 1]  # the gate, as served
    p_in = _in_scope_val_p_out(models, dataset, part_of, inside, cache_dir, progress)
    route = route_threshold(p_in, models.scope.threshold, route_budget)
    routed_val = {"in_scope": round(float((p_in > route).mean()), 4) if len(p_in) else None,
                  "other_categories": round(float((p_out[[part_of[s.key] == "val" for s in samples]] > route).mean()), 4)}
    (models_dir / HEADS_DIR).mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    for task, entry in models.tasks.items():
        classes = list(entry.classes)
        y = np.array([classes.index(s.label(task)) if s.label(task) in classes else -1 for s in samples])
        parts = {p: np.array([i for i, s in enumerate(samples) if part_of[s.key] == p and y[i] >= 0], np.int64) for p in PARTS}
        head = fit_head(x, y, parts, len(classes))
        path = f"{HEADS_DIR}/{task}.keras"
        head.keras_head(f"others_{task}").save(models_dir / path)
        before = _predict(entry.head, x)  # what the apparel head said of them
        metrics = {p: {"others": head_metrics(head.probs(x[idx]), y[idx], [categories[i] for i in idx]),
                       "apparel_heads": head_metrics(before[idx], y[idx], [categories[i] for i in idx])}
                   for p, idx in parts.items() if p != "train" and len(idx)}
        threshold, accepted = _auto_accept(head.probs(x), y, parts, p_out > route, target_precision)  # served as is there
        if "test" in metrics:
            metrics["test"]["auto_accept"] = accepted
        record[task] = {"head": path, "classes": classes, "strength": head.strength, "temperature": round(head.temperature, 6),
                        "chosen_on": head.chosen_on, "threshold": threshold,
                        "rows": {p: len(idx) for p, idx in parts.items()}, "metrics": metrics}
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["others"] = {"categories": sorted({c for c in categories if c}), "route_threshold": round(route, 6),
                          "route_budget": route_budget, "routed_val": routed_val, "trained_with": command, "tasks": record}
    manifest["model_version"] = addon_version(models_dir / f"{HEADS_DIR}/{next(iter(record))}.keras")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return record


def routed(p_out: Any, apparel: Any, others: Any, threshold: float) -> Any:
    """Per photo, ``others`` where ``p_out`` > ``threshold``, else ``apparel``, each row exactly as given
    (TF tensors or Keras inputs, as served; ``p_out`` [batch], probabilities [batch, classes])."""
    import keras

    flagged = keras.ops.greater(keras.ops.expand_dims(p_out, 1), threshold)
    return keras.ops.where(flagged, others, apparel)


def metrics_table(record: Mapping[str, Mapping[str, Any]], part: str = "val") -> str:
    lines = [f"task     {part} rows  balanced acc.: apparel heads -> other heads   macro-F1   ECE   "
             "auto-accept (threshold: val coverage, precision)   by category (other heads)"]
    for task, r in record.items():
        m = r["metrics"].get(part)
        if not m:
            continue
        o, a, t = m["others"], m["apparel_heads"], r.get("threshold") or {}
        per = ", ".join(f"{c} {v:.3f}" for c, v in o["by_category"].items())
        accept = f"{t['threshold']:.3f}: {t['coverage']:.0%}, {t['precision']:.3f}" if t.get("accepted") else "none (all to review)"
        lines.append(f"{task:8s} {o['n']:>9d}  {a['balanced_accuracy']:.3f} -> {o['balanced_accuracy']:.3f}"
                     f"                      {o['macro_f1']:.3f}   {o['ece']:.3f}   {accept:<48s} {per}")
    return "\n".join(lines)


def previous_others(models_dir: Path) -> str | None:
    """Before a retraining replaces ``models_dir``'s manifest (the heads read the old readout): the command that refits them."""
    from training.heads.scope import refit_command

    return refit_command(models_dir, "others", "autolabel train-others --data KIND:PATH")
