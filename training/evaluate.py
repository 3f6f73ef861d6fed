"""`autolabel evaluate`: score the models the repository serves on a labeled dataset.

It loads the same SavedModels Triton loads (``model_repository/``) with TensorFlow:
the shared ``backbone`` + ``<task>_head`` pair when present (what the ``autolabel``
ensemble runs: one backbone pass for all tasks), else the standalone ``<task>`` model.
``--from-heads`` instead stacks the committed heads (``models/``) on the backbone in
process, for a machine where the repository has not been built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from services.errors import BadInput
from services.images import ResizeMode, prepare
from services.inference import parse_class_thresholds, parse_threshold
from training.datasets import Dataset, Sample
from training.errors import ModelsError
from training.metrics import classification_metrics, confusion
from training.openvino_runtime import image_runner, ir_file

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class TaskModel:
    task: str
    classes: tuple[str, ...]
    predict: Predict  # uint8 (n, H, W, 3) -> probabilities (n, C)
    input_size: tuple[int, int]
    resize: ResizeMode
    origin: str  # where it came from, for the report
    backbone: Callable[[np.ndarray], np.ndarray] | None = None  # set: ``predict`` takes its features
    threshold: float | Sequence[float] | None = None  # the auto-accept threshold(s) shipped with the model (None: none)
    inputs: str = "image"  # what the predictions read: image, title or image+title (then ``predict(x, titles)``)

    @property
    def key(self) -> str:
        """The name its results are reported under: the task, with the inputs when not the photo alone."""
        return self.task if self.inputs == "image" else f"{self.task} [{self.inputs}]"


def read_config_parameters(config: Path) -> dict[str, str]:
    """``parameters { key: "k" value: { string_value: "v" } }`` entries of a config.pbtxt."""
    text = config.read_text() if config.is_file() else ""
    pattern = re.compile(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', re.S)
    return dict(pattern.findall(text))


def _savedmodel(path: Path) -> tuple[Any, str, str, tuple[int, ...]]:
    """Load a SavedModel; return (signature, input name, output name, input shape)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures["serving_default"]
    _, inputs = sig.structured_input_signature
    (in_name, spec), *_ = inputs.items()
    outputs = sig.structured_outputs
    out_name = next((n for n in ("probs", "features") if n in outputs), next(iter(outputs)))
    sig._autolabel_keepalive = loaded  # noqa: SLF001 - keep the trackable alive with the signature
    return sig, in_name, out_name, tuple(spec.shape)


def _runner(sig: Any, in_name: str, out_name: str) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    dtype = sig.structured_input_signature[1][in_name].dtype
    return lambda x: np.asarray(sig(**{in_name: tf.constant(x, dtype=dtype)})[out_name])


def _model_dir(repo: Path, name: str) -> Path | None:
    versions = sorted((p for p in (repo / name).glob("*/model.savedmodel") if p.parent.name.isdigit()), key=lambda p: int(p.parent.name))
    return versions[-1] if versions else None


