"""`autolabel models build --target cpu-openvino`, served by the embedded stack's real tritonserver.

The tiny models (same contract as the served VGG16 set) are built three ways: ``cpu``
(TensorFlow, the reference, run in process), ``cpu-openvino`` in f32 and in bf16. One
tritonserver serves the f32 build and, beside it, the bf16 backbone behind ``autolabel_bf16``
(training/repository_variants.py). Through Triton, on the sample photos: f32 OpenVINO gives
TensorFlow's probabilities within 1e-4; bf16 within a bf16 tolerance and with TensorFlow's labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.settings import TASKS

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4
BF16_TOL = 0.05  # bf16 keeps 8 bits of mantissa: probabilities move by up to a few 1e-2 on the tiny random model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.export import build_repository, make_tiny_models

    work = tmp_path_factory.mktemp("openvino")
    tiny = make_tiny_models(work / "models", input_size=(32, 32))
    quiet = {"progress": False, "log": lambda m: None}
    return {"tf": build_repository(tiny, work / "repo-tf", "cpu", **quiet),
            "f32": build_repository(tiny, work / "repo-f32", "cpu-openvino", precision="f32", **quiet),
            "bf16": build_repository(tiny, work / "repo-bf16", "cpu-openvino", precision="bf16", **quiet)}


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Real photos: the samples, padded to 32x32 like the worker does."""
    from services.images import prepare

    return np.stack([prepare(p.read_bytes(), (32, 32), "pad") for p in sorted((ROOT / "samples").glob("*.jpg"))[:12]])


@pytest.fixture(scope="module")
def reference(built: dict[str, Path], photos: np.ndarray) -> dict[str, np.ndarray]:
    """TensorFlow in process: the cpu build's backbone -> heads, and its standalone models."""
    import tensorflow as tf

    repo = built["tf"]

    def load(name: str):
        return tf.saved_model.load(str(repo / name / "1" / "model.savedmodel")).signatures["serving_default"]

    feats = load("backbone")(image=tf.constant(photos))["features"]
    out = {"features": feats.numpy()}
    for t in TASKS:
        out[t] = load(f"{t}_head")(features=feats, title=tf.constant([[""]] * len(photos)))["probs"].numpy()
        out[f"{t}/standalone"] = load(t)(image=tf.constant(photos))["probs"].numpy()
    return out


def test_the_openvino_repository_checks_out(built: dict[str, Path]) -> None:
    import json

    from training.repository_check import check_repository, parse_config

    repo = built["bf16"]
    assert check_repository(repo) == []
    info = json.loads((repo / "autolabel-build.json").read_text())
    assert info["target"] == "cpu-openvino" and info["precision"] == "bf16" and info["openvino"]
    for name in ("backbone", *TASKS):  # the image models: IR, run by the OpenVINO model.py, and a native-backend config
        assert (repo / name / "1" / "model.xml").is_file() and (repo / name / "1" / "model.bin").is_file()
        assert "openvino" in (repo / name / "1" / "model.py").read_text()
        params = {k: v.string_value for k, v in parse_config(repo / name / "config.pbtxt").parameters.items()}
        assert params["ov_precision"] == "bf16" and params["ov_streams"] == "2"  # CPU_TUNING: 2 streams
        native = parse_config(repo / name / "configs" / "openvino.pbtxt")
        assert native.backend == "openvino" and native.name == name
        assert {k: v.string_value for k, v in native.parameters.items()}["HINT_BF16"] == "YES"
    for t in TASKS:  # the heads (they read the title with TensorFlow string ops) stay SavedModels
        assert (repo / f"{t}_head" / "1" / "model.savedmodel" / "saved_model.pb").is_file()
        assert not (repo / f"{t}_head" / "configs").exists()


