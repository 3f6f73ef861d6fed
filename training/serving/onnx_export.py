"""SavedModel graphs -> ONNX with tf2onnx, for the ``gpu-onnx`` target (ONNX Runtime backend).

The ONNX graph's input and outputs are renamed to the Triton contract's names (``image``,
``features``, ``probs`` ...) and checked; ``onnx_io`` reads them back for config validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.errors import ModelsError
from training.serving.servables import Servable

OPSET = 17
ONNX_DTYPES = {1: "float32", 2: "uint8"}  # onnx.TensorProto elem types we serve


def export_onnx(servable: Servable, path: Path, opset: int = OPSET) -> Path:
    """Convert ``servable`` (the same graph as its SavedModel) to ``path``.

    The function is frozen first (variables *and* captured constants, such as VGG16's
    mean pixel, become graph constants: ``tf2onnx.convert.from_function`` would leave the
    captured constant as an extra graph input), then converted and its tensors renamed.
    """
    try:
        import tensorflow as tf
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError as exc:
        raise ModelsError(f"the gpu-onnx target needs tf2onnx and onnx ({exc.name} missing): pip install -e '.[ml]'") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    concrete = tf.function(servable.named_fn(), input_signature=servable.tf_signature()).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    key_of = {t.name: k for k, t in concrete.structured_outputs.items()}
    renames = {frozen.inputs[0].name: servable.input_name}
    renames.update({f.name: key_of[c.name] for f, c in zip(frozen.outputs, concrete.outputs, strict=True)})
    model, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
                                              output_names=[t.name for t in frozen.outputs], opset=opset)
    _rename(model, renames)
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    servable.check_converted(path, "tf2onnx", *onnx_io(path))
    return path


def _rename(model, renames: dict[str, str]) -> None:  # noqa: ANN001 - onnx.ModelProto
    """Rename graph tensors everywhere they appear (inputs, outputs, node edges)."""
    g = model.graph
    for v in (*g.input, *g.output, *g.value_info):
        v.name = renames.get(v.name, v.name)
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


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
