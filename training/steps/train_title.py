"""`autolabel train-title`'s work: the served image logits of a dataset, the title models fitted on them, written beside the heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.features.text import TextConfig
from training.heads.calibration import DEFAULT_TARGET_PRECISION
from training.heads.title import TITLE_FILE, TitleModel, fit_title_model
from training.manifest.folder import load_manifest, save_manifest
from training.manifest.write import manifest_entry


def image_logits(models_dir: Path, dataset: Any, cache_dir: Path, progress: bool = True) -> tuple[list[Any], dict[str, np.ndarray]]:
    """The served image model's calibrated logits for every readable sample: (samples, task -> logits).

    The readout vectors come from the cut cache through the tuned top block (cached too)."""
    import keras

    from training.features.readout import served_readout
    from training.heads.joint import logits_of
    from training.manifest.read import read_models

    models = read_models(models_dir, tuple(t for t in dataset.tasks))
    feats = served_readout(models, dataset, cache_dir, progress=progress)
    out = {}
    for task, entry in models.tasks.items():
        head = keras.models.load_model(entry.head, compile=False)
        scale = float(head.get_layer("temperature").scale)
        out[task] = logits_of(head, feats.readout) * scale  # logits / temperature
    return feats.samples, out



def train_title(models_dir: Path, dataset: Any, split: Any, cache_dir: Path, command: str, text: TextConfig | None = None,
                target_precision: float = DEFAULT_TARGET_PRECISION, progress: bool = True) -> tuple[TitleModel, dict[str, int]]:
    """Fit the title models on ``split`` beside the image heads in ``models_dir``; write them and the manifest entry.

    Returns the model and, per task, how many training rows had a title."""

    from training.data.split import PARTS

    manifest = load_manifest(models_dir)
    samples, logits = image_logits(models_dir, dataset, cache_dir, progress)
    titles = [s.title for s in samples]
    row = {s.key: i for i, s in enumerate(samples)}
    labels, parts, classes = {}, {}, {}
    for task in logits:
        classes[task] = dataset.classes[task]
        labels[task] = np.array([classes[task].index(s.label(task)) if s.label(task) in classes[task] else -1 for s in samples])
        parts[task] = {p: np.array(sorted(row[k] for k in split.keys(task, p) if k in row and labels[task][row[k]] >= 0 and titles[row[k]]),
                                   np.int64) for p in PARTS}
    thresholds = {t: (manifest["tasks"][t].get("threshold") or {}).get("threshold") for t in logits}
    model = fit_title_model(titles, logits, labels, parts, classes, text or TextConfig(), target_precision, thresholds)
    from training.manifest.write import addon_version

    model.save(models_dir / TITLE_FILE)
    manifest["title"] = manifest_entry(model, command)
    manifest["model_version"] = addon_version(models_dir / TITLE_FILE)  # the served model changed: label events and `relabel` tell them apart
    save_manifest(models_dir, manifest)
    return model, {t: len(p["train"]) for t, p in parts.items()}
