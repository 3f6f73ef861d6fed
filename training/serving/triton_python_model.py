"""Triton Python-backend model that runs the SavedModel next to it with TensorFlow.

`autolabel models build --target cpu` copies this file into every model's version folder
as ``model.py``; the SavedModel is ``<version>/model.savedmodel``. One generic file serves
the backbone, the heads and the standalone task models: input and output names come from
the model's config.pbtxt, which the build wrote from the SavedModel's signature.

Dynamic batching hands ``execute`` several requests: their inputs are concatenated, the
model runs once, and the outputs are split back per request. TensorFlow's thread pools are
sized from the config parameters ``tf_intra_op_threads`` / ``tf_inter_op_threads``
(0 = TensorFlow's default, all cores).

numpy must be < 2: with numpy 2 the Python backend stub returns silently empty outputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if int(np.__version__.split(".")[0]) >= 2:
            raise pb_utils.TritonModelException(
                f"numpy {np.__version__} in the Triton Python backend gives empty outputs: install numpy<2"
            )
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        import tensorflow as tf

        intra = int(params.get("tf_intra_op_threads", "0") or 0)
        inter = int(params.get("tf_inter_op_threads", "0") or 0)
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        self._tf = tf
        path = os.path.join(args["model_repository"], args["model_version"], "model.savedmodel")
        self._loaded = tf.saved_model.load(path)
        self._fn = self._loaded.signatures["serving_default"]
        self._inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self._outputs = [o["name"] for o in config["output"]]
        _, sig_inputs = self._fn.structured_input_signature
        missing = [n for n, _ in self._inputs if n not in sig_inputs] + [n for n in self._outputs if n not in self._fn.structured_outputs]
        if missing:
            raise pb_utils.TritonModelException(f"{path}: the SavedModel signature has no tensor(s) {missing}")
        # one warm-up pass so the first request does not pay for graph set-up
        warm = {n: (tf.fill([1, *[int(d) for d in sig_inputs[n].shape[1:]]], "")
                    if sig_inputs[n].dtype == tf.string else tf.zeros([1, *[int(d) for d in sig_inputs[n].shape[1:]]], dtype=sig_inputs[n].dtype))
                for n, _ in self._inputs}
        self._fn(**warm)

    def execute(self, requests: list) -> list:
        tf = self._tf
        sizes: list[int] = []
        columns: dict[str, list[np.ndarray]] = {n: [] for n, _ in self._inputs}
        for request in requests:
            for name, dtype in self._inputs:
                arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                columns[name].append(np.asarray(arr, dtype=dtype))
            sizes.append(int(columns[self._inputs[0][0]][-1].shape[0]))
        try:
            feeds = {n: tf.constant(np.concatenate(columns[n]) if len(columns[n]) > 1 else columns[n][0]) for n in columns}
            result = self._fn(**feeds)
            outputs = {n: np.ascontiguousarray(result[n].numpy()) for n in self._outputs}
        except Exception as exc:  # noqa: BLE001 - report to every caller, keep serving
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n in sizes:
            tensors = [pb_utils.Tensor(name, outputs[name][start:start + n]) for name in self._outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self) -> None:
        self._fn = None
        self._loaded = None
