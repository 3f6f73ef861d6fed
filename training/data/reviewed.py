"""Reviewed labels from the store as training data (`autolabel train --reviewed`).

Every S3 label record with ``human_labels`` (written by `autolabel review`) gives its human
labels. A record whose photo is already a row of the dataset (same image bytes: the bucket's
keys are the photos' SHA-256; or the same product id as the row's key) overrides that row's
catalog labels; any other photo is downloaded into the cache and added as a row. A human
label of a class the dataset does not have is not used (counted).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.data.rows import Dataset, Sample


@dataclass
class ReviewedReport:
    records: int = 0  # records with human labels
    labels_used: int = 0  # task labels taken from reviewers
    overrode: int = 0  # of those, replacing a different catalog label
    rows_matched: int = 0  # dataset rows whose labels reviewers set
    rows_added: int = 0  # photos only the store had
    skipped: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return (f"reviewed labels: {self.labels_used} task label(s) from {self.records} reviewed record(s) used "
                f"({self.overrode} overriding catalog labels; {self.rows_matched} dataset row(s) matched, "
                f"{self.rows_added} photo(s) added)" + (f"; not used: {skipped}" if skipped else ""))


def _digest_of_key(key: str) -> str | None:
    stem = Path(key).stem
    return stem if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) else None


def _usable_labels(record: Any, ds: Dataset, report: ReviewedReport) -> dict[str, str]:
    """The record's human labels of the dataset's tasks and classes (the rest counted as skipped)."""
    labels = {}
    for task, human in record.human_labels.items():
        if task not in ds.classes:
            report.skipped[f"{task}: task not trained"] += 1
        elif human.label not in ds.classes[task]:
            report.skipped[f"{task}: class {human.label!r} not in the dataset"] += 1
        else:
            labels[task] = human.label
    return labels


def add_reviewed(ds: Dataset, settings, cache_dir: Path) -> tuple[Dataset, ReviewedReport]:  # noqa: ANN001
    """``ds`` with the store's human labels applied (see the module doc) and what was used."""
    from services.events import ProductLabeled
    from services.storage import Storage

    storage = Storage(settings)
    report = ReviewedReport()
    by_digest = {s.digest: i for i, s in enumerate(ds.samples)}
    by_key = {s.key: i for i, s in enumerate(ds.samples)}
    samples = list(ds.samples)
    prefix = settings.s3_labels_prefix
    photo_dir = Path(cache_dir) / "reviewed-photos"
    for key in storage.list_keys(prefix):
        if not key.endswith(".json") or "/" in key[len(prefix):]:
            continue
        try:
            record = ProductLabeled.model_validate_json(storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read())
        except ValueError:
            report.skipped["unreadable record"] += 1
            continue
        if not record.human_labels:
            continue
        report.records += 1
        labels = _usable_labels(record, ds, report)
        if not labels:
            continue
        s3 = record.image.s3
        digest = _digest_of_key(s3.key) if s3 is not None else None
        index = by_digest.get(digest) if digest else None
        if index is None:
            index = by_key.get(record.product_id)
        if index is not None:
            row = samples[index]
            report.overrode += sum(1 for t, lab in labels.items() if row.labels.get(t) not in (None, lab))
            samples[index] = replace(row, labels={**row.labels, **labels})
            report.rows_matched += 1
        elif s3 is not None:
            try:
                data, _ = storage.get_object_bytes(s3)
            except FileNotFoundError:
                report.skipped["photo gone from the bucket"] += 1
                continue
            digest = hashlib.sha256(data).hexdigest()
            path = photo_dir / f"{digest}{Path(s3.key).suffix or '.jpg'}"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            samples.append(Sample(key=f"reviewed:{record.product_id}", path=path, digest=digest,
                                  labels={t: labels.get(t) for t in ds.classes}, meta=dict(record.metadata or {})))
            report.rows_added += 1
        else:
            report.skipped["photo not in the bucket"] += 1
            continue
        report.labels_used += len(labels)
    return replace(ds, samples=samples), report
