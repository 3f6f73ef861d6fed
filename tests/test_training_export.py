"""export -> build -> evaluate: the served repository scores like the trained heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from training import cli, evaluate_cli
from training.export import build_repository
from training.synthetic import make_fpi


def test_export_build_evaluate_matches_the_heads(tmp_path: Path) -> None:
    data = tmp_path / "fpi"
    make_fpi(data, n_per_combo=2)
    models, repo = tmp_path / "models", tmp_path / "repo"
    tiny = ["--backbone", "tiny", "--weights", "random", "--input-size", "48", "--quiet"]
    r = CliRunner().invoke(cli.train, ["--data", f"fpi:{data}", *tiny, "--cache-dir", str(tmp_path / "cache"), "--out", str(models),
                                       "--run-dir", str(tmp_path / "run"), "--set", "all.epochs=5", "--set", "all.pooling=avg",
                                       "--balance", "class_weight"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    build_repository(models, repo, "cpu")
    scores = {}
    for name, args in (("served", ["--repository", str(repo)]), ("heads", ["--from-heads"])):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{data}", "--models", str(models), *args, "--json", str(out), "--quiet"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        scores[name] = json.loads(out.read_text())["tasks"]
    assert set(scores["served"]) == {"style", "gender", "season"}
    for task in scores["served"]:
        assert scores["served"][task]["n"] == scores["heads"][task]["n"] > 0
        assert scores["served"][task]["accuracy"] == pytest.approx(scores["heads"][task]["accuracy"], abs=0.02)
