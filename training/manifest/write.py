"""The models folder, written: the per-task and joint manifests, head files, versions (git, add-on digests) and the title record."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.features.backbones import top_block_prefixes as top_prefixes
from training.heads.joint import JointConfig, JointResult
from training.heads.per_task import TaskResult, TrainConfig
from training.heads.title import TITLE_FILE, TitleModel
from training.manifest.folder import load_manifest, manifest_file, save_manifest

TUNED_FILE = "backbone/tuned-layers.npz"  # under the models folder: only the fine-tuned layers (committed)
MANIFEST_FORMAT = 1
BACKBONES_DIR = "backbones"  # fine-tuned backbone weights, under the models folder (git-ignored: ~59 MB for VGG16)


def write_joint_models(result: JointResult, cfg: JointConfig, out_dir: Any, data_source: str, command: str) -> Any:
    """heads/<task>.keras (calibrated), the tuned layers if any, and manifest.json (docs/model-repository.md)."""
    from pathlib import Path

    from training.features.backbones import save_tuned_layers, top_block_prefixes

    out_dir = Path(out_dir)
    (out_dir / "heads").mkdir(parents=True, exist_ok=True)
    spec = result.spec
    tuned = out_dir / TUNED_FILE
    if result.base is not None:
        save_tuned_layers(result.base, top_block_prefixes(spec.name, 1), tuned)
        spec = replace(spec, tuned=TUNED_FILE)
    elif tuned.is_file():
        tuned.unlink()
    tasks: dict[str, Any] = {}
    for t, o in result.outcomes.items():
        save_head(o.head, out_dir / "heads" / f"{t}.keras")
        tasks[t] = {
            "classes": list(o.classes),
            "head": f"heads/{t}.keras",
            "hidden": list(cfg.hidden), "dropout": cfg.dropout, "optimizer": "adam", "learning_rate": cfg.learning_rate,
            "epochs": cfg.epochs, "kept_epoch": o.history.best_epoch, "balance": "class_weight",
            "calibration": {"method": "temperature", "temperature": round(o.temperature, 6),
                            "ece_val": o.metrics["val"]["ece"], "ece_val_uncalibrated": o.metrics["val"]["ece_uncalibrated"]},
            "threshold": o.threshold.to_dict() | {"chosen_on": "val"},
            "trained_on": {"data": data_source, "train_rows": o.n_train},
            "metrics": {p: {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n", "ece")} | {"auto_accept": m["auto_accept"]}
                        for p, m in o.metrics.items() if p in ("val", "test")},
        }
    ft = None
    if result.fine_tune_history is not None:
        h = result.fine_tune_history
        ft = {"layers": [f"{p}*" for p in top_block_prefixes(spec.name, 1)], "epochs": cfg.fine_tune_epochs,
              "learning_rate": cfg.fine_tune_lr, "kept_epoch": h.best_epoch, "val_loss": h.val_loss, "jointly": list(result.outcomes)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_version": git_version(),
        "backbone": spec.to_dict(),
        "resize": "pad",
        "trained_with": {"command": command, "config": cfg.to_dict(), "photos": result.n_photos,
                         "seconds": round(result.seconds), **({"fine_tuned": ft} if ft else {})},
        "tasks": tasks,
    }
    return save_manifest(out_dir, manifest)


def git_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "nogit"
    return f"{datetime.now(timezone.utc):%Y.%m.%d}-{sha}"


def addon_version(addon: Path) -> str:
    """The model version after an add-on (title model, scope gate) was fitted beside trained heads:
    :func:`git_version` and a digest of the add-on's file, so two fits at one commit differ."""
    import hashlib

    return f"{git_version()}-{hashlib.sha256(Path(addon).read_bytes()).hexdigest()[:6]}"


def save_head(model: Any, path: Path) -> Path:
    """Save a head without its optimizer state (a third of the size; serving needs none)."""
    import keras

    clean = keras.Model.from_config(model.get_config())  # uncompiled: no optimizer variables
    clean.set_weights(model.get_weights())
    clean.save(path)
    return path


