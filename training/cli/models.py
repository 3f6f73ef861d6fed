"""`autolabel models build|check`: click only; the work is in training.serving (repository, repository_check)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from training.errors import ModelsError
from training.manifest.read import read_models
from training.serving.quantize import DEFAULT_CALIBRATION, DEFAULT_CHECK
from training.serving.repository import BUILD_INFO, DEFAULT_TARGET, SERVING_MODES, build_repository, managed_names
from training.serving.repository_check import check_repository
from training.serving.triton_config import PRECISIONS, TARGETS, default_tuning, with_overrides


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
            from training.serving.quantize_data import int8_backbone

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
