"""`autolabel train-title`: add the title as a second signal to trained image models (training/title.py)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from training.cli import DEFAULT_MODELS, _csv, _load_dataset


@click.command("train-title")
@click.option("--data", required=True, help="KIND:PATH (fpi: titles from productDisplayName; manifest: a `title` column).")
@click.option("--categories", default=None, help="fpi only: keep these masterCategory values (comma-separated).")
@click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_MODELS, show_default=True,
              help="The trained image models (manifest.json, heads/); the title models are added here.")
@click.option("--split", "split_file", type=click.Path(path_type=Path), default=None,
              help="The split the image models were trained on (default: MODELS/split.json).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/features"), show_default=True)
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Auto-accept thresholds for the target precision (default AUTOLABEL_TARGET_PRECISION, 0.95).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_title_command(data: str, categories: str | None, models_dir: Path, split_file: Path | None, cache_dir: Path,
                        target_precision: float | None, quiet: bool) -> None:
    """Fit a title model per task and its fusion with the image model (validation part), write heads/title.npz.

    The served heads then take the upload's title beside the photo (docs/accuracy.md); an upload
    without a title keeps the image model's labels exactly."""
    from services.settings import load_settings
    from training.serving_models import ModelsError, read_models
    from training.split import Split
    from training.report import title_table
    from training.title import train_title

    try:
        read_models(models_dir)
    except ModelsError as exc:
        raise click.ClickException(str(exc)) from None
    split_file = split_file or models_dir / "split.json"
    if not split_file.is_file():
        raise click.ClickException(f"split file not found: {split_file} (the split the image models were trained on)")
    ds = _load_dataset(data, ",".join(_csv(categories)) or None, None, 0)
    if not any(s.title for s in ds.samples):
        raise click.ClickException(f"{data}: no sample has a title (fpi: productDisplayName; manifest: a `title` column)")
    precision = target_precision or load_settings().target_precision
    command = "autolabel train-title " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    started = time.perf_counter()
    model, used = train_title(models_dir, ds, Split.load(split_file), cache_dir, command, target_precision=precision,
                              progress=not quiet)
    click.echo(title_table(model, used))
    click.echo(f"wrote {models_dir / 'heads' / 'title.npz'} and the manifest's 'title' entry ({time.perf_counter() - started:.0f}s); "
               "rebuild the repository: autolabel models build")
