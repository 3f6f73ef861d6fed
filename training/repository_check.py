"""Check a built model repository: every config parses and matches the model files it serves.

No server and no TensorFlow graph loading: configs are parsed with Triton's own
``ModelConfig`` protobuf, SavedModel signatures are read from ``saved_model.pb``, ONNX
inputs/outputs from the ONNX graph. Ensembles are checked step by step (every mapped
tensor exists with the same dtype and dims), and the ``autolabel`` contract of
docs/model-repository.md is checked on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.settings import SCOPE_OUTPUT, TASKS

IO = dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, dims without batch)
TRITON_DTYPES = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32", "TYPE_STRING": "string"}
CONTRACT_PARAMETERS = ("model_version", "backbone", "weights_source", "resize")


@dataclass
class ParsedModel:
    name: str
    config: object  # model_config_pb2.ModelConfig
    inputs: IO
    outputs: IO
    labels: dict[str, list[str]]  # output name -> label file lines

    @property
    def parameters(self) -> dict[str, str]:
        return {k: v.string_value for k, v in self.config.parameters.items()}  # type: ignore[attr-defined]


def parse_config(path: Path):  # noqa: ANN201 - model_config_pb2.ModelConfig
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _config_io(tensors) -> IO:  # noqa: ANN001
    from tritonclient.grpc import model_config_pb2

    return {t.name: (TRITON_DTYPES.get(model_config_pb2.DataType.Name(t.data_type), model_config_pb2.DataType.Name(t.data_type)),
                     tuple(t.dims)) for t in tensors}


def savedmodel_io(path: Path) -> tuple[IO, IO]:
    """The ``serving_default`` signature of a SavedModel, read from saved_model.pb only."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    sig = sm.meta_graphs[0].signature_def["serving_default"]

    def io(tensors) -> IO:  # noqa: ANN001
        names = {types_pb2.DT_UINT8: "uint8", types_pb2.DT_FLOAT: "float32", types_pb2.DT_STRING: "string"}
        return {k: (names.get(v.dtype, f"tf:{v.dtype}"), tuple(d.size for d in v.tensor_shape.dim)[1:]) for k, v in tensors.items()}

    return io(sig.inputs), io(sig.outputs)


def _model_io(model_dir: Path, config) -> tuple[IO, IO] | str:  # noqa: ANN001
    version = model_dir / "1"
    if config.platform == "onnxruntime_onnx":
        from training.onnx_export import onnx_io

        f = version / "model.onnx"
        return onnx_io(f) if f.is_file() else f"{f} is missing"
    if config.backend in ("python", "openvino") and (version / "model.xml").is_file():  # cpu-openvino: OpenVINO IR
        from training.openvino_export import openvino_io

        if config.backend == "python" and not (version / "model.py").is_file():
            return f"{version}/model.py is missing"
        return openvino_io(version / "model.xml")
    if config.platform == "tensorflow_savedmodel" or config.backend == "python":
        f = version / "model.savedmodel"
        if config.backend == "python" and not (version / "model.py").is_file():
            return f"{version}/model.py is missing"
        return savedmodel_io(f) if (f / "saved_model.pb").is_file() else f"{f} is missing"
    return f"unsupported platform {config.platform!r} / backend {config.backend!r}"


def load_model(model_dir: Path, config_file: str = "config.pbtxt") -> tuple[ParsedModel | None, list[str]]:
    problems: list[str] = []
    try:
        config = parse_config(model_dir / config_file)
    except Exception as exc:  # noqa: BLE001 - text_format.ParseError and friends
        return None, [f"{model_dir}/{config_file} does not parse: {exc}"]
    if config.name != model_dir.name:
        problems.append(f"{model_dir}: config name {config.name!r} differs from the folder name")
    labels: dict[str, list[str]] = {}
    for out in config.output:
        if out.label_filename:
            f = model_dir / out.label_filename
            if not f.is_file():
                problems.append(f"{model_dir.name}: label file {out.label_filename} is missing")
                continue
            labels[out.name] = f.read_text().splitlines()
            if len(labels[out.name]) != (out.dims[-1] if out.dims else 0):
                problems.append(f"{model_dir.name}: {out.label_filename} has {len(labels[out.name])} lines for output dims {list(out.dims)}")
    parsed = ParsedModel(config.name, config, _config_io(config.input), _config_io(config.output), labels)
    if config.platform == "ensemble":
        if not (model_dir / "1").is_dir():
            problems.append(f"{model_dir.name}: ensemble has no version folder 1/")
        return parsed, problems
    got = _model_io(model_dir, config)
    if isinstance(got, str):
        return parsed, problems + [f"{model_dir.name}: {got}"]
    for kind, want, have in (("input", parsed.inputs, got[0]), ("output", parsed.outputs, got[1])):
        if want != have:
            problems.append(f"{model_dir.name}: config {kind}s {want} but the model file has {have}")
    return parsed, problems


