"""`autolabel evaluate`: score the served models (or the committed heads) on a labeled dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from training.cli import DEFAULT_MODELS, SCOPES, _csv, _load_dataset, _tasks, data_options


@click.command("evaluate")
@data_options
@click.option("--tasks", default=None, help="Comma-separated tasks (default: all).")
@click.option("--repository", type=click.Path(path_type=Path), default=None, help="Model repository (default: AUTOLABEL_MODEL_REPOSITORY).")
@click.option("--from-heads", is_flag=True, help="Evaluate the committed heads on the backbone in process instead of the repository.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=DEFAULT_MODELS, show_default=True)
@click.option("--split", "split_file", type=click.Path(path_type=Path), default=None,
              help="Restrict each task to a part of this split (default: MODELS/split.json, the committed honest split, if there).")
@click.option("--all-rows", is_flag=True, help="Score every labeled row, ignoring the split.")
@click.option("--part", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--scope", type=click.Choice(SCOPES), default="apparel-mw", show_default=True,
              help="Headline rows: Apparel of Men/Women products, or all; other categories are reported apart.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), default=None, help="Write the metrics as JSON.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None, help="Write PNGs and report.md here.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--inputs", "inputs_", default="image", show_default=True,
              help="What the served heads read: image, title, image+title, or several comma-separated (one backbone pass); "
                   "title needs heads trained with `autolabel train-title`.")
@click.option("--predictions", "predictions_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save the headline rows' per-photo probabilities (photo only) as .npz, for --agree-with.")
@click.option("--agree-with", "agree_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Compare the labels with another run's --predictions file (e.g. OpenVINO bf16 against TensorFlow).")
@click.option("--review-policy", "review_policy", default=None,
              help="Each task's review policy for the products table, as AUTOLABEL_REVIEW_POLICY (task=policy,...; default: that "
                   "setting, i.e. the served policy): e.g. season=advisory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(data: str, categories: str | None, per_class: int | None, seed: int, tasks: str | None, repository: Path | None,
             from_heads: bool, models_dir: Path, split_file: Path | None, all_rows: bool, part: str, scope: str,
             json_file: Path | None, report_dir: Path | None, batch_size: int, inputs_: str, predictions_file: Path | None,
             agree_file: Path | None, review_policy: str | None, quiet: bool) -> None:
    """Evaluate the served models on a labeled dataset: accuracy, balanced accuracy, macro-F1 per class,
    calibration error, and coverage/precision of the labels the shipped thresholds auto-accept."""
    from training.evaluate import by_category, evaluate as run_eval, in_scope, load_gate, subset
    from training.products import product_summary

    task_list = _tasks(tasks)
    inputs = _inputs(inputs_, from_heads)
    manifest = None
    if (models_dir / "manifest.json").is_file():
        manifest = json.loads((models_dir / "manifest.json").read_text())
    ds = _load_dataset(data, categories, per_class, seed)
    task_list = [t for t in task_list if t in ds.tasks]
    if not task_list:
        raise click.ClickException(f"{data} has labels for none of the requested tasks")
    keys, split_file = _rows(ds, task_list, models_dir, split_file, all_rows, part)
    repository = repository or _default_repository()
    models = _models(task_list, manifest, models_dir, repository, from_heads, inputs)
    gate = None if from_heads else load_gate(repository)
    every = run_eval(ds, models, keys, batch_size, progress=not quiet, gate=gate)
    for t, r in every.items():
        if any(r.skipped.values()):
            click.echo(f"  {t}: skipped " + ", ".join(f"{n} {why}" for why, n in r.skipped.items() if n), err=True)
    headline_keys = {s.key for s in ds.samples if in_scope(s, scope)}
    results = {t: subset(r, headline_keys) for t, r in every.items()}
    metrics = {t: r.metrics for t, r in results.items()}
    primary = next((i for i in ("image+title", "image") if i in inputs), inputs[0])  # what the worker serves
    policies = _policies(review_policy)
    by_inputs = {i: product_summary({m.task: results[m.key] for m in models if m.inputs == i}, policies)
                 for i in dict.fromkeys(m.inputs for m in models)}
    products = by_inputs[primary]
    by_cat = by_category(ds.samples, every, headline_keys)
    _print_tables(scope, metrics, by_inputs, by_cat)
    gated = {"threshold": gate.threshold, "by_category": gate.by_category(ds.samples)} if gate and gate.p_out else None
    if gated:
        click.echo(f"\nScope gate (P(out of scope) > {gate.threshold:.3f}: every label to review), share of photos flagged:")  # type: ignore[union-attr]
        for cat, g in gated["by_category"].items():
            click.echo(f"  {cat:<22} {g['flagged']:>7.1%} of {g['photos']}")
    agreed = None
    if predictions_file or agree_file:
        from training.agreement import agreement, agreement_lines, load_predictions, save_predictions

        photo = {m.task: results[m.key] for m in models if m.inputs == "image"}
        if predictions_file:
            save_predictions(predictions_file, photo)
        if agree_file:
            mine = {t: {"keys": np.asarray(r.keys), "y": r.y, "probs": r.probs, "classes": np.asarray(r.classes),
                        "threshold": np.asarray(r.threshold if isinstance(r.threshold, (int, float)) else np.nan)} for t, r in photo.items()}
            agreed = agreement(mine, load_predictions(agree_file))
            click.echo(f"\nAgreement with {agree_file} (this run against it, same photos):")
            for line in agreement_lines(agreed):
                click.echo(line)
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps({"scope": scope, "inputs": inputs, "tasks": metrics, "products": products,
                                         "products_by_inputs": by_inputs, "by_category": by_cat,
                                         "scope_gate": gated, **({"agreement": {"with": str(agree_file), "tasks": agreed}} if agreed else {})},
                                        indent=2) + "\n")
    if report_dir:
        rows = f"the {part} part of {split_file}" if keys is not None else "every labeled row"
        _write_report(report_dir, data, models_dir, models, results, metrics, f"Rows: {rows}; scope {scope}.")


def _rows(ds, task_list: list[str], models_dir: Path, split_file: Path | None, all_rows: bool, part: str):  # noqa: ANN001, ANN202
    """The rows to score per task (None: every labeled row) and the split file they come from."""
    from training.split import Split

    default_split = split_file is None and not all_rows and (models_dir / "split.json").is_file()
    if default_split:
        split_file = models_dir / "split.json"
    if split_file is None or all_rows:
        return None, split_file
    if not split_file.is_file():
        raise click.ClickException(f"split file not found: {split_file}")
    split = Split.load(split_file)
    keys = {t: set(split.keys(t, part)) for t in task_list if t in split.tasks}
    known = set().union(*(set(k) for parts in split.tasks.values() for k in parts.values()))
    if default_split and sum(s.key in known for s in ds.samples) < len(ds.samples) / 2:
        click.echo(f"  {split_file} does not cover this data (new photos): scoring every labeled row", err=True)
        return None, None
    click.echo(f"  rows: the {part} part of {split_file}" + (" (near-duplicate groups never straddle parts)"
                                                             if split.grouping else " (an ungrouped split)"), err=True)
    return keys, split_file


def _policies(value: str | None) -> dict[str, str]:
    """Review policies from the option, else from AUTOLABEL_REVIEW_POLICY (parsed and checked by the settings)."""
    from pydantic import ValidationError

    from services.settings import Settings, load_settings

    if value is None:
        return dict(load_settings().review_policy)
    try:
        return dict(Settings(review_policy=value).review_policy)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--review-policy") from None


def _inputs(value: str, from_heads: bool) -> list[str]:
    """--inputs: image, title, image+title, comma-separated."""
    from training.title import INPUTS

    inputs = _csv(value)
    if not inputs or any(i not in INPUTS for i in inputs):
        raise click.BadParameter(f"choose from {', '.join(INPUTS)} (got {value!r})", param_hint="--inputs")
    if from_heads and inputs != ["image"]:
        raise click.BadParameter("--from-heads scores the photo alone; build the repository to score the title", param_hint="--inputs")
    return inputs


def _default_repository() -> Path:
    from services.settings import load_settings

    return Path(load_settings().model_repository)


def _models(task_list: list[str], manifest: dict | None, models_dir: Path, repository: Path, from_heads: bool,
            inputs: list[str]) -> list:
    """The models to score: the committed heads in process, or the served repository."""
    from training.errors import ModelsError
    from training.evaluate import load_heads, load_repository

    try:
        if from_heads:
            if manifest is None:
                raise ModelsError(f"no {models_dir}/manifest.json: run `autolabel train` first")
            models = load_heads(models_dir, task_list, manifest)
        else:
            models = load_repository(repository, task_list, manifest, inputs)
    except ModelsError as exc:
        raise click.ClickException(str(exc)) from None
    for m in models:
        click.echo(f"  {m.key}: {m.origin} ({m.input_size[0]}x{m.input_size[1]}, {m.resize})", err=True)
    return models


def _print_tables(scope: str, metrics: dict, by_inputs: dict, by_cat: dict) -> None:
    from training.report import accept_table, category_table, metrics_table, per_class_table

    click.echo(f"Scope: {scope}" + (" (Apparel of Men/Women products)" if scope == "apparel-mw" else ""))
    click.echo(metrics_table(metrics))
    click.echo("")
    click.echo(accept_table(metrics))
    for inputs, products in by_inputs.items():
        if not products:
            continue
        policy = ", ".join(f"{t} {p}" for t, p in products["policies"].items())
        precision = ", ".join(f"{t} {a['share']:.1%} at {a['precision']:.3f}" for t, a in products["accepted"].items())
        click.echo(f"\nProducts scored for every task ({inputs}; review policy: {policy}): {products['products']}; skip review: "
                   f"{products['unflagged']} ({products['unflagged_share']:.1%}); of those, every accepted label right: "
                   f"{products['unflagged_all_right_share']:.1%}. Accepted labels (share of products, precision): {precision}")
    for t, m in metrics.items():
        click.echo("")
        click.echo(per_class_table(t, m))
    if by_cat:
        click.echo("\nOutside the headline scope (reported apart):")
        click.echo(category_table(by_cat))


def _write_report(report_dir: Path, data: str, models_dir: Path, models: list, results: dict, metrics: dict, rows: str) -> None:
    from training.report import write_report

    hist_path = models_dir / "history.json"
    histories = json.loads(hist_path.read_text()) if hist_path.is_file() else {}
    page = write_report(
        report_dir, f"Evaluation on {data}", metrics, {t: (r.confusion, r.classes) for t, r in results.items()},
        {t: h for t, h in histories.items() if t in results},
        ["Models: " + "; ".join(f"{m.key}: `{m.origin}`" for m in models), rows],
        predictions={t: (r.y, r.probs, r.threshold) for t, r in results.items()},
    )
    click.echo(f"report: {page}", err=True)