def _title_runner(sig: Any, output: str, titles: bool) -> Callable[..., np.ndarray]:
    """A head with a ``title`` input: ``output`` for the features and the titles (or no titles: the photo alone)."""
    import tensorflow as tf

    def run(x: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        t = [[n if titles else ""] for n in (names if names is not None else [""] * len(x))]
        return np.asarray(sig(features=tf.constant(x, tf.float32), title=tf.constant(t, tf.string))[output])

    return run


def load_repository(repo: Path, tasks: Sequence[str], manifest: dict[str, Any] | None = None,
                    inputs: Sequence[str] = ("image",)) -> list[TaskModel]:
    """The served models of ``tasks`` from a built Triton repository, once per requested ``inputs``
    (``title`` and ``image+title`` need heads that take the title: ``autolabel train-title``)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ModelsError(f"model repository {repo} not found: run `autolabel models build` (or use --from-heads)")
    ens = read_config_parameters(repo / "autolabel" / "config.pbtxt")
    backbone_dir = _model_dir(repo, "backbone") or ir_file(repo / "backbone")  # a SavedModel, or OpenVINO IR (cpu-openvino)
    backbone_run = None
    models = []
    for task in tasks:
        head_dir, standalone = _model_dir(repo, f"{task}_head"), _model_dir(repo, task) or ir_file(repo / task)
        params = {**ens, **read_config_parameters(repo / task / "config.pbtxt")}
        labels = params.get("labels") or params.get(f"labels_{task}")
        if not labels and manifest and task in manifest.get("tasks", {}):
            labels = ",".join(manifest["tasks"][task]["classes"])
        if not labels:
            raise ModelsError(f"{repo}: no class names for {task} (config parameter 'labels'/'labels_{task}')")
        classes = tuple(labels.split(","))
        threshold = parse_threshold(params.get(f"threshold_{task}"))
        resize: ResizeMode = params.get("resize", (manifest or {}).get("resize", "pad"))  # type: ignore[assignment]
        if backbone_dir is not None and head_dir is not None:
            if backbone_run is None:
                backbone_run, size = image_runner(backbone_dir)
            hsig, hi, ho, _ = _savedmodel(head_dir)
            takes_title = "title" in hsig.structured_input_signature[1]
            origin = f"{repo}/backbone + {repo}/{task}_head"
            for what in inputs:
                if what != "image" and not takes_title:
                    raise ModelsError(f"{repo}/{task}_head does not read the title (--inputs {what}): add it with "
                                      "`autolabel train-title`, then `autolabel models build`")
                if not takes_title:
                    models.append(TaskModel(task, classes, _runner(hsig, hi, ho), size, resize, origin, backbone_run, threshold))
                    continue
                run = _title_runner(hsig, "title_probs" if what == "title" else "probs", titles=what != "image")
                cut = {"image": threshold, "title": None,
                       "image+title": parse_class_thresholds(params.get(f"threshold_{task}_title"), len(classes))}[what]
                models.append(TaskModel(task, classes, run, size, resize, origin, backbone_run, cut, what))
        elif standalone is not None and set(inputs) != {"image"}:
            raise ModelsError(f"{repo}: {task} is served standalone, photo only (--inputs image)")
        elif standalone is not None:
            run, size_ = image_runner(standalone)
            models.append(TaskModel(task, classes, run, size_, resize, f"{repo}/{task}", threshold=threshold))
        else:
            raise ModelsError(f"{repo} serves no model for {task} (neither {task}/ nor backbone/ + {task}_head/)")
    return models


@dataclass
class Gate:
    """The served scope gate (``scope_head`` on the backbone's features) and what it said per scored photo."""

    run: Callable[[np.ndarray], np.ndarray]  # features -> [P(in scope), P(out of scope)]
    threshold: float
    p_out: dict[str, float] = field(default_factory=dict)  # sample key -> P(out of scope)

    def by_category(self, samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
        """Per catalog category: photos scored and the share the gate sends to review whole."""
        cats: dict[str, list[float]] = {}
        for s in samples:
            if s.key in self.p_out:
                cats.setdefault(category_of(s), []).append(self.p_out[s.key])
        return {c: {"photos": len(p), "flagged": round(float(np.mean(np.asarray(p) > self.threshold)), 4)} for c, p in sorted(cats.items())}


def load_gate(repo: Path) -> Gate | None:
    """The repository's scope gate, or None where it has none."""
    head = _model_dir(Path(repo), "scope_head")
    threshold = parse_threshold(read_config_parameters(Path(repo) / "autolabel" / "config.pbtxt").get("scope_threshold"))
    if head is None or threshold is None:
        return None
    sig, i, o, _ = _savedmodel(head)
    return Gate(_runner(sig, i, o), threshold)


def load_heads(models_dir: Path, tasks: Sequence[str], manifest: dict[str, Any]) -> list[TaskModel]:
    """The committed heads stacked on the manifest's backbone, in process."""
    import keras

    from training.features import BackboneError, load_backbone
    from training.serving_models import read_models

    try:
        model_set = read_models(Path(models_dir), tasks)
        spec = model_set.backbone  # the tuned layers' file resolved
        backbone = load_backbone(spec)
    except BackboneError as exc:
        raise ModelsError(str(exc)) from None
    run = lambda x: np.asarray(backbone.predict_on_batch(x))  # noqa: E731
    models = []
    for task in tasks:
        entry = manifest["tasks"].get(task)
        if entry is None:
            raise ModelsError(f"{models_dir}/manifest.json has no task {task!r}")
        if "model" in entry or isinstance(entry.get("backbone"), dict):  # left the shared base (e.g. fine-tuned)
            models.append(_own_model(Path(models_dir), task, manifest))
            continue
        head = _routed_head(keras.models.load_model(Path(models_dir) / entry["head"]), model_set, task)
        threshold = entry["threshold"].get("threshold") if isinstance(entry.get("threshold"), dict) else None
        models.append(
            TaskModel(task, tuple(entry["classes"]), lambda f, h=head: np.asarray(h.predict_on_batch(f)), spec.input_size,
                      manifest.get("resize", "pad"), f"{models_dir}/{entry['head']} on {spec.describe()}", run, threshold)
        )
    return models


def _routed_head(head: Any, model_set: Any, task: str) -> Any:
    """``head``, or where the models have a head for the other categories, both routed by the gate as served."""
    import keras

    if model_set.others is None or task not in model_set.others.heads or model_set.scope is None:
        return head
    from training.others import routed

    scope, other = (keras.models.load_model(p, compile=False) for p in (model_set.scope.head, model_set.others.heads[task]))
    f = keras.Input(head.input_shape[1:])
    return keras.Model(f, routed(scope(f)[:, 1], head(f), other(f), model_set.others.route_threshold))


def _own_model(models_dir: Path, task: str, manifest: dict[str, Any]) -> TaskModel:
    """A task that does not share the base: its full model, or its head on its own backbone."""
    import keras

    from training.backbones import build_backbone
    from training.serving_models import _task_entry, describe_weights

    e = _task_entry(models_dir, task, manifest["tasks"][task])
    size = tuple(manifest["backbone"]["input_size"])
    if e.model is not None:
        full = keras.models.load_model(e.model, compile=False, safe_mode=False)
        run, origin = (lambda x, m=full: np.asarray(m.predict_on_batch(x))), f"{e.model}"
    else:
        own = build_backbone(e.backbone)  # type: ignore[arg-type]
        head = keras.models.load_model(e.head)  # type: ignore[arg-type]
        run = lambda x, b=own, h=head: np.asarray(h.predict_on_batch(b.predict_on_batch(x)))  # noqa: E731
        origin = f"{e.head} on {describe_weights(e.backbone, e.fine_tuned)}"  # type: ignore[arg-type]
    return TaskModel(task, e.classes, run, size, manifest.get("resize", "pad"), origin)  # type: ignore[arg-type]


@dataclass
class TaskEvaluation:
    metrics: dict[str, Any]
    confusion: np.ndarray
    classes: tuple[str, ...]
    skipped: dict[str, int]
    keys: list[str]  # the scored rows, in the order of ``y`` and ``probs``
    y: np.ndarray
    probs: np.ndarray
    threshold: float | Sequence[float] | None = None


def score(classes: tuple[str, ...], keys: Sequence[str], y: np.ndarray, probs: np.ndarray,
          threshold: float | Sequence[float] | None, skipped: dict[str, int] | None = None) -> TaskEvaluation:
    """Metrics of one task's predictions: classification, calibration error and, with a
    threshold, coverage and precision of the auto-accepted labels."""
    from training.calibration import accept_stats, expected_calibration_error

    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    m = classification_metrics(y, pred, classes)
    m["ece"] = expected_calibration_error(probs, y) if len(y) else 0.0
    if threshold is not None:
        m["auto_accept"] = accept_stats(probs, y, threshold)
    return TaskEvaluation(m, confusion(y, pred, len(classes)), classes, skipped or {}, list(keys), y, probs, threshold)


def subset(ev: TaskEvaluation, keep: set[str]) -> TaskEvaluation:
    """The same task scored on the rows whose key is in ``keep``."""
    idx = [i for i, k in enumerate(ev.keys) if k in keep]
    probs = ev.probs[idx] if len(idx) else np.zeros((0, len(ev.classes)))
    return score(ev.classes, [ev.keys[i] for i in idx], ev.y[idx], probs, ev.threshold)


def _rows(dataset: Dataset, m: TaskModel, keys: dict[str, set[str]] | None, skipped: dict[str, int]) -> list[Sample]:
    rows = dataset.labeled(m.task)
    if keys is not None and m.task in keys:
        rows = [s for s in rows if s.key in keys[m.task]]
    known = [s for s in rows if s.label(m.task) in m.classes]
    skipped["unknown class"] = len(rows) - len(known)
    return known


def _load(s: Sample, size: tuple[int, int], resize: ResizeMode) -> np.ndarray | None:
    try:
        return prepare(s.path.read_bytes(), size, resize)
    except (OSError, BadInput):
        return None


def evaluate(
    dataset: Dataset,
    models: Sequence[TaskModel],
    keys: dict[str, set[str]] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    gate: Gate | None = None,
) -> dict[str, TaskEvaluation]:
    """Predict every labeled row of every task and score it (and, with ``gate``, record its verdict
    on every photo of the shared backbone pass).

    ``keys`` restricts a task to those sample keys (e.g. a split's test part). Rows whose
    class the model does not know are skipped and counted, as are unreadable images.
    Models with a shared backbone are run in one pass over the union of their rows."""
    models = [m for m in models if m.task in dataset.tasks]
    skipped = {m.key: {"unknown class": 0, "unreadable": 0} for m in models}
    rows = {m.key: _rows(dataset, m, keys, skipped[m.key]) for m in models}
    scored: dict[str, list[str]] = {m.key: [] for m in models}
    y_true: dict[str, list[int]] = {m.key: [] for m in models}
    probs_of: dict[str, list[np.ndarray]] = {m.key: [] for m in models}
    groups: list[list[TaskModel]] = []
    shared = [m for m in models if m.backbone is not None]
    if shared:
        groups.append(shared)
    groups += [[m] for m in models if m.backbone is None]
    for group in groups:
        first = group[0]
        wanted = {m.key: {s.key for s in rows[m.key]} for m in group}
        union = [s for s in dataset.samples if any(s.key in w for w in wanted.values())]
        desc = f"evaluate {'+'.join(dict.fromkeys(m.task for m in group))}"
        for start in tqdm(range(0, len(union), batch_size), desc=desc, unit="batch", disable=not progress):
            batch, arrays = [], []
            for s in union[start : start + batch_size]:
                arr = _load(s, first.input_size, first.resize)
                if arr is None:
                    for m in group:
                        skipped[m.key]["unreadable"] += s.key in wanted[m.key]
                    continue
                batch.append(s)
                arrays.append(arr)
            if not batch:
                continue
            x = np.stack(arrays)
            if first.backbone is not None:
                x = first.backbone(x)
                if gate is not None:
                    gate.p_out.update(zip([s.key for s in batch], np.asarray(gate.run(x))[:, 1].tolist(), strict=True))
            for m in group:
                pick = [i for i, s in enumerate(batch) if s.key in wanted[m.key]]
                if not pick:
                    continue
                probs = m.predict(x[pick], [batch[i].title for i in pick]) if m.inputs != "image" else m.predict(x[pick])
                probs_of[m.key].append(np.asarray(probs, np.float64))
                y_true[m.key] += [m.classes.index(batch[i].label(m.task)) for i in pick]  # type: ignore[arg-type]
                scored[m.key] += [batch[i].key for i in pick]
    out = {}
    for m in models:
        probs = np.concatenate(probs_of[m.key]) if probs_of[m.key] else np.zeros((0, len(m.classes)))
        out[m.key] = score(m.classes, scored[m.key], np.asarray(y_true[m.key], int), probs, m.threshold, skipped[m.key])
    return out


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


def by_category(samples: Sequence[Sample], every: dict[str, TaskEvaluation], headline: set[str]) -> dict[str, dict[str, Any]]:
    """Per catalog category outside the headline rows, per task: n, accuracy, balanced accuracy, macro-F1."""
    cats: dict[str, set[str]] = {}
    for s in samples:
        if s.key not in headline:
            cats.setdefault(category_of(s), set()).add(s.key)
    out: dict[str, dict[str, Any]] = {}
    for cat, keys in sorted(cats.items()):
        row = {}
        for t, r in every.items():
            m = subset(r, keys).metrics
            if m["n"]:
                row[t] = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
        if row:
            out[cat] = row
    return out

