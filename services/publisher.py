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


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=10, retries=5, max_in_flight_requests_per_connection=1)


def publish_files(settings: Settings, files: list[Path], progress: bool = True, product_ids: dict[Path, str] | None = None) -> PublishSummary:
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
            event = ProductImageUploaded(product_id=product_id, image=ImageLocation(s3=location), metadata={"filename": path.name})
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
@click.option("--quiet", is_flag=True, help="No progress bar.")
def publish_command(paths: tuple[Path, ...], product_id: str | None, quiet: bool) -> None:
    """Upload each image in PATHS (files or folders) and emit one event per image.

    The product id is the file name without its extension, unless --product-id is given.
    """
    settings = load_settings()
    files = collect(paths)
    if not files:
        raise click.ClickException("no image files found (looked for .jpg, .jpeg, .png, .webp)")
    if product_id is not None and len(files) != 1:
        raise click.BadParameter(f"applies to exactly one file, got {len(files)}", param_hint="--product-id")
    require_kafka(settings)  # within seconds, one line, rather than a client's traceback after 30 s
    require_s3(settings)
    summary = publish_files(settings, files, progress=not quiet, product_ids={files[0]: product_id} if product_id else None)
    for path, why in summary.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"published {len(summary.published)} event(s) to {settings.topic_images}; skipped {len(summary.skipped)}")
    if summary.skipped and not summary.published:
        raise SystemExit(1)
