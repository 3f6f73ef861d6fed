"""Do two served models give the same labels? Per-photo predictions of `autolabel evaluate` compared.

`autolabel evaluate --predictions FILE.npz` saves, per task, the scored photos' keys, their true
class, the probabilities and the shipped auto-accept threshold; `--agree-with FILE.npz` compares
the run's predictions with such a file: per task, the share of photos whose label is the same,
the same among the labels that either run auto-accepts, the largest probability change and the
change of balanced accuracy (this run minus the file's).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import classification_metrics


def save_predictions(path: Path, results: Mapping[str, Any]) -> Path:
    """``results``: task -> training.evaluate.TaskEvaluation (photo-only, scalar thresholds)."""
    arrays: dict[str, np.ndarray] = {}
    for task, r in results.items():
        arrays[f"{task}/keys"] = np.asarray(r.keys)
        arrays[f"{task}/y"] = r.y
        arrays[f"{task}/probs"] = r.probs
        arrays[f"{task}/classes"] = np.asarray(r.classes)
        arrays[f"{task}/threshold"] = np.asarray(r.threshold if isinstance(r.threshold, (int, float)) else np.nan, dtype=float)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_predictions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in data.files:
        task, _, field = name.partition("/")
        out.setdefault(task, {})[field] = data[name]
    return out


def _accepted(probs: np.ndarray, threshold: float) -> np.ndarray:
    return probs.max(1) >= threshold if np.isfinite(threshold) else np.zeros(len(probs), bool)


def agreement(this: Mapping[str, Mapping[str, np.ndarray]], other: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per task present in both, on the photos both scored."""
    out: dict[str, dict[str, Any]] = {}
    for task in this:
        if task not in other:
            continue
        a, b = this[task], other[task]
        index = {k: i for i, k in enumerate(b["keys"].tolist())}
        ia = [i for i, k in enumerate(a["keys"].tolist()) if k in index]
        ib = [index[a["keys"][i]] for i in ia]
        pa, pb, y = a["probs"][ia], b["probs"][ib], a["y"][ia]
        la, lb = pa.argmax(1), pb.argmax(1)
        either = _accepted(pa, float(a["threshold"])) | _accepted(pb, float(b["threshold"]))
        classes = a["classes"].tolist()
        ba = {n: float(classification_metrics(y, p, classes)["balanced_accuracy"]) for n, p in (("this", la), ("other", lb))}
        out[task] = {
            "photos": len(ia),
            "labels_equal": float(np.mean(la == lb)) if ia else float("nan"),
            "auto_accepted_by_either": int(either.sum()),
            "auto_accepted_equal": float(np.mean(la[either] == lb[either])) if either.any() else float("nan"),
            "max_probability_change": float(np.abs(pa - pb).max()) if ia else 0.0,
            "balanced_accuracy": ba["this"], "balanced_accuracy_other": ba["other"],
            "balanced_accuracy_change": ba["this"] - ba["other"],
        }
    return out


def agreement_lines(result: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [f"  {t:<7} labels equal {r['labels_equal']:.2%} of {r['photos']}; auto-accepted by either: {r['auto_accepted_equal']:.2%} "
            f"of {r['auto_accepted_by_either']}; balanced accuracy {r['balanced_accuracy_other']:.4f} -> {r['balanced_accuracy']:.4f} "
            f"({r['balanced_accuracy_change']:+.4f}); max probability change {r['max_probability_change']:.3f}" for t, r in result.items()]