def _check_ensemble(ens: ParsedModel, models: dict[str, ParsedModel]) -> list[str]:
    problems: list[str] = []
    cfg = ens.config
    tensors: IO = dict(ens.inputs)
    for step in cfg.ensemble_scheduling.step:  # type: ignore[attr-defined]
        m = models.get(step.model_name)
        if m is None:
            problems.append(f"{ens.name}: step model {step.model_name!r} is not in the repository")
            continue
        if m.config.max_batch_size < cfg.max_batch_size:  # type: ignore[attr-defined]
            problems.append(f"{ens.name}: {m.name} max_batch_size {m.config.max_batch_size} < ensemble's {cfg.max_batch_size}")  # type: ignore[attr-defined]
        if set(step.input_map) != set(m.inputs):
            problems.append(f"{ens.name}: step {m.name} maps inputs {sorted(step.input_map)}, the model has {sorted(m.inputs)}")
        for key, tensor in step.input_map.items():
            if tensor not in tensors:
                problems.append(f"{ens.name}: step {m.name} reads {tensor!r} before any step writes it")
            elif key in m.inputs and tensors[tensor] != m.inputs[key]:
                problems.append(f"{ens.name}: {tensor!r} is {tensors[tensor]} but {m.name}.{key} wants {m.inputs[key]}")
        for key, tensor in step.output_map.items():
            if key not in m.outputs:
                problems.append(f"{ens.name}: step {m.name} has no output {key!r}")
                continue
            tensors[tensor] = m.outputs[key]
    for name, spec in ens.outputs.items():
        if name not in tensors:
            problems.append(f"{ens.name}: output {name!r} is produced by no step")
        elif tensors[name] != spec:
            problems.append(f"{ens.name}: output {name!r} is {tensors[name]} in the steps, {spec} in the config")
    return problems


def _check_contract(models: dict[str, ParsedModel], tasks: Sequence[str]) -> list[str]:
    problems: list[str] = []
    top = models.get("autolabel")
    if top is None:
        return ["no `autolabel` model (docs/model-repository.md)"]
    (in_name, (dtype, dims)), *rest = list(top.inputs.items()) or [("", ("", ()))]
    title_ok = [name for name, io in rest if name == "title" and io == ("string", (1,))]
    if in_name != "image" or dtype != "uint8" or len(dims) != 3 or dims[-1] != 3 or len(rest) != len(title_ok):
        problems.append(f"autolabel: inputs must be `image` UINT8 [-1, H, W, 3] and optionally `title` BYTES [-1, 1], got {top.inputs}")
    if set(top.outputs) - {SCOPE_OUTPUT} != set(tasks):
        problems.append(f"autolabel: outputs {sorted(top.outputs)}, the contract says {sorted(tasks)} (and optionally {SCOPE_OUTPUT})")
    if SCOPE_OUTPUT in top.outputs:
        threshold = top.parameters.get("scope_threshold", "")
        if top.outputs[SCOPE_OUTPUT][1][-1:] != (2,) or not threshold.replace(".", "", 1).isdigit() or not 0 <= float(threshold) <= 1:
            problems.append(f"autolabel: the {SCOPE_OUTPUT} output must be 2 probabilities with a scope_threshold parameter in [0, 1] "
                            f"(got {top.outputs[SCOPE_OUTPUT]}, {threshold!r})")
    params = top.parameters
    for key in (*CONTRACT_PARAMETERS, *(f"labels_{t}" for t in tasks)):
        if not params.get(key):
            problems.append(f"autolabel: config parameter {key!r} is missing")
    for t in tasks:
        labels = params.get(f"labels_{t}", "").split(",")
        if t in top.outputs and len(labels) != top.outputs[t][1][-1]:
            problems.append(f"autolabel: labels_{t} has {len(labels)} names for {top.outputs[t][1]} outputs")
        task = models.get(t)
        if task is None:
            problems.append(f"no standalone `{t}` model")
            continue
        if set(task.inputs) != {"image"} or set(task.outputs) != {"probs"}:
            problems.append(f"{t}: must map `image` -> `probs`, got {sorted(task.inputs)} -> {sorted(task.outputs)}")
        for key in (*CONTRACT_PARAMETERS, "labels"):
            if not task.parameters.get(key):
                problems.append(f"{t}: config parameter {key!r} is missing")
    return problems


def check_repository(repo: Path, tasks: Sequence[str] = TASKS, only: Sequence[str] | None = None) -> list[str]:
    """Every problem found in ``repo`` (empty: all configs parse and match their models).

    ``only``: check just these model folders (a repository may hold other models too).
    """
    repo = Path(repo)
    models: dict[str, ParsedModel] = {}
    problems: list[str] = []
    for d in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file() and (only is None or p.name in only)):
        parsed, found = load_model(d)
        problems += found
        for extra in sorted((d / "configs").glob("*.pbtxt")):  # other servers' configs of the same files (cpu-openvino)
            other, found = load_model(d, f"configs/{extra.name}")
            problems += found
            if other is not None and parsed is not None and (other.inputs, other.outputs) != (parsed.inputs, parsed.outputs):
                problems.append(f"{d.name}: configs/{extra.name} has other inputs/outputs than config.pbtxt")
        if parsed is not None:
            models[parsed.name] = parsed
    for m in models.values():
        if m.config.platform == "ensemble":  # type: ignore[attr-defined]
            problems += _check_ensemble(m, models)
    return problems + _check_contract(models, tasks)
