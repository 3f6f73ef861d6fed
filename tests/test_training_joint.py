"""Three calibrated heads on one readout, the top block fine-tuned jointly: train -> build -> evaluate.

VGG16 with seeded ``random`` weights at 32x32 keeps it cheap (block4_pool and block5_conv3
are 2x2 there, so a 2x2 grid is the whole map).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from training.cli import evaluate as evaluate_cli
from training.cli import train as cli
from training.data.synthetic import make_fpi
from training.evaluation.runners import read_config_parameters
from training.features.backbones import BackboneSpec, Readout, build_backbone
from training.heads.calibration import softmax
from training.heads.joint import logits_of
from training.manifest.write import TUNED_FILE

READOUT = "grid2:block4_pool,block5_conv3+colour"
PLAIN = "grid2:block4_pool,block5_conv3"
VGG = ["--backbone", "vgg16", "--weights", "random", "--input-size", "32", "--readout", READOUT, "--quiet"]


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("joint")
    data, models, cache = base / "fpi", base / "models", base / "cache"
    make_fpi(data, n_per_combo=3)
    args = ["--data", f"fpi:{data}", *VGG, "--cache-dir", str(cache), "--out", str(models), "--set", "all.epochs=8",
            "--set", "all.learning_rate=1e-3", "--fine-tune-blocks", "1", "--fine-tune-epochs", "2", "--target-precision", "0.9"]
    result = CliRunner().invoke(cli.train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"base": base, "data": data, "models": models, "cache": cache, "output": result.output}


def _manifest(models: Path) -> dict:
    return json.loads((models / "manifest.json").read_text())


def test_the_manifest_ships_calibration_thresholds_and_only_the_tuned_block(joint: dict[str, Path]) -> None:
    m = _manifest(joint["models"])
    assert m["backbone"] == {"name": "vgg16", "weights": "random", "input_size": [32, 32], "readout": READOUT, "tuned": TUNED_FILE}
    with np.load(joint["models"] / TUNED_FILE) as z:
        assert {k.split("/")[0] for k in z.files} == {"block5_conv1", "block5_conv2", "block5_conv3"}
    ft = m["trained_with"]["fine_tuned"]
    assert ft["layers"] == ["block5_*"] and ft["jointly"] == ["style", "gender", "season"] and 1 <= ft["kept_epoch"] <= 2
    assert "--fine-tune-blocks 1" in m["trained_with"]["command"]
    for task, entry in m["tasks"].items():
        cal, thr = entry["calibration"], entry["threshold"]
        assert cal["method"] == "temperature" and cal["temperature"] > 0
        assert thr["target_precision"] == 0.9 and thr["chosen_on"] == "val"
        assert 0 <= thr["coverage"] <= 1 and entry["metrics"]["val"]["auto_accept"]["threshold"] == thr["threshold"]
        assert set(entry["metrics"]) == {"val", "test"}
    assert (joint["models"] / "split.json").is_file()
    assert "| style | test |" in joint["output"] and "coverage" in joint["output"]
    # the synthetic rows have titles: train fits the title models beside the heads (--title, the default)
    assert m["title"]["trained_with"] == m["trained_with"]["command"] and (joint["models"] / "heads" / "title.npz").is_file()
    assert "train rows with a title" in joint["output"]


def test_the_tuned_block_changed_and_the_lower_blocks_did_not(joint: dict[str, Path]) -> None:
    plain = BackboneSpec("vgg16", "random", (32, 32), Readout.parse(READOUT))
    tuned = BackboneSpec("vgg16", "random", (32, 32), Readout.parse(READOUT), str(joint["models"] / TUNED_FILE))
    a, b = build_backbone(plain), build_backbone(tuned)

    def layer(model, name):
        inner = next(x for x in model.layers if hasattr(x, "layers") and any(y.name == name for y in x.layers))
        return inner.get_layer(name).get_weights()[0]

    assert np.array_equal(layer(a, "block4_conv3"), layer(b, "block4_conv3"))
    assert not np.array_equal(layer(a, "block5_conv3"), layer(b, "block5_conv3"))


def test_heads_output_the_temperature_scaled_softmax(joint: dict[str, Path]) -> None:
    import keras

    m = _manifest(joint["models"])
    x = np.random.default_rng(0).normal(size=(5, keras.models.load_model(joint["models"] / "heads/style.keras").input_shape[1]))
    for task, entry in m["tasks"].items():
        head = keras.models.load_model(joint["models"] / entry["head"])
        probs = np.asarray(head.predict_on_batch(x))
        expected = softmax(logits_of(head, x) / entry["calibration"]["temperature"])
        assert np.allclose(probs, expected, atol=1e-5), task


def test_served_repository_scores_like_the_heads_and_carries_the_thresholds(joint: dict[str, Path]) -> None:
    from training.serving.repository import build_repository

    models, repo = joint["models"], joint["base"] / "repo"
    build_repository(models, repo, "cpu", progress=False, log=lambda _: None)
    params = read_config_parameters(repo / "autolabel" / "config.pbtxt")
    assert params["weights_source"] == "random + tuned layers"  # label events say the base was fine-tuned
    m = _manifest(models)
    for task, entry in m["tasks"].items():
        assert float(params[f"threshold_{task}"]) == pytest.approx(entry["threshold"]["threshold"], abs=1e-6)
    scores = {}
    for name, args in (("served", ["--repository", str(repo)]), ("heads", ["--from-heads"])):
        out = joint["base"] / f"{name}.json"
        r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{joint['data']}", "--models", str(models), *args, "--json", str(out),
                                              "--quiet", "--report", str(joint["base"] / f"report-{name}")], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        scores[name] = json.loads(out.read_text())
        assert "rows: the test part" in r.output
    for task in ("style", "gender", "season"):
        s, h = scores["served"]["tasks"][task], scores["heads"]["tasks"][task]
        assert s["n"] == h["n"] > 0 and s["accuracy"] == pytest.approx(h["accuracy"], abs=1e-9)
        assert s["ece"] == pytest.approx(h["ece"], abs=1e-4)
        assert s["auto_accept"]["threshold"] == pytest.approx(m["tasks"][task]["threshold"]["threshold"], abs=1e-6)
        # the training run scored the same test rows: the same figures
        assert s["balanced_accuracy"] == pytest.approx(m["tasks"][task]["metrics"]["test"]["balanced_accuracy"], abs=1e-9)
    products = scores["served"]["products"]
    assert products["products"] > 0 and 0 <= products["unflagged"] <= products["products"]
    assert (joint["base"] / "report-served" / "calibration_style.png").is_file()


def test_a_readout_without_colour_fine_tunes_and_serves_too(joint: dict[str, Path], tmp_path: Path) -> None:
    from training.serving.repository import build_repository

    models = tmp_path / "models"
    args = ["--data", f"fpi:{joint['data']}", *VGG, "--readout", PLAIN, "--cache-dir", str(joint["cache"]), "--out", str(models),
            "--set", "all.epochs=2", "--fine-tune-blocks", "1", "--fine-tune-epochs", "1", "--split", str(joint["models"] / "split.json")]
    result = CliRunner().invoke(cli.train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _manifest(models)["backbone"]["readout"] == PLAIN
    repo = build_repository(models, tmp_path / "repo", "cpu", progress=False, log=lambda _: None)
    assert (repo / "autolabel" / "config.pbtxt").is_file()


def test_the_onnx_build_computes_the_same_readout_and_probabilities(joint: dict[str, Path]) -> None:
    """The readout (average pooling, the colour histogram) and the tuned block survive tf2onnx."""
    import onnxruntime as ort
    import tensorflow as tf

    from training.serving.repository import build_repository

    onnx_repo = build_repository(joint["models"], joint["base"] / "repo-onnx", "gpu-onnx", progress=False, log=lambda _: None)
    tf_repo = build_repository(joint["models"], joint["base"] / "repo-tf", "gpu-tf", progress=False, log=lambda _: None)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    images[:, :8] = 255  # a white background band, as product photos have

    def run_onnx(name: str, **inputs: np.ndarray) -> np.ndarray:
        s = ort.InferenceSession(str(onnx_repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        return s.run(None, inputs)[0]

    def run_tf(name: str, key: str, **inputs: np.ndarray) -> np.ndarray:
        sig = tf.saved_model.load(str(tf_repo / name / "1" / "model.savedmodel")).signatures["serving_default"]
        return sig(**{k: tf.constant(v) for k, v in inputs.items()})[key].numpy()

    f_onnx, f_tf = run_onnx("backbone", image=images), run_tf("backbone", "features", image=images)
    assert f_onnx.shape == f_tf.shape and np.abs(f_onnx - f_tf).max() <= 1e-4 * max(1.0, float(np.abs(f_tf).max()))
    for task in ("style", "gender", "season"):
        p_onnx, p_tf = run_onnx(task, image=images), run_tf(task, "probs", image=images)
        assert np.abs(p_onnx - p_tf).max() <= 1e-4, task


def test_train_title_adds_the_title_and_evaluate_scores_each_input(joint: dict[str, Path], tmp_path: Path) -> None:
    """`autolabel train-title` on the trained heads, then evaluate --inputs image,title,image+title through the
    built repository: the photo-only scores are the heads' own; the synthetic titles name the style."""
    import shutil

    from training.cli import addons as title_cli
    from training.serving.repository import build_repository

    models = tmp_path / "models"
    shutil.copytree(joint["models"], models)
    r = CliRunner().invoke(title_cli.train_title_command, ["--data", f"fpi:{joint['data']}", "--models-dir", str(models),
                                                           "--cache-dir", str(joint["cache"]), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "| task | train rows with a title | val balanced acc.: image | title | image+title |" in r.output
    title = _manifest(models)["title"]
    assert title["file"] == "heads/title.npz" and (models / "heads" / "title.npz").is_file()
    assert set(title["tasks"]) == {"style", "gender", "season"}
    for entry in title["tasks"].values():
        assert entry["threshold"]["chosen_on"] == "val" and len(entry["threshold"]["thresholds"]) >= 2
    repo = build_repository(models, tmp_path / "repo", "cpu", progress=False, log=lambda _: None)
    params = read_config_parameters(repo / "autolabel" / "config.pbtxt")
    assert len(params["threshold_style_title"].split(",")) == 3
    out = tmp_path / "inputs.json"
    r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{joint['data']}", "--models", str(models), "--repository", str(repo),
                                                   "--inputs", "image,title,image+title", "--json", str(out), "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())["tasks"]
    heads = tmp_path / "heads.json"
    r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{joint['data']}", "--models", str(models), "--from-heads",
                                                   "--json", str(heads), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    before = json.loads(heads.read_text())["tasks"]
    for task in ("style", "gender", "season"):
        assert got[task]["accuracy"] == pytest.approx(before[task]["accuracy"], abs=1e-9), "photo only: the image heads' scores"
        assert got[f"{task} [image+title]"]["n"] == got[f"{task} [title]"]["n"] == got[task]["n"]
    assert got["style [title]"]["balanced_accuracy"] == pytest.approx(1.0)  # "Brand Casual Men Shirt" names the style
    assert got["style [image+title]"]["balanced_accuracy"] >= got["style"]["balanced_accuracy"]
    bad = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{joint['data']}", "--inputs", "text", "--quiet"])
    assert bad.exit_code == 2 and "choose from image, title, image+title" in bad.output


def test_train_scope_adds_the_gate_and_the_repository_serves_it(joint: dict[str, Path], tmp_path: Path) -> None:
    """`autolabel train-scope` on the trained heads: heads/scope.keras, the manifest's `scope`, a new model
    version, and a repository whose `autolabel` also answers `scope`. (A third of the synthetic rows are
    relabelled Footwear: the photos are already in the feature cache, and in every part of the split.)"""
    import csv
    import shutil

    from training.cli import addons as title_cli
    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository

    data, models = tmp_path / "fpi", tmp_path / "models"
    shutil.copytree(joint["data"], data)
    shutil.copytree(joint["models"], models)
    with (data / "styles.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["masterCategory"] = "Footwear"
    with (data / "styles.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    before = _manifest(models)["model_version"]
    args = ["--data", f"fpi:{data}", "--models-dir", str(models), "--cache-dir", str(joint["cache"]), "--max-false-flags", "0.2", "--quiet"]
    r = CliRunner().invoke(title_cli.train_scope_command, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "out-of-scope caught" in r.output and "Footwear" in r.output
    scope = _manifest(models)["scope"]
    assert scope["head"] == "heads/scope.keras" and (models / "heads" / "scope.keras").is_file()
    assert 0 <= scope["threshold"] <= 1 and scope["chosen_on"] == "val" and scope["in_scope"] == ["Apparel"]
    assert set(scope["metrics"]) == {"train", "val", "test"}
    assert _manifest(models)["model_version"].startswith(before[:10]) and _manifest(models)["model_version"] != before  # a new version
    repo = build_repository(models, tmp_path / "repo", "cpu", progress=False, log=lambda _: None)
    assert check_repository(repo) == []
    assert read_config_parameters(repo / "autolabel" / "config.pbtxt")["scope_threshold"] == f"{scope['threshold']:.6f}"
    _train_others_and_serve_the_mixture(data, models, joint["cache"], tmp_path)
    # nothing to tell apart: a clear error, nothing written
    only = CliRunner().invoke(title_cli.train_scope_command, ["--data", f"fpi:{joint['data']}", "--models-dir", str(models),
                                                              "--cache-dir", str(joint["cache"]), "--in-scope", "Apparel,Footwear,Accessories",
                                                              "--quiet"])
    assert only.exit_code != 0 and "rows outside" in only.output


def _train_others_and_serve_the_mixture(data: Path, models: Path, cache: Path, tmp_path: Path) -> None:
    """`autolabel train-others` after train-scope: a head per task for the Footwear rows, and every served
    function of a task gives the other head's probabilities for the photos the gate flags, the apparel head's for the rest."""
    import csv

    import keras

    from training.cli import addons as title_cli
    from training.evaluation.served import routed_head
    from training.manifest.read import read_models
    from training.serving.graphs import build_graphs
    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository
    from training.serving.servables import servables

    with (data / "styles.csv").open(newline="") as f:  # two rows in three Footwear: enough of each class in validation
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["masterCategory"] = "Apparel" if i % 3 == 1 else "Footwear"
    with (data / "styles.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    before = _manifest(models)["model_version"]
    r = CliRunner().invoke(title_cli.train_others_command, ["--data", f"fpi:{data}", "--models-dir", str(models), "--cache-dir", str(cache),
                                                            "--route-budget", "0.3", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "apparel heads -> other heads" in r.output
    others = _manifest(models)["others"]
    assert others["categories"] == ["Footwear"] and _manifest(models)["model_version"] != before
    assert _manifest(models)["scope"]["threshold"] <= others["route_threshold"] <= 1 and others["route_budget"] == 0.3
    assert others["routed_val"]["in_scope"] <= 0.3
    for task, entry in others["tasks"].items():
        assert (models / entry["head"]).is_file() and entry["classes"] == _manifest(models)["tasks"][task]["classes"]
        assert set(entry["metrics"]) == {"val", "test"} and entry["rows"]["train"] > 0
        assert set(entry["metrics"]["val"]) == {"others", "apparel_heads"} and "auto_accept" in entry["metrics"]["test"]
        assert entry["threshold"]["chosen_on"] == "val (photos routed to these heads)" and entry["threshold"]["target_precision"] == 0.95
    repo = build_repository(models, tmp_path / "repo-others", "cpu", progress=False, log=lambda _: None)
    assert check_repository(repo) == []
    params = read_config_parameters(repo / "autolabel" / "config.pbtxt")  # the worker's thresholds for those photos
    assert {k for k in params if k.endswith("_others")} == {"threshold_style_others", "threshold_gender_others", "threshold_season_others"}
    assert float(params["others_route_threshold"]) == pytest.approx(others["route_threshold"], abs=1e-6)
    assert float(params["threshold_gender_others"]) == pytest.approx(min(others["tasks"]["gender"]["threshold"]["threshold"], 1.0), abs=1e-6)

    graphs = build_graphs(read_models(models))
    assert set(graphs.others) == {"style", "gender", "season"}
    served = {s.name: s for s in servables(graphs, fused=True)}
    from PIL import Image

    photos = sorted((data / "images").glob("*.jpg"))[:40]  # the catalog's own photos: the gate flags some, keeps others
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in photos]).astype(np.uint8)
    feats = served["backbone"].fn(images)["features"]
    p_out = graphs.scope(feats).numpy()[:, 1]
    flagged = (p_out > graphs.models.others.route_threshold)[:, None]
    assert flagged.any() and not flagged.all()  # (a synthetic gate is unsure: both head sets are used, so the routing is tested)
    fused = served["autolabel"].fn(images, np.array([[b""]] * len(images)))
    for task in ("style", "gender", "season"):
        own = keras.models.load_model(models / others["tasks"][task]["head"], compile=False)(feats).numpy()
        apparel = graphs.heads[task](feats).numpy()
        want = np.where(flagged, own, apparel)
        head_out = served[f"{task}_head"].fn(feats, np.array([[b""]] * len(images)))["probs"] if served[f"{task}_head"].title else \
            served[f"{task}_head"].fn(feats)["probs"]
        assert np.allclose(np.asarray(head_out), want, atol=1e-5)  # no title: the apparel head's own, or the other head's
        assert np.allclose(np.asarray(served[task].fn(images)["probs"]), want, atol=1e-5)  # standalone: the same
        assert np.allclose(np.asarray(fused[task]), want, atol=1e-5)  # fused: the same
        from_heads = routed_head(keras.models.load_model(models / _manifest(models)["tasks"][task]["head"]), read_models(models), task)
        assert np.allclose(from_heads.predict_on_batch(np.asarray(feats)), want, atol=1e-5)  # evaluate --from-heads: the same
