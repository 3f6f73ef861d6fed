"""OpenVINO backbones beside TensorFlow's in the benchmarks (`bench serving --openvino`, `bench pipeline --openvino`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click

PATH_NAMES = {"a": "standalone", "b": "shared", "c": "inprocess", "d": "shared+title", "e": "shared-no-scope"}


def parse_precisions(value: str, prebuilt: bool) -> list[str]:
    """``--openvino bf16,int8`` -> the precisions; refused with a prebuilt repository or a fused model."""
    precisions = [p.strip() for p in value.split(",") if p.strip()]
    if any(p not in ("bf16", "f32", "int8") for p in precisions):
        raise click.BadParameter(f"choose from bf16, f32, int8 (got {value!r})", param_hint="--openvino")
    if precisions and prebuilt:
        raise click.BadParameter("--openvino builds its variants beside the repository it builds: drop --repository, keep the ensemble",
                                 param_hint="--openvino")
    return precisions


def label(key: str) -> str:
    """``b`` -> ``shared``; ``b@ov_bf16`` -> ``shared (OpenVINO bf16)``."""
    letter, _, variant = key.partition("@")
    return PATH_NAMES[letter] + (f" (OpenVINO {variant.removeprefix('ov_')})" if variant else "")


def build_openvino_variants(src: Path, work: Path, repository: Path, precisions: Sequence[str], tuning: object, data: str | None,
                            force_int8: bool, quiet: bool, log: Callable[[str], None]) -> list[str]:
    """Build ``cpu-openvino`` at each precision and serve its backbone beside ``repository``'s; the variants' names."""
    from training.export import build_repository
    from training.repository_variants import add_backbone_variant
    from training.serving_models import read_models

    out = []
    for p in precisions:
        quantize = None
        if p == "int8":
            if not data:
                raise click.BadParameter("int8 calibrates on photos of the split's training part: give --data KIND:PATH", param_hint="--data")
            from training.quantize_data import int8_backbone

            m = read_models(src)
            quantize = int8_backbone(data, src / "split.json", m.backbone.input_size, m.resize,
                                     {t: e.classes for t, e in m.tasks.items() if e.shared}, force=force_int8, log=log)
        built = build_repository(src, work / f"repo-ov-{p}", "cpu-openvino", tuning=tuning, precision=p,  # type: ignore[arg-type]
                                 quantize=quantize, progress=not quiet, log=log)
        add_backbone_variant(repository, built, f"ov_{p}")
        out.append(f"ov_{p}")
    return out


def variant_ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """OpenVINO variants: shared against TensorFlow's shared path, and against their own in-process path."""
    ratios = {}
    for key in summary:
        letter, _, v = key.partition("@")
        if v and letter == "b" and "b" in summary:
            ratios[f"{key}/b"] = round(summary[key]["images_per_s"] / summary["b"]["images_per_s"], 3)
        if v and letter == "b" and f"c@{v}" in summary:
            ratios[f"{key}/c@{v}"] = round(summary[key]["images_per_s"] / summary[f"c@{v}"]["images_per_s"], 3)
    return ratios


def cpu_flags() -> list[str]:
    """The CPU's bf16/int8 instruction sets (AMX, AVX-512 BF16/VNNI): what decides OpenVINO's speed-up."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))  # noqa: SIM115
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512_vnni", "avx512f", "avx2"))


def pipeline_variant(models: Path, work: Path, repo: Path, precision: str, data: str | None, log: Callable[[str], None]) -> str:
    """`bench pipeline --openvino P`: the OpenVINO backbone beside TensorFlow's; the model name the worker calls for it."""
    from training.triton_config import default_tuning

    return "autolabel_" + build_openvino_variants(models, work, repo, [precision], default_tuning("cpu-openvino"), data, False, True, log)[0]


def openvino_result(precision: str, variant: str, pooled: dict, runs: list[dict], tensorflow: dict, log: Callable[[str], None]) -> dict:
    """The pipeline result's OpenVINO entries, and one line against TensorFlow's events/s."""
    ratio = pooled["events_per_s"] / tensorflow["events_per_s"]
    log(f"pipeline with OpenVINO {precision} ({variant}): {pooled['events_per_s']:.2f} events/s against TensorFlow's "
        f"{tensorflow['events_per_s']:.2f}: {ratio:.2f}x")
    return {"openvino": precision, "pipeline_openvino": pooled, "pipeline_openvino_runs": runs, "ratio_openvino_tensorflow": ratio}
