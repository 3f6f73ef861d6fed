"""`autolabel train-scope`'s work: the scope gate fitted on a models folder's readout, written beside its heads."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.settings import SCOPE_CLASSES as CLASSES
from training.features.readout import served_readout
from training.heads.scope import MAX_FALSE_FLAGS, OUT_ROWS, SCOPE_HEAD, ScopeGate, fit_gate, gate_metrics
from training.manifest.folder import load_manifest, manifest_file, save_manifest


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
    from training.manifest.read import read_models
    from training.manifest.write import addon_version

    wanted = {c.lower() for c in in_scope}
    chosen, part_of = _rows(dataset, split, wanted, seed)
    cats = {s.meta.get("category", "") for s in chosen}
    if not any(c.lower() in wanted for c in cats) or all(c.lower() in wanted for c in cats):
        raise ValueError(f"the data needs rows in {sorted(in_scope)} and rows outside (categories found: {sorted(cats)})")
    models = read_models(models_dir)
    feats = served_readout(models, replace(dataset, samples=chosen), cache_dir, progress=progress)
    categories = [s.meta.get("category", "") for s in feats.samples]
    out = np.array([c.lower() not in wanted for c in categories])
    parts = {p: np.array([i for i, s in enumerate(feats.samples) if part_of[s.key] == p], np.int64) for p in OUT_ROWS}
    gate = fit_gate(feats.readout, out, parts, max_false_flags)
    metrics = {p: gate_metrics(gate, feats.readout, out, categories, idx) for p, idx in parts.items() if len(idx)}
    gate.keras_head().save(models_dir / SCOPE_HEAD)
    manifest = load_manifest(models_dir)
    manifest["scope"] = {"head": SCOPE_HEAD, "classes": list(CLASSES), "in_scope": list(in_scope), "threshold": round(gate.threshold, 6),
                         "max_false_flags": max_false_flags, "strength": gate.strength, "chosen_on": "val",
                         "trained_with": command, "metrics": metrics}
    manifest["model_version"] = addon_version(models_dir / SCOPE_HEAD)
    save_manifest(models_dir, manifest)
    return gate, metrics



def previous_gate(models_dir: Path) -> str | None:
    """Before a retraining replaces ``models_dir``'s manifest (and with it the gate, fitted on the old
    readout): the command that refits its scope gate, or None where it has none."""
    return refit_command(models_dir, "scope", "autolabel train-scope --data KIND:PATH")



def refit_command(models_dir: Path, key: str, default: str) -> str | None:
    """The ``trained_with`` command of the manifest's add-on record ``key`` (``default`` if unrecorded); None without one."""
    path = manifest_file(models_dir)
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
