"""The feature cache: keyed by content, backbone, weights and preprocessing; a second run reuses it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from training.data.synthetic import photo
from training.features.backbones import BackboneSpec
from training.features.cache import FeatureCache, extract_paths

SPEC = BackboneSpec("tiny", "random", (48, 48))


@pytest.fixture()
def images(tmp_path: Path) -> tuple[list[Path], list[str]]:
    import hashlib

    rng = random.Random(0)
    paths, digests = [], []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(photo(["Casual", "Formal", "Sports"][i % 3], "Men", "Summer", rng))
        paths.append(p)
        digests.append(hashlib.sha256(p.read_bytes()).hexdigest())
    return paths, digests


def test_second_run_reuses_the_cache(tmp_path: Path, images: tuple[list[Path], list[str]]) -> None:
    paths, digests = images
    first, ok1, r1 = extract_paths(paths, digests, FeatureCache(tmp_path / "c", SPEC, "pad"), progress=False)
    assert (r1.computed, r1.reused) == (5, 0) and ok1.all()
    assert list((tmp_path / "c").glob("*/shard-*.npz"))
    # a new process would build a new FeatureCache object: it must read the shards back
    second, ok2, r2 = extract_paths(paths, digests, FeatureCache(tmp_path / "c", SPEC, "pad"), progress=False)
    assert (r2.computed, r2.reused) == (0, 5)
    np.testing.assert_allclose(first, second)
    assert first.shape[0] == 5 and first.std() > 0


def test_only_new_images_are_computed(tmp_path: Path, images: tuple[list[Path], list[str]]) -> None:
    paths, digests = images
    extract_paths(paths[:3], digests[:3], FeatureCache(tmp_path / "c", SPEC, "pad"), progress=False)
    _, _, r = extract_paths(paths, digests, FeatureCache(tmp_path / "c", SPEC, "pad"), progress=False)
    assert (r.computed, r.reused) == (2, 3)


def test_preprocessing_and_backbone_change_the_key(tmp_path: Path) -> None:
    dirs = {
        FeatureCache(tmp_path, SPEC, "pad").dir,
        FeatureCache(tmp_path, SPEC, "stretch").dir,
        FeatureCache(tmp_path, BackboneSpec("tiny", "random", (64, 64)), "pad").dir,
    }
    assert len(dirs) == 3
    assert FeatureCache(tmp_path, SPEC, "pad").dir == FeatureCache(tmp_path, SPEC, "pad").dir


def test_unreadable_images_are_counted_not_fatal(tmp_path: Path, images: tuple[list[Path], list[str]]) -> None:
    paths, digests = images
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    feats, ok, r = extract_paths([*paths, bad], [*digests, "bad-digest"], FeatureCache(tmp_path / "c", SPEC, "pad"), progress=False)
    assert r.unreadable == 1 and ok.tolist() == [True] * 5 + [False]
    assert "bad-digest" not in FeatureCache(tmp_path / "c", SPEC, "pad")
