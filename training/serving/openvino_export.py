"""SavedModel graphs -> OpenVINO IR, for the ``cpu-openvino`` target.

The IR is converted by ``openvino.convert_model`` from the very SavedModel the ``cpu`` target
serves (uint8 ``image`` in, the cast and VGG16's mean subtraction inside), weights kept in
float32 (``compress_to_fp16=False``): the precision is chosen when the model is compiled
(``INFERENCE_PRECISION_HINT``), or by quantizing the IR (training/serving/quantize.py, int8).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.errors import ModelsError
from training.serving.servables import Servable

IO = dict[str, tuple[str, tuple[int, ...]]]
OV_DTYPES = {"u8": "uint8", "f32": "float32"}


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise ModelsError("the cpu-openvino target needs OpenVINO: pip install -e '.[ml]'") from None
    return ov


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bfloat16 (AVX512_BF16 or AMX) on this machine."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose_precision(requested: str | None, log: Callable[[str], None] = print) -> str:
    """``requested``, or bf16 where the CPU has it and f32 where not (one line says which and why)."""
    ov = _openvino()
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    name = core.get_property("CPU", "FULL_DEVICE_NAME")
    if requested is None:
        if "BF16" in caps:
            log(f"precision: bf16 (default; OpenVINO {ov.get_version().split('-')[0]} reports BF16 on {name})")
            return "bf16"
        log(f"precision: f32 (this CPU, {name}, has no native bf16 in OpenVINO's capabilities {caps}; bf16 would be emulated)")
        return "f32"
    if requested in ("bf16", "int8") and "BF16" not in caps:
        log(f"precision: {requested} requested; {name} has no native bf16, so the float parts run in f32")
    else:
        log(f"precision: {requested} (OpenVINO {ov.get_version().split('-')[0]} on {name})")
    return requested


def convert_savedmodel(saved_model: Path) -> Any:
    """The SavedModel's ``serving_default`` as an ``openvino.Model`` (tensor names kept)."""
    return _openvino().convert_model(str(saved_model))


def save_ir(model: Any, path: Path) -> Path:
    """``model.xml`` + ``model.bin``, float weights kept in float32."""
    _openvino().save_model(model, str(path), compress_to_fp16=False)
    return path


def export_openvino(servable: Servable, path: Path, export_savedmodel: Callable[[Servable, Path], Path],
                    transform: Callable[[Any], Any] | None = None) -> Path:
    """Convert ``servable`` (exported as its SavedModel first) to the IR at ``path``; check names and shapes.

    ``transform``: applied to the converted model before saving (int8: NNCF's quantization).
    """
    tmp = Path(tempfile.mkdtemp(prefix="autolabel-ov-"))
    try:
        model = convert_savedmodel(export_savedmodel(servable, tmp / "model.savedmodel"))
        if transform is not None:
            model = transform(model)
        save_ir(model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    servable.check_converted(path, "OpenVINO", *openvino_io(path))
    return path


def openvino_io(path: Path) -> tuple[IO, IO]:
    """{name: (dtype, dims without batch)} of an IR's inputs and outputs (read, not compiled)."""
    model = _openvino().Core().read_model(str(path))

    def spec(ports: Any) -> IO:
        out: IO = {}
        for p in ports:
            shape = p.get_partial_shape()
            dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
            names = sorted(p.get_names()) or [p.get_any_name()]
            name = next((n for n in names if ":" not in n), names[0])  # the signature's name, not a TF op's
            out[name] = (OV_DTYPES.get(p.get_element_type().get_type_name(), f"ov:{p.get_element_type()}"), dims[1:])
        return out

    return spec(model.inputs), spec(model.outputs)
