"""`autolabel train-others`'s work: the other-category heads fitted on a models folder's readout, written beside its heads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.features.readout import served_readout
from training.heads.others import HEADS_DIR, PARTS, ROUTE_BUDGET, fit_head, head_metrics, route_threshold
from training.manifest.folder import load_manifest, save_manifest


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



def _in_scope_val_p_out(models: Any, dataset: Any, part_of: Mapping[str, str], inside: set[str], cache_dir: Path,
                        progress: bool) -> np.ndarray:
    """The gate's P(out of scope) of the in-scope validation photos (their readout is cached by training)."""

    rows = [s for s in dataset.samples if part_of.get(s.key) == "val" and s.meta.get("category", "").lower() in inside]
    if not rows:
        return np.zeros(0)
    feats = served_readout(models, replace(dataset, samples=rows), cache_dir, progress=progress)
    return _predict(models.scope.head, feats.readout)[:, 1]



def train_others(models_dir: Path, dataset: Any, split: Any, cache_dir: Path, command: str, target_precision: float = 0.95,
                 route_budget: float = ROUTE_BUDGET, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fit a head per task on the split's photos outside the gate's categories, the P(out of scope) above which
    photos get their labels, and each task's auto-accept threshold for those photos; write them and the manifest's ``others``."""
    from training.manifest.read import read_models
    from training.manifest.write import addon_version

    models = read_models(models_dir)
    if models.scope is None:
        raise ValueError(f"{models_dir} has no scope gate: the other heads are chosen by it; run `autolabel train-scope` first")
    inside = {c.lower() for c in models.scope.in_scope}
    part_of = split.part_of()
    rows = [s for s in dataset.samples if s.key in part_of and s.meta.get("category", "").lower() not in inside]
    if not rows:
        raise ValueError(f"the data has no photos outside {sorted(models.scope.in_scope)} in the split's parts")
    feats = served_readout(models, replace(dataset, samples=rows), cache_dir, progress=progress)
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
    manifest = load_manifest(models_dir)
    manifest["others"] = {"categories": sorted({c for c in categories if c}), "route_threshold": round(route, 6),
                          "route_budget": route_budget, "routed_val": routed_val, "trained_with": command, "tasks": record}
    manifest["model_version"] = addon_version(models_dir / f"{HEADS_DIR}/{next(iter(record))}.keras")
    save_manifest(models_dir, manifest)
    return record



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
    from training.steps.train_scope import refit_command

    return refit_command(models_dir, "others", "autolabel train-others --data KIND:PATH")
