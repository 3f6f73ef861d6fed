"""The train/validation/test split: by near-duplicate group, seeded, saved as JSON.

Rows are grouped (:mod:`training.data.grouping`: a similar photo or the same colour-free title)
and whole groups are assigned to parts, so no product has a copy, a re-shoot or a colour
variant on the other side. One assignment serves every task. The split depends only on the
photos, titles, keys and seed (not on the row order) and is saved so later runs are comparable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.data.grouping import DEFAULT_MAX_DISTANCE, group_rows, hash_photos
from training.data.rows import Dataset, Sample

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    seed: int
    fractions: tuple[float, float, float]
    tasks: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)  # task -> part -> keys
    grouping: "Grouping | None" = None  # how near-duplicates were grouped (None: an older, ungrouped split)

    def keys(self, task: str, part: str) -> tuple[str, ...]:
        if task not in self.tasks:
            raise KeyError(f"the split has no task {task!r} (has {', '.join(self.tasks)})")
        return self.tasks[task][part]

    def part_of(self) -> dict[str, str]:
        """Key -> part, over every task (one assignment serves them all)."""
        return {k: p for parts in self.tasks.values() for p, keys in parts.items() for k in keys}

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            **({"grouping": self.grouping.to_dict()} if self.grouping else {}),
            "tasks": {t: {p: list(k) for p, k in parts.items()} for t, parts in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Split":
        tasks = {t: {p: tuple(k) for p, k in parts.items()} for t, parts in data["tasks"].items()}  # type: ignore[union-attr]
        fr = tuple(float(f) for f in data["fractions"])  # type: ignore[union-attr]
        grouping = Grouping(**data["grouping"]) if isinstance(data.get("grouping"), dict) else None  # type: ignore[arg-type]
        return cls(int(data["seed"]), fr, tasks, grouping)  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Split":
        return cls.from_dict(json.loads(Path(path).read_text()))


def group_parts(
    keys: Sequence[str], groups: Sequence[int], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Key -> part, whole groups at a time: groups in a seeded random order fill test, then val,
    then train up to their share of the rows. Independent of the row order."""
    if len(keys) != len(groups):
        raise ValueError("keys and groups differ in length")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1 (got {fractions})")
    members: dict[int, list[str]] = {}
    for k, g in zip(keys, groups):
        members.setdefault(int(g), []).append(k)
    order = sorted(members.values(), key=min)  # a group is named by its smallest key: no dependence on numbering
    for m in order:
        m.sort()
    random.Random(seed).shuffle(order)
    quota = {"test": fractions[2] * len(keys), "val": fractions[1] * len(keys)}
    filled = {"test": 0, "val": 0}
    out: dict[str, str] = {}
    for m in order:
        part = next((p for p in ("test", "val") if filled[p] + len(m) / 2 <= quota[p]), "train")
        if part != "train":
            filled[part] += len(m)
        out.update((k, part) for k in m)
    return out


@dataclass(frozen=True)
class Grouping:
    """How the split's groups were made (saved with it)."""

    photo_max_distance: int
    groups: int
    rows: int
    largest: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def make_split(
    dataset: Dataset,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_distance: int = DEFAULT_MAX_DISTANCE,
    progress: bool = True,
) -> Split:
    """The honest split: near-duplicate groups (:mod:`training.data.grouping`) never straddle two
    parts, and every task uses the same assignment (a test photo is test for all three)."""
    samples = dataset.samples
    groups = group_rows(hash_photos([s.path for s in samples], progress), [s.title for s in samples], max_distance)
    part_of = group_parts([s.key for s in samples], groups.group.tolist(), fractions, seed)
    tasks = {}
    for task in dataset.tasks:
        rows = dataset.labeled(task)
        tasks[task] = {p: tuple(sorted(s.key for s in rows if part_of[s.key] == p)) for p in PARTS}
    info = Grouping(max_distance, groups.n_groups, len(samples), groups.largest)
    return Split(seed, fractions, tasks, info)


@dataclass(frozen=True)
class Extension:
    """What :func:`extend_split` did with the rows a saved split did not have."""

    added: int  # new rows put in train
    held_out: int  # new rows left out: a near-duplicate of a validation or test row

    def line(self) -> str:
        return (f"split: {self.added} row(s) the saved split did not have added to train"
                + (f", {self.held_out} left out (near-duplicates of validation or test rows)" if self.held_out else ""))


def extend_split(split: Split, dataset: Dataset, max_distance: int = DEFAULT_MAX_DISTANCE,
                 progress: bool = True) -> tuple[Split, Extension]:
    """``split`` with the dataset's rows it does not have (photos reviewers labeled, say) put
    in **train**, unless one is a near-duplicate of a validation or test row (grouped as in
    :func:`make_split`): then it is left out, so validation and test stay unseen. The parts of
    the saved rows do not change."""
    samples = dataset.samples
    part_of = split.part_of()
    new = [i for i, s in enumerate(samples) if s.key not in part_of]
    if not new:
        return split, Extension(0, 0)
    groups = group_rows(hash_photos([s.path for s in samples], progress), [s.title for s in samples], max_distance).group
    held = {int(groups[i]) for i, s in enumerate(samples) if part_of.get(s.key) in ("val", "test")}
    keep = {samples[i].key for i in new if int(groups[i]) not in held}
    tasks = {}
    for task, parts in split.tasks.items():
        extra = [s.key for s in (dataset.labeled(task) if task in dataset.tasks else []) if s.key in keep]
        tasks[task] = {**parts, "train": tuple(sorted({*parts["train"], *extra}))}
    return Split(split.seed, split.fractions, tasks, split.grouping), Extension(len(keep), len(new) - len(keep))


def in_scope(sample: Sample, scope: str) -> bool:
    """The headline rows: Apparel of Men/Women products (what the taxonomy describes) for
    ``apparel-mw``, every row for ``all``. Rows without catalog facts (manifest, folders)
    are in every scope."""
    if scope == "all" or not sample.meta.get("category"):
        return True
    return sample.meta.get("category") == "Apparel" and sample.meta.get("catalog_gender") in ("Men", "Women")


def category_of(sample: Sample) -> str:
    cat = sample.meta.get("category") or "(none)"
    return f"Apparel ({sample.meta.get('catalog_gender') or '?'})" if cat == "Apparel" else cat


def task_arrays(samples: Sequence[Sample], split: Split, task: str, classes: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``task``'s class index per sample (-1 where it has no label) and, per part, the rows of ``samples`` the split puts there."""
    y = np.array([classes.index(s.label(task)) if s.label(task) is not None else -1 for s in samples], np.int64)
    row = {s.key: i for i, s in enumerate(samples)}
    return y, {p: np.array(sorted(row[k] for k in split.keys(task, p) if k in row), np.int64) for p in PARTS}
