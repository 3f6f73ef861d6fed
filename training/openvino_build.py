"""What `models build` decides for the ``cpu-openvino`` target (training/export.py calls these)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from training.servables import Servable


def converts_to_openvino(s: Servable, target: str) -> bool:
    """cpu-openvino converts the image models (backbone, standalone tasks); the small heads, and anything
    that reads the title (TensorFlow string ops), stay SavedModels run by TensorFlow."""
    return target == "cpu-openvino" and s.input_name == "image" and not s.title


def precisions(target: str, requested: str | None, log: Callable[[str], None]) -> tuple[str, str]:
    """(the build's precision, the one of its unquantized image models): int8 quantizes the backbone only,
    the other image models run in bf16 where the CPU has it (else f32)."""
    if target != "cpu-openvino":
        return "f32", "f32"
    from training.openvino_export import choose_precision, cpu_has_bf16

    precision = choose_precision(requested, log)
    return precision, ("bf16" if cpu_has_bf16() else "f32") if precision == "int8" else precision


def feature_heads(graphs: Any) -> dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]]:
    """Per shared task: its classes and features (numpy) -> served probabilities (photo only), for the int8 check."""
    import tensorflow as tf

    from training.servables import head_fns

    fns = head_fns(graphs, with_title=False)
    return {t: (tuple(graphs.models.tasks[t].classes), lambda f, fn=fn: fn(tf.constant(f))["probs"].numpy()) for t, fn in fns.items()}


def build_info(target: str, precision: str, quantize: Any) -> dict[str, Any]:
    """The cpu-openvino entries of autolabel-build.json: precision, OpenVINO's version, the int8 check's figures."""
    if target != "cpu-openvino":
        return {}
    import openvino as ov

    result = getattr(quantize, "result", None)
    return {"precision": precision, "openvino": ov.get_version(), **({"int8_check": result.to_dict()} if result is not None else {})}
