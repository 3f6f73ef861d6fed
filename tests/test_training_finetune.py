"""Fine-tuning the backbone's top blocks: `autolabel train --fine-tune-blocks N` -> build -> evaluate.

VGG16 with seeded ``random`` weights at 32x32 keeps it cheap: block5 sees 2x2 maps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from training.cli import evaluate as evaluate_cli
from training.cli import train as cli
from training.data.synthetic import make_fpi
from training.features.backbones import FINE_TUNE_BLOCKS, BackboneSpec

VGG = ["--backbone", "vgg16", "--weights", "random", "--input-size", "32", "--readout", "none", "--quiet"]
SPEC = BackboneSpec("vgg16", "random", (32, 32))
FINE = ["--fine-tune-blocks", "1", "--fine-tune-epochs", "2", "--fine-tune-lr", "1e-3"]


def _train(args: list[str]) -> str:
    result = CliRunner().invoke(cli.train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Frozen heads for all tasks, then style retrained with its top block fine-tuned (same --out)."""
    base = tmp_path_factory.mktemp("finetune")
    data, models, cache = base / "fpi", base / "models", base / "cache"
    make_fpi(data, n_per_combo=2)
    common = ["--data", f"fpi:{data}", *VGG, "--cache-dir", str(cache), "--out", str(models), "--set", "all.epochs=2"]
    _train([*common, "--run-dir", str(base / "r1"), "--balance", "class_weight"])
    frozen_style = (models / "heads" / "style.keras").read_bytes()
    out = _train([*common, "--run-dir", str(base / "r2"), "--tasks", "style", "--balance", "augment", *FINE])
    return {"base": base, "data": data, "models": models, "cache": cache, "output": out, "common": common,
            "frozen_style": frozen_style}


def _manifest(models: Path) -> dict:
    return json.loads((models / "manifest.json").read_text())


def test_the_manifest_records_the_fine_tuning(tuned: dict) -> None:
    models = tuned["models"]
    m = _manifest(models)
    assert m["backbone"] == {"name": "vgg16", "weights": "random", "input_size": [32, 32]}  # the shared base is unchanged
    style = m["tasks"]["style"]
    assert style["backbone"] == {"name": "vgg16", "weights": "file:backbones/style.weights.h5", "input_size": [32, 32]}
    ft = style["fine_tuned"]
    assert (ft["blocks"], ft["epochs"], ft["learning_rate"], ft["optimizer"]) == (1, 2, 1e-3, "adam")
    assert ft["layers"] == ["block5_*"] and ft["cut_layer"] == "block4_pool" and ft["from_weights"] == "random"
    assert 1 <= ft["kept_epoch"] <= 2
    for part in ("autolabel train", "--tasks style", "--fine-tune-blocks 1", "--fine-tune-epochs 2", "--fine-tune-lr 0.001",
                 f"--split {models / 'split.json'}", f"--out {models}", "--weights random", "--input-size 32"):
        assert part in ft["rebuild"], part
    assert style["trained_on"]["augmented_rows"] > 0  # the balancing copies went through the cut cache too
    for task in ("gender", "season"):  # not retrained: still on the shared frozen base
        assert "backbone" not in m["tasks"][task] and "fine_tuned" not in m["tasks"][task]
    assert (models / "backbones" / "style.weights.h5").stat().st_size > 10_000_000  # the whole VGG16 base
    assert (models / "heads" / "style.keras").read_bytes() != tuned["frozen_style"]
    history = json.loads((models / "history.json").read_text())
    assert len(history["style"]["fine_tune"]["loss"]) == 2 and "fine_tune" not in history["gender"]


