"""The photos int8 needs (training/quantize.py): calibration from the split's training part, the check from validation."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from training.quantize import DEFAULT_CALIBRATION, DEFAULT_CHECK, MAX_DROP, MIN_CALIBRATION, Int8Backbone, calibration_keys, check_calibration


def _photos(samples: Sequence[object], size: tuple[int, int], resize: str) -> tuple[np.ndarray, list[object]]:
    from services.errors import BadInput
    from services.images import prepare

    images, kept = [], []
    for s in samples:
        try:
            images.append(prepare(s.path.read_bytes(), size, resize))  # type: ignore[attr-defined, arg-type]
            kept.append(s)
        except (OSError, BadInput):
            continue
    return (np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)), kept


def int8_backbone(data: str, split_file: Path, size: tuple[int, int], resize: str, classes: Mapping[str, Sequence[str]], *,
                  calibration: int = DEFAULT_CALIBRATION, check: int = DEFAULT_CHECK, seed: int = 0, max_drop: float = MAX_DROP,
                  force: bool = False, minimum: int = MIN_CALIBRATION, log: Callable[[str], None] = print) -> Int8Backbone:
    """Load ``data`` (``KIND:PATH``), draw the calibration photos (checked) and the validation photos of the check."""
    from training.datasets import load
    from training.evaluate import in_scope
    from training.split import Split

    split = Split.load(split_file)
    keys = calibration_keys(split, calibration, seed)
    check_calibration(keys, split, minimum)
    ds = load(data, progress=False)
    by_key = {s.key: s for s in ds.samples}
    cal, _ = _photos([by_key[k] for k in keys if k in by_key], size, resize)
    check_calibration(keys[:len(cal)], split, minimum)  # the photos that could be read are still enough
    val = sorted({k for t in split.tasks for k in split.keys(t, "val")} & set(by_key))
    val = [k for k in val if in_scope(by_key[k], "apparel-mw")]  # the headline rows (docs/accuracy.md)
    chosen = sorted(random.Random(seed + 1).sample(val, min(check, len(val))))
    images, kept = _photos([by_key[k] for k in chosen], size, resize)
    labels = {t: np.array([list(c).index(s.label(t)) if s.label(t) in c else -1 for s in kept])  # type: ignore[attr-defined]
              for t, c in classes.items()}
    log(f"int8: calibration {len(cal)} photos of the training part of {split_file} (seed {seed}); check {len(images)} validation photos")
    return Int8Backbone(cal, images, labels, max_drop=max_drop, force=force, log=log)
