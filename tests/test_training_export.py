"""export -> build -> evaluate: the served repository scores like the trained heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from training.cli import evaluate as evaluate_cli
from training.cli import train as cli
from training.data.synthetic import make_fpi
from training.serving.repository import build_repository


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


def test_evaluate_reports_the_served_scope_gate_per_category(tmp_path: Path) -> None:
    """`autolabel evaluate` runs the repository's scope_head in the same backbone pass and says, per
    category, which share of the photos the gate sends to review whole (at the served threshold)."""
    from training.manifest.untrained import make_tiny_models

    data = tmp_path / "fpi"
    make_fpi(data, n_per_combo=1)
    models = make_tiny_models(tmp_path / "models", input_size=(32, 32))
    got = {}
    for threshold in (0.0, 1.0):
        manifest = json.loads((models / "manifest.json").read_text())
        manifest["scope"]["threshold"] = threshold
        (models / "manifest.json").write_text(json.dumps(manifest))
        repo = build_repository(models, tmp_path / f"repo{threshold}", "cpu", progress=False, log=lambda m: None)
        out = tmp_path / f"gate{threshold}.json"
        r = CliRunner().invoke(evaluate_cli.evaluate, ["--data", f"fpi:{data}", "--models", str(models), "--repository", str(repo),
                                                       "--all-rows", "--scope", "all", "--json", str(out), "--quiet"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        got[threshold] = json.loads(out.read_text())["scope_gate"]
        assert "Scope gate" in r.output
    assert got[0.0]["threshold"] == 0.0 and got[1.0]["threshold"] == 1.0
    cats = got[0.0]["by_category"]
    assert {"Footwear", "Accessories"} <= set(cats) and any(c.startswith("Apparel") for c in cats)
    assert all(c["flagged"] == 1.0 for c in cats.values())  # P(out) > 0 for every photo
    assert all(c["flagged"] == 0.0 for c in got[1.0]["by_category"].values())
    assert {c: v["photos"] for c, v in cats.items()} == {c: v["photos"] for c, v in got[1.0]["by_category"].items()}
