"""The stratified, seeded, saved split."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from training.split import Split, stratified_parts


def _data(n: int = 200) -> tuple[list[str], list[str]]:
    keys = [f"k{i}" for i in range(n)]
    labels = ["a" if i % 10 < 7 else ("b" if i % 10 < 9 else "c") for i in range(n)]  # 70/20/10
    return keys, labels


def test_parts_are_disjoint_complete_and_stratified() -> None:
    keys, labels = _data()
    parts = stratified_parts(keys, labels, (0.7, 0.15, 0.15), seed=3)
    all_keys = [k for p in parts.values() for k in p]
    assert sorted(all_keys) == sorted(keys) and len(set(all_keys)) == len(keys)
    label_of = dict(zip(keys, labels))
    for part, expected in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = Counter(label_of[k] for k in parts[part])
        for cls, total in Counter(labels).items():
            assert counts[cls] == pytest.approx(total * expected, abs=1)


def test_split_is_seeded_and_independent_of_row_order() -> None:
    keys, labels = _data()
    a = stratified_parts(keys, labels, (0.7, 0.15, 0.15), seed=1)
    pairs = list(zip(keys, labels))
    random.Random(9).shuffle(pairs)
    b = stratified_parts([k for k, _ in pairs], [y for _, y in pairs], (0.7, 0.15, 0.15), seed=1)
    c = stratified_parts(keys, labels, (0.7, 0.15, 0.15), seed=2)
    assert a == b
    assert a["test"] != c["test"]


def test_small_classes_still_reach_val_and_test() -> None:
    parts = stratified_parts(["x1", "x2", "x3", "y1", "y2", "y3", "y4"], ["x", "x", "x", "y", "y", "y", "y"], (0.8, 0.1, 0.1), 0)
    assert {k[0] for k in parts["test"]} == {"x", "y"} and {k[0] for k in parts["val"]} == {"x", "y"}


def test_bad_fractions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_parts(["a"], ["x"], (0.5, 0.2, 0.2), 0)


def test_saved_split_round_trips(tmp_path: Path) -> None:
    keys, labels = _data(50)
    split = Split(7, (0.7, 0.15, 0.15), {"style": stratified_parts(keys, labels, (0.7, 0.15, 0.15), 7)})
    split.save(tmp_path / "split.json")
    again = Split.load(tmp_path / "split.json")
    assert again == split
    assert again.keys("style", "test") == split.keys("style", "test")
    with pytest.raises(KeyError, match="no task"):
        again.keys("season", "test")
