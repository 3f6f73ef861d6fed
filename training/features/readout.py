"""The served readout of a dataset: the backbone cut at its readout layer, the tuned top block, and the pooled vectors (:func:`cut_features`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from training.data.rows import Dataset, Sample
from training.features.backbones import BackboneSpec, base_model, cut_layer, readout_vector, top_block_prefixes
from training.features.cache import FeatureCache, extract_paths
from training.features.colour import COLOUR, ColourHistogram


@dataclass
class Features:
    """Per sample (readable photos only): the cut maps (float16, only when fine-tuning), colour, readout."""

    samples: list[Sample]
    colour: np.ndarray
    readout: np.ndarray
    maps: np.ndarray | None = None



def cut_features(dataset: Dataset, spec: BackboneSpec, cut: str, cache_dir: Any, keep_maps: bool, progress: bool = True) -> Features:
    """Readout vectors of every readable sample from the cut cache (computing what it lacks).

    The frozen readout vectors are cached too (a rerun of the heads then reads 4k numbers a
    photo instead of running block5 again); the cut maps are read only when they are needed."""
    paths, digests = [s.path for s in dataset.samples], [s.digest for s in dataset.samples]
    colour_cache = FeatureCache(cache_dir, replace(spec, tuned=""), "pad", COLOUR)  # pixels only: no tuned layers in it
    colour, ok_c, _ = extract_paths(paths, digests, colour_cache, progress=progress)
    readout_cache = FeatureCache(cache_dir, spec, "pad")
    have = readout_cache.keys()
    if not keep_maps and have >= {d for d, ok in zip(digests, ok_c) if ok}:
        keep = np.nonzero(ok_c)[0]
        vectors = np.stack([readout_cache.get(digests[i]) for i in keep])
        return Features([dataset.samples[i] for i in keep], colour[keep], vectors)
    # the cut lies below the fine-tuned top block: its maps do not depend on the tuned layers
    cut_cache = FeatureCache(cache_dir, replace(spec, tuned=""), "pad", cut)
    cached = cut_cache.keys()
    todo = [i for i, d in enumerate(digests) if d not in cached]
    if todo:  # compute and cache the missing maps; all maps are then read shard by shard (too big to hold at once)
        extract_paths([paths[i] for i in todo], [digests[i] for i in todo], cut_cache, progress=progress, collect=False)
    top = build_readout_top(spec, cut)
    row = {d: i for i, d in enumerate(digests)}
    readout = np.zeros((len(digests), int(top.output.shape[-1])), np.float32)
    maps: np.ndarray | None = None
    seen = np.zeros(len(digests), bool)
    bar = tqdm(total=len(digests), desc=f"readout from cached {cut}", unit="img", disable=not progress)
    for shard_digests, feats in cut_cache.shards():
        pairs = [(j, row[d]) for j, d in enumerate(shard_digests) if d in row and not seen[row[d]]]
        if not pairs:
            continue
        js, idx = [j for j, _ in pairs], [i for _, i in pairs]
        readout[idx] = top.predict(top_inputs(spec, feats[js], colour[idx]), batch_size=64, verbose=0)
        if keep_maps:
            if maps is None:
                maps = np.zeros((len(digests), *feats.shape[1:]), np.float16)
            maps[idx] = feats[js]
        seen[idx] = True
        bar.update(len(idx))
    bar.close()
    ok = ok_c & seen
    keep = np.nonzero(ok)[0]
    fresh = [i for i in keep if digests[i] not in have]
    for start in range(0, len(fresh), 4096):
        part = fresh[start : start + 4096]
        readout_cache.put([digests[i] for i in part], readout[part])
    return Features([dataset.samples[i] for i in keep], colour[keep], readout[keep], None if maps is None else maps[keep])



def served_readout(models: Any, dataset: Dataset, cache_dir: Any, progress: bool = True) -> Features:
    """The readout the served models read, for every readable sample of ``dataset``: ``models`` (a
    :class:`training.manifest.read.ModelSet`)'s backbone cut below its top block, through the tuned top block."""
    return cut_features(dataset, models.backbone, cut_layer(models.backbone.name, 1), cache_dir, keep_maps=False, progress=progress)


def top_inputs(spec: BackboneSpec, maps: Any, colour: Any) -> list[Any]:
    """The inputs of :func:`build_readout_top`'s model: the cut maps, and the colour features if read out."""
    return [maps, colour] if spec.readout is not None and spec.readout.colour else [maps]


def build_readout_top(spec: BackboneSpec, cut: str, base=None):  # noqa: ANN001, ANN201 - keras.Model
    """(cut map, colour vector) -> the readout vector, through the layers above ``cut``.

    With ``base`` (from :func:`build_top`), its layers are used, so training this model
    fine-tunes them. The readout's layers must be ``cut`` itself or above it.
    """
    import keras

    readout = spec.readout
    if readout is None:
        raise ValueError("build_readout_top needs a BackboneSpec with a readout")
    if base is None:
        base, _ = base_model(spec)
        base.trainable = False
    cut_in = keras.Input(shape=tuple(int(d) for d in base.get_layer(cut).output.shape[1:]), name="cut_features")
    names = [layer.name for layer in base.layers]
    start = names.index(cut) + 1
    tensors = {cut: cut_in}
    x = cut_in
    last = max(names.index(n) for n in readout.layers)
    for layer in base.layers[start : last + 1]:
        x = layer(x)
        tensors[layer.name] = x
    missing = [n for n in readout.layers if n not in tensors]
    if missing:
        raise ValueError(f"readout layers {missing} are below the cut {cut}")
    inputs = [cut_in]
    colour = None
    if readout.colour:
        colour = keras.Input(shape=(ColourHistogram.SIZE,), name=COLOUR)
        inputs.append(colour)
    out = readout_vector(readout, [tensors[n] for n in readout.layers], colour)
    return keras.Model(inputs, out, name=f"{spec.name}_readout_top")



def build_top(spec: BackboneSpec, blocks: int):  # noqa: ANN201 - (keras.Model, keras.Model)
    """The top ``blocks`` blocks as a model: cut-layer features -> backbone features.

    Returns ``(top, base)``: ``top``'s layers are ``base``'s own layer objects, so training
    ``top`` changes ``base``, whose weights (``base.save_weights``) then load with
    ``file:PATH`` like any backbone's. The top blocks are trainable, except batch
    normalisation (kept in inference mode, as usual when fine-tuning). Do not set
    ``top.trainable`` (Keras would set it on every layer, batch normalisation included).
    """
    import keras

    cut = cut_layer(spec.name, blocks)
    prefixes = top_block_prefixes(spec.name, blocks)
    base, _ = base_model(spec)
    names = [layer.name for layer in base.layers]
    above = names[names.index(cut) + 1 :]
    stray = [n for n in above if not n.startswith(prefixes)]
    if stray:
        raise ValueError(f"{spec.name}: layers above {cut} outside the top blocks {prefixes}: {stray[:3]}")
    try:
        top = keras.Model(base.get_layer(cut).output, base.output, name=f"{spec.name}_top{blocks}")
    except Exception as exc:  # noqa: BLE001 - a skip connection across the cut
        raise ValueError(f"{spec.name}: cannot cut at {cut}: {exc}") from None
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name in above and not isinstance(layer, keras.layers.BatchNormalization)
    return top, base