def fine_tuned_weights(task: str) -> str:
    """Where a task's fine-tuned backbone weights go, relative to the models folder."""
    return f"{BACKBONES_DIR}/{task}.weights.h5"


def write_models(
    results: Sequence[TaskResult], cfg: TrainConfig, out_dir: Path, data_source: str, rebuild: str | None = None
) -> Path:
    """Save heads and the manifest (docs/model-repository.md); tasks not retrained are kept.

    A fine-tuned task also gets its backbone weights (``backbones/<task>.weights.h5``) and a
    ``backbone`` + ``fine_tuned`` entry; ``rebuild`` is the command that retrains it (kept in
    the manifest: the weights file is too big to commit, a build without it says to run it)."""
    heads_dir = out_dir / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = manifest_file(out_dir)
    old: dict[str, Any] = load_manifest(out_dir) if manifest_path.is_file() else {}
    same_backbone = old.get("backbone") == cfg.backbone.to_dict() and old.get("resize") == cfg.resize
    tasks: dict[str, Any] = dict(old.get("tasks", {})) if same_backbone else {}
    for r in results:
        save_head(r.model, heads_dir / f"{r.task}.keras")
        own: dict[str, Any] = {}
        weights_file = out_dir / fine_tuned_weights(r.task)
        if r.fine_tune is not None and r.base is not None:
            weights_file.parent.mkdir(parents=True, exist_ok=True)
            r.base.save_weights(weights_file)
            hist = r.fine_tune_history
            own = {
                "backbone": {**cfg.backbone.to_dict(), "weights": f"file:{fine_tuned_weights(r.task)}"},
                "fine_tuned": {
                    **r.fine_tune.to_dict(),
                    "layers": [f"{p}*" for p in top_prefixes(cfg.backbone.name, r.fine_tune.blocks)],
                    "cut_layer": cfg.cut_layer,
                    "from_weights": cfg.backbone.weights,
                    "kept_epoch": hist.best_epoch if hist else r.fine_tune.epochs,
                    **({"rebuild": rebuild} if rebuild else {}),
                },
            }
        elif weights_file.is_file():
            weights_file.unlink()  # the task is back on the shared frozen base
        tasks[r.task] = {
            "classes": list(r.classes),
            "head": f"heads/{r.task}.keras",
            **{k: v for k, v in r.config.to_dict().items() if k in ("hidden", "dropout", "pooling", "optimizer", "learning_rate", "epochs")},
            "balance": r.balance,
            "trained_on": {"data": data_source, "train_rows": r.n_train, "augmented_rows": r.n_augmented},
            "metrics": {k: r.test[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")},
            **own,
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_version": git_version(),
        "backbone": cfg.backbone.to_dict(),
        "resize": cfg.resize,
        "tasks": {t: tasks[t] for t in sorted(tasks, key=lambda t: ("style", "gender", "season", t).index(t))},
    }
    save_manifest(out_dir, manifest)
    return manifest_path


def manifest_entry(model: TitleModel, command: str) -> dict[str, Any]:
    """The manifest's ``title`` record (docs/model-repository.md)."""
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "n", "ece", "auto_accept")
    return {
        "file": TITLE_FILE,
        "text": model.text.to_dict(),
        "method": "late fusion: a*image_logits + b*title_logits + c per class, fitted on val; image-only where the title has no words",
        "trained_with": command,
        "tasks": {t: {"strength": m.strength, "title_temperature": round(m.title_temperature, 6),
                      "fused_temperature": round(m.fused_temperature, 6),
                      "threshold": (m.threshold.to_dict() | {"chosen_on": "val"}) if m.threshold else None,
                      "metrics": {inputs: {p: {k: v for k, v in pm.items() if k in keep} for p, pm in parts.items()}
                                  for inputs, parts in m.metrics.items()}}
                  for t, m in model.tasks.items()},
    }
