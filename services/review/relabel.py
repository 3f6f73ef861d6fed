"""`autolabel relabel`: bring a new model to products already labeled.

Reads the stored label records, picks all of them, the flagged ones, or those labeled by a
model version other than the served one, and re-emits each record's upload as a
``ProductImageUploaded`` with the SAME event id and ``uploaded_at``: to the worker it is the
same upload labeled again, which replaces the stored record only with another model version
(:func:`services.events.supersedes`) and keeps the reviewers' labels
(:func:`services.storage.keep_human_labels`). Paced at a rate limit; resumable: a checkpoint
in the state dir holds the last product id sent and acknowledged (ids go in sorted order)
until the run completes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from services.events import ProductImageUploaded, ProductLabeled
from services.settings import Settings
from services.storage import Storage

CHOICES = ("all", "flagged", "other-version")
CHECKPOINT_EVERY = 50


@dataclass
class RelabelSummary:
    considered: int = 0
    selected: int = 0
    sent: int = 0
    skipped_done: int = 0  # sent by an earlier run (the checkpoint)
    served_version: str | None = None
    checkpoint: Path | None = None


def served_version(settings: Settings) -> str:
    import asyncio

    from services.inference import TritonLabeler

    async def ask() -> str:
        labeler = TritonLabeler(settings)
        try:
            return (await labeler.discover()).info.version
        finally:
            await labeler.close()

    return asyncio.run(ask())


def wanted(record: ProductLabeled, only: str, version: str | None) -> bool:
    if only == "all":
        return True
    if only == "flagged":
        return record.needs_review
    return record.model.version != version


def upload_again(record: ProductLabeled) -> ProductImageUploaded:
    """The record's upload as an event again: same event id, same time (the same upload)."""
    return ProductImageUploaded(event_id=record.source_event_id, product_id=record.product_id, image=record.image,
                                uploaded_at=record.upload_order()[0], metadata=record.metadata or {})


def checkpoint_path(settings: Settings, only: str, version: str | None) -> Path:
    scope = f"{settings.s3_bucket}/{settings.s3_labels_prefix}|{settings.topic_images}|{only}|{version}"
    return Path(settings.state_dir) / "relabel" / f"{hashlib.sha256(scope.encode()).hexdigest()[:16]}.json"


def read_records(storage: Storage, progress: bool) -> list[ProductLabeled]:
    prefix = storage.settings.s3_labels_prefix
    keys = sorted(k for k in storage.list_keys(prefix) if k.endswith(".json") and "/" not in k[len(prefix):])
    out = []
    for key in tqdm(keys, desc="reading records", unit="rec", disable=not progress):
        body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
        try:
            out.append(ProductLabeled.model_validate_json(body))
        except ValueError:
            continue
    return out


def relabel(settings: Settings, only: str = "other-version", rate: float | None = None, restart: bool = False,
            progress: bool = True, limit: int | None = None, sleep: Callable[[float], None] = time.sleep) -> RelabelSummary:
    from services.publisher import make_producer

    if only not in CHOICES:
        raise ValueError(f"only must be one of {CHOICES}")
    summary = RelabelSummary()
    version = served_version(settings) if only == "other-version" else None
    summary.served_version = version
    path = checkpoint_path(settings, only, version)
    summary.checkpoint = path
    last = None
    if path.is_file() and not restart:
        last = json.loads(path.read_text()).get("last_product_id")
    storage = Storage(settings)
    records = read_records(storage, progress)
    summary.considered = len(records)
    chosen = sorted((r for r in records if wanted(r, only, version)), key=lambda r: r.product_id)
    summary.selected = len(chosen)
    todo = [r for r in chosen if last is None or r.product_id > last]
    summary.skipped_done = len(chosen) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    rate = rate or settings.relabel_rate
    interval = 1.0 / rate
    producer = make_producer(settings)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(product_id: str) -> None:
        producer.flush(timeout=60)  # acknowledged before the checkpoint moves past them
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_product_id": product_id, "only": only, "served_version": version}))
        tmp.replace(path)

    try:
        next_at = time.monotonic()
        with tqdm(total=len(todo), desc="relabel", unit="product", disable=not progress) as bar:
            for i, record in enumerate(todo, 1):
                wait = next_at - time.monotonic()
                if wait > 0:
                    sleep(wait)
                next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a stall
                event = upload_again(record)
                producer.send(settings.topic_images, key=record.product_id.encode(), value=event.to_bytes())
                summary.sent += 1
                bar.update(1)
                if i % CHECKPOINT_EVERY == 0:
                    save(record.product_id)
            if todo:
                save(todo[-1].product_id)
        if limit is None or len(todo) < limit:
            path.unlink(missing_ok=True)  # all sent: the next run starts over
    finally:
        producer.close(timeout=30)
    return summary
