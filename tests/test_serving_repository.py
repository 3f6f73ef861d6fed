"""`autolabel models build` for the three targets, checked without a server.

Configs are parsed with Triton's ModelConfig protobuf and compared with the exported models
(SavedModel signatures, ONNX graphs); the ONNX models must give TensorFlow's probabilities.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.settings import TASKS

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.manifest.untrained import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("serving") / "models", input_size=(32, 32))


@pytest.fixture(scope="module")
def repos(tiny: Path) -> dict[str, Path]:
    from training.serving.repository import build_repository

    return {t: build_repository(tiny, tiny.parent / f"repo-{t}", t, progress=False, log=lambda m: None) for t in ("cpu", "gpu-tf", "gpu-onnx")}


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    """The sample photos at 32x32 (padded like the worker) plus seeded noise and edge cases."""
    from services.images import prepare

    photos = [prepare(p.read_bytes(), (32, 32), "pad") for p in sorted((ROOT / "samples").glob("*.jpg"))[:12]]
    rng = np.random.default_rng(7)
    extra = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    extra += [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    return np.stack(photos + extra)


def _savedmodel(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures["serving_default"]
    sig._keep = loaded
    return lambda **kw: {k: v.numpy() for k, v in sig(**{n: tf.constant(a) for n, a in kw.items()}).items()}


def params_of(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.mark.parametrize("target", ["cpu", "gpu-tf", "gpu-onnx"])
def test_every_config_parses_and_matches_its_model(repos: dict[str, Path], target: str) -> None:
    from tritonclient.grpc import model_config_pb2

    from training.serving.repository_check import check_repository, parse_config

    repo = repos[target]
    assert check_repository(repo) == []
    names = {p.name for p in repo.iterdir() if p.is_dir()}
    assert names == {"autolabel", "backbone", "scope_head", *TASKS, *(f"{t}_head" for t in TASKS)}
    top = parse_config(repo / "autolabel" / "config.pbtxt")
    assert top.platform == "ensemble"
    # the title needs TensorFlow's string ops: served on cpu and gpu-tf, left out of the ONNX build
    assert [i.name for i in top.input] == (["image"] if target == "gpu-onnx" else ["image", "title"])
    assert list(top.input[0].dims) == [32, 32, 3]
    if target != "gpu-onnx":
        assert list(top.input[1].dims) == [1] and model_config_pb2.DataType.Name(top.input[1].data_type) == "TYPE_STRING"
        assert params_of(top)["threshold_style_title"] == "0.500000,0.500000,0.500000"
    assert [o.name for o in top.output] == [*TASKS, "scope"]  # the scope gate's [P(in scope), P(out of scope)]
    params = {k: v.string_value for k, v in top.parameters.items()}
    assert params["scope_threshold"] == "1.000000" and params["labels_scope"] == "in-scope,out-of-scope"
    assert params["labels_gender"] == "men,women" and params["backbone"] == "tiny" and params["weights_source"] == "random"
    backbone = parse_config(repo / "backbone" / "config.pbtxt")
    want = {"cpu": ("", "python", "KIND_CPU"), "gpu-tf": ("tensorflow_savedmodel", "", "KIND_GPU"),
            "gpu-onnx": ("onnxruntime_onnx", "", "KIND_GPU")}[target]

    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(backbone.instance_group[0].kind)
    assert (backbone.platform, backbone.backend, kind) == want
    assert backbone.max_batch_size >= 1 and backbone.HasField("dynamic_batching")
    info = json.loads((repo / "autolabel-build.json").read_text())
    assert info["target"] == target and info["backbone"]["name"] == "tiny"


def test_the_check_catches_a_config_that_does_not_match(repos: dict[str, Path], tmp_path: Path) -> None:
    from training.serving.repository_check import check_repository

    bad = tmp_path / "bad"
    shutil.copytree(repos["cpu"], bad)
    cfg = bad / "style_head" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("TYPE_FP32", "TYPE_UINT8", 1))
    (bad / "backbone" / "config.pbtxt").write_text((bad / "backbone" / "config.pbtxt").read_text().replace('name: "features"', 'name: "feats"'))
    problems = check_repository(bad)
    assert any("style_head" in p and "inputs" in p for p in problems), problems
    assert any("backbone" in p and "feats" in p for p in problems), problems
    onnx_bad = tmp_path / "onnx"
    shutil.copytree(repos["gpu-onnx"], onnx_bad)
    cfg = onnx_bad / "season" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 3 ]", "dims: [ 4 ]", 1))
    assert any(p.startswith("season:") for p in check_repository(onnx_bad))


def test_shared_backbone_gives_the_standalone_probabilities(repos: dict[str, Path], test_images: np.ndarray) -> None:
    repo = repos["cpu"]
    backbone = _savedmodel(repo / "backbone" / "1" / "model.savedmodel")
    features = backbone(image=test_images)["features"]
    no_title = np.array([[b""]] * len(test_images), dtype=object)
    for task in TASKS:
        shared = _savedmodel(repo / f"{task}_head" / "1" / "model.savedmodel")(features=features, title=no_title)["probs"]
        alone = _savedmodel(repo / task / "1" / "model.savedmodel")(image=test_images)["probs"]
        assert shared.shape == alone.shape == (len(test_images), len((repo / task / "labels.txt").read_text().split()))
        assert np.abs(shared - alone).max() <= TOL
        assert np.allclose(shared.sum(axis=1), 1, atol=1e-5)
        assert np.ptp(alone, axis=0).max() > 1e-3, "the test images should not all get the same probabilities"


def test_onnx_models_give_tensorflows_probabilities(repos: dict[str, Path], test_images: np.ndarray) -> None:
    import onnxruntime as ort

    def onnx(name: str):
        s = ort.InferenceSession(str(repos["gpu-onnx"] / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        return lambda **kw: dict(zip([o.name for o in s.get_outputs()], s.run(None, kw), strict=True))

    tf_repo = repos["gpu-tf"]
    features_onnx = onnx("backbone")(image=test_images)["features"]
    features_tf = _savedmodel(tf_repo / "backbone" / "1" / "model.savedmodel")(image=test_images)["features"]
    assert np.abs(features_onnx - features_tf).max() <= TOL * max(1.0, float(np.abs(features_tf).max()))
    for task in TASKS:
        want = _savedmodel(tf_repo / task / "1" / "model.savedmodel")(image=test_images)["probs"]
        standalone = onnx(task)(image=test_images)["probs"]
        via_heads = onnx(f"{task}_head")(features=features_onnx)["probs"]  # the ONNX build serves the photo alone
        assert np.abs(standalone - want).max() <= TOL
        assert np.abs(via_heads - want).max() <= TOL
        assert (standalone.argmax(1) == want.argmax(1)).all()


def test_tensorrt_accelerator_is_optional_and_parses(tiny: Path, tmp_path: Path) -> None:
    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository, parse_config

    repo = build_repository(tiny, tmp_path / "trt", "gpu-onnx", tensorrt=True, progress=False, log=lambda m: None)
    assert check_repository(repo) == []
    accel = parse_config(repo / "backbone" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accel] == ["tensorrt"] and accel[0].parameters["precision_mode"] == "FP32"


def test_a_task_that_left_the_shared_base_is_served_standalone(tiny: Path, tmp_path: Path, test_images: np.ndarray) -> None:
    """A fine-tuned full model for one task: no head for it; the ensemble calls its model."""
    import keras

    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository, parse_config

    models = tmp_path / "models"
    shutil.copytree(tiny, models)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(3))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0, seed=4))(x)
    full = keras.Model(inputs, outputs, name="style_finetuned")  # stands in for a fine-tuned full model
    (models / "tasks").mkdir()
    full.save(models / "tasks" / "style.keras")
    manifest = json.loads((models / "manifest.json").read_text())
    del manifest["tasks"]["style"]["head"]
    manifest["tasks"]["style"]["model"] = "tasks/style.keras"
    (models / "manifest.json").write_text(json.dumps(manifest))
    repo = tmp_path / "repo"
    (repo / "style_head").mkdir(parents=True)  # stale folder from an earlier build: removed
    build_repository(models, repo, "cpu", progress=False, log=lambda m: None)
    assert check_repository(repo) == []
    assert not (repo / "style_head").exists()
    steps = {s.model_name: dict(s.output_map) for s in parse_config(repo / "autolabel" / "config.pbtxt").ensemble_scheduling.step}
    assert steps["style"] == {"probs": "style"} and steps["gender_head"] == {"probs": "gender"}
    params = {k: v.string_value for k, v in parse_config(repo / "style" / "config.pbtxt").parameters.items()}
    assert params["weights_source"] == "fine-tuned:style.keras"
    got = _savedmodel(repo / "style" / "1" / "model.savedmodel")(image=test_images)["probs"]
    assert np.abs(got - full.predict(test_images, verbose=0)).max() <= TOL


def test_fused_serving_is_one_multi_output_model(tiny: Path, tmp_path: Path, test_images: np.ndarray, repos: dict[str, Path]) -> None:
    from training.serving.repository import build_repository
    from training.serving.repository_check import check_repository, parse_config

    repo = build_repository(tiny, tmp_path / "fused", "cpu", serving="fused", progress=False, log=lambda m: None)
    assert check_repository(repo) == []
    cfg = parse_config(repo / "autolabel" / "config.pbtxt")
    assert cfg.backend == "python" and [o.name for o in cfg.output] == [*TASKS, "scope"]
    assert [i.name for i in cfg.input] == ["image", "title"]
    out = _savedmodel(repo / "autolabel" / "1" / "model.savedmodel")(image=test_images, title=np.array([[b""]] * len(test_images), dtype=object))
    import onnxruntime as ort

    onnx_repo = build_repository(tiny, tmp_path / "fused-onnx", "gpu-onnx", serving="fused", progress=False, log=lambda m: None)
    assert check_repository(onnx_repo) == []
    sess = ort.InferenceSession(str(onnx_repo / "autolabel" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    out_onnx = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": test_images}), strict=True))
    for task in TASKS:
        alone = _savedmodel(repos["cpu"] / task / "1" / "model.savedmodel")(image=test_images)["probs"]
        assert np.abs(out[task] - alone).max() <= TOL
        assert np.abs(out_onnx[task] - alone).max() <= TOL, f"fused ONNX output {task} is not the {task} model's"
    # the scope gate: the same function fused and as the ensemble's step on the backbone's features
    features = _savedmodel(repos["cpu"] / "backbone" / "1" / "model.savedmodel")(image=test_images)["features"]
    gate = _savedmodel(repos["cpu"] / "scope_head" / "1" / "model.savedmodel")(features=features)["probs"]
    assert gate.shape == (len(test_images), 2) and np.allclose(gate.sum(1), 1, atol=1e-5)
    assert np.abs(out["scope"] - gate).max() <= TOL and np.abs(out_onnx["scope"] - gate).max() <= TOL


def test_cli_build_says_which_weights_and_refuses_without_heads(tiny: Path, tmp_path: Path) -> None:
    from training.cli.models import models

    runner = CliRunner()
    r = runner.invoke(models, ["build", "--models-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r0")])
    assert r.exit_code != 0 and "no trained heads in" in r.output and "autolabel train" in r.output
    r = runner.invoke(models, ["build", "--models-dir", str(tiny), "--out", str(tmp_path / "r1"), "--target", "cpu", "--quiet",
                               "--max-batch", "8", "--instances", "2", "--queue-delay-us", "500"])
    assert r.exit_code == 0, r.output
    assert "tiny with random weights" in r.output
    text = (tmp_path / "r1" / "backbone" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and "count: 2" in text and "max_queue_delay_microseconds: 500" in text
    r = runner.invoke(models, ["check", str(tmp_path / "r1")])
    assert r.exit_code == 0 and "ok (target cpu" in r.output
    r = runner.invoke(models, ["build", "--models-dir", str(tiny), "--out", str(tmp_path / "r2"), "--tensorrt"])
    assert r.exit_code != 0 and "gpu-onnx only" in r.output
    r = runner.invoke(models, ["build", "--models-dir", str(tiny), "--out", str(tmp_path / "r3"), "--preferred-batch", "4,x"])
    assert r.exit_code != 0 and "comma-separated integers" in r.output


def test_build_keeps_models_it_does_not_own(tiny: Path, tmp_path: Path) -> None:
    from training.serving.repository import build_repository

    repo = tmp_path / "repo"
    (repo / "trivial" / "1").mkdir(parents=True)
    (repo / "trivial" / "config.pbtxt").write_text('name: "trivial"\n')
    (repo / "README.md").write_text("kept\n")
    build_repository(tiny, repo, "gpu-tf", progress=False, log=lambda m: None)
    assert (repo / "trivial" / "config.pbtxt").is_file() and (repo / "README.md").read_text() == "kept\n"


def test_a_title_moves_the_labels_and_no_title_keeps_the_photos_exactly(repos: dict[str, Path], tiny: Path,
                                                                      test_images: np.ndarray) -> None:
    """The heads read the title; one without words (empty, control characters, another script,
    bytes that are not UTF-8) gives the image head's own probabilities, bit for bit."""
    import keras

    repo = repos["cpu"]
    features = _savedmodel(repo / "backbone" / "1" / "model.savedmodel")(image=test_images)["features"]
    n = len(test_images)
    titles = {
        "empty": [b""] * n, "control": [b"\x00\x01\t\n"] * n, "japanese": ["日本語のシャツ".encode()] * n,
        "not utf-8": [b"\xff\xfe\xc3"] * n, "words": [b"Puma Men Blue Track Pants"] * n,
        "10 kB": [b"Wrangler Women Navy Jacket " * 400] * n,
    }
    for task in TASKS:
        head = _savedmodel(repo / f"{task}_head" / "1" / "model.savedmodel")
        got = {name: head(features=features, title=np.array([[t] for t in ts], dtype=object)) for name, ts in titles.items()}
        image_only = keras.models.load_model(tiny / "heads" / f"{task}.keras", compile=False).predict(features, verbose=0)
        assert np.abs(got["empty"]["probs"] - image_only).max() <= 1e-6
        for name in ("control", "japanese", "not utf-8"):
            assert np.array_equal(got[name]["probs"], got["empty"]["probs"]), name
        for name in ("words", "10 kB"):
            assert np.abs(got[name]["probs"] - got["empty"]["probs"]).max() > 1e-3, f"{task}: the title {name!r} changed nothing"
            assert np.allclose(got[name]["probs"].sum(axis=1), 1, atol=1e-5)
        assert got["words"]["title_probs"].shape == (n, len((repo / task / "labels.txt").read_text().split()))


def test_the_bench_path_without_the_scope_gate_is_the_same_ensemble_less_one_step(repos: dict[str, Path], tmp_path: Path) -> None:
    """`bench serving --paths b,e`: path e's ensemble has every step and output of `autolabel` but the gate's."""
    from benchmarks.serving import NO_SCOPE, write_without_scope
    from training.serving.repository_check import check_repository, parse_config

    repo = tmp_path / "repo"
    shutil.copytree(repos["cpu"], repo)
    write_without_scope(repo)
    assert check_repository(repo) == []  # its steps read and write what the step models have
    full, plain = parse_config(repo / "autolabel" / "config.pbtxt"), parse_config(repo / NO_SCOPE / "config.pbtxt")
    assert plain.name == NO_SCOPE and [o.name for o in plain.output] == list(TASKS)
    assert [s.model_name for s in plain.ensemble_scheduling.step] == [s.model_name for s in full.ensemble_scheduling.step
                                                                      if s.model_name != "scope_head"]
    assert [i.name for i in plain.input] == [i.name for i in full.input] and plain.max_batch_size == full.max_batch_size
