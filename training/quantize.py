"""int8 for the ``cpu-openvino`` target: NNCF post-training quantization of the backbone, guarded.

- Calibration photos come from the **training** part of the committed split only
  (``models/split.json``): a seeded sample of a few hundred (:func:`calibration_keys`);
  :func:`check_calibration` refuses a set that is too small or has photos of another part.
- The quantized backbone is checked on validation photos at build time: each task's balanced
  accuracy with the served heads, float32 backbone against int8 (the same photos, so the
  change is paired). A drop of more than ``max_drop`` (0.01) on any task refuses the build,
  unless forced (then a loud warning says by how much).

Only the backbone is quantized (the `autolabel` ensemble's one image pass, the one that is
checked); the standalone task models of an int8 build stay in bf16 (f32 without it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.errors import ModelsError
from training.metrics import classification_metrics

MIN_CALIBRATION = 200  # below this NNCF's ranges are noisy (its default subset is 300)
DEFAULT_CALIBRATION = 300
DEFAULT_CHECK = 600
MAX_DROP = 0.01
CALIBRATION_PART = "train"

Heads = Mapping[str, tuple[Sequence[str], Callable[[np.ndarray], np.ndarray]]]  # task -> (classes, features -> probs)


class CalibrationError(ModelsError):
    """The calibration set cannot be used (too small, or photos from outside the training part)."""


class QuantizationRefused(ModelsError):
    """The int8 backbone lost more balanced accuracy on validation than allowed."""


def calibration_keys(split: Any, n: int = DEFAULT_CALIBRATION, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` photos of the split's training part (over every task)."""
    train = sorted({k for t in split.tasks for k in split.keys(t, CALIBRATION_PART)})
    return sorted(random.Random(seed).sample(train, min(n, len(train))))


def check_calibration(keys: Sequence[str], split: Any, minimum: int = MIN_CALIBRATION) -> None:
    """Raise :class:`CalibrationError` if ``keys`` are fewer than ``minimum`` or not all of the training part."""
    if len(keys) < minimum:
        raise CalibrationError(f"calibration set too small: {len(keys)} photos, at least {minimum} needed")
    part_of = split.part_of()
    wrong: dict[str, int] = {}
    for k in keys:
        part = part_of.get(k, "none (not in the split)")
        if part != CALIBRATION_PART:
            wrong[part] = wrong.get(part, 0) + 1
    if wrong:
        where = ", ".join(f"{n} from {p}" for p, n in sorted(wrong.items()))
        raise CalibrationError(f"calibration photos must all come from the {CALIBRATION_PART} part of the split: {where}")


@dataclass
class QuantizationCheck:
    """Per task: validation balanced accuracy with the float32 and the int8 backbone, and the photos scored."""

    photos: int
    float32: dict[str, float] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def change(self) -> dict[str, float]:
        return {t: self.int8[t] - self.float32[t] for t in self.float32}

    def lines(self) -> list[str]:
        return [f"  {t:<7} balanced accuracy {self.float32[t]:.4f} (f32) -> {self.int8[t]:.4f} (int8): {d:+.4f} on {self.rows[t]} photos"
                for t, d in self.change().items()]

    def to_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, "rows": self.rows, "float32": self.float32, "int8": self.int8, "change": self.change()}


def _features(compiled: Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([compiled(images[i:i + batch])[0] for i in range(0, len(images), batch)])


def check_quantized(reference: Any, quantized: Any, images: np.ndarray, labels: Mapping[str, np.ndarray], heads: Heads,
                    precision_hint: str = "bf16") -> QuantizationCheck:
    """Score ``heads`` on the features of both backbones (``openvino.Model``); ``labels[task]``: class index, -1 unknown."""
    import openvino as ov

    core = ov.Core()
    ref = _features(core.compile_model(reference, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), images)
    q = _features(core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": precision_hint}), images)
    out = QuantizationCheck(len(images))
    for task, (classes, head) in heads.items():
        y = labels[task]
        keep = y >= 0
        out.rows[task] = int(keep.sum())
        for name, feats in (("float32", ref), ("int8", q)):
            pred = np.argmax(head(feats[keep]), axis=1)
            getattr(out, name)[task] = float(classification_metrics(y[keep], pred, classes)["balanced_accuracy"])
    return out


FLOAT_TAIL = 4  # block4_conv3 and block5 of VGG16: the layers the readout reads (block4_pool, block5_conv3); ~15 % of the FLOPs


def quantize_backbone(model: Any, calibration: np.ndarray, float_tail: int = FLOAT_TAIL) -> Any:
    """NNCF post-training quantization (its defaults for a CNN: symmetric int8, fast bias correction), the last
    ``float_tail`` convolutions left in float. Quantizing all 13 lost 0.0146 of season's balanced accuracy on validation,
    leaving block5 float 0.0116 (both refused; docs/benchmarks.md, "OpenVINO")."""
    import nncf

    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    ignored = nncf.IgnoredScope(names=convs[len(convs) - float_tail:]) if float_tail and len(convs) > float_tail else None
    data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    return nncf.quantize(model, data, subset_size=len(calibration), **({"ignored_scope": ignored} if ignored else {}))


@dataclass
class Int8Backbone:
    """The build's quantizer: calibrate, quantize, check on validation, refuse or warn."""

    calibration: np.ndarray  # uint8 photos of the training part, already checked (:func:`check_calibration`)
    check_images: np.ndarray  # uint8 validation photos
    check_labels: Mapping[str, np.ndarray]  # task -> class index per check photo (-1: no label)
    max_drop: float = MAX_DROP
    force: bool = False
    log: Callable[[str], None] = print
    result: QuantizationCheck | None = None

    def __call__(self, model: Any, heads: Heads, precision_hint: str) -> Any:
        import time

        t0 = time.monotonic()
        quantized = quantize_backbone(model, self.calibration)
        self.log(f"int8: NNCF quantized the backbone on {len(self.calibration)} training photos in {time.monotonic() - t0:.0f}s; "
                 f"checking on {len(self.check_images)} validation photos")
        self.result = check_quantized(model, quantized, self.check_images, self.check_labels, heads, precision_hint)
        for line in self.result.lines():
            self.log(line)
        worst = {t: d for t, d in self.result.change().items() if d < -self.max_drop}
        if worst:
            what = ", ".join(f"{t} {d:+.4f}" for t, d in worst.items())
            if not self.force:
                raise QuantizationRefused(f"int8 loses more than {self.max_drop} balanced accuracy on validation ({what}): "
                                          "not built (calibrate on more photos, use --precision bf16, or --force-int8 to build it anyway)")
            self.log(f"WARNING: int8 loses more than {self.max_drop} balanced accuracy on validation ({what}); built anyway (--force-int8)")
        return quantized
