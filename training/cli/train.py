"""`autolabel train`, `autolabel sweep`: parse, call, print (`autolabel evaluate`: training/cli/evaluate.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from services.settings import TASKS
from training.cli.options import (
    DEFAULT_MODELS,
    DEFAULT_READOUT,
    backbone_spec,
    data_options,
    head_overrides,
    load_dataset,
    model_options,
    parse_tasks,
    saved_split,
    with_readout,
)
from training.evaluation.report import comparison_table, write_run


def _joint_config(seed: int, sets: Sequence[str], fine_tune_blocks: int, fine_tune_epochs: int, fine_tune_lr: float,
                  target_precision: float | None) -> Any:
    """The readout heads' JointConfig, with the ``--set TASK.KEY=VALUE`` head settings it takes."""
    from dataclasses import replace

    from services.settings import load_settings
    from training.heads.joint import JointConfig
    from training.heads.keras_heads import HeadConfig

    cfg = JointConfig(seed=seed, fine_tune_epochs=fine_tune_epochs if fine_tune_blocks else 0, fine_tune_lr=fine_tune_lr,
                      target_precision=target_precision or load_settings().target_precision)
    keys = ("hidden", "dropout", "learning_rate", "epochs", "batch_size")
    for task, values in head_overrides(sets).items():
        bad = sorted(set(values) - set(keys))
        if bad:
            raise click.ClickException(f"--set {task}.{bad[0]}: with a readout the heads take {', '.join(keys)}")
        try:  # HeadConfig parses and checks the same settings
            head = HeadConfig.from_dict(values, HeadConfig(**{k: getattr(cfg, k) for k in keys}))
        except (ValueError, TypeError) as exc:
            raise click.ClickException(f"bad --set: {exc}") from None
        cfg = replace(cfg, **{k: getattr(head, k) for k in keys})
    return cfg


def _joint_command(data: str, categories: str | None, per_class: int | None, seed: int, spec: Any, tasks: str | None, sets: Sequence[str],
                   split_file: Path | None, out: Path, fine_tune: tuple[int, int, float], target_precision: float, title: bool) -> str:
    """The `autolabel train` command line that reproduces this run (recorded in the manifest)."""
    import shlex

    fine_tune_blocks, fine_tune_epochs, fine_tune_lr = fine_tune
    h, w = spec.input_size
    command = shlex.join([
        "autolabel", "train", "--data", data, *(["--categories", categories] if categories else []),
        *(["--per-class", str(per_class)] if per_class else []), "--seed", str(seed), "--backbone", spec.name, "--weights", spec.weights,
        "--input-size", str(h) if h == w else f"{h}x{w}", "--readout", str(spec.readout), *(["--tasks", tasks] if tasks else []),
        *(a for item in sets for a in ("--set", item)), "--split", str(split_file or out / "split.json"), "--out", str(out),
        "--fine-tune-blocks", str(fine_tune_blocks), "--fine-tune-epochs", str(fine_tune_epochs), "--fine-tune-lr", f"{fine_tune_lr:g}",
        "--target-precision", f"{target_precision:g}", *([] if title else ["--no-title"])])
    return command


