"""The products table of `autolabel evaluate`: who skips review under each task's review policy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from training.products import product_summary


def _task(keys, probs, y, threshold):
    return SimpleNamespace(keys=list(keys), probs=np.asarray(probs, float), y=np.asarray(y), threshold=threshold)


def test_an_advisory_task_lets_products_skip_review_and_is_not_counted_as_accepted() -> None:
    keys = ["a", "b", "c", "d"]
    style = _task(keys, [[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.2, 0.8]], [0, 1, 0, 1], 0.7)  # a, b, d sure; b wrong
    season = _task(keys, [[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], [0, 0, 0, 1], 0.7)  # only b sure
    default = product_summary({"style": style, "season": season})
    assert default["policies"] == {"style": "threshold", "season": "threshold"}
    assert (default["products"], default["unflagged"]) == (4, 1)  # b only: every task sure
    assert default["unflagged_all_right_share"] == 0.0  # b's style is wrong
    advisory = product_summary({"style": style, "season": season}, {"season": "advisory"})
    assert advisory["unflagged"] == 3 and advisory["unflagged_share"] == 0.75  # a, b, d: season no longer sends them
    assert advisory["unflagged_all_right"] == 2  # a and d: every accepted label right (b's style is wrong)
    assert advisory["accepted"]["style"] == {"labels": 3, "share": 0.75, "precision": 2 / 3}
    assert advisory["accepted"]["season"]["labels"] == 1  # b's season is sure: accepted, advisory or not
    always = product_summary({"style": style, "season": season}, {"style": "always"})
    assert always["unflagged"] == 0 and always["accepted"]["style"]["labels"] == 0


def test_products_need_every_task_and_a_threshold() -> None:
    a = _task(["a", "b"], [[0.9, 0.1], [0.9, 0.1]], [0, 0], 0.5)
    b = _task(["b", "c"], [[0.9, 0.1], [0.9, 0.1]], [0, 0], 0.5)
    assert product_summary({"x": a, "y": b})["products"] == 1
    assert product_summary({"x": _task(["a"], [[1.0, 0.0]], [0], None)}) == {}
