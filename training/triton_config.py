"""``config.pbtxt`` text for each repository target: pure functions, no TensorFlow.

Targets (``autolabel models build --target``):

- ``cpu``: the embedded tritonserver (Python backend only): each model is the generic
  ``model.py`` running its SavedModel with TensorFlow, KIND_CPU;
- ``cpu-openvino``: the same server; the image models (backbone, standalone tasks) are
  OpenVINO IR (``model.xml``) run by ``model.py`` with OpenVINO, the heads stay SavedModels.
  The IR models also get ``configs/openvino.pbtxt`` for Triton's native ``openvino`` backend
  (``tritonserver --model-config-name=openvino``: official containers);
- ``gpu-tf``: official Triton containers up to 25.02 (TensorFlow backend):
  ``platform: "tensorflow_savedmodel"``, KIND_GPU;
- ``gpu-onnx``: newer Triton: tf2onnx-converted models on the ONNX Runtime backend,
  KIND_GPU, TensorRT execution accelerator optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

TARGETS = ("cpu", "cpu-openvino", "gpu-tf", "gpu-onnx")
CPU_TARGETS = ("cpu", "cpu-openvino")
DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "string": "TYPE_STRING"}
MODEL_FILE = {"cpu": "model.savedmodel", "cpu-openvino": "model.xml", "gpu-tf": "model.savedmodel", "gpu-onnx": "model.onnx"}
OPENVINO_CONFIG = "openvino"  # configs/openvino.pbtxt: the native backend (tritonserver --model-config-name=openvino)
PRECISIONS = ("bf16", "f32", "int8")


@dataclass(frozen=True)
class Tuning:
    """Dynamic batching and instance groups. CPU values measured in docs/benchmarks.md."""

    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    backbone_instances: int = 1  # backbone and standalone task models (the heavy ones)
    head_instances: int = 1
    intra_op_threads: int = 0  # cpu target: TensorFlow threads per instance; 0 = all cores
    inter_op_threads: int = 1
    ov_streams: int = 1  # cpu-openvino: OpenVINO NUM_STREAMS per instance
    ov_threads: int = 0  # cpu-openvino: OpenVINO INFERENCE_NUM_THREADS per instance; 0 = all cores

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.backbone_instances < 1 or self.head_instances < 1:
            raise ValueError("max_batch_size and instance counts must be >= 1")
        if self.ov_streams < 1:
            raise ValueError("ov_streams must be >= 1")
        if self.max_queue_delay_us < 0 or self.intra_op_threads < 0 or self.inter_op_threads < 0 or self.ov_threads < 0:
            raise ValueError("queue delay and thread counts must be >= 0")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes must be in 1..{self.max_batch_size}")


# Chosen on this 2-core machine with VGG16 (docs/benchmarks.md, "Serving"): one instance
# per model with both cores to its TensorFlow pool (two single-thread instances: no more
# images/s, a worse p99, twice the memory); a 2 ms queue delay (no measurable cost against
# ~0.5 s of VGG16 per image) lets requests that arrive together share a batch. Batches
# bigger than the concurrency gain nothing on a CPU; 32 leaves room for the worker's
# request batches (AUTOLABEL_BATCH_MAX_SIZE, split to max_batch_size by the worker).
# cpu-openvino: 2 OpenVINO streams of 1 thread each (a batch is split over them) measured 8 and 15 % more images/s than
# 1 stream of 2 threads in two interleaved in-process runs of the bf16 backbone, batches of 4 (docs/benchmarks.md).
CPU_TUNING = Tuning(max_batch_size=32, preferred_batch_sizes=(), max_queue_delay_us=2000,
                    backbone_instances=1, head_instances=1, intra_op_threads=0, inter_op_threads=1, ov_streams=2, ov_threads=0)
# GPU starting point, not yet measured on a GPU (deploy/gpu/bench_serving.sh measures it).
GPU_TUNING = Tuning(max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=1000,
                    backbone_instances=2, head_instances=1)


def default_tuning(target: str) -> Tuning:
    return CPU_TUNING if target in CPU_TARGETS else GPU_TUNING


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # "uint8" | "float32" | "string" (Triton BYTES)
    dims: tuple[int, ...]  # without the batch dimension
    label_filename: str | None = None

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        label = f'\n    label_filename: "{self.label_filename}"' if self.label_filename else ""
        return f'  {{\n    name: "{self.name}"\n    data_type: {DTYPES[self.dtype]}\n    dims: [ {dims} ]{label}\n  }}'


@dataclass(frozen=True)
class Step:
    model: str
    inputs: Mapping[str, str]  # model input -> ensemble tensor
    outputs: Mapping[str, str]  # model output -> ensemble tensor


@dataclass(frozen=True)
class ModelSpec:
    """Everything that goes in one model's config.pbtxt."""

    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    parameters: Mapping[str, str] = field(default_factory=dict)
    heavy: bool = True  # backbone-sized: gets backbone_instances
    steps: Sequence[Step] = ()  # non-empty: an ensemble
    openvino: bool = False  # cpu-openvino: this model is OpenVINO IR (else a SavedModel run with TensorFlow)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _parameters(params: Mapping[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{_quote(k)}"\n  value: {{ string_value: "{_quote(str(v))}" }}\n}}\n' for k, v in params.items()
    )


