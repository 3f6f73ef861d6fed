"""`autolabel publish`: upload photos to S3 (content-addressed) and emit ProductImageUploaded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import click
from kafka import KafkaProducer
from tqdm import tqdm

from services.endpoints import require_kafka, require_s3
from services.events import ImageLocation, ProductImageUploaded, validate_product_id
from services.settings import Settings, load_settings
from services.storage import Storage
from services.topics import require_topics

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class PublishSummary:
    published: list[ProductImageUploaded] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and image files inside folders (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise click.BadParameter(f"{path} does not exist", param_hint="PATH")
    return found


MAX_METADATA_KEYS = 32  # ProductImageUploaded.metadata holds at most 32 entries


def read_metadata_csv(path: Path, title_column: str = "title", require_title: bool = False) -> dict[str, dict[str, str]]:
    """product id -> metadata from a CSV with an ``id`` column; ``title_column`` becomes ``title``
    (the key the model reads). Empty cells are left out. Raises click.BadParameter naming the line,
    or (``require_title``) when the CSV has no ``title_column``; without it, says so on stderr."""
    import csv

    hint = "--metadata-csv"
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "id" not in columns:
                raise click.BadParameter(f"{path}: no `id` column (the product id); columns: {', '.join(columns) or 'none'}", param_hint=hint)
            if title_column not in columns:
                why = f"{path}: no `{title_column}` column; columns: {', '.join(columns)}"
                if require_title:
                    raise click.BadParameter(why, param_hint="--title-column")
                click.echo(f"{why}: the events carry no title (--title-column NAME names the title's column)", err=True)
            if len(columns) - 1 > MAX_METADATA_KEYS:
                raise click.BadParameter(f"{path}: {len(columns) - 1} metadata columns, at most {MAX_METADATA_KEYS}", param_hint=hint)
            out: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                pid = (row.get("id") or "").strip()
                if not pid:
                    raise click.BadParameter(f"{path}:{line}: empty id", param_hint=hint)
                if pid in out:
                    raise click.BadParameter(f"{path}:{line}: id {pid!r} appears twice", param_hint=hint)
                meta = {("title" if k == title_column else k): v for k, v in row.items() if k and k != "id" and v not in (None, "")}
                out[pid] = {k: v if isinstance(v, str) else ",".join(v) for k, v in meta.items()}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint=hint) from None
    return out


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=10, retries=5, max_in_flight_requests_per_connection=1)


def publish_files(settings: Settings, files: list[Path], progress: bool = True, product_ids: dict[Path, str] | None = None,
                  metadata: dict[str, dict[str, str]] | None = None) -> PublishSummary:
    """Upload each file and emit its event; ``metadata``: product id -> extra metadata (e.g. ``title``)."""
    storage = Storage(settings)
    producer = make_producer(settings)
    summary = PublishSummary()
    futures = []
    try:
        for path in tqdm(files, desc="publishing", unit="img", disable=not progress):
            try:
                product_id = validate_product_id((product_ids or {}).get(path, path.stem))
            except ValueError as exc:
                summary.skipped.append((path, str(exc)))
                continue
            data = path.read_bytes()
            location = storage.put_image(data, suffix=path.suffix.lower() or ".jpg")
            extra = (metadata or {}).get(product_id, {})
            event = ProductImageUploaded(product_id=product_id, image=ImageLocation(s3=location),
                                         metadata={"filename": path.name, **extra})
            futures.append(producer.send(settings.topic_images, key=product_id.encode(), value=event.to_bytes()))
            summary.published.append(event)
        producer.flush(timeout=30)
        for fut in futures:
            fut.get(timeout=30)  # raises if the broker refused a record
    finally:
        producer.close(timeout=10)
    return summary


@click.command("publish")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--product-id", default=None, help="The product id, for a single file (default: the file name without extension).")
@click.option("--metadata-csv", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV with an `id` column (the product id) and metadata columns, attached to each photo's event.")
@click.option("--title-column", default=None,
              help="The CSV column that holds the product title (sent as metadata `title`, which the model reads); "
                   "default: `title`, if the CSV has one.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def publish_command(paths: tuple[Path, ...], product_id: str | None, metadata_csv: Path | None, title_column: str | None,
                    quiet: bool) -> None:
    """Upload each image in PATHS (files or folders) and emit one event per image.

    The product id is the file name without its extension, unless --product-id is given.
    With --metadata-csv, each event carries its product's row (the title lifts the labels).
    """
    settings = load_settings()
    files = collect(paths)
    if not files:
        raise click.ClickException("no image files found (looked for .jpg, .jpeg, .png, .webp)")
    if product_id is not None and len(files) != 1:
        raise click.BadParameter(f"applies to exactly one file, got {len(files)}", param_hint="--product-id")
    if product_id is not None:
        try:
            validate_product_id(product_id)
        except ValueError as exc:
            raise click.BadParameter(f"{product_id!r}: {exc}", param_hint="--product-id") from None
    if title_column is not None and metadata_csv is None:
        raise click.BadParameter("names a column of --metadata-csv, which is not given", param_hint="--title-column")
    metadata = read_metadata_csv(metadata_csv, title_column or "title", require_title=title_column is not None) if metadata_csv else None
    if metadata is not None:
        ids = {(product_id if product_id else f.stem) for f in files}
        missing = len(ids - set(metadata))
        click.echo(f"metadata: {len(ids) - missing} of {len(ids)} product(s) have a row in {metadata_csv}", err=True)
    require_kafka(settings)  # within seconds, one line, rather than a client's traceback after 30 s
    require_s3(settings)
    require_topics(settings, {"topic_images": settings.topic_images})  # a misspelt topic is refused, never created
    summary = publish_files(settings, files, progress=not quiet, product_ids={files[0]: product_id} if product_id else None,
                            metadata=metadata)
    for path, why in summary.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"published {len(summary.published)} event(s) to {settings.topic_images}; skipped {len(summary.skipped)}")
    if summary.skipped and not summary.published:
        raise SystemExit(1)
