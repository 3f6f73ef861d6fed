"""Offline augmentation for class balancing; class weights as the alternative."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from PIL import Image

from training.data.augment import apply, augmented_key, balance_plan, draw_params
from training.data.synthetic import photo
from training.heads.keras_heads import class_weights


def test_copies_are_deterministic_and_differ_from_each_other() -> None:
    assert draw_params("abc", 0) == draw_params("abc", 0)
    assert draw_params("abc", 0) != draw_params("abc", 1)
    assert augmented_key("abc", 1) != augmented_key("abc", 2)
    p = draw_params("abc", 3)
    assert abs(p.rotation_deg) <= 10 and 0.9 <= p.zoom <= 1.1 and 0.85 <= p.brightness <= 1.15


def test_apply_keeps_size_and_changes_pixels() -> None:
    import io

    img = Image.open(io.BytesIO(photo("Formal", "Men", "Summer", random.Random(0)))).convert("RGB")
    out = apply(img, draw_params("d", 0))
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_balance_plan_fills_minorities_up_to_the_cap() -> None:
    labels = ["a"] * 10 + ["b"] * 4 + ["c"] * 8
    plan = balance_plan(labels, max_factor=2.0)
    added = Counter(labels[i] for i, _ in plan)
    assert added == {"b": 4, "c": 2}  # b capped at 2x its size, c up to the majority
    assert len(set(plan)) == len(plan)  # no copy twice
    assert balance_plan(labels, max_factor=3.0).count((10, 1)) == 1  # second copies once the first ran out
    assert balance_plan(["a", "a"], 2.0) == []


def test_class_weights_equalise_classes() -> None:
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = class_weights(y, 3)
    totals = [w[c] * int((y == c).sum()) for c in range(3)]
    assert np.allclose(totals, totals[0])
    assert w[1] > w[2] > w[0]
