"""The labeled rows every loader returns: :class:`Sample`, :class:`Dataset` with its :class:`LoadReport`, the task classes, and a per-class cap."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "style": ("casual", "formal", "sports"),
    "gender": ("men", "women"),
    "season": ("spring-fall", "summer", "winter"),
}



class DatasetError(ValueError):
    """The dataset spec or its files cannot be used; the message says why."""



@dataclass(frozen=True)
class Sample:
    key: str  # a stable id (the catalog id, or the path relative to the source)
    path: Path
    digest: str  # sha256 of the image bytes: the feature cache key and the dedup key
    labels: Mapping[str, str | None]
    # catalog facts beside the labels: title, category (masterCategory), catalog_gender, article
    meta: Mapping[str, str] = field(default_factory=dict)

    def label(self, task: str) -> str | None:
        return self.labels.get(task)

    @property
    def title(self) -> str:
        return self.meta.get("title", "")



@dataclass
class LoadReport:
    source: str
    rows: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> rows dropped entirely
    unlabeled: dict[str, Counter[str]] = field(default_factory=dict)  # task -> reason -> rows
    notes: list[str] = field(default_factory=list)  # e.g. the subset taken after loading

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def unlabel(self, task: str, reason: str, n: int = 1) -> None:
        self.unlabeled.setdefault(task, Counter())[reason] += n

    def lines(self) -> list[str]:
        out = [f"{self.source}: {self.rows} rows, kept {self.kept}, dropped {self.rows - self.kept}"]
        out += [f"  dropped {n:>6}  {reason}" for reason, n in self.dropped.most_common()]
        for task, reasons in self.unlabeled.items():
            out += [f"  {task}: no label for {n:>6}  {reason}" for reason, n in reasons.most_common()]
        return out + [f"  {note}" for note in self.notes]



@dataclass
class Dataset:
    samples: list[Sample]
    classes: dict[str, tuple[str, ...]]
    report: LoadReport

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def labeled(self, task: str) -> list[Sample]:
        """The rows where ``task``'s label is defined: the rows that task trains on."""
        return [s for s in self.samples if s.label(task) is not None]

    def counts(self, task: str) -> Counter[str]:
        return Counter(s.label(task) for s in self.labeled(task))  # type: ignore[misc]

    def subset(self, keys: Iterable[str]) -> "Dataset":
        wanted = set(keys)
        return replace(self, samples=[s for s in self.samples if s.key in wanted])



def cap_per_class(dataset: Dataset, per_class: int, seed: int = 0) -> Dataset:
    """A subset with up to about ``per_class`` rows of every class of every task.

    Rows are visited in a seeded random order and kept while any of their labels is still
    short of ``per_class``; a kept row counts for all its tasks, so the tasks share most
    images (one backbone pass serves all three heads). Common classes may exceed the cap
    a little through rows kept for another task.
    """
    if per_class < 1:
        raise DatasetError("per_class must be >= 1")
    order = list(dataset.samples)
    random.Random(seed).shuffle(order)
    counts: dict[tuple[str, str], int] = Counter()
    kept = []
    for s in order:
        needed = [(t, s.label(t)) for t in dataset.tasks if s.label(t) is not None]
        if any(counts[k] < per_class for k in needed):  # type: ignore[index]
            kept.append(s)
            for k in needed:
                counts[k] += 1  # type: ignore[index]
    keys = {s.key for s in kept}
    note = f"subset: {len(keys)} of {len(dataset.samples)} rows (up to ~{per_class} per class per task, seed {seed})"
    report = replace(dataset.report, notes=[*dataset.report.notes, note])
    return replace(dataset, samples=[s for s in dataset.samples if s.key in keys], report=report)
