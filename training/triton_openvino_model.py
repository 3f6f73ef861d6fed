"""Triton Python-backend model that runs the OpenVINO IR next to it (``<version>/model.xml``).

`autolabel models build --target cpu-openvino` copies this file into the version folder of
every model it converted (the backbone and the standalone task models) as ``model.py``. Input
and output names come from the model's config.pbtxt, which the build wrote from the IR.

Config parameters (written by the build, docs/serving.md): ``ov_precision`` (``bf16``,
``f32``; ``int8`` is the quantized IR, whose float parts run in bf16 where the CPU has it),
``ov_streams`` (OpenVINO ``NUM_STREAMS``) and ``ov_threads`` (``INFERENCE_NUM_THREADS``,
0 = all cores). Dynamic batching hands ``execute`` several requests: their inputs are
concatenated, the model runs once (split over the streams when there are several), and the
outputs are split back per request.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

HINTS = {"bf16": "bf16", "f32": "f32", "int8": "bf16"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if int(np.__version__.split(".")[0]) >= 2:
            raise pb_utils.TritonModelException(
                f"numpy {np.__version__} in the Triton Python backend gives empty outputs: install numpy<2"
            )
        import openvino as ov

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        precision = params.get("ov_precision", "f32") or "f32"
        core = ov.Core()
        hint = HINTS.get(precision, "f32")
        if hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "f32"
        self._streams = max(1, int(params.get("ov_streams", "1") or 1))
        properties = {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": self._streams,
                      "PERFORMANCE_HINT": "LATENCY" if self._streams == 1 else "THROUGHPUT"}
        threads = int(params.get("ov_threads", "0") or 0)
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        path = os.path.join(args["model_repository"], args["model_version"], "model.xml")
        self._compiled = core.compile_model(core.read_model(path), "CPU", properties)
        self._inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self._outputs = [o["name"] for o in config["output"]]
        have_in = {n for p in self._compiled.inputs for n in p.get_names()}
        have_out = {n for p in self._compiled.outputs for n in p.get_names()}
        missing = [n for n, _ in self._inputs if n not in have_in] + [n for n in self._outputs if n not in have_out]
        if missing:
            raise pb_utils.TritonModelException(f"{path}: the OpenVINO model has no tensor(s) {missing}")
        self._queue = ov.AsyncInferQueue(self._compiled, self._streams) if self._streams > 1 else None
        self._request = self._compiled.create_infer_request()
        # one warm-up pass so the first request does not pay for the first kernels' set-up
        warm = {n: np.zeros([1, *[int(d) for d in p.get_partial_shape()[1:].to_shape()]], dtype=dtype)
                for (n, dtype), p in zip(self._inputs, [self._compiled.input(n) for n, _ in self._inputs], strict=True)}
        self._request.infer(warm)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if self._queue is None or n < 2:
            result = self._request.infer(feeds)
            return {name: np.ascontiguousarray(result[name]) for name in self._outputs}
        parts = np.array_split(np.arange(n), min(self._streams, n))
        got: dict[int, dict[str, np.ndarray]] = {}

        def done(request, i: int) -> None:  # noqa: ANN001 - openvino.InferRequest
            got[i] = {name: np.array(request.get_tensor(name).data) for name in self._outputs}

        self._queue.set_callback(done)
        for i, idx in enumerate(parts):
            self._queue.start_async({k: v[idx[0]:idx[-1] + 1] for k, v in feeds.items()}, i)
        self._queue.wait_all()
        return {name: np.ascontiguousarray(np.concatenate([got[i][name] for i in range(len(parts))])) for name in self._outputs}

    def execute(self, requests: list) -> list:
        sizes: list[int] = []
        columns: dict[str, list[np.ndarray]] = {n: [] for n, _ in self._inputs}
        for request in requests:
            for name, dtype in self._inputs:
                arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                columns[name].append(np.asarray(arr, dtype=dtype))
            sizes.append(int(columns[self._inputs[0][0]][-1].shape[0]))
        try:
            outputs = self._run({n: np.concatenate(columns[n]) if len(columns[n]) > 1 else columns[n][0] for n in columns})
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
        self._queue = None
        self._request = None
        self._compiled = None
