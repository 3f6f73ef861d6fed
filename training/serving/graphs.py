"""A models folder as TensorFlow graphs ready to export: the backbone, the heads and their checks (:func:`build_graphs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import ModelsError
from training.manifest.read import ModelSet


@dataclass
class ServingGraphs:
    """Built Keras models and the serving functions Triton calls, by model name."""

    models: ModelSet
    backbone: Any  # keras.Model: image -> features
    heads: dict[str, Any]  # task -> keras.Model features -> probs (shared tasks)
    standalone: dict[str, Any]  # task -> callable image -> probs
    tracked: dict[str, list[Any]]  # model name -> keras objects its SavedModel must track
    title: Any = None  # training.heads.title.TitleModel: the shared heads also take the title
    scope: Any = None  # keras.Model: features -> [P(in scope), P(out of scope)]
    others: dict[str, Any] = field(default_factory=dict)  # task -> keras.Model features -> probs (other categories)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.backbone.output.shape[1:])  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.models.backbone.input_size
        return (h, w, 3)



def _load_keras(path: Path, full_model: bool = False) -> Any:
    """A head, or (``full_model``) a fine-tuned image -> probs model.

    Full models contain the backbone's uint8 -> float ``Lambda`` layer, which Keras loads
    only with ``safe_mode=False``; the file is the project's own committed model.
    """
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=not full_model)
    except Exception as exc:  # noqa: BLE001 - keras raises many kinds; say which file
        raise ModelsError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None



def build_graphs(models: ModelSet) -> ServingGraphs:
    """The shared backbone, the heads on it, and a full image -> probs model per task."""
    from training.features.backbones import build_backbone

    try:
        backbone = build_backbone(models.backbone)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ModelsError(f"backbone {models.backbone.describe()}: {exc}") from None
    heads: dict[str, Any] = {}
    standalone: dict[str, Any] = {}
    tracked: dict[str, list[Any]] = {"backbone": [backbone]}
    for task, entry in models.tasks.items():
        if entry.model is not None:
            full = _load_keras(entry.model, full_model=True)
            _check_full(full, models.backbone.input_size, len(entry.classes), entry.model)
            standalone[task] = lambda image, m=full: m(image, training=False)
            tracked[task] = [full]
            continue
        head = _load_keras(entry.head)  # type: ignore[arg-type]
        base = backbone
        if entry.backbone is not None:
            base = build_backbone(entry.backbone)
        _check_head(head, tuple(int(d) for d in base.output.shape[1:]), len(entry.classes), entry.head)  # type: ignore[arg-type]
        if entry.shared:
            heads[task] = head
            tracked[f"{task}_head"] = [head]
        standalone[task] = lambda image, b=base, h=head: h(b(image, training=False), training=False)
        tracked[task] = [base, head]
    title = models.title.load({t: e.classes for t, e in models.tasks.items() if e.shared}) if models.title else None
    scope = None
    if models.scope is not None:
        scope = _load_keras(models.scope.head)
        _check_head(scope, tuple(int(d) for d in backbone.output.shape[1:]), 2, models.scope.head)
        tracked["scope_head"] = [scope]
    others = {}
    for task, path in (models.others.heads.items() if models.others and scope is not None else ()):
        others[task] = _load_keras(path)
        _check_head(others[task], tuple(int(d) for d in backbone.output.shape[1:]), len(models.tasks[task].classes), path)
    return ServingGraphs(models, backbone, heads, standalone, tracked, title, scope, others)



def _check_head(head: Any, features: tuple[int, ...], n_classes: int, path: Path) -> None:
    got_in = tuple(int(d) for d in head.input_shape[1:])
    got_out = int(head.output_shape[-1])
    if got_in != features:
        raise ModelsError(f"{path} expects features {got_in}, the backbone gives {features}: retrain the head or fix the manifest's backbone")
    if got_out != n_classes:
        raise ModelsError(f"{path} has {got_out} outputs, the manifest lists {n_classes} classes")



def _check_full(model: Any, size: tuple[int, int], n_classes: int, path: Path) -> None:
    got_in = tuple(int(d) for d in model.input_shape[1:])
    if got_in != (*size, 3) or int(model.output_shape[-1]) != n_classes:
        raise ModelsError(f"{path} maps {got_in} -> {model.output_shape[-1]}; expected {(*size, 3)} -> {n_classes}")
