"""Three calibrated heads on one readout of one backbone pass, optionally with its top block
fine-tuned for the three tasks together.

The served graph is ``image -> backbone readout vector -> three heads`` (one backbone pass per
photo). Training works on features cached at the cut (``block4_pool`` for VGG16: everything
below it is frozen and runs once per photo) plus the photo's colour features:

1. **Readout vectors**: the frozen layers above the cut turn the cached maps into the readout
   vector (:func:`training.features.readout.build_readout_top`).
2. **Heads**: per task, standardise -> hidden layer(s) -> logits -> temperature -> softmax,
   trained with class weights (each class weighs the same), the epoch with the lowest
   validation loss kept.
3. **Joint fine-tuning** (``fine_tune_epochs > 0``): the top block and the three heads are
   trained together at a low rate, each photo contributing the losses of the tasks it has a
   label for; the epoch with the lowest summed validation loss is kept. The tuned top block
   is shared by all three tasks, so serving stays one backbone pass.
4. **Calibration**: per task, the temperature that fits the validation labels best
   (:mod:`training.heads.calibration`), folded into the head; then the auto-accept threshold for
   the target precision, chosen on validation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from training.data.rows import Dataset
from training.data.split import Split, task_arrays
from training.features.backbones import BackboneSpec
from training.features.colour import COLOUR
from training.features.readout import Features, build_readout_top, cut_features, top_inputs
from training.heads.calibration import (
    DEFAULT_TARGET_PRECISION,
    Threshold,
    accept_stats,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from training.heads.keras_heads import History, class_weights, fit_model, make_optimizer
from training.heads.metrics import classification_metrics


@dataclass(frozen=True)
class JointConfig:
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.5
    learning_rate: float = 1e-4
    epochs: int = 40
    batch_size: int = 64
    fine_tune_epochs: int = 0  # 0: frozen backbone
    fine_tune_lr: float = 1e-5
    target_precision: float = DEFAULT_TARGET_PRECISION
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass
class TaskOutcome:
    task: str
    classes: tuple[str, ...]
    head: Any  # keras head: readout vector -> calibrated probabilities
    temperature: float
    threshold: Threshold
    history: History
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> classification metrics (+ calibration)
    n_train: int = 0


TaskArrays = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # task -> (labels, rows per part): data.split.task_arrays


def build_head(dim: int, n_classes: int, cfg: JointConfig, mean: np.ndarray, var: np.ndarray, name: str,
               temperature: float = 1.0) -> Any:  # keras.Model
    """``features`` -> standardise -> hidden ReLU + dropout -> ``logits`` -> ``temperature`` -> softmax ``probs``."""
    import keras

    inputs = keras.Input(shape=(dim,), name="features")
    x = keras.layers.Normalization(mean=mean, variance=var, name="standardize")(inputs)
    for i, units in enumerate(cfg.hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i + 1}",
                               kernel_initializer=keras.initializers.GlorotUniform(cfg.seed + i))(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed + i, name=f"dropout{i + 1}")(x)
    x = keras.layers.Dense(n_classes, name="logits", kernel_initializer=keras.initializers.GlorotUniform(cfg.seed + 99))(x)
    x = keras.layers.Rescaling(1.0 / temperature, name="temperature")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def with_temperature(head: Any, temperature: float) -> Any:
    """A copy of ``head`` whose probabilities are ``softmax(logits / temperature)``."""
    import keras

    config = head.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] == "temperature":
            layer["config"]["scale"] = 1.0 / temperature
    out = keras.Model.from_config(config)
    out.set_weights(head.get_weights())
    return out


def logits_of(head: Any, x: np.ndarray) -> np.ndarray:
    """The head's logits (before temperature and softmax)."""
    import keras

    sub = keras.Model(head.input, head.get_layer("logits").output)
    return np.asarray(sub.predict(x, batch_size=512, verbose=0), np.float64)


