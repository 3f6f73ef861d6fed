"""Dataset sources for training and evaluation, given as ``KIND:PATH``.

- ``fpi:DIR``: the Kaggle "Fashion Product Images" layout (``styles.csv`` + ``images/<id>.jpg``)
  with the study's label mapping, children's products and duplicate photos handled;
- ``manifest:CSV``: a CSV with an image path column (``image``, ``path`` or ``file``; relative
  to the CSV) and one column per task (empty = no label);
- ``folders:DIR``: ``DIR/<task>/<class>/*.jpg``.

Every loader returns a :class:`Dataset` whose :class:`LoadReport` says how many rows were kept
and dropped, and why. Unreadable images are skipped and counted, never a crash.
"""

from __future__ import annotations

from training.data.rows import Dataset
from training.data.rows import DatasetError
from training.data.rows import LoadReport
from training.data.rows import Sample
from training.data.rows import TASK_CLASSES

import csv
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from services.errors import BadInput
from services.images import decode
from services.settings import TASKS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
KINDS = ("fpi", "manifest", "folders")

# The study's mapping of the catalog's values to our classes (others: no label).
STYLE_MAP = {"Casual": "casual", "Formal": "formal", "Smart Casual": "formal", "Sports": "sports"}
GENDER_MAP = {"Men": "men", "Women": "women"}
SEASON_MAP = {"Spring": "spring-fall", "Fall": "spring-fall", "Summer": "summer", "Winter": "winter"}
CHILD_WORDS = re.compile(r"\b(boys?|girls?|kids?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_spec(spec: str) -> DataSpec:
    """``KIND:PATH`` -> :class:`DataSpec`; checks the kind and that the path exists."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(f"--data must be KIND:PATH with KIND one of {', '.join(KINDS)} (got {spec!r})")
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)}")
    p = Path(path).expanduser()
    if kind == "manifest" and not p.is_file():
        raise DatasetError(f"manifest CSV not found: {p}")
    if kind in {"fpi", "folders"} and not p.is_dir():
        raise DatasetError(f"dataset directory not found: {p}")
    return DataSpec(kind, p)


# --- label mapping (pure) ----------------------------------------------------------


def is_child_product(name: str) -> bool:
    return bool(CHILD_WORDS.search(name or ""))


def map_fpi_labels(row: Mapping[str, str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """One ``styles.csv`` row -> (labels per task, why a task has none)."""
    labels: dict[str, str | None] = {}
    why: dict[str, str] = {}
    usage, gender, season = (row.get(k, "").strip() for k in ("usage", "gender", "season"))
    labels["style"] = STYLE_MAP.get(usage)
    if labels["style"] is None:
        why["style"] = f"usage={usage or '(empty)'}"
    labels["gender"] = GENDER_MAP.get(gender)
    if labels["gender"] is None:
        why["gender"] = f"gender={gender or '(empty)'}"
    elif is_child_product(row.get("productDisplayName", "")):
        labels["gender"] = None
        why["gender"] = "children's product labelled Men/Women"
    labels["season"] = SEASON_MAP.get(season)
    if labels["season"] is None:
        why["season"] = f"season={season or '(empty)'}"
    return labels, why


# --- loading -------------------------------------------------------------------------


def _digest_if_readable(path: Path) -> str | None:
    """sha256 of a decodable image file, or None when it is missing or unreadable."""
    try:
        data = path.read_bytes()
        decode(data)
    except (OSError, BadInput):
        return None
    return hashlib.sha256(data).hexdigest()


Candidate = tuple[str, Path, dict[str, str | None], dict[str, str]]  # key, path, labels, meta


def _read_images(candidates: Sequence[Candidate], report: LoadReport, progress: bool) -> list[Sample]:
    samples = []
    for key, path, labels, meta in tqdm(candidates, desc="reading images", unit="img", disable=not progress, leave=False):
        if not path.is_file():
            report.drop("image file missing")
            continue
        digest = _digest_if_readable(path)
        if digest is None:
            report.drop("image unreadable")
            continue
        samples.append(Sample(key, path, digest, labels, meta))
    return samples


def dedupe(samples: Sequence[Sample], tasks: Sequence[str], report: LoadReport) -> list[Sample]:
    """Keep one sample per identical photo (same sha256).

    The kept one is the first in ``samples``; where the copies disagree on a task's label,
    that label is removed (nobody knows which is right)."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.digest, []).append(s)
    out = []
    for group in groups.values():
        first = group[0]
        if len(group) > 1:
            report.drop("duplicate photo (same bytes as a kept row)", len(group) - 1)
            labels = dict(first.labels)
            for task in tasks:
                seen = {s.label(task) for s in group} - {None}
                if len(seen) > 1:
                    labels[task] = None
                    report.unlabel(task, "duplicate photos with conflicting labels")
                elif seen and labels.get(task) is None:
                    labels[task] = seen.pop()
            first = replace(first, labels=labels)
        out.append(first)
    return out


def _finish(samples: list[Sample], classes: dict[str, tuple[str, ...]], report: LoadReport) -> Dataset:
    samples = dedupe(samples, list(classes), report)
    report.kept = len(samples)
    return Dataset(samples, classes, report)


def load_fpi(root: Path, categories: Sequence[str] | None = None, progress: bool = True) -> Dataset:
    csv_path = root / "styles.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{root} is not in the Fashion Product Images layout: no styles.csv")
    report = LoadReport(f"fpi:{root}")
    wanted = {c.lower() for c in categories} if categories else None
    candidates = []
    reasons: dict[str, dict[str, str]] = {}
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = {"id", "gender", "season", "usage"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{csv_path} lacks the columns {', '.join(sorted(missing))}")
        for row in reader:
            report.rows += 1
            key = (row.get("id") or "").strip()
            if not key or None in row:
                report.drop("malformed CSV row")
                continue
            if wanted is not None and (row.get("masterCategory") or "").strip().lower() not in wanted:
                report.drop(f"masterCategory not in {','.join(sorted(categories or []))}")
                continue
            labels, why = map_fpi_labels(row)
            if all(v is None for v in labels.values()):
                report.drop("no task label defined")
                continue
            reasons[key] = why
            meta = {"title": row.get("productDisplayName") or "", "category": row.get("masterCategory") or "",
                    "catalog_gender": row.get("gender") or "", "article": row.get("articleType") or ""}
            candidates.append((key, root / "images" / f"{key}.jpg", labels, {k: v.strip() for k, v in meta.items()}))
    # Sort by numeric id so the kept copy of a duplicate does not depend on the CSV order.
    candidates.sort(key=lambda c: (len(c[0]), c[0]))
    dataset = _finish(_read_images(candidates, report, progress), dict(TASK_CLASSES), report)
    for sample in dataset.samples:  # why a kept row has no label for a task
        for task, reason in reasons.get(sample.key, {}).items():
            report.unlabel(task, reason)
    return dataset


def _image_column(fieldnames: Sequence[str]) -> str:
    for name in ("image", "path", "file", "filename"):
        if name in fieldnames:
            return name
    raise DatasetError(f"manifest has no image path column (image, path, file or filename): {list(fieldnames)}")


def load_manifest(csv_path: Path, progress: bool = True) -> Dataset:
    report = LoadReport(f"manifest:{csv_path}")
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        image_col = _image_column(fields)
        tasks = [t for t in TASKS if t in fields]
        if not tasks:
            raise DatasetError(f"manifest has no task column ({', '.join(TASKS)}): {fields}")
        rows = list(reader)
    seen: dict[str, set[str]] = {t: set() for t in tasks}
    candidates = []
    for row in rows:
        report.rows += 1
        rel = (row.get(image_col) or "").strip()
        if not rel:
            report.drop("empty image path")
            continue
        labels: dict[str, str | None] = {t: (row.get(t) or "").strip() or None for t in tasks}
        for t, v in labels.items():
            if v is None:
                report.unlabel(t, "empty cell")
            else:
                seen[t].add(v)
        if all(v is None for v in labels.values()):
            report.drop("no task label defined")
            continue
        path = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
        meta = {k: (row.get(k) or "").strip() for k in ("title", "category") if (row.get(k) or "").strip()}
        candidates.append((rel, path, labels, meta))
    classes = {t: _classes_for(t, seen[t]) for t in tasks}
    return _finish(_read_images(candidates, report, progress), classes, report)


def load_folders(root: Path, progress: bool = True) -> Dataset:
    report = LoadReport(f"folders:{root}")
    tasks = [t for t in TASKS if (root / t).is_dir()]
    if not tasks:
        raise DatasetError(f"{root} has none of the folders {', '.join(TASKS)} (DIR/<task>/<class>/*.jpg)")
    classes: dict[str, tuple[str, ...]] = {}
    candidates = []
    for task in tasks:
        names = sorted(p.name for p in (root / task).iterdir() if p.is_dir())
        classes[task] = _classes_for(task, set(names))
        for cls in names:
            for path in sorted((root / task / cls).iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    report.rows += 1
                    candidates.append((str(path.relative_to(root)), path, {task: cls}, {}))
    # The same photo may sit in several task folders: merge its labels into one sample.
    merged: dict[str, Sample] = {}
    for s in _read_images(candidates, report, progress):
        prev = merged.get(s.digest)
        if prev is None:
            merged[s.digest] = s
            continue
        labels = dict(prev.labels)
        for t, v in s.labels.items():
            if t not in labels:
                labels[t] = v  # the same photo labelled for another task
            elif labels[t] == v:
                report.drop("duplicate photo (same bytes as a kept row)")
            elif labels[t] is not None:
                labels[t] = None
                report.unlabel(t, "duplicate photos with conflicting labels")
        merged[s.digest] = replace(prev, labels=labels)
    samples = [replace(s, labels={t: s.labels.get(t) for t in tasks}) for s in merged.values()]
    report.kept = len(samples)
    return Dataset(samples, classes, report)


def _classes_for(task: str, seen: set[str]) -> tuple[str, ...]:
    """The known class order for our tasks (so heads and data agree); unknown names sorted after."""
    known = TASK_CLASSES.get(task, ())
    return tuple(c for c in known if c in seen or not seen) + tuple(sorted(seen - set(known)))


def load(spec: str | DataSpec, categories: Sequence[str] | None = None, progress: bool = True) -> Dataset:
    """Load any source. ``categories`` filters ``fpi`` rows by masterCategory."""
    ds = parse_spec(spec) if isinstance(spec, str) else spec
    if ds.kind == "fpi":
        return load_fpi(ds.path, categories, progress)
    if categories:
        raise DatasetError("--categories applies to fpi:DIR sources only")
    if ds.kind == "manifest":
        return load_manifest(ds.path, progress)
    return load_folders(ds.path, progress)