def _train_joint(data: str, categories: str | None, per_class: int | None, seed: int, spec: Any, resize: str, cache_dir: Path,
                 tasks: str | None, sets: Sequence[str], split_file: Path | None, out: Path, fine_tune_blocks: int,
                 fine_tune_epochs: int, fine_tune_lr: float, target_precision: float | None, quiet: bool, title: bool = True,
                 reviewed: bool = False) -> None:
    """`autolabel train` with a readout: three calibrated heads on one backbone pass (training.heads.joint), then
    (``title``, where the data has titles) the title models beside them (training.heads.title)."""
    from training.data.split import make_split
    from training.evaluation.report import joint_table
    from training.features.cache import BackboneError
    from training.heads.joint import train_joint
    from training.manifest.write import write_joint_models

    if resize != "pad":
        raise click.ClickException("a readout is trained on padded photos: drop --resize or use --readout none")
    if fine_tune_blocks > 1:
        raise click.ClickException("with a readout, --fine-tune-blocks is 0 or 1 (the top block, shared by the three tasks)")
    cfg = _joint_config(seed, sets, fine_tune_blocks, fine_tune_epochs, fine_tune_lr, target_precision)
    ds = load_dataset(data, categories, per_class, seed, cache_dir if reviewed else None)
    if split_file is not None:
        split = saved_split(split_file, ds, reviewed, quiet)
    else:
        split = make_split(ds, seed, progress=not quiet)
        click.echo(f"split: {split.grouping}", err=True)
    try:
        result = train_joint(ds, split, spec, cfg, cache_dir, parse_tasks(tasks) if tasks else None, progress=not quiet)
    except (BackboneError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    source = " ".join([str(data), *([f"categories={categories}"] if categories else []), f"seed={seed}"])
    command = _joint_command(data, categories, per_class, seed, spec, tasks, sets, split_file, out,
                             (fine_tune_blocks, fine_tune_epochs, fine_tune_lr), cfg.target_precision, title)
    from training.steps.train_others import previous_others
    from training.steps.train_scope import previous_gate

    refit = [c for c in (previous_gate(out), previous_others(out)) if c]  # in this order: the other heads need the gate
    manifest = write_joint_models(result, cfg, out, source, command)
    if split_file is None or split_file.resolve() != (out / "split.json").resolve():
        split.save(out / "split.json")
    click.echo(joint_table(result))
    if refit:  # they read the old readout: left out of the new manifest
        click.echo("the scope gate (and any other categories' heads) read the previous readout and are not served any more; "
                   "refit with:\n  " + "\n  ".join(refit), err=True)
    click.echo(f"wrote {manifest}, {len(result.outcomes)} calibrated head(s){' and the tuned top block' if result.base else ''}"
               f" ({result.seconds / 60:.1f} min)")
    if title and any(s.title for s in ds.samples):
        from training.evaluation.report import title_table
        from training.steps.train_title import train_title

        model, used = train_title(out, ds, split, cache_dir, command, target_precision=cfg.target_precision, progress=not quiet)
        click.echo(title_table(model, used))


@click.command("train")
@data_options
@model_options
@click.option("--tasks", default=None, help="Comma-separated tasks (default: all the data has).")
@click.option("--balance", type=click.Choice(["augment", "class_weight", "none", "compare"]), default="augment", show_default=True,
              help="Offline augmentation of minority classes, class weights, nothing, or train both and keep the better on validation.")
@click.option("--set", "sets", multiple=True, help="Head setting, e.g. season.learning_rate=1e-4 or all.pooling=avg.")
@click.option("--split", "split_file", type=click.Path(path_type=Path), default=None, help="Reuse this saved split (JSON).")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_MODELS, show_default=True, help="Where heads and manifest go.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Report folder (default artifacts/train-<time>).")
@click.option("--fine-tune-blocks", type=click.IntRange(0), default=0, show_default=True,
              help="0: frozen base. N: after each head is trained on the frozen features, train the backbone's top N blocks "
                   "with it (vgg16: 1 = block5, 2 = block4+5; resnet50: conv5_, conv4_ ...; efficientnetb7: block7+top, "
                   "block6 ...). Features are cached below the top blocks; the task gets its own backbone weights in "
                   "OUT/backbones/ (git-ignored) and is served standalone.")
