"""The saved split: fractions checked, JSON round trip (grouping: test_training_grouping.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.split import Grouping, Split, group_parts


def test_bad_fractions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        group_parts(["a"], [0], (0.5, 0.2, 0.2), 0)
    with pytest.raises(ValueError, match="differ in length"):
        group_parts(["a", "b"], [0], (0.7, 0.15, 0.15), 0)


def test_saved_split_round_trips(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(50)]
    parts = group_parts(keys, [i // 2 for i in range(50)], (0.7, 0.15, 0.15), 7)
    tasks = {"style": {p: tuple(sorted(k for k in keys if parts[k] == p)) for p in ("train", "val", "test")}}
    split = Split(7, (0.7, 0.15, 0.15), tasks, Grouping(12, 25, 50, 2))
    split.save(tmp_path / "split.json")
    again = Split.load(tmp_path / "split.json")
    assert again == split
    assert again.keys("style", "test") == split.keys("style", "test")
    with pytest.raises(KeyError, match="no task"):
        again.keys("season", "test")
    old = Split(7, (0.7, 0.15, 0.15), tasks)  # a split saved before grouping existed still loads
    old.save(tmp_path / "old.json")
    assert Split.load(tmp_path / "old.json").grouping is None
