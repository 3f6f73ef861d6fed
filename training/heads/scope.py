"""The scope gate: is the photo a product the heads were trained for? If not, every label goes to review.

The heads were trained on apparel; on shoes and bags they are confidently wrong (gender right
44 % of the time on test footwear, yet accepted at the 0.50 gender threshold). The gate is a
logistic regression on the same readout vector the heads read (one backbone pass, a 4096 x 2
layer more), trained on the honest split's training part: in scope = the training categories
(Apparel), out of scope = every other category of the catalog. Its threshold on
``P(out of scope)`` is chosen on validation so that at most ``max_false_flags`` (1 %) of
in-scope photos are flagged; the worker then sends every label of a flagged photo to review
and says why in the label event (``scope``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.settings import SCOPE_CLASSES as CLASSES

SCOPE_HEAD = "heads/scope.keras"  # under the models folder
STRENGTHS = (0.001, 0.01, 0.1)  # logistic regression C, chosen on validation
MAX_FALSE_FLAGS = 0.01  # share of in-scope validation photos the threshold may flag
OUT_ROWS = {"train": 3000, "val": 1200, "test": 1200}  # out-of-scope photos per part (a seeded sample: features cost)


@dataclass
class ScopeGate:
    """``P(out of scope) = sigmoid(x @ weights + bias)`` on the raw readout (standardisation folded in)."""

    weights: np.ndarray  # [dims]
    bias: float
    threshold: float  # flag when P(out of scope) > threshold
    strength: float

    def p_out(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ self.weights + self.bias)))

    def keras_head(self) -> Any:
        """features -> softmax ``[P(in scope), P(out of scope)]``: the same function as :meth:`p_out`."""
        import keras

        dims = len(self.weights)
        inputs = keras.Input(shape=(dims,), name="features")
        dense = keras.layers.Dense(2, activation="softmax", name="probs")
        outputs = dense(inputs)
        half = (self.weights / 2).astype(np.float32)
        dense.set_weights([np.stack([-half, half], axis=1), np.array([-self.bias / 2, self.bias / 2], np.float32)])
        return keras.Model(inputs, outputs, name="scope")


def budget_threshold(p_in_val: np.ndarray, max_false_flags: float) -> float:
    """The smallest cut on P(out of scope) above which at most ``max_false_flags`` of the in-scope validation photos lie."""
    return float(np.quantile(p_in_val, 1.0 - max_false_flags, method="higher"))


def fit_gate(x: np.ndarray, out: np.ndarray, parts: Mapping[str, np.ndarray], max_false_flags: float = MAX_FALSE_FLAGS) -> ScopeGate:
    """``x`` readout rows, ``out`` True where out of scope, ``parts[part]`` row indices. C is chosen on validation:
    the most out-of-scope photos caught at the threshold that flags ``max_false_flags`` of in-scope ones."""
    from sklearn.linear_model import LogisticRegression

    tr, va = parts["train"], parts["val"]
    for name, idx in (("training", tr), ("validation", va)):
        if not out[idx].any() or out[idx].all():
            raise ValueError(f"the {name} part needs photos in scope and out of scope (has {int(out[idx].sum())} of {len(idx)} out)")
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = (x - mean) / std
    best: tuple[float, ScopeGate] | None = None
    for c in STRENGTHS:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(z[tr], out[tr])
        w = lr.coef_[0] / std
        gate = ScopeGate(w, float(lr.intercept_[0] - (mean / std) @ lr.coef_[0]), 0.0, c)
        p = gate.p_out(x[va])
        gate.threshold = budget_threshold(p[~out[va]], max_false_flags)
        caught = float((p[out[va]] > gate.threshold).mean())
        if best is None or caught > best[0]:
            best = (caught, gate)
    assert best is not None
    return best[1]


def gate_metrics(gate: ScopeGate, x: np.ndarray, out: np.ndarray, categories: Sequence[str], rows: np.ndarray) -> dict[str, Any]:
    """Of ``rows``: the in-scope share flagged, the out-of-scope share caught, and caught per category."""
    flagged = gate.p_out(x[rows]) > gate.threshold
    o = out[rows]
    cats = np.asarray(categories)[rows]
    per = {str(c): round(float(flagged[o & (cats == c)].mean()), 4) for c in sorted(set(cats[o]))}
    return {"in_scope": int((~o).sum()), "out_of_scope": int(o.sum()),
            "in_scope_flagged": round(float(flagged[~o].mean()), 4) if (~o).any() else None,
            "out_of_scope_caught": round(float(flagged[o].mean()), 4) if o.any() else None, "caught_by_category": per}


def _rows(dataset: Any, split: Any, in_scope: set[str], seed: int) -> tuple[list[Any], dict[str, str]]:
    """Every in-scope row of the split and a seeded sample of the others (:data:`OUT_ROWS` per part)."""
    part_of = split.part_of()
    chosen, rng = [], random.Random(seed)
    outside: dict[str, list[Any]] = {p: [] for p in OUT_ROWS}
    for s in dataset.samples:
        if s.key not in part_of:
            continue
        (chosen.append(s) if s.meta.get("category", "").lower() in in_scope else outside[part_of[s.key]].append(s))
    for p, n in OUT_ROWS.items():
        rows = sorted(outside[p], key=lambda s: s.key)
        rng.shuffle(rows)
        chosen += rows[:n]
    return chosen, part_of


def train_scope(models_dir: Path, dataset: Any, split: Any, cache_dir: Path, command: str, in_scope: Sequence[str] = ("Apparel",),
                max_false_flags: float = MAX_FALSE_FLAGS, seed: int = 0, progress: bool = True) -> tuple[ScopeGate, dict[str, Any]]:
    """Fit the gate on the readout of ``models_dir``'s backbone; write heads/scope.keras and the manifest's ``scope``."""
    from training.features.backbones import cut_layer
    from training.heads.joint import cut_features
    from training.manifest.read import read_models
    from training.heads.per_task import addon_version

    wanted = {c.lower() for c in in_scope}
    chosen, part_of = _rows(dataset, split, wanted, seed)
    cats = {s.meta.get("category", "") for s in chosen}
    if not any(c.lower() in wanted for c in cats) or all(c.lower() in wanted for c in cats):
        raise ValueError(f"the data needs rows in {sorted(in_scope)} and rows outside (categories found: {sorted(cats)})")
    models = read_models(models_dir)
    feats = cut_features(replace(dataset, samples=chosen), models.backbone, cut_layer(models.backbone.name, 1), cache_dir,
                         keep_maps=False, progress=progress)
    categories = [s.meta.get("category", "") for s in feats.samples]
    out = np.array([c.lower() not in wanted for c in categories])
    parts = {p: np.array([i for i, s in enumerate(feats.samples) if part_of[s.key] == p], np.int64) for p in OUT_ROWS}
    gate = fit_gate(feats.readout, out, parts, max_false_flags)
    metrics = {p: gate_metrics(gate, feats.readout, out, categories, idx) for p, idx in parts.items() if len(idx)}
    gate.keras_head().save(models_dir / SCOPE_HEAD)
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["scope"] = {"head": SCOPE_HEAD, "classes": list(CLASSES), "in_scope": list(in_scope), "threshold": round(gate.threshold, 6),
                         "max_false_flags": max_false_flags, "strength": gate.strength, "chosen_on": "val",
                         "trained_with": command, "metrics": metrics}
    manifest["model_version"] = addon_version(models_dir / SCOPE_HEAD)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return gate, metrics


def previous_gate(models_dir: Path) -> str | None:
    """Before a retraining replaces ``models_dir``'s manifest (and with it the gate, fitted on the old
    readout): the command that refits its scope gate, or None where it has none."""
    return refit_command(models_dir, "scope", "autolabel train-scope --data KIND:PATH")


def refit_command(models_dir: Path, key: str, default: str) -> str | None:
    """The ``trained_with`` command of the manifest's add-on record ``key`` (``default`` if unrecorded); None without one."""
    path = Path(models_dir) / "manifest.json"
    try:
        entry = json.loads(path.read_text()).get(key) if path.is_file() else None
    except (ValueError, AttributeError):
        return None
    return (entry.get("trained_with") or default) if isinstance(entry, dict) else None


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    def share(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    lines = ["part   in-scope flagged   out-of-scope caught   by category"]
    for p, m in metrics.items():
        per = ", ".join(f"{c} {v:.1%}" for c, v in m["caught_by_category"].items())
        lines.append(f"{p:6s} {share(m['in_scope_flagged']):>8} of {m['in_scope']:<6d} {share(m['out_of_scope_caught']):>8} of "
                     f"{m['out_of_scope']:<6d}  {per}")
    return "\n".join(lines)
