"""SavedModel graphs -> ONNX with tf2onnx, for the ``gpu-onnx`` target (ONNX Runtime backend).

tf2onnx names the ONNX graph's inputs and outputs after the serving function's argument and
output keys, so the names are the Triton contract's (``image``, ``features``, ``probs`` ...);
:func:`export_onnx` checks that, and ``onnx_io`` reads them back for config validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.serving_models import ModelsError, Servable

OPSET = 17
ONNX_DTYPES = {1: "float32", 2: "uint8"}  # onnx.TensorProto elem types we serve


def export_onnx(servable: Servable, path: Path, opset: int = OPSET) -> Path:
    """Convert ``servable`` (the same graph as its SavedModel) to ``path``."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise ModelsError(f"the gpu-onnx target needs tf2onnx and onnx ({exc.name} missing): pip install -e '.[ml]'") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    fn = tf.function(servable.named_fn(), input_signature=servable.tf_signature())
    tf2onnx.convert.from_function(fn, input_signature=servable.tf_signature(), opset=opset, output_path=str(path))
    got_in, got_out = onnx_io(path)
    want_in = {servable.input_name: (servable.input_dtype, servable.input_shape)}
    want_out = {n: ("float32", s) for n, s in servable.outputs.items()}
    if got_in != want_in or got_out != want_out:
        raise ModelsError(f"{path}: tf2onnx produced inputs {got_in}, outputs {got_out}; expected {want_in}, {want_out}")
    return path


def onnx_io(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...]]]]:
    """{name: (dtype, dims without batch)} of an ONNX model's graph inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(values) -> dict[str, tuple[str, tuple[int, ...]]]:  # noqa: ANN001
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out[v.name] = (ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"), dims[1:])
        return out

    inits = {i.name for i in model.graph.initializer}
    return spec(i for i in model.graph.input if i.name not in inits), spec(model.graph.output)
