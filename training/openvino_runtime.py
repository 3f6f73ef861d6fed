"""Running a ``cpu-openvino`` repository's IR models in process (evaluate, benchmarks), compiled as Triton runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def compile_properties(params: dict[str, str], bf16: bool) -> dict[str, object]:
    """OpenVINO compile properties from a config's ``ov_*`` parameters, as the served model.py sets them
    (training/triton_openvino_model.py, which stands alone in the repository, does the same)."""
    precision = params.get("ov_precision", "f32") or "f32"
    hint = "bf16" if precision in ("bf16", "int8") and bf16 else "f32"
    streams = max(1, int(params.get("ov_streams", "1") or 1))
    props: dict[str, object] = {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": streams,
                                "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
    if int(params.get("ov_threads", "0") or 0):
        props["INFERENCE_NUM_THREADS"] = int(params["ov_threads"])
    return props


def ir_file(model_dir: Path) -> Path | None:
    """The newest version's ``model.xml`` of a repository model folder, if it is an OpenVINO one."""
    versions = sorted((p for p in model_dir.glob("*/model.xml") if p.parent.name.isdigit()), key=lambda p: int(p.parent.name))
    return versions[-1] if versions else None


def openvino_runner(model_dir: Path) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int], str]:
    """(uint8 images -> the model's one output, input (H, W), what runs it) for an IR model folder of the repository."""
    import openvino as ov

    from training.evaluate import read_config_parameters
    from training.openvino_export import cpu_has_bf16

    xml = ir_file(model_dir)
    if xml is None:
        raise FileNotFoundError(f"{model_dir}: no <version>/model.xml")
    params = read_config_parameters(model_dir / "config.pbtxt")
    props = compile_properties(params, cpu_has_bf16())
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", props)
    request = compiled.create_infer_request()
    streams = int(props["NUM_STREAMS"])  # type: ignore[call-overload]
    queue = ov.AsyncInferQueue(compiled, streams) if streams > 1 else None
    shape = compiled.input(0).get_partial_shape()
    size = (shape[1].get_length(), shape[2].get_length())

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.uint8)
        if queue is None or len(x) < 2:
            return np.array(request.infer({0: x})[0])
        parts = np.array_split(np.arange(len(x)), min(streams, len(x)))  # as the served model.py: one part per stream
        got: dict[int, np.ndarray] = {}
        queue.set_callback(lambda r, i: got.__setitem__(i, np.array(r.get_output_tensor(0).data)))
        for i, idx in enumerate(parts):
            queue.start_async({0: x[idx[0]:idx[-1] + 1]}, i)
        queue.wait_all()
        return np.concatenate([got[i] for i in range(len(parts))])

    return run, size, f"OpenVINO {params.get('ov_precision', 'f32')} ({props['INFERENCE_PRECISION_HINT']})"


def image_runner(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]:
    """uint8 images -> the model's output, and its input (H, W), for a repository model file: a version's
    ``model.savedmodel`` (TensorFlow) or ``model.xml`` (OpenVINO, compiled as served)."""
    if path.suffix == ".xml":
        run, size, _ = openvino_runner(path.parent.parent)
        return run, size
    from training.evaluate import _runner, _savedmodel

    sig, i, o, shape = _savedmodel(path)
    return _runner(sig, i, o), (int(shape[1]), int(shape[2]))
