"""The served models, loaded for scoring: a built Triton repository (SavedModels or IR) or the committed heads on the backbone (``--from-heads``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.images import ResizeMode
from services.inference import parse_class_thresholds, parse_threshold
from training.data.rows import Sample
from training.data.split import category_of
from training.errors import ModelsError
from training.evaluation.runners import image_runner, ir_file, load_savedmodel, read_config_parameters, savedmodel_runner

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
            hsig, hi, ho, _ = load_savedmodel(head_dir)
            takes_title = "title" in hsig.structured_input_signature[1]
            origin = f"{repo}/backbone + {repo}/{task}_head"
            for what in inputs:
                if what != "image" and not takes_title:
                    raise ModelsError(f"{repo}/{task}_head does not read the title (--inputs {what}): add it with "
                                      "`autolabel train-title`, then `autolabel models build`")
                if not takes_title:
                    models.append(TaskModel(task, classes, savedmodel_runner(hsig, hi, ho), size, resize, origin, backbone_run, threshold))
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
    sig, i, o, _ = load_savedmodel(head)
    return Gate(savedmodel_runner(sig, i, o), threshold)



def load_heads(models_dir: Path, tasks: Sequence[str], manifest: dict[str, Any]) -> list[TaskModel]:
    """The committed heads stacked on the manifest's backbone, in process."""
    import keras

    from training.features.cache import BackboneError, load_backbone
    from training.manifest.read import read_models

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
        head = routed_head(keras.models.load_model(Path(models_dir) / entry["head"]), model_set, task)
        threshold = entry["threshold"].get("threshold") if isinstance(entry.get("threshold"), dict) else None
        models.append(
            TaskModel(task, tuple(entry["classes"]), lambda f, h=head: np.asarray(h.predict_on_batch(f)), spec.input_size,
                      manifest.get("resize", "pad"), f"{models_dir}/{entry['head']} on {spec.describe()}", run, threshold)
        )
    return models



def routed_head(head: Any, model_set: Any, task: str) -> Any:
    """``head``, or where the models have a head for the other categories, both routed by the gate as served."""
    import keras

    if model_set.others is None or task not in model_set.others.heads or model_set.scope is None:
        return head
    from training.serving.servables import routed

    scope, other = (keras.models.load_model(p, compile=False) for p in (model_set.scope.head, model_set.others.heads[task]))
    f = keras.Input(head.input_shape[1:])
    return keras.Model(f, routed(scope(f)[:, 1], head(f), other(f), model_set.others.route_threshold))



def _own_model(models_dir: Path, task: str, manifest: dict[str, Any]) -> TaskModel:
    """A task that does not share the base: its full model, or its head on its own backbone."""
    import keras

    from training.features.backbones import build_backbone
    from training.manifest.read import describe_weights, task_entry

    e = task_entry(models_dir, task, manifest["tasks"][task])
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
