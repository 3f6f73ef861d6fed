"""`autolabel models build`: trained heads (``models/``) -> served repository (``model_repository/``).

Python API (docs/model-repository.md is the contract):

- :func:`build_repository` ``(models_dir, out_dir, target="cpu") -> Path``
- :func:`make_tiny_models` ``(models_dir, input_size=(32, 32)) -> Path``: a real, tiny model set
  for tests (re-exported from :mod:`training.untrained`).

The repository holds ``backbone``, ``<task>_head``, the standalone ``<task>`` models (full
SavedModels) and ``autolabel``: an ensemble (backbone once, then the three heads) or, with
``serving="fused"``, one multi-output model. A task that no longer shares the base (its own
backbone or a fine-tuned full model in the manifest) is served standalone, and the
``autolabel`` ensemble calls that standalone model for it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from services.settings import SCOPE_CLASSES, SCOPE_OUTPUT, TASKS
from training.openvino_build import build_info, converts_to_openvino, feature_heads, precisions
from training.repository_check import check_repository
from training.servables import Servable, servables
from training.serving_models import ModelsError, ModelSet, build_graphs, describe_weights, read_models, weights_source
from training.text import TITLE_MAX_CHARS
from training.triton_config import (
    MODEL_FILE,
    OPENVINO_CONFIG,
    PRECISIONS,
    TARGETS,
    ModelSpec,
    Step,
    Tensor,
    Tuning,
    config_pbtxt,
    default_tuning,
    with_overrides,
)
from training.quantize import DEFAULT_CALIBRATION, DEFAULT_CHECK
from training.untrained import make_tiny_models, write_untrained_models

__all__ = ["build_repository", "make_tiny_models", "write_untrained_models", "models", "ModelsError", "BUILD_INFO"]

SERVING_MODES = ("ensemble", "fused")
# What `autolabel models build` (and so `make demo`, `autolabel stack up`, `autolabel evaluate`) serves by default: OpenVINO's
# labels equal TensorFlow's on the honest test split (docs/accuracy.md, "OpenVINO"); `--target cpu` is TensorFlow.
DEFAULT_TARGET = "cpu-openvino"
BUILD_INFO = "autolabel-build.json"  # beside the models; Triton ignores files at the top level
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
OPENVINO_MODEL = Path(__file__).with_name("triton_openvino_model.py")


def managed_names(tasks: list[str] | tuple[str, ...] = TASKS) -> set[str]:
    """Model folders this build owns (others in the repository are left alone)."""
    return {"autolabel", "backbone", "scope_head", *tasks, *(f"{t}_head" for t in tasks)}


def _contract_parameters(models: ModelSet, task: str | None = None) -> dict[str, str]:
    entry = models.tasks[task] if task else None
    spec = (entry.backbone if entry and entry.backbone else models.backbone)
    if entry and entry.model:
        weights = f"fine-tuned:{entry.model.name}"
    elif entry:
        weights = weights_source(spec, entry.fine_tuned)
    else:  # the ensemble / fused model: the shared weights, and which tasks left them
        own = [f"{t}: {weights_source(e.backbone, e.fine_tuned) if e.backbone else f'fine-tuned:{e.model.name}'}"  # type: ignore[union-attr]
               for t, e in models.tasks.items() if not e.shared]
        weights = weights_source(spec) + (f" ({'; '.join(own)})" if own else "")
    params = {"model_version": models.version, "backbone": spec.name, "weights_source": weights, "resize": models.resize}
    # the auto-accept thresholds chosen on validation travel with the model (the worker reads them)
    for t, e in models.tasks.items():
        if e.threshold is not None and (task is None or t == task):
            params[f"threshold_{t}"] = f"{e.threshold:.6f}"
    if models.scope is not None and task is None:  # the scope gate: P(out of scope) above it flags every label
        params["scope_threshold"] = f"{models.scope.threshold:.6f}"
        params["scope_in"] = ",".join(models.scope.in_scope)
        if models.others is not None:  # above this P(out of scope), the labels are the other categories' heads'
            params["others_route_threshold"] = f"{models.others.route_threshold:.6f}"
        for t, value in (models.others.thresholds.items() if models.others else ()):  # ... judged by these
            params[f"threshold_{t}_others"] = f"{value:.6f}"
    if models.title is not None and task is None:  # with a title: one threshold per class (class order)
        params["title"] = title_description(models.title.text)
        for t, values in models.title.thresholds.items():
            params[f"threshold_{t}_title"] = ",".join(f"{v:.6f}" for v in values)
    return params


def title_description(text: Any) -> str:
    """The served ``title`` parameter: how the title is read."""
    grams = "+".join(f"{n}-grams" for n in text.ngrams)
    return f"word {grams} hashed into {text.buckets} buckets, TF-IDF; first {TITLE_MAX_CHARS} characters"


def _model_spec(s: Servable, models: ModelSet) -> tuple[ModelSpec, dict[str, list[str]]]:
    """Config contents and label files of one servable."""
    inputs = [Tensor(s.input_name, s.input_dtype, s.input_shape)] + ([Tensor("title", "string", (1,))] if s.title else [])
    labels: dict[str, list[str]] = {}
    if s.name == "backbone":
        params = {"backbone": models.backbone.name, "weights_source": weights_source(models.backbone)}
        return ModelSpec(s.name, inputs, [Tensor("features", "float32", s.outputs["features"])], params), labels
    if s.name == "autolabel":  # fused
        outputs = []
        params = _contract_parameters(models)
        for task, dims in s.outputs.items():
            classes = list(SCOPE_CLASSES) if task == SCOPE_OUTPUT else list(models.tasks[task].classes)
            labels[f"{task}_labels.txt"] = classes
            outputs.append(Tensor(task, "float32", dims, f"{task}_labels.txt"))
            params[f"labels_{task}"] = ",".join(classes)
        return ModelSpec(s.name, inputs, outputs, params), labels
    if s.name == "scope_head":
        labels["labels.txt"] = list(SCOPE_CLASSES)
        return ModelSpec(s.name, inputs, [Tensor("probs", "float32", (2,), "labels.txt")], {"labels": ",".join(SCOPE_CLASSES)}), labels
    task = s.name.removesuffix("_head")
    classes = list(models.tasks[task].classes)
    labels["labels.txt"] = classes
    params = {"labels": ",".join(classes)}
    if s.name == task:
        params = {**_contract_parameters(models, task), **params}
    out = [Tensor(name, "float32", dims, "labels.txt") for name, dims in s.outputs.items()]
    return ModelSpec(s.name, inputs, out, params, heavy=s.name == task), labels


def _ensemble_spec(models: ModelSet, image: tuple[int, ...]) -> tuple[ModelSpec, dict[str, list[str]]]:
    steps: list[Step] = []
    if models.shared_tasks or models.scope is not None:
        steps.append(Step("backbone", {"image": "image"}, {"features": "features"}))
    outputs, labels = [], {}
    params = _contract_parameters(models)
    title = models.title is not None and any(e.shared for e in models.tasks.values())
    for task, entry in models.tasks.items():
        if entry.shared:
            steps.append(Step(f"{task}_head", {"features": "features", **({"title": "title"} if title else {})}, {"probs": task}))
        else:
            steps.append(Step(task, {"image": "image"}, {"probs": task}))
        labels[f"{task}_labels.txt"] = list(entry.classes)
        outputs.append(Tensor(task, "float32", (len(entry.classes),), f"{task}_labels.txt"))
        params[f"labels_{task}"] = ",".join(entry.classes)
    if models.scope is not None:
        steps.append(Step("scope_head", {"features": "features"}, {"probs": SCOPE_OUTPUT}))
        labels[f"{SCOPE_OUTPUT}_labels.txt"] = list(SCOPE_CLASSES)
        outputs.append(Tensor(SCOPE_OUTPUT, "float32", (2,), f"{SCOPE_OUTPUT}_labels.txt"))
        params[f"labels_{SCOPE_OUTPUT}"] = ",".join(SCOPE_CLASSES)
    inputs = [Tensor("image", "uint8", image)] + ([Tensor("title", "string", (1,))] if title else [])
    return ModelSpec("autolabel", inputs, outputs, params, steps=steps), labels


def _write_model(folder: Path, spec: ModelSpec, labels: dict[str, list[str]], target: str, tuning: Tuning, tensorrt: bool,
                 precision: str = "f32") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_pbtxt(spec, target, tuning, tensorrt, precision))
    if spec.openvino:  # the same IR on Triton's own openvino backend (official containers: --model-config-name=openvino)
        (folder / "configs").mkdir(exist_ok=True)
        (folder / "configs" / f"{OPENVINO_CONFIG}.pbtxt").write_text(config_pbtxt(spec, target, tuning, precision=precision,
                                                                                native_openvino=True))
    for name, lines in labels.items():
        (folder / name).write_text("\n".join(lines) + "\n")


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


def _export(s: Servable, version_dir: Path, target: str, transform: Callable[[Any], Any] | None = None) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    if converts_to_openvino(s, target):
        from training.openvino_export import export_openvino

        export_openvino(s, version_dir / MODEL_FILE[target], export_savedmodel, transform)
        shutil.copyfile(OPENVINO_MODEL, version_dir / "model.py")
        return
    if target == "gpu-onnx":
        from training.onnx_export import export_onnx

        export_onnx(s, version_dir / MODEL_FILE[target])
        return
    export_savedmodel(s, version_dir / "model.savedmodel")
    if target in ("cpu", "cpu-openvino"):
        shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")


def _write_info(out_dir: Path, models: ModelSet, target: str, serving: str, built: list[str], tuning: Tuning, tensorrt: bool,
                extra: dict[str, Any]) -> None:
    """``autolabel-build.json``: what was built from what, with which tuning."""
    info = {
        "target": target,
        "serving": serving,
        "model_version": models.version,
        "backbone": models.backbone.to_dict(),
        "weights": describe_weights(models.backbone),
        "resize": models.resize,
        "models": built,
        "tuning": {k: list(v) if isinstance(v, tuple) else v for k, v in tuning.__dict__.items()},
        "tensorrt": tensorrt,
        **extra,
        "from": str(models.root),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")


def build_repository(
    models_dir: Path | str = "models",
    out_dir: Path | str = "model_repository",
    target: str = "cpu",
    *,
    tuning: Tuning | None = None,
    serving: str = "ensemble",
    tensorrt: bool = False,
    precision: str | None = None,
    quantize: Callable[..., Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the served repository for ``target`` from ``models_dir``; return ``out_dir``.

    ``precision`` (cpu-openvino): ``bf16``, ``f32`` or ``int8``; None: bf16 where the CPU has it.
    ``quantize`` (int8): ``(openvino.Model, heads, precision hint) -> openvino.Model`` for the backbone
    (training/quantize.py: calibrated, checked on validation); the other image models get bf16.
    Raises :class:`ModelsError` (no trained heads, inconsistent files) and ``ValueError`` (bad target/serving/tuning).
    Model folders this build does not own are left in place."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if precision is not None and (target != "cpu-openvino" or precision not in PRECISIONS):
        raise ValueError(f"precision applies to --target cpu-openvino only, one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "int8" and quantize is None:
        raise ValueError("int8 needs a quantizer (calibration photos): autolabel models build --precision int8 --data KIND:PATH")
    if serving not in SERVING_MODES:
        raise ValueError(f"unknown serving mode {serving!r}; choose one of {', '.join(SERVING_MODES)}")
    tuning = tuning or default_tuning(target)
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    started = time.monotonic()
    models = read_models(models_dir)
    if models.title is not None and target == "gpu-onnx":
        log("gpu-onnx: the title branch is TensorFlow string ops with no ONNX form; this build serves the photo only "
            "(use --target gpu-tf or cpu to serve the title)")
        models = replace(models, title=None)
    h, w = models.backbone.input_size
    log(f"backbone: {describe_weights(models.backbone)}, input {h}x{w} uint8, resize {models.resize}")
    for task, entry in models.tasks.items():
        if not entry.shared:
            own = f"fine-tuned model {entry.model}" if entry.model else describe_weights(entry.backbone, entry.fine_tuned)  # type: ignore[arg-type]
            log(f"{task}: does not share the base ({own}): served standalone, the ensemble calls `{task}`")
    precision, float_precision = precisions(target, precision, log)
    graphs = build_graphs(models)
    todo = servables(graphs, fused=serving == "fused")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for s in tqdm(todo, desc=f"export {target}", unit="model", disable=not progress):
            spec, labels = _model_spec(s, models)
            spec = replace(spec, openvino=converts_to_openvino(s, target))
            int8 = spec.openvino and precision == "int8" and s.name == "backbone"
            own = precision if precision != "int8" or int8 else float_precision
            _write_model(staging / s.name, spec, labels, target, tuning, tensorrt, own)
            transform = (lambda m: quantize(m, feature_heads(graphs), float_precision)) if int8 and quantize else None
            _export(s, staging / s.name / "1", target, transform)
        if serving == "ensemble":
            spec, labels = _ensemble_spec(models, graphs.input_shape)
            _write_model(staging / "autolabel", spec, labels, target, tuning, tensorrt)
            (staging / "autolabel" / "1").mkdir()
            (staging / "autolabel" / "1" / "README").write_text("ensemble: no model file (kept so object stores keep the folder)\n")
        problems = check_repository(staging)
        if problems:
            raise ModelsError("the built repository does not check out:\n  " + "\n  ".join(problems))
        built = sorted(p.name for p in staging.iterdir() if p.is_dir())
        for name in managed_names(tuple(models.tasks)):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in built:
            (staging / name).rename(out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_info(out_dir, models, target, serving, built, tuning, tensorrt, build_info(target, precision, quantize))
    layout = "ensemble: backbone -> " + ", ".join([*(f"{t}_head" if e.shared else t for t, e in models.tasks.items()),
                                                   *(["scope_head"] if models.scope is not None else [])])
    if serving == "fused":
        layout = "one multi-output model"
    log(f"built {len(built)} models for target {target} in {out_dir} ({time.monotonic() - started:.0f}s): "
        f"autolabel ({layout}); standalone {', '.join(models.tasks)}")
    return out_dir


# --- CLI --------------------------------------------------------------------------------------


@click.group("models")
def models() -> None:
    """Build and check the served model repository (docs/model-repository.md)."""


@models.command("build")
@click.option("--models-dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True,
              help="manifest.json + heads/ written by `autolabel train`.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Repository folder (default: AUTOLABEL_MODEL_REPOSITORY).")
@click.option("--target", type=click.Choice(TARGETS), default=DEFAULT_TARGET, show_default=True,
              help="cpu: embedded tritonserver (Python backend, TensorFlow); cpu-openvino: the same server, image models in OpenVINO "
                   "(+ configs for Triton's openvino backend); gpu-tf: Triton <= 25.02 TF backend; gpu-onnx: ONNX Runtime backend.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="cpu-openvino: bf16 (default where the CPU has it, else f32), f32, or int8 (NNCF, calibrated: needs --data).")
@click.option("--serving", type=click.Choice(SERVING_MODES), default="ensemble", show_default=True,
              help="`autolabel` as an ensemble (backbone once + heads) or one fused multi-output model.")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=None, help="max_batch_size of every model.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=None, help="Dynamic batching max_queue_delay_microseconds.")
@click.option("--preferred-batch", default=None, help="Comma-separated preferred batch sizes ('' for none).")
@click.option("--instances", type=click.IntRange(1, 64), default=None, help="Instances of the backbone and standalone models.")
@click.option("--head-instances", type=click.IntRange(1, 64), default=None, help="Instances of each head model.")
@click.option("--tf-threads", type=click.IntRange(0, 256), default=None, help="cpu target: TensorFlow intra-op threads per instance (0 = all cores).")
@click.option("--ov-streams", type=click.IntRange(1, 64), default=None, help="cpu-openvino: OpenVINO streams per instance (NUM_STREAMS).")
@click.option("--ov-threads", type=click.IntRange(0, 256), default=None,
              help="cpu-openvino: OpenVINO threads per instance (INFERENCE_NUM_THREADS; 0 = all cores).")
@click.option("--data", default=None, help="int8: the labeled photos (KIND:PATH, e.g. fpi:PATH) the split's keys name.")
@click.option("--split", "split_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="int8: the split whose training part calibrates and validation part checks (default: MODELS/split.json).")
@click.option("--calibration-photos", type=click.IntRange(1), default=DEFAULT_CALIBRATION, show_default=True,
              help="int8: photos of the training part NNCF calibrates on (seeded).")
@click.option("--check-photos", type=click.IntRange(1), default=DEFAULT_CHECK, show_default=True,
              help="int8: validation photos (Apparel, Men/Women) the int8 backbone is checked on.")
@click.option("--calibration-seed", type=int, default=0, show_default=True, help="int8: seed of both samples.")
@click.option("--force-int8", is_flag=True, help="int8: build even if a task loses more than 0.01 balanced accuracy on validation (warns).")
@click.option("--tensorrt", is_flag=True, help="gpu-onnx: enable the TensorRT execution accelerator (FP32).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(models_dir: Path, out: Path | None, target: str, precision: str | None, serving: str, max_batch: int | None,
          queue_delay_us: int | None, preferred_batch: str | None, instances: int | None, head_instances: int | None,
          tf_threads: int | None, ov_streams: int | None, ov_threads: int | None, data: str | None, split_file: Path | None,
          calibration_photos: int, check_photos: int, calibration_seed: int, force_int8: bool, tensorrt: bool, quiet: bool) -> None:
    """Put the trained task models into the repository, with configs and label files."""
    if out is None:
        from services.settings import load_settings

        out = load_settings().model_repository
    if tensorrt and target != "gpu-onnx":
        raise click.BadParameter("--tensorrt applies to --target gpu-onnx only", param_hint="--tensorrt")
    if (precision or ov_streams or ov_threads is not None) and target != "cpu-openvino":
        raise click.BadParameter("--precision, --ov-streams and --ov-threads apply to --target cpu-openvino only", param_hint="--target")
    preferred = None
    if preferred_batch is not None:
        try:
            preferred = tuple(int(p) for p in preferred_batch.split(",") if p.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {preferred_batch!r}", param_hint="--preferred-batch") from None
    try:
        tuning = with_overrides(default_tuning(target), max_batch_size=max_batch, max_queue_delay_us=queue_delay_us,
                                preferred_batch_sizes=preferred, backbone_instances=instances, head_instances=head_instances,
                                intra_op_threads=tf_threads, ov_streams=ov_streams, ov_threads=ov_threads)
        quantize = None
        if precision == "int8":
            if not data:
                raise click.BadParameter("int8 calibrates on photos of the split's training part: give --data KIND:PATH", param_hint="--data")
            from training.quantize_data import int8_backbone

            m = read_models(models_dir)
            quantize = int8_backbone(data, split_file or models_dir / "split.json", m.backbone.input_size, m.resize,
                                     {t: e.classes for t, e in m.tasks.items() if e.shared}, calibration=calibration_photos,
                                     check=check_photos, seed=calibration_seed, force=force_int8, log=click.echo)
        build_repository(models_dir, out, target, tuning=tuning, serving=serving, tensorrt=tensorrt, precision=precision,
                         quantize=quantize, progress=not quiet, log=click.echo)
    except (ModelsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@models.command("check")
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
def check(repository: Path | None) -> None:
    """Check that every config parses and matches its model files (names, dims, dtypes)."""
    if repository is None:
        from services.settings import load_settings

        repository = load_settings().model_repository
    problems = check_repository(repository, only=sorted(managed_names()))
    if problems:
        raise click.ClickException(f"{repository}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    info = repository / BUILD_INFO
    what = json.loads(info.read_text()) if info.is_file() else {}
    click.echo(f"{repository}: ok (target {what.get('target', '?')}, {what.get('weights', 'unknown weights')})")
