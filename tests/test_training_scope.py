"""The scope gate (training/heads/scope.py): fitted on training rows, threshold on validation, the served head = the numpy gate."""

from __future__ import annotations

import numpy as np

from training.heads.scope import ScopeGate, fit_gate, gate_metrics


def _data(seed: int = 0, n: int = 3000, dims: int = 16) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """Two clouds (in scope around +1 on the first axis, out of scope around -1) and parts 60/20/20."""
    rng = np.random.default_rng(seed)
    out = rng.random(n) < 0.3
    x = rng.normal(0, 1, (n, dims)) * 5 + 40  # raw readouts: far from standardised
    x[:, 0] += np.where(out, -15.0, 15.0)
    order = rng.permutation(n)
    parts = {"train": order[: int(0.6 * n)], "val": order[int(0.6 * n): int(0.8 * n)], "test": order[int(0.8 * n):]}
    cats = ["Footwear" if o and i % 2 else "Accessories" if o else "Apparel" for i, o in enumerate(out)]
    return x, out, parts, cats


def test_the_gate_separates_what_it_can_within_the_false_flag_budget() -> None:
    x, out, parts, cats = _data()
    gate = fit_gate(x, out, parts, max_false_flags=0.02)
    va = parts["val"]
    p = gate.p_out(x[va])
    assert (p[~out[va]] > gate.threshold).mean() <= 0.02  # the budget, on the rows it was chosen on
    m = gate_metrics(gate, x, out, cats, parts["test"])
    assert m["out_of_scope_caught"] > 0.9 and m["in_scope_flagged"] <= 0.05
    assert set(m["caught_by_category"]) == {"Accessories", "Footwear"}
    assert m["in_scope"] + m["out_of_scope"] == len(parts["test"])


def test_the_served_head_computes_the_same_probability() -> None:
    x, out, parts, _ = _data(1)
    gate = fit_gate(x, out, parts)
    probs = gate.keras_head()(x.astype(np.float32)).numpy()
    assert probs.shape == (len(x), 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.abs(probs[:, 1] - gate.p_out(x)).max() < 1e-4


def test_an_unseparable_gate_flags_no_more_than_its_budget() -> None:
    rng = np.random.default_rng(2)
    x, out = rng.normal(0, 1, (400, 8)), rng.random(400) < 0.5  # nothing to learn
    parts = {"train": np.arange(0, 200), "val": np.arange(200, 300), "test": np.arange(300, 400)}
    gate = fit_gate(x, out, parts, max_false_flags=0.01)
    assert isinstance(gate, ScopeGate)
    assert (gate.p_out(x[200:300])[~out[200:300]] > gate.threshold).mean() <= 0.01


def test_a_retraining_says_how_to_refit_the_gate(tmp_path) -> None:
    import json

    from training.steps.train_scope import previous_gate

    assert previous_gate(tmp_path) is None  # no models yet
    (tmp_path / "manifest.json").write_text(json.dumps({"tasks": {}}))
    assert previous_gate(tmp_path) is None  # no gate
    (tmp_path / "manifest.json").write_text(json.dumps({"scope": {"trained_with": "autolabel train-scope --data fpi:x"}}))
    assert previous_gate(tmp_path) == "autolabel train-scope --data fpi:x"
    (tmp_path / "manifest.json").write_text("{not json")
    assert previous_gate(tmp_path) is None


def test_a_part_without_both_kinds_of_photo_is_refused_and_an_empty_share_printed_as_a_dash() -> None:
    import pytest

    from training.steps.train_scope import metrics_table

    x, out, parts, _ = _data(3, n=300)
    only_in = parts | {"val": np.array([i for i in parts["val"] if not out[i]])}
    with pytest.raises(ValueError, match="validation part needs photos in scope and out of scope"):
        fit_gate(x, out, only_in)
    table = metrics_table({"test": {"in_scope": 0, "out_of_scope": 5, "in_scope_flagged": None, "out_of_scope_caught": 0.8,
                                    "caught_by_category": {"Footwear": 0.8}}})
    assert "-" in table.splitlines()[1] and "80.0%" in table