@click.option("--fine-tune-epochs", type=click.IntRange(1), default=5, show_default=True, help="Epochs of the fine-tuning phase.")
@click.option("--fine-tune-lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="Adam learning rate of the fine-tuning phase.")
@click.option("--readout", default="auto", show_default=True,
              help="One feature vector per photo shared by three calibrated heads: gridN:LAYER[,LAYER...][+colour]; auto = "
                   f"{DEFAULT_READOUT} for vgg16 (docs/accuracy.md), none = the per-task heads on the output map.")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Auto-accept thresholds are chosen on validation for this precision (default AUTOLABEL_TARGET_PRECISION, 0.95).")
@click.option("--title/--no-title", default=True, show_default=True,
              help="With a readout: also fit the title models (photo + product title, docs/accuracy.md) where the data has titles.")
@click.option("--reviewed/--no-reviewed", default=False, show_default=True,
              help="Add the reviewers' labels from the label records in S3 (`autolabel review`): they override the "
                   "dataset's labels of the same photo; photos only the store has are added.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data: str, categories: str | None, per_class: int | None, seed: int, backbone: str, weights: str, input_size: str,
          resize: str, cache_dir: Path, tasks: str | None, balance: str, sets: tuple[str, ...], split_file: Path | None,
          out: Path, run_dir: Path | None, fine_tune_blocks: int, fine_tune_epochs: int, fine_tune_lr: float, readout: str,
          target_precision: float | None, title: bool, reviewed: bool, quiet: bool) -> None:
    """Train the task heads on a dataset (features cached).

    With a readout (the default for vgg16): three calibrated heads on one feature vector, their
    thresholds chosen for the target precision, and with --fine-tune-blocks 1 the top block
    fine-tuned for the three tasks together; then, where the data has product titles, the title
    models that read them beside the photo (as `autolabel train-title`). With --readout none: the study's per-task heads,
    and --fine-tune-blocks N fine-tunes the top N blocks with each head.
    """
    from training.features.backbones import fine_tune_blocks_error
    from training.heads.keras_heads import STUDY_CHAMPIONS, HeadConfig
    from training.heads.per_task import FineTuneConfig, TrainConfig, prepare
    from training.manifest.write import write_models

    spec = with_readout(backbone_spec(backbone, weights, input_size), readout)
    if spec.readout is not None:
        _train_joint(data, categories, per_class, seed, spec, resize, cache_dir, tasks, sets, split_file, out, fine_tune_blocks,
                     fine_tune_epochs, fine_tune_lr, target_precision, quiet, title, reviewed)
        return
    why = fine_tune_blocks_error(spec.name, fine_tune_blocks)
    if why:
        raise click.ClickException(why)
    fine = FineTuneConfig(fine_tune_blocks, fine_tune_epochs, fine_tune_lr)
    overrides = head_overrides(sets)
    try:
        heads = {t: HeadConfig.from_dict(overrides.get(t, {}), STUDY_CHAMPIONS[t]) for t in TASKS}
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"bad --set: {exc}") from None
    cfg = TrainConfig(backbone=spec, resize=resize, heads=heads, balance="augment" if balance == "compare" else balance,  # type: ignore[arg-type]
                      seed=seed, cache_dir=cache_dir, progress=not quiet, fine_tune=fine)
    ds = load_dataset(data, categories, per_class, seed, cache_dir if reviewed else None)
    split = saved_split(split_file, ds, reviewed, quiet) if split_file is not None else None
    from training.features.cache import BackboneError

    try:
        prep = prepare(ds, cfg, split, parse_tasks(tasks) if tasks else None)
    except (BackboneError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(prep.extract_report.line(), err=True)
    run_dir = run_dir or Path("artifacts") / f"train-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prep.split.save(run_dir / "split.json")
    results, comparison = _fit_tasks(prep, heads, cfg, balance)
    source = " ".join([str(data), *([f"categories={categories}"] if categories else []),
                       *([f"per_class={per_class}"] if per_class else []), f"seed={seed}"])
    rebuild = None
    if fine.blocks:
        rebuild = _train_command(data, categories, per_class, seed, spec, resize, [r.task for r in results], balance, sets,
                                 out / "split.json", out, fine)
    manifest = write_models(results, cfg, out, source, rebuild)
    prep.split.save(out / "split.json")
    _write_histories(out, results)
    click.echo(comparison_table(comparison))
    write_run(run_dir, results, data, cfg)
    click.echo(f"wrote {manifest} and {len(results)} head(s); report {run_dir / 'report.md'}")
    if fine.blocks:
        click.echo(f"fine-tuned backbone weights in {out / 'backbones'}/ (not committed; the manifest says how to rebuild them)")


def _fit_tasks(prep: Any, heads: dict[str, Any], cfg: Any, balance: str) -> tuple[list[Any], list[tuple[str, Any]]]:
    """Each task's head (both balance modes with ``compare``, the better on validation kept): (kept, all)."""
    from training.heads.per_task import train_task

    results, comparison = [], []
    for task, td in prep.tasks.items():
        modes = ["augment", "class_weight"] if balance == "compare" else [cfg.balance]
        candidates = [train_task(task, td, heads[task], cfg, prep.cache, mode) for mode in modes]
        for r in candidates:
            comparison.append((task, r))
        best = max(candidates, key=lambda r: r.val["balanced_accuracy"])
        results.append(best)
    return results, comparison


def _write_histories(out: Path, results: Sequence[Any]) -> None:
    """``history.json``: each head's fit (and fine-tune) history, merged into what is there."""
    histories = {r.task: {**r.history.to_dict(), **({"fine_tune": r.fine_tune_history.to_dict()} if r.fine_tune_history else {})}
                 for r in results}
    hist_path = out / "history.json"
    old = json.loads(hist_path.read_text()) if hist_path.is_file() else {}
    hist_path.write_text(json.dumps({**old, **histories}) + "\n")


def _train_command(data: str, categories: str | None, per_class: int | None, seed: int, spec: Any, resize: str,
                   tasks: Sequence[str], balance: str, sets: Sequence[str], split: Path, out: Path, fine: Any) -> str:
    """The `autolabel train` command that retrains these tasks the same way (on the same split)."""
    import shlex

    h, w = spec.input_size
    args = ["autolabel", "train", "--data", data, *(["--categories", categories] if categories else []),
            *(["--per-class", str(per_class)] if per_class else []), "--seed", str(seed), "--backbone", spec.name,
            "--weights", spec.weights, "--input-size", str(h) if h == w else f"{h}x{w}", "--resize", resize,
            "--tasks", ",".join(tasks), "--balance", balance, *(a for item in sets for a in ("--set", item)),
            "--split", str(split), "--out", str(out), "--fine-tune-blocks", str(fine.blocks),
            "--fine-tune-epochs", str(fine.epochs), "--fine-tune-lr", f"{fine.learning_rate:g}"]
    return shlex.join(args)


@click.command("sweep")
@click.argument("grid", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", default=None, help="KIND:PATH (default: the grid's `data`).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the Markdown tables here too.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep(grid: Path, data: str | None, out: Path | None, quiet: bool) -> None:
    """Train every head configuration of GRID.yaml on cached features; print Markdown tables."""
    from training.steps.sweep import GridError, load_grid, run_sweep, tables

    try:
        g = load_grid(grid, data)
    except GridError as exc:
        raise click.ClickException(str(exc)) from None
    ds = load_dataset(g.data, ",".join(g.categories) or None, g.per_class, g.seed)
    from training.features.cache import BackboneError

    try:
        rows = run_sweep(ds, g, progress=not quiet)
    except (BackboneError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    text = tables(rows, g)
    click.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
