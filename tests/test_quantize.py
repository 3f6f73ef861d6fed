"""The int8 guard (training/quantize.py): calibration only from the training part, enough of it,
and a build refused (or forced, loudly) when the int8 backbone loses balanced accuracy on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.quantize import (
    MIN_CALIBRATION,
    CalibrationError,
    Int8Backbone,
    QuantizationRefused,
    calibration_keys,
    check_calibration,
)
from training.split import Split

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def split() -> Split:
    return Split.load(ROOT / "models" / "split.json")


def test_calibration_is_a_seeded_sample_of_the_training_part(split: Split) -> None:
    keys = calibration_keys(split, 300, seed=0)
    assert len(keys) == 300 and keys == calibration_keys(split, 300, seed=0) != calibration_keys(split, 300, seed=1)
    part_of = split.part_of()
    assert {part_of[k] for k in keys} == {"train"}
    check_calibration(keys, split)  # passes


def test_the_guard_refuses_a_calibration_set_that_is_too_small(split: Split) -> None:
    keys = calibration_keys(split, MIN_CALIBRATION - 1)
    with pytest.raises(CalibrationError, match="too small"):
        check_calibration(keys, split)


@pytest.mark.parametrize("part", ["val", "test"])
def test_the_guard_refuses_photos_of_another_part(split: Split, part: str) -> None:
    keys = calibration_keys(split, 300)[:-1] + [split.keys("style", part)[0]]
    with pytest.raises(CalibrationError, match=f"1 from {part}"):
        check_calibration(keys, split)
    with pytest.raises(CalibrationError, match="not in the split"):
        check_calibration(calibration_keys(split, 300)[:-1] + ["no-such-photo"], split)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory):
    import openvino as ov

    from training.export import build_repository, make_tiny_models

    work = tmp_path_factory.mktemp("int8")
    repo = build_repository(make_tiny_models(work / "models", input_size=(32, 32)), work / "repo", "cpu-openvino", precision="f32",
                            progress=False, log=lambda m: None)
    return ov.Core().read_model(str(repo / "backbone" / "1" / "model.xml"))


def _features(model) -> int:
    return int(np.prod([d.get_length() for d in model.output(0).get_partial_shape()[1:]]))


def _guard(max_drop: float, force: bool, log: list[str]) -> Int8Backbone:
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    return Int8Backbone(photos[:16], photos[16:], {"style": rng.integers(0, 3, 8)}, max_drop=max_drop, force=force, log=log.append)


def _heads(features: int) -> dict:
    w = np.random.default_rng(1).normal(size=(features, 3))
    return {"style": (("casual", "formal", "sports"), lambda f: f.reshape(len(f), -1) @ w)}


def test_int8_is_refused_when_validation_drops_more_than_allowed(tiny_backbone) -> None:
    features = _features(tiny_backbone)
    log: list[str] = []
    guard = _guard(max_drop=-1.0, force=False, log=log)  # any result counts as a drop: the guard must refuse
    with pytest.raises(QuantizationRefused, match="not built"):
        guard(tiny_backbone, _heads(features), "f32")
    assert guard.result is not None and guard.result.photos == 8 and set(guard.result.change()) == {"style"}
    assert any("balanced accuracy" in line for line in log)


def test_forcing_int8_builds_it_with_a_loud_warning(tiny_backbone) -> None:
    features = _features(tiny_backbone)
    log: list[str] = []
    quantized = _guard(max_drop=-1.0, force=True, log=log)(tiny_backbone, _heads(features), "f32")
    assert any(line.startswith("WARNING: int8 loses more than") for line in log)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())


def test_int8_passes_the_guard_within_the_allowed_drop(tiny_backbone) -> None:
    features = _features(tiny_backbone)
    log: list[str] = []
    _guard(max_drop=1.0, force=False, log=log)(tiny_backbone, _heads(features), "f32")
    assert not any(line.startswith("WARNING") for line in log)
