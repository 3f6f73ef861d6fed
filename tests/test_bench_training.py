"""`autolabel bench training` runs both arms and reports their ratio (tiny backbone)."""

from __future__ import annotations

import re

from click.testing import CliRunner

from benchmarks.training import bench_images, training


def test_bench_images_are_prepared_uint8() -> None:
    x, y, keys = bench_images(6, (40, 40))
    assert x.shape == (6, 40, 40, 3) and x.dtype.name == "uint8"
    assert set(y) == {"style", "gender", "season"} and len(set(keys)) == 6


def test_bench_training_reports_a_ratio() -> None:
    result = CliRunner().invoke(
        training, ["--images", "16", "--epochs", "2", "--backbone", "tiny", "--weights", "random", "--input-size", "40", "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "plain Keras fit" in result.output and "feature cache, cold" in result.output
    ratios = [float(v) for v in re.findall(r"([0-9.]+)x\*?\*? \|", result.output)]
    assert len(ratios) == 3 and ratios[0] == 1.0 and all(r > 0 for r in ratios)


def test_bench_rejects_bad_epochs() -> None:
    result = CliRunner().invoke(training, ["--epochs", "style=x", "--backbone", "tiny", "--weights", "random"])
    assert result.exit_code != 0 and "--epochs" in result.output
