"""Add-ons fitted on trained image models: `autolabel train-title` (the title as a second signal, training/heads/title.py)
and `autolabel train-scope` (the scope gate, training/heads/scope.py) and `autolabel train-others` (training/heads/others.py)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from training.cli.options import DEFAULT_MODELS, csv_list, load_dataset

# options the add-on commands share
CACHE_DIR = click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/features"), show_default=True)
TARGET_PRECISION = click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
                                help="Auto-accept thresholds for the target precision (default AUTOLABEL_TARGET_PRECISION, 0.95).")
QUIET = click.option("--quiet", is_flag=True, help="No progress bars.")


def models_dir_option(help_text: str):  # noqa: ANN201 - a click decorator
    return click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_MODELS, show_default=True,
                        help=help_text)


def split_option(help_text: str):  # noqa: ANN201 - a click decorator
    return click.option("--split", "split_file", type=click.Path(path_type=Path), default=None, help=help_text)


def _models_and_split(models_dir: Path, split_file: Path | None):  # noqa: ANN202 - training.data.split.Split
    """The trained models must be there; the split they were trained on (default: MODELS/split.json)."""
    from training.data.split import Split
    from training.errors import ModelsError
    from training.manifest.read import read_models

    try:
        read_models(models_dir)
    except ModelsError as exc:
        raise click.ClickException(str(exc)) from None
    split_file = split_file or models_dir / "split.json"
    if not split_file.is_file():
        raise click.ClickException(f"split file not found: {split_file} (the split the models were trained on)")
    return Split.load(split_file)


@click.command("train-title")
@click.option("--data", required=True, help="KIND:PATH (fpi: titles from productDisplayName; manifest: a `title` column).")
@click.option("--categories", default=None, help="fpi only: keep these masterCategory values (comma-separated).")
@models_dir_option("The trained image models (manifest.json, heads/); the title models are added here.")
@split_option("The split the image models were trained on (default: MODELS/split.json).")
@CACHE_DIR
@TARGET_PRECISION
@QUIET
def train_title_command(data: str, categories: str | None, models_dir: Path, split_file: Path | None, cache_dir: Path,
                        target_precision: float | None, quiet: bool) -> None:
    """Fit a title model per task and its fusion with the image model (validation part), write heads/title.npz.

    The served heads then take the upload's title beside the photo (docs/accuracy.md); an upload
    without a title keeps the image model's labels exactly."""
    from services.settings import load_settings
    from training.evaluation.report import title_table
    from training.steps.train_title import train_title

    split = _models_and_split(models_dir, split_file)
    ds = load_dataset(data, ",".join(csv_list(categories)) or None, None, 0)
    if not any(s.title for s in ds.samples):
        raise click.ClickException(f"{data}: no sample has a title (fpi: productDisplayName; manifest: a `title` column)")
    precision = target_precision or load_settings().target_precision
    command = "autolabel train-title " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    started = time.perf_counter()
    model, used = train_title(models_dir, ds, split, cache_dir, command, target_precision=precision,
                              progress=not quiet)
    click.echo(title_table(model, used))
    click.echo(f"wrote {models_dir / 'heads' / 'title.npz'} and the manifest's 'title' entry ({time.perf_counter() - started:.0f}s); "
               "rebuild the repository: autolabel models build")


@click.command("train-scope")
@click.option("--data", required=True, help="KIND:PATH with every category (fpi: masterCategory; manifest: a `category` column).")
@click.option("--in-scope", default="Apparel", show_default=True, help="The categories the heads were trained for (comma-separated).")
@models_dir_option("The trained models; the gate is added here (heads/scope.keras, manifest 'scope').")
@split_option("The split the models were trained on, made over every category (default: MODELS/split.json).")
@click.option("--max-false-flags", type=click.FloatRange(0, 0.5, min_open=True), default=0.01, show_default=True,
              help="Share of in-scope validation photos the threshold may send to review.")
@CACHE_DIR
@QUIET
def train_scope_command(data: str, in_scope: str, models_dir: Path, split_file: Path | None, max_false_flags: float, cache_dir: Path,
                        quiet: bool) -> None:
    """Fit the scope gate on the models' readout (training part), its threshold on validation.

    Photos the gate calls out of scope (shoes, bags, ... for apparel heads) get every label
    flagged for review, with the reason in the label event (docs/accuracy.md, "Out of scope")."""
    from training.steps.train_scope import metrics_table, train_scope

    split = _models_and_split(models_dir, split_file)
    ds = load_dataset(data, None, None, 0)
    command = "autolabel train-scope " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    started = time.perf_counter()
    try:
        _, metrics = train_scope(models_dir, ds, split, cache_dir, command, csv_list(in_scope), max_false_flags,
                                 progress=not quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(metrics_table(metrics))
    click.echo(f"wrote {models_dir / 'heads' / 'scope.keras'} and the manifest's 'scope' entry ({time.perf_counter() - started:.0f}s); "
               "rebuild the repository: autolabel models build")


@click.command("train-others")
@click.option("--data", required=True, help="KIND:PATH with every category (fpi: masterCategory; manifest: a `category` column).")
@models_dir_option("The trained models with their scope gate; the heads are added here (heads/others/, manifest 'others').")
@split_option("The split the models were trained on, made over every category (default: MODELS/split.json).")
@CACHE_DIR
@TARGET_PRECISION
@click.option("--route-budget", type=click.FloatRange(0, 0.5), default=0.0025, show_default=True,
              help="Share of in-scope validation photos that may be given these heads' labels (sets the routing threshold).")
@QUIET
def train_others_command(data: str, models_dir: Path, split_file: Path | None, cache_dir: Path, target_precision: float | None,
                         route_budget: float, quiet: bool) -> None:
    """Fit a head per task for the photos outside the gate's categories (shoes, bags, ...), on the same readout.

    Served inside each task's head: the gate routes those photos to them, so they get labels made for them;
    each task's auto-accept threshold for them is chosen on validation (docs/accuracy.md, "Other categories")."""
    from services.settings import load_settings
    from training.heads.others import HEADS_DIR
    from training.steps.train_others import metrics_table, train_others

    split = _models_and_split(models_dir, split_file)
    ds = load_dataset(data, None, None, 0)
    command = "autolabel train-others " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    started = time.perf_counter()
    try:
        record = train_others(models_dir, ds, split, cache_dir, command, target_precision or load_settings().target_precision,
                              route_budget, progress=not quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(metrics_table(record, "val"))
    click.echo(f"wrote {models_dir / HEADS_DIR}/ and the manifest's 'others' entry ({time.perf_counter() - started:.0f}s); "
               "rebuild the repository: autolabel models build")
