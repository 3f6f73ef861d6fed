"""One servable written into a repository version folder: a SavedModel, or OpenVINO IR / ONNX converted from one (:func:`export_model`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.serving.openvino_build import converts_to_openvino
from training.serving.servables import Servable
from training.serving.triton_config import MODEL_FILE

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
OPENVINO_MODEL = Path(__file__).with_name("triton_openvino_model.py")


def export_savedmodel(servable: Servable, path: Path) -> Path:
    """Write ``servable`` as a SavedModel with one ``serving_default`` signature.

    A plain ``tf.Module`` holding each TensorFlow variable once (Keras' ExportArchive
    stores the VGG16 weights twice: 113 MB instead of 57 MB per model).
    """
    import tensorflow as tf

    module = tf.Module()
    seen: dict[int, Any] = {}
    for obj in servable.tracked:
        for v in obj.weights:
            tv = getattr(v, "value", v)
            seen.setdefault(id(tv), tv)
    module.model_variables = list(seen.values())
    module.serve = tf.function(servable.named_fn(), input_signature=servable.tf_signature())
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
    return path


def export_model(s: Servable, version_dir: Path, target: str, transform: Callable[[Any], Any] | None = None) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    if converts_to_openvino(s, target):
        from training.serving.openvino_export import export_openvino

        export_openvino(s, version_dir / MODEL_FILE[target], export_savedmodel, transform)
        shutil.copyfile(OPENVINO_MODEL, version_dir / "model.py")
        return
    if target == "gpu-onnx":
        from training.serving.onnx_export import export_onnx

        export_onnx(s, version_dir / MODEL_FILE[target])
        return
    export_savedmodel(s, version_dir / "model.savedmodel")
    if target in ("cpu", "cpu-openvino"):
        shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
