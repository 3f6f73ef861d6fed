"""A stratified train/validation/test split with a fixed seed, saved as JSON.

Each task is split on the rows where its label is defined, stratified by that label, so
every class keeps its share in every part. The split depends only on the keys, the labels
and the seed (not on the row order), and is saved so later runs are comparable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.datasets import Dataset

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    seed: int
    fractions: tuple[float, float, float]
    tasks: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)  # task -> part -> keys

    def keys(self, task: str, part: str) -> tuple[str, ...]:
        if task not in self.tasks:
            raise KeyError(f"the split has no task {task!r} (has {', '.join(self.tasks)})")
        return self.tasks[task][part]

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "tasks": {t: {p: list(k) for p, k in parts.items()} for t, parts in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Split":
        tasks = {t: {p: tuple(k) for p, k in parts.items()} for t, parts in data["tasks"].items()}  # type: ignore[union-attr]
        fr = tuple(float(f) for f in data["fractions"])  # type: ignore[union-attr]
        return cls(int(data["seed"]), fr, tasks)  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Split":
        return cls.from_dict(json.loads(Path(path).read_text()))


def stratified_parts(
    keys: Sequence[str], labels: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, tuple[str, ...]]:
    """Split keys per class by ``fractions`` (train, val, test); val and test get >= 1 where a class has >= 3."""
    if len(keys) != len(labels):
        raise ValueError("keys and labels differ in length")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1 (got {fractions})")
    by_class: dict[str, list[str]] = {}
    for k, y in zip(keys, labels):
        by_class.setdefault(y, []).append(k)
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for y in sorted(by_class):
        members = sorted(by_class[y])
        random.Random(f"{seed}:{y}").shuffle(members)
        n = len(members)
        n_val = round(n * fractions[1])
        n_test = round(n * fractions[2])
        if n >= 3:
            n_val, n_test = max(n_val, 1 if fractions[1] else 0), max(n_test, 1 if fractions[2] else 0)
        out["test"] += members[:n_test]
        out["val"] += members[n_test : n_test + n_val]
        out["train"] += members[n_test + n_val :]
    return {p: tuple(sorted(v)) for p, v in out.items()}


def make_split(dataset: Dataset, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Split:
    tasks = {}
    for task in dataset.tasks:
        rows = dataset.labeled(task)
        tasks[task] = stratified_parts([s.key for s in rows], [s.label(task) for s in rows], fractions, seed)  # type: ignore[misc]
    return Split(seed, fractions, tasks)
