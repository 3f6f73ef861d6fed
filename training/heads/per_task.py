"""`autolabel train`: dataset -> split -> cached features -> balanced heads -> models/.

Writes ``models/manifest.json`` and ``models/heads/<task>.keras`` (the contract in
docs/model-repository.md) and a run folder with the split, histories and metrics.

With fine-tuning (:class:`FineTuneConfig`, ``--fine-tune-blocks N``) the features are cached
at the layer below the backbone's top N blocks; each head is first trained on the frozen
top's output, then the top blocks and the head are trained together at a low learning rate,
and the task gets its own backbone weights, ``models/backbones/<task>.weights.h5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.images import ResizeMode
from training.data.augment import augmented_array, augmented_key, balance_plan
from training.data.rows import Dataset, Sample
from training.data.split import Split, make_split
from training.features.backbones import BackboneSpec, cut_layer, fine_tune_blocks_error
from training.features.readout import build_top
from training.features.cache import DEFAULT_CACHE_DIR, ExtractReport, FeatureCache, extract, extract_paths
from training.heads.keras_heads import OPTIMIZERS, STUDY_CHAMPIONS, HeadConfig, History, class_weights, fine_tune, predict, train_head
from training.heads.metrics import classification_metrics

BALANCE_MODES = ("augment", "class_weight", "none")


@dataclass(frozen=True)
class FineTuneConfig:
    """Phase two: the backbone's top ``blocks`` blocks trained with the head (0: frozen base)."""

    blocks: int = 0
    epochs: int = 5
    learning_rate: float = 1e-5
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.blocks < 0 or self.epochs < 1 or self.learning_rate <= 0:
            raise ValueError("fine-tuning needs blocks >= 0, epochs >= 1 and learning_rate > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "epochs": self.epochs, "learning_rate": self.learning_rate, "optimizer": self.optimizer}


@dataclass(frozen=True)
class TrainConfig:
    backbone: BackboneSpec = BackboneSpec()
    resize: ResizeMode = "pad"
    heads: Mapping[str, HeadConfig] = field(default_factory=lambda: dict(STUDY_CHAMPIONS))
    balance: str = "augment"
    augment_max_factor: float = 2.0
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    cache_dir: Path = DEFAULT_CACHE_DIR
    batch_size: int = 32
    progress: bool = True
    fine_tune: FineTuneConfig = FineTuneConfig()

    def __post_init__(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"unknown balance {self.balance!r}; choose one of {', '.join(BALANCE_MODES)}")
        why = fine_tune_blocks_error(self.backbone.name, self.fine_tune.blocks)
        if why:
            raise ValueError(why)

    @property
    def cut_layer(self) -> str | None:
        """Where features are cached: below the fine-tuned blocks, or None (the backbone's output)."""
        return cut_layer(self.backbone.name, self.fine_tune.blocks) if self.fine_tune.blocks else None


@dataclass
class TaskData:
    """One task's cached features per split part (rows whose image was readable).

    With fine-tuning these are the features at the cut (``TrainConfig.cut_layer``)."""

    classes: tuple[str, ...]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    samples: dict[str, list[Sample]]


@dataclass
class TaskResult:
    task: str
    classes: tuple[str, ...]
    config: HeadConfig
    balance: str
    history: History
    val: dict[str, Any]
    test: dict[str, Any]
    n_train: int
    n_augmented: int
    y_test: np.ndarray
    p_test: np.ndarray
    model: Any = None  # the head: backbone features -> probs
    fine_tune: FineTuneConfig | None = None  # set: ``base`` holds fine-tuned weights
    fine_tune_history: History | None = None
    base: Any = None  # keras base model whose top blocks were fine-tuned (weights to save)


@dataclass
class Prepared:
    """Everything heads train on: the split and the cached features, per task."""

    split: Split
    tasks: dict[str, TaskData]
    extract_report: ExtractReport
    cache: FeatureCache


def prepare(dataset: Dataset, cfg: TrainConfig, split: Split | None = None, tasks: Sequence[str] | None = None) -> Prepared:
    """Split (or reuse ``split``) and compute/reuse the backbone features of every labeled row."""
    split = split or make_split(dataset, cfg.seed, cfg.fractions)
    cache = FeatureCache(cfg.cache_dir, cfg.backbone, cfg.resize, cfg.cut_layer)
    tasks = [t for t in (tasks or dataset.tasks) if t in dataset.tasks]
    if not tasks:
        raise ValueError("no task to train: the dataset has none of the requested tasks")
    feats, ok, report = extract_paths(
        [s.path for s in dataset.samples], [s.digest for s in dataset.samples], cache, cfg.batch_size, cfg.progress
    )
    row = {s.key: i for i, s in enumerate(dataset.samples)}
    out: dict[str, TaskData] = {}
    for task in tasks:
        classes = dataset.classes[task]
        td = TaskData(classes, {}, {}, {})
        for part in ("train", "val", "test"):
            idx = [row[k] for k in split.keys(task, part) if k in row and ok[row[k]]]
            td.samples[part] = [dataset.samples[i] for i in idx]
            td.x[part] = feats[idx]
            td.y[part] = np.array([classes.index(dataset.samples[i].label(task)) for i in idx], dtype=np.int64)  # type: ignore[arg-type]
        out[task] = td
    return Prepared(split, out, report, cache)


def augmented_features(
    samples: Sequence[Sample], y: np.ndarray, cache: FeatureCache, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the offline-augmented copies that balance ``samples``."""
    plan = balance_plan([str(v) for v in y], cfg.augment_max_factor)
    if not plan:
        return np.zeros((0,)), np.zeros((0,), np.int64)
    keys = [augmented_key(samples[i].digest, copy) for i, copy in plan]
    size, mode = cache.spec.input_size, cache.resize

    def load(j: int) -> np.ndarray:
        i, copy = plan[j]
        return augmented_array(samples[i].path, samples[i].digest, copy, size, mode)

    feats, ok, _ = extract(keys, load, cache, cfg.batch_size, cfg.progress)
    labels = np.array([y[i] for i, _ in plan], dtype=np.int64)
    return feats[ok], labels[ok]


def train_task(
    task: str, data: TaskData, head: HeadConfig, cfg: TrainConfig, cache: FeatureCache, balance: str | None = None
) -> TaskResult:
    balance = balance or cfg.balance
    x_train, y_train = data.x["train"], data.y["train"]
    n_aug = 0
    weights = None
    if balance == "augment":
        xa, ya = augmented_features(data.samples["train"], y_train, cache, cfg)
        if len(ya):
            x_train, y_train, n_aug = np.concatenate([x_train, xa]), np.concatenate([y_train, ya]), len(ya)
    elif balance == "class_weight":
        weights = class_weights(y_train, len(data.classes))
    if len(y_train) == 0:
        raise ValueError(f"{task}: no training rows")
    xs = {"train": x_train, "val": data.x["val"], "test": data.x["test"]}
    ft = cfg.fine_tune if cfg.fine_tune.blocks else None
    top = base = None
    feats = xs
    if ft is not None:  # xs are cut features: the frozen top blocks give the backbone's features
        top, base = build_top(cfg.backbone, ft.blocks)
        feats = {part: predict(top, x) if len(x) else np.zeros((0, *top.output.shape[1:]), np.float32) for part, x in xs.items()}
    model, hist = train_head(
        head, feats["train"], y_train, feats["val"], data.y["val"], len(data.classes), weights, name=f"{task}_head",
        seed=cfg.seed, progress=cfg.progress,
    )
    scorer, ft_hist = model, None
    if ft is not None:
        scorer, ft_hist = fine_tune(
            top, model, xs["train"], y_train, xs["val"], data.y["val"], ft.epochs, ft.learning_rate, ft.optimizer, weights,
            head.batch_size, head.restore_best, name=f"fine-tune {task} top {ft.blocks}", seed=cfg.seed, progress=cfg.progress,
        )
    metrics = {}
    p_test = np.zeros((0, len(data.classes)))
    for part in ("val", "test"):
        if len(data.y[part]):
            p = predict(scorer, xs[part])
            metrics[part] = classification_metrics(data.y[part], p.argmax(1), data.classes)
            if part == "test":
                p_test = p
        else:
            metrics[part] = classification_metrics([], [], data.classes)
    return TaskResult(
        task, data.classes, head, balance, hist, metrics["val"], metrics["test"], len(data.y["train"]), n_aug,
        data.y["test"], p_test, model, ft, ft_hist, base,
    )