def test_the_check_command_accepts_the_openvino_target(built: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from training.export import models

    r = CliRunner().invoke(models, ["check", str(built["f32"])])
    assert r.exit_code == 0 and "ok (target cpu-openvino" in r.output, r.output


@pytest.mark.stack
def test_openvino_served_by_tritonserver_gives_tensorflows_outputs(built: dict[str, Path], photos: np.ndarray,
                                                                  reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    import tritonclient.grpc as g

    from deploy.local.stack import Stack
    from services.settings import Settings
    from training.repository_variants import add_backbone_variant

    repo = built["f32"]
    add_backbone_variant(repo, built["bf16"], "bf16")
    stack = Stack(Settings(state_dir=tmp_path / "state", model_repository=repo, stack_timeout_s=180))
    state = stack.up(log=lambda m: None)
    try:
        client = g.InferenceServerClient(f"127.0.0.1:{state.components['triton'].ports['grpc']}")

        def infer(model: str, outputs: list[str], title: bool) -> dict[str, np.ndarray]:
            image = g.InferInput("image", list(photos.shape), "UINT8")
            image.set_data_from_numpy(photos)
            inputs = [image]
            if title:
                t = g.InferInput("title", [len(photos), 1], "BYTES")
                t.set_data_from_numpy(np.array([[b""]] * len(photos), dtype=object))
                inputs.append(t)
            r = client.infer(model, inputs, outputs=[g.InferRequestedOutput(o) for o in outputs])
            return {o: r.as_numpy(o) for o in outputs}

        features = infer("backbone", ["features"], title=False)["features"]
        scale = np.abs(reference["features"]).max()
        assert np.abs(features - reference["features"]).max() <= TOL * max(scale, 1.0)
        f32 = infer("autolabel", list(TASKS), title=True)
        bf16 = infer("autolabel_bf16", list(TASKS), title=True)
        for t in TASKS:
            assert np.abs(f32[t] - reference[t]).max() <= TOL, t
            alone = infer(t, ["probs"], title=False)["probs"]
            assert np.abs(alone - reference[f"{t}/standalone"]).max() <= TOL, t
            assert np.abs(bf16[t] - reference[t]).max() <= BF16_TOL, t
            assert (bf16[t].argmax(1) == reference[t].argmax(1)).mean() >= 0.9, t
        assert np.ptp(reference["style"], axis=0).max() > 1e-3, "the photos should not get identical probabilities"
    finally:
        stack.down(log=lambda m: None)


def test_evaluate_runs_the_openvino_repository_as_served(built: dict[str, Path], photos: np.ndarray,
                                                         reference: dict[str, np.ndarray]) -> None:
    from training.evaluate import load_repository

    for precision, tol in (("f32", TOL), ("bf16", BF16_TOL)):
        models = {m.task: m for m in load_repository(built[precision], TASKS)}
        for t in TASKS:
            m = models[t]
            assert m.backbone is not None and m.input_size == (32, 32)
            probs = m.predict(m.backbone(photos))
            assert np.abs(probs - reference[t]).max() <= tol, (precision, t)


def test_agreement_counts_equal_labels_and_auto_accepted_ones() -> None:
    from training.agreement import agreement

    keys = np.array(["a", "b", "c", "d"])
    y = np.array([0, 1, 1, 0])
    this = {"gender": {"keys": keys, "y": y, "classes": np.array(["men", "women"]), "threshold": np.array(0.8),
                       "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])}}
    other = {"gender": {**this["gender"], "keys": keys[::-1],  # the same photos in another order
                        "probs": np.array([[0.45, 0.55], [0.3, 0.7], [0.1, 0.9], [0.95, 0.05]])}}  # d, c, b, a
    r = agreement(this, other)["gender"]
    assert r["photos"] == 4 and r["labels_equal"] == 0.5  # c and d changed
    assert r["auto_accepted_by_either"] == 2 and r["auto_accepted_equal"] == 1.0  # a and b, equal in both
    assert r["balanced_accuracy_other"] == r["balanced_accuracy"] == 0.75 and r["balanced_accuracy_change"] == 0.0
    assert abs(r["max_probability_change"] - 0.3) < 1e-12
