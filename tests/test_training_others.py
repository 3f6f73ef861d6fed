"""The other categories' heads (training/heads/others.py): fitted per task on the readout, served = numpy, routed to by the gate."""

from __future__ import annotations

import numpy as np
import pytest

from training.heads.others import OtherHead, fit_head, head_metrics, route_threshold
from training.serving.servables import routed
from training.steps.train_others import metrics_table


def _clouds(k: int, seed: int = 0, n: int = 1500, dims: int = 12) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``k`` classes around different means on raw (unstandardised) readouts; parts 60/20/20."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(0, 1, (n, dims)) * 3 + 50
    x[np.arange(n), y] += 9.0
    order = rng.permutation(n)
    return x, y, {"train": order[:900], "val": order[900:1200], "test": order[1200:]}


@pytest.mark.parametrize("k", [2, 3])
def test_a_head_learns_the_classes_and_the_served_head_is_the_same_function(k: int) -> None:
    x, y, parts = _clouds(k)
    head = fit_head(x, y, parts, k)
    te = parts["test"]
    m = head_metrics(head.probs(x[te]), y[te], ["Footwear"] * len(te))
    assert m["balanced_accuracy"] > 0.9 and m["by_category"] == {"Footwear": m["balanced_accuracy"]} and m["ece"] < 0.1
    assert head.chosen_on == "val" and head.temperature > 0
    served = head.keras_head("others_style")(x.astype(np.float32)).numpy()
    assert served.shape == (len(x), k) and np.abs(served - head.probs(x)).max() < 1e-4


def test_a_class_no_training_row_has_is_never_given() -> None:
    x, y, parts = _clouds(3, seed=1)
    keep = {p: idx[y[idx] != 2] for p, idx in parts.items()}  # class 2 only outside the parts
    head = fit_head(x, y, keep, 3)
    assert head.probs(x).argmax(1).max() < 2 and head.probs(x)[:, 2].max() < 1e-6


def test_validation_with_one_class_falls_back_and_says_so_training_with_one_is_refused() -> None:
    x, y, parts = _clouds(3, seed=2)
    one = dict(parts, val=parts["val"][y[parts["val"]] == 0])
    head = fit_head(x, y, one, 3)
    assert head.chosen_on.startswith("default") and head.temperature == 1.0
    with pytest.raises(ValueError, match="training part needs labels of two classes"):
        fit_head(x, y, dict(parts, train=parts["train"][y[parts["train"]] == 1]), 3)


def test_the_gate_routes_each_photo_to_one_head_set_exactly() -> None:
    import keras

    apparel, others = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]), np.array([[0.2, 0.8]] * 3)
    p_out = np.array([0.0, 0.95, 0.5])
    got = routed(keras.ops.convert_to_tensor(p_out, "float32"), keras.ops.convert_to_tensor(apparel, "float32"),
                 keras.ops.convert_to_tensor(others, "float32"), 0.5)
    want = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1]], np.float32)  # at the threshold: kept (routed above it)
    assert np.array_equal(keras.ops.convert_to_numpy(got), want)  # each row exactly one head set's
    assert isinstance(OtherHead(np.zeros((2, 2)), np.zeros(2), 1.0, 0.1).chosen_on, str)


def test_the_table_compares_the_apparel_heads_with_the_new_ones() -> None:
    m = {"n": 10, "accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.4, "ece": 0.1, "by_category": {"Footwear": 0.6}}
    table = metrics_table({"gender": {"metrics": {"val": {"others": dict(m, balanced_accuracy=0.85), "apparel_heads": m}}}})
    assert "gender" in table and "0.500 -> 0.850" in table and "Footwear 0.600" in table


def test_the_routing_threshold_keeps_the_in_scope_photos_within_the_budget() -> None:
    p_in = np.linspace(0, 1, 1001) ** 8  # most in-scope photos far below, a few high
    t = route_threshold(p_in, gate_threshold=0.3, budget=0.01)
    assert t >= 0.3 and (p_in > t).mean() <= 0.01 and (p_in > t).mean() > 0.005  # as many as the budget allows
    assert route_threshold(p_in, gate_threshold=0.999, budget=0.01) == 0.999  # never below the gate's own
    assert route_threshold(np.zeros(0), 0.3) == 0.3