def _io(kind: str, tensors: Sequence[Tensor]) -> str:
    return f"{kind} [\n" + ",\n".join(t.pbtxt() for t in tensors) + "\n]\n"


def _batching(t: Tuning) -> str:
    pref = f"\n  preferred_batch_size: [ {', '.join(map(str, t.preferred_batch_sizes))} ]" if t.preferred_batch_sizes else ""
    return f"dynamic_batching {{{pref}\n  max_queue_delay_microseconds: {t.max_queue_delay_us}\n}}\n"


def _ensemble(spec: ModelSpec) -> str:
    steps = []
    for s in spec.steps:
        ins = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in s.inputs.items())
        outs = "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in s.outputs.items())
        steps.append(f'    {{\n      model_name: "{s.model}"\n      model_version: -1\n{ins}{outs}    }}')
    return "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"


def config_pbtxt(spec: ModelSpec, target: str, tuning: Tuning, tensorrt: bool = False, precision: str = "f32",
                 native_openvino: bool = False) -> str:
    """The config.pbtxt of one model for ``target``; ``native_openvino``: the IR model's config for Triton's
    ``openvino`` backend (``configs/openvino.pbtxt``) instead of the Python backend's."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    head = f'name: "{spec.name}"\n'
    if spec.steps:
        head += 'platform: "ensemble"\n'
    elif native_openvino:
        head += 'backend: "openvino"\n'
    elif target in CPU_TARGETS:
        head += 'backend: "python"\n'
    elif target == "gpu-tf":
        head += 'platform: "tensorflow_savedmodel"\n'
    else:
        head += 'platform: "onnxruntime_onnx"\n'
    text = head + f"max_batch_size: {tuning.max_batch_size}\n" + _io("input", spec.inputs) + _io("output", spec.outputs)
    params = dict(spec.parameters)
    if spec.steps:
        return text + _ensemble(spec) + _parameters(params)
    count = tuning.backbone_instances if spec.heavy else tuning.head_instances
    kind = "KIND_CPU" if target in CPU_TARGETS else "KIND_GPU"
    text += f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n" + _batching(tuning)
    if native_openvino:
        return text + _parameters({**params, **openvino_backend_parameters(tuning, precision)})
    if target in CPU_TARGETS and spec.openvino:
        params.update({"ov_precision": precision, "ov_streams": str(tuning.ov_streams), "ov_threads": str(tuning.ov_threads)})
    elif target in CPU_TARGETS:
        params["tf_intra_op_threads"] = str(tuning.intra_op_threads)
        params["tf_inter_op_threads"] = str(tuning.inter_op_threads)
    if target == "gpu-onnx" and tensorrt:
        text += (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
            '        name: "tensorrt"\n'
            '        parameters { key: "precision_mode" value: "FP32" }\n'
            '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
            "      }\n    ]\n  }\n}\n"
        )
    return text + _parameters(params)


def openvino_backend_parameters(tuning: Tuning, precision: str) -> dict[str, str]:
    """The keys Triton's ``openvino`` backend reads (its README): streams, threads, the latency hint, bf16.

    That backend has no key for f32 on a CPU with bf16 (OpenVINO's default there is bf16): an ``f32``
    build served by it may run in bf16; the Python backend honours ``ov_precision`` exactly.
    """
    params = {"NUM_STREAMS": str(tuning.ov_streams), "PERFORMANCE_HINT": "LATENCY" if tuning.ov_streams == 1 else "THROUGHPUT"}
    if tuning.ov_threads:
        params["INFERENCE_NUM_THREADS"] = str(tuning.ov_threads)
    if precision in ("bf16", "int8"):  # int8: the quantized IR; what stays float runs in bf16
        params["HINT_BF16"] = "YES"
    return params


def with_overrides(base: Tuning, **values: object) -> Tuning:
    """``base`` with the given non-None fields replaced (CLI options)."""
    return replace(base, **{k: v for k, v in values.items() if v is not None})