def test_only_the_top_block_changed(tuned: dict) -> None:
    from training.features.backbones import base_model

    before, _ = base_model(SPEC)
    after, _ = base_model(BackboneSpec("vgg16", f"file:{tuned['models'] / 'backbones' / 'style.weights.h5'}", (32, 32)))
    changed = set()
    for a, b in zip(before.layers, after.layers, strict=True):
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            if np.abs(wa - wb).max() > 0:
                changed.add(a.name)
    assert changed == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_a_second_run_reuses_the_cut_cache(tuned: dict, tmp_path: Path) -> None:
    cache: Path = tuned["cache"]
    dirs = sorted(p.name for p in cache.iterdir())
    assert len(dirs) == 2 and any("-block4_pool-" in d for d in dirs)  # frozen-base cache + cut cache, side by side
    cut = next(p for p in cache.iterdir() if "-block4_pool-" in p.name)
    assert json.loads((cut / "fingerprint.json").read_text())["layer"] == "block4_pool"
    shards = sorted(p.name for p in cut.glob("shard-*.npz"))
    out = _train(["--data", f"fpi:{tuned['data']}", *VGG, "--cache-dir", str(cache), "--out", str(tmp_path / "m"),
                  "--run-dir", str(tmp_path / "r"), "--tasks", "style", "--set", "all.epochs=1", "--balance", "augment",
                  "--fine-tune-blocks", "1", "--fine-tune-epochs", "1"])
    assert "0 computed" in out and "reused from cache" in out
    assert sorted(p.name for p in cut.glob("shard-*.npz")) == shards  # the augmented copies were cached too


def test_the_built_repository_serves_the_fine_tuned_backbone(tuned: dict, tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    from training.features.backbones import build_backbone
    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository, parse_config

    models: Path = tuned["models"]
    repo = build_repository(models, tmp_path / "repo", "cpu", progress=False, log=lambda m: None)
    assert check_repository(repo) == []
    assert not (repo / "style_head").exists() and (repo / "gender_head").is_dir()
    steps = {s.model_name: dict(s.output_map) for s in parse_config(repo / "autolabel" / "config.pbtxt").ensemble_scheduling.step}
    assert steps["style"] == {"probs": "style"} and steps["season_head"] == {"probs": "season"}
    params = {k: v.string_value for k, v in parse_config(repo / "style" / "config.pbtxt").parameters.items()}
    assert params["weights_source"] == "fine-tuned (top 1 block) from random"
    ens = {k: v.string_value for k, v in parse_config(repo / "autolabel" / "config.pbtxt").parameters.items()}
    assert ens["weights_source"] == "random (style: fine-tuned (top 1 block) from random)"

    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    head = keras.models.load_model(models / "heads" / "style.keras")
    own = build_backbone(BackboneSpec("vgg16", f"file:{models / 'backbones' / 'style.weights.h5'}", (32, 32)))
    own_features = own.predict(images, verbose=0)
    want = head.predict(own_features, verbose=0)
    shared_features = build_backbone(SPEC).predict(images, verbose=0)
    sig = tf.saved_model.load(str(repo / "style" / "1" / "model.savedmodel")).signatures["serving_default"]
    got = sig(image=tf.constant(images))["probs"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # it is not the frozen base that gives these (compared on the features: the tiny head may saturate)
    assert np.abs(own_features - shared_features).max() > 1e-4


def test_evaluate_scores_the_served_fine_tuned_task_like_the_heads(tuned: dict, tmp_path: Path) -> None:
    from training.serving.repository import build_repository

    models: Path = tuned["models"]
    repo = build_repository(models, tmp_path / "repo", "cpu", progress=False, log=lambda m: None)
    scores, outputs = {}, {}
    for name, args in (("served", ["--repository", str(repo)]), ("heads", ["--from-heads"])):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{tuned['data']}", "--models", str(models), *args, "--json", str(out),
                                              "--quiet"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        scores[name], outputs[name] = json.loads(out.read_text())["tasks"], r.output
    assert f"{repo}/style (" in outputs["served"]  # the standalone model, not backbone + style_head
    assert "style.keras on vgg16 fine-tuned (top 1 block) from random" in outputs["heads"]
    for task in ("style", "gender", "season"):
        assert scores["served"][task]["n"] == scores["heads"][task]["n"] > 0
        assert scores["served"][task]["accuracy"] == pytest.approx(scores["heads"][task]["accuracy"], abs=1e-9)


def test_a_missing_fine_tuned_backbone_says_how_to_rebuild_it(tuned: dict, tmp_path: Path) -> None:
    from training.cli.models import models as models_cli

    models = tmp_path / "models"
    shutil.copytree(tuned["models"], models, ignore=shutil.ignore_patterns("backbones"))  # as in a fresh clone
    r = CliRunner().invoke(models_cli, ["build", "--models-dir", str(models), "--out", str(tmp_path / "repo"), "--quiet"])
    assert r.exit_code != 0
    assert "style.weights.h5 is missing" in r.output and "not committed" in r.output
    assert "autolabel train" in r.output and "--fine-tune-blocks 1" in r.output and "--tasks style" in r.output


def test_retraining_without_fine_tuning_returns_the_task_to_the_shared_base(tuned: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tuned["models"], models)
    _train(["--data", f"fpi:{tuned['data']}", *VGG, "--cache-dir", str(tuned["cache"]), "--out", str(models),
            "--run-dir", str(tmp_path / "r"), "--tasks", "style", "--set", "all.epochs=1", "--balance", "class_weight"])
    style = _manifest(models)["tasks"]["style"]
    assert "backbone" not in style and "fine_tuned" not in style
    assert not (models / "backbones" / "style.weights.h5").exists()


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "efficientnetb7", "tiny"])
def test_each_cut_is_the_layer_just_below_its_blocks(name: str) -> None:
    import keras

    from training.features.backbones import base_model

    if name == "tiny":
        base, _ = base_model(BackboneSpec("tiny", "random", (32, 32)))
    else:
        cls = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50,
               "efficientnetb7": keras.applications.EfficientNetB7}[name]
        base = cls(include_top=False, weights=None, input_shape=(32, 32, 3))
    names = [layer.name for layer in base.layers]
    prefixes: tuple[str, ...] = ()
    for blocks, (block, cut) in enumerate(FINE_TUNE_BLOCKS[name], start=1):
        prefixes += block
        first = next(i for i, n in enumerate(names) if n.startswith(prefixes))
        assert names[first - 1] == cut, (blocks, names[first - 1])
        assert all(n.startswith(prefixes) for n in names[first:]), blocks
        assert not any(n.startswith(prefixes) for n in names[:first])