def train_heads(feats: Features, dataset: Dataset, arrays: TaskArrays, cfg: JointConfig, tasks: Sequence[str],
                progress: bool = True) -> dict[str, Any]:
    """One head per task on the readout vectors (class-weighted, best validation epoch kept)."""
    import keras

    heads = {}
    x = feats.readout
    for task in tasks:
        classes = dataset.classes[task]
        y, parts = arrays[task]
        tr, va = parts["train"], parts["val"]
        keras.utils.set_random_seed(cfg.seed)
        head = build_head(x.shape[1], len(classes), cfg, x[tr].mean(0), x[tr].var(0) + 1e-6, f"{task}_head")
        head.compile(optimizer=make_optimizer("adam", cfg.learning_rate), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        hist = fit_model(head, x[tr], y[tr], x[va], y[va], cfg.epochs, cfg.batch_size, class_weights(y[tr], len(classes)),
                    True, f"train {task} head", progress)
        heads[task] = (head, hist)
    return heads


def _joint_targets(dataset: Dataset, arrays: TaskArrays, tasks: Sequence[str]) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Labels, per task and part the class weight on the rows of that part with a label (0 elsewhere: right for a
    split whose parts differ per task too), and the train and val rows of any task."""
    labels, weights = {}, {}
    rows: dict[str, set[int]] = {"train": set(), "val": set()}
    for t in tasks:
        classes = dataset.classes[t]
        y, parts = arrays[t]
        cw = class_weights(y[parts["train"]], len(classes))
        labels[t], weights[t] = np.maximum(y, 0), {}
        for part in rows:
            w = np.zeros(len(y), np.float32)
            w[parts[part]] = [cw[int(v)] for v in y[parts[part]]]
            weights[t][part] = w
            rows[part] |= set(parts[part].tolist())
    tr, va = np.array(sorted(rows["train"])), np.array(sorted(rows["val"]))
    return labels, weights, tr, va


def fine_tune_jointly(feats: Features, dataset: Dataset, arrays: TaskArrays, spec: BackboneSpec, cut: str, heads: Mapping[str, Any],
                      cfg: JointConfig, progress: bool = True) -> tuple[Any, History]:
    """Train the top block(s) above ``cut`` and the three heads together; returns (base, history).

    ``base`` is the keras base model whose top layers were trained (its weights are what the
    served backbone loads); the heads are trained in place."""
    import keras

    from training.features.readout import build_top

    if feats.maps is None:
        raise ValueError("joint fine-tuning needs the cut maps (keep_maps=True)")
    blocks = 1
    _, base = build_top(spec, blocks)
    top = build_readout_top(spec, cut, base)
    tasks = list(heads)
    maps_in = keras.Input(shape=feats.maps.shape[1:], dtype="float16", name="cut_maps")
    colour_in = keras.Input(shape=(feats.colour.shape[1],), name=COLOUR)
    vec = top(top_inputs(spec, keras.layers.Activation("linear", dtype="float32", name="to_float32")(maps_in), colour_in))
    outputs = {t: heads[t][0](vec) for t in tasks}
    model = keras.Model(top_inputs(spec, maps_in, colour_in), outputs, name="joint_fine_tune")
    keras.utils.set_random_seed(cfg.seed)
    model.compile(optimizer=make_optimizer("adam", cfg.fine_tune_lr), loss={t: "sparse_categorical_crossentropy" for t in tasks})

    labels, weights, tr, va = _joint_targets(dataset, arrays, tasks)

    def data(idx: np.ndarray, part: str):  # noqa: ANN202
        sw = {t: weights[t][part][idx] for t in tasks}
        return top_inputs(spec, feats.maps[idx], feats.colour[idx]), {t: labels[t][idx] for t in tasks}, sw

    x_tr, y_tr, w_tr = data(tr, "train")
    x_va, y_va, w_va = data(va, "val")
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.fine_tune_epochs, restore_best_weights=True)]
    batch = 32
    steps = -(-len(tr) // batch)
    # per batch, so a long epoch shows its progress and time left
    bar = tqdm(total=cfg.fine_tune_epochs * steps, desc="joint fine-tuning (top block + 3 heads)", unit="batch", disable=not progress)

    class Bar(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):  # noqa: ANN001, ANN202
            bar.update(1)

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            bar.set_postfix({"epoch": epoch + 1, **{k: f"{v:.3f}" for k, v in (logs or {}).items() if k in ("loss", "val_loss")}})

    started = time.perf_counter()
    fit = model.fit(x_tr, y_tr, sample_weight=w_tr, validation_data=(x_va, y_va, w_va), epochs=cfg.fine_tune_epochs,
                    batch_size=batch, shuffle=True, verbose=0, callbacks=[*callbacks, Bar()])
    bar.close()
    h = fit.history
    hist = History(loss=[float(v) for v in h["loss"]], val_loss=[float(v) for v in h["val_loss"]],
                   seconds=time.perf_counter() - started)
    hist.best_epoch = int(np.argmin(hist.val_loss)) + 1
    return base, hist


def calibrate(task: str, head: Any, hist: History, feats: Features, dataset: Dataset, arrays: TaskArrays,
              cfg: JointConfig) -> TaskOutcome:
    """Temperature and threshold on validation; metrics (with ECE and auto-accept figures) per part."""
    classes = dataset.classes[task]
    y, parts = arrays[task]
    logits = {p: logits_of(head, feats.readout[idx]) for p, idx in parts.items() if len(idx)}
    t = fit_temperature(logits["val"], y[parts["val"]]) if "val" in logits else 1.0
    probs = {p: softmax(lg / t) for p, lg in logits.items()}
    thr = choose_threshold(probs["val"].max(1), probs["val"].argmax(1) == y[parts["val"]], cfg.target_precision)
    out = TaskOutcome(task, classes, with_temperature(head, t), t, thr, hist, n_train=len(parts["train"]))
    for p, pr in probs.items():
        yp = y[parts[p]]
        m = classification_metrics(yp, pr.argmax(1), classes)
        m["ece"] = expected_calibration_error(pr, yp)
        m["ece_uncalibrated"] = expected_calibration_error(softmax(logits[p]), yp)
        m["auto_accept"] = accept_stats(pr, yp, thr.threshold)
        out.metrics[p] = m
    return out


@dataclass
class JointResult:
    spec: BackboneSpec  # as served: with the tuned layers' file when fine-tuned
    outcomes: dict[str, TaskOutcome]
    base: Any = None  # keras base with fine-tuned top layers (None: frozen)
    fine_tune_history: History | None = None
    n_photos: int = 0
    seconds: float = 0.0


def train_joint(dataset: Dataset, split: Split, spec: BackboneSpec, cfg: JointConfig, cache_dir: Any,
                tasks: Sequence[str] | None = None, progress: bool = True) -> JointResult:
    """Readout features -> heads -> (joint fine-tuning -> readout features again) -> calibration."""
    from training.features.backbones import cut_layer

    started = time.perf_counter()
    tasks = [t for t in (tasks or dataset.tasks) if t in dataset.tasks]
    cut = cut_layer(spec.name, 1)
    feats = cut_features(dataset, spec, cut, cache_dir, keep_maps=cfg.fine_tune_epochs > 0, progress=progress)
    arrays = {t: task_arrays(feats.samples, split, t, dataset.classes[t]) for t in tasks}  # once per task: the rows do not change
    heads = train_heads(feats, dataset, arrays, cfg, tasks, progress)
    base = ft_hist = None
    if cfg.fine_tune_epochs > 0:
        base, ft_hist = fine_tune_jointly(feats, dataset, arrays, spec, cut, heads, cfg, progress)
        top = build_readout_top(spec, cut, base)
        feats.readout = np.concatenate([
            np.asarray(top.predict_on_batch(top_inputs(spec, feats.maps[i : i + 64].astype(np.float32), feats.colour[i : i + 64])))
            for i in range(0, len(feats.samples), 64)
        ])
        feats.maps = None
    outcomes = {t: calibrate(t, heads[t][0], heads[t][1], feats, dataset, arrays, cfg) for t in tasks}
    return JointResult(spec, outcomes, base, ft_hist, len(feats.samples), time.perf_counter() - started)


