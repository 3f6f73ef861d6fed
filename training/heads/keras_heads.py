"""Task heads: backbone feature map -> class probabilities, trained on cached features.

The head's input is named ``features`` (the backbone's output map) and pooling is inside
the head, so a head is small and can be stacked on the served backbone unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

POOLINGS = ("avg", "max", "flatten")
OPTIMIZERS = ("adam", "sgd", "rmsprop")


@dataclass(frozen=True)
class HeadConfig:
    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.5
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    epochs: int = 30
    pooling: str = "flatten"
    batch_size: int = 32
    restore_best: bool = True  # keep the epoch with the lowest validation loss

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("learning_rate must be > 0, epochs and batch_size >= 1")
        if any(n < 1 for n in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1 (got {self.hidden})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "HeadConfig | None" = None) -> "HeadConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown head settings: {', '.join(sorted(unknown))}")
        try:
            for key, kind in (("dropout", float), ("learning_rate", float), ("epochs", int), ("batch_size", int)):
                if key in known:
                    known[key] = kind(known[key])  # YAML reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise ValueError(f"bad head setting {key}={known[key]!r}: not {'an integer' if kind is int else 'a number'}") from None
        if "hidden" in known:
            h = known["hidden"]
            known["hidden"] = tuple(int(n) for n in ([h] if isinstance(h, int) else h))
        return replace(base or cls(), **known)

    def describe(self) -> str:
        hidden = "x".join(map(str, self.hidden)) or "none"
        return (
            f"hidden={hidden} dropout={self.dropout} {self.optimizer} lr={self.learning_rate:g}"
            f" epochs={self.epochs} pool={self.pooling}"
        )


# The study's champions (VGG16, frozen base, one hidden layer).
STUDY_CHAMPIONS: dict[str, HeadConfig] = {
    "style": HeadConfig(hidden=(128,), dropout=0.5, optimizer="adam", learning_rate=1e-4, epochs=30),
    "gender": HeadConfig(hidden=(128,), dropout=0.5, optimizer="adam", learning_rate=1e-4, epochs=20),
    "season": HeadConfig(hidden=(256,), dropout=0.5, optimizer="adam", learning_rate=1e-5, epochs=50),
}
STUDY_TEST_ACCURACY: dict[str, float] = {"style": 0.83, "gender": 0.96, "season": 0.85}


def make_optimizer(name: str, lr: float):  # noqa: ANN201 - keras optimizer
    import keras

    return {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[name](
        learning_rate=lr
    )


def build_head(feature_shape: tuple[int, ...], n_classes: int, cfg: HeadConfig, name: str = "head", seed: int = 0):  # noqa: ANN201
    """``features`` (h, w, c) -> pooling -> hidden Dense+ReLU+Dropout ... -> softmax ``probs``."""
    import keras

    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    x = inputs
    if len(feature_shape) == 3:
        x = {
            "avg": keras.layers.GlobalAveragePooling2D(name="pool"),
            "max": keras.layers.GlobalMaxPooling2D(name="pool"),
            "flatten": keras.layers.Flatten(name="pool"),
        }[cfg.pooling](x)
    for i, units in enumerate(cfg.hidden):
        x = keras.layers.Dense(
            units, activation="relu", name=f"hidden{i + 1}", kernel_initializer=keras.initializers.GlorotUniform(seed + i)
        )(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, seed=seed + i, name=f"dropout{i + 1}")(x)
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", name="probs", kernel_initializer=keras.initializers.GlorotUniform(seed + 99)
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """``n / (k * n_c)``: each class weighs the same in the loss (sklearn's 'balanced')."""
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    k = int(present.sum())
    return {i: float(len(y) / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _progress_callback(total: int, desc: str, enabled: bool):  # noqa: ANN202
    import keras

    class TqdmEpochs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
            self.bar = tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            logs = logs or {}
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "val_accuracy")})
            self.bar.update(1)

        def on_train_end(self, logs=None):  # noqa: ANN001, ANN202
            self.bar.close()

    return TqdmEpochs()


def fit_model(model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, epochs: int,  # noqa: ANN001
         batch_size: int, weights: Mapping[int, float] | None, restore_best: bool, desc: str, progress: bool) -> History:
    """``model.fit`` with a progress bar; with validation rows and ``restore_best`` the
    weights of the epoch with the lowest validation loss are kept."""
    import time

    import keras

    callbacks = [_progress_callback(epochs, desc, progress)]
    has_val = len(y_val) > 0
    if restore_best and has_val:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True))
    started = time.perf_counter()
    fit = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val) if has_val else None,
        epochs=epochs,
        batch_size=batch_size,
        class_weight=dict(weights) if weights else None,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    h = fit.history
    hist = History(
        loss=[float(v) for v in h.get("loss", [])],
        accuracy=[float(v) for v in h.get("accuracy", [])],
        val_loss=[float(v) for v in h.get("val_loss", [])],
        val_accuracy=[float(v) for v in h.get("val_accuracy", [])],
        seconds=time.perf_counter() - started,
    )
    hist.best_epoch = int(np.argmin(hist.val_loss)) + 1 if hist.val_loss and restore_best else len(hist.loss)
    return hist


def train_head(
    cfg: HeadConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    weights: Mapping[int, float] | None = None,
    name: str = "head",
    seed: int = 0,
    progress: bool = True,
) -> tuple[Any, Any]:  # (keras.Model, History)
    import keras

    keras.utils.set_random_seed(seed)
    model = build_head(x_train.shape[1:], n_classes, cfg, name=name, seed=seed)
    hist = fit_model(model, x_train, y_train, x_val, y_val, cfg.epochs, cfg.batch_size, weights, cfg.restore_best, f"train {name}", progress)
    return model, hist


def fine_tune(
    top,  # noqa: ANN001 - keras.Model: cut features -> backbone features, top blocks trainable
    head,  # noqa: ANN001 - keras.Model: backbone features -> probs, trained on the frozen features
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int,
    learning_rate: float,
    optimizer: str = "adam",
    weights: Mapping[int, float] | None = None,
    batch_size: int = 32,
    restore_best: bool = True,
    name: str = "fine-tune",
    seed: int = 0,
    progress: bool = True,
) -> tuple[Any, Any]:  # (keras.Model cut features -> probs, History)
    """Phase two of the usual recipe: the top blocks and the head together, at a low rate.

    ``x_*`` are the features at the cut (the layer below the top blocks). ``top`` and
    ``head`` are trained in place (the returned model is made of them); with validation
    rows and ``restore_best``, the epoch with the lowest validation loss is kept.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=x_train.shape[1:], name="cut_features")
    model = keras.Model(inputs, head(top(inputs)), name=f"{name.replace(' ', '_')}")
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = fit_model(model, x_train, y_train, x_val, y_val, epochs, batch_size, weights, restore_best, name, progress)
    return model, hist


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:  # noqa: ANN001
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