@pytest.mark.parametrize("spec", [SPEC, BackboneSpec("resnet50", "random", (32, 32))], ids=["vgg16", "resnet50"])
def test_top_on_cut_features_equals_the_backbone(spec: BackboneSpec) -> None:
    import keras

    from training.features.backbones import build_backbone, cut_layer
    from training.features.readout import build_top

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    full = build_backbone(spec).predict(images, verbose=0)
    top, base = build_top(spec, 1)
    cut = build_backbone(spec, cut_layer(spec.name, 1)).predict(images, verbose=0)
    np.testing.assert_allclose(top.predict(cut, verbose=0), full, rtol=1e-4, atol=1e-4 * float(np.abs(full).max()))
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable and all(n.startswith(("block5_", "conv5_")) for n in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in base.layers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "tiny", "--weights", "random", "--fine-tune-blocks", "2"], "tiny has 1 top block(s) that can be fine-tuned"),
        (["--fine-tune-blocks", "5", "--readout", "none"], "vgg16 has 4 top block(s)"),
        (["--fine-tune-blocks", "2"], "with a readout, --fine-tune-blocks is 0 or 1"),  # one block, shared by the three tasks
        (["--fine-tune-blocks", "1", "--fine-tune-lr", "0"], "--fine-tune-lr"),
        (["--fine-tune-blocks", "1", "--fine-tune-epochs", "0"], "--fine-tune-epochs"),
    ],
)
def test_train_rejects_bad_fine_tuning_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.train, ["--data", "fpi:.", *args])
    assert result.exit_code != 0 and message in result.output


def test_the_default_cache_key_is_unchanged_and_the_cut_has_its_own(tmp_path: Path) -> None:
    from training.features.cache import FeatureCache

    tiny = BackboneSpec("tiny", "random", (48, 48))
    plain = FeatureCache(tmp_path, tiny, "pad")
    # the fingerprint existing caches were written with: no "layer" key, same folder name
    assert plain.fingerprint == {"backbone": "tiny", "weights": "random", "input_size": [48, 48], "resize": "pad"}
    assert plain.dir.name == "tiny-48x48-pad-" + __import__("hashlib").sha256(
        json.dumps(plain.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    cut = FeatureCache(tmp_path, tiny, "pad", "block1_conv1")
    assert cut.dir != plain.dir and "-block1_conv1-" in cut.dir.name and cut.fingerprint["layer"] == "block1_conv1"


def test_help_describes_the_fine_tuning_flags() -> None:
    out = CliRunner().invoke(cli.train, ["--help"]).output
    for flag in ("--fine-tune-blocks", "--fine-tune-epochs", "--fine-tune-lr"):
        assert flag in out
    assert "frozen base" in out and "backbones/" in out
