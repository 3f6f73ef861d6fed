"""Near-duplicate groups and the grouped split, on the real sample photos and variants of them."""

from __future__ import annotations

import csv
import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.datasets import load
from training.data.grouping import DEFAULT_MAX_DISTANCE, group_rows, hamming_pairs, hash_photos, photo_hash, title_key
from training.data.split import PARTS, Split, group_parts, make_split

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FIELDS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage", "productDisplayName"]


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _reshot(path: Path) -> bytes:
    """The same photo re-uploaded: twice the size, re-encoded at a lower quality."""
    with Image.open(path) as im:
        img = im.convert("RGB").resize((120, 160))
    return _jpeg(img, 70)


def _recoloured(path: Path) -> bytes:
    """A colour variant of the same shot: channels swapped (the grey shape stays close)."""
    with Image.open(path) as im:
        r, g, b = im.convert("RGB").split()
    return _jpeg(Image.merge("RGB", (b, r, g)), 90)


def _sample_rows() -> list[dict[str, str]]:
    with (SAMPLES / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_title_key_drops_colours_and_punctuation() -> None:
    assert title_key("Puma Men Grey Solid Round Neck T-Shirt") == title_key("Puma Men Black Solid Round-Neck T Shirt")
    assert title_key("Wrangler Women Navy Blue Jacket") == "wrangler women jacket"
    assert title_key("Puma Men Grey Solid T-Shirt") != title_key("Puma Women Grey Solid T-Shirt")
    assert title_key("Black Shirt") is None and title_key("") is None  # too short to link products on


def test_a_reshot_photo_is_near_its_original_and_different_products_are_not(tmp_path: Path) -> None:
    photos = sorted(SAMPLES.glob("*.jpg"))
    hashes = hash_photos(photos, progress=False)
    assert hamming_pairs(hashes, DEFAULT_MAX_DISTANCE).size == 0  # the 12 products are all different
    for p in photos:
        copy = tmp_path / p.name
        copy.write_bytes(_reshot(p))
        distance = int(np.unpackbits(photo_hash(copy) ^ photo_hash(p)).sum())
        assert distance <= DEFAULT_MAX_DISTANCE, f"{p.name}: a re-shot copy is {distance} bits away"


def test_groups_are_connected_components_of_photo_and_title_links() -> None:
    a = np.zeros(32, np.uint8)
    b = a.copy()
    b[0] = 0b111  # 3 bits from a
    c = np.full(32, 255, np.uint8)  # far from both
    d = c.copy()
    hashes = np.stack([a, b, c, d])
    d[1] = 0  # d is now 8 bits from c
    hashes[3] = d
    titles = ["Puma Men Grey Solid Tee", "", "Nike Women Track Pants", "Nike Women Blue Track Pants"]
    g = group_rows(hashes, titles, max_distance=2)
    assert g.group[0] != g.group[1]  # 3 bits > 2
    assert g.group[2] == g.group[3]  # linked by the colour-free title
    g = group_rows(hashes, ["", "", "", ""], max_distance=8)
    assert g.group[0] == g.group[1] and g.group[2] == g.group[3] and g.group[0] != g.group[2]
    assert g.n_groups == 2 and g.largest == 2


def test_group_parts_keep_groups_whole_follow_the_fractions_and_ignore_order() -> None:
    rng = random.Random(0)
    keys = [f"k{i}" for i in range(3000)]
    groups = [rng.randrange(900) for _ in keys]
    parts = group_parts(keys, groups, (0.7, 0.15, 0.15), seed=4)
    by_group: dict[int, set[str]] = {}
    for k, g in zip(keys, groups):
        by_group.setdefault(g, set()).add(parts[k])
    assert all(len(p) == 1 for p in by_group.values())
    shares = {p: sum(v == p for v in parts.values()) / len(keys) for p in PARTS}
    assert shares["test"] == pytest.approx(0.15, abs=0.01) and shares["val"] == pytest.approx(0.15, abs=0.01)
    order = list(range(len(keys)))
    rng.shuffle(order)
    again = group_parts([keys[i] for i in order], [groups[i] for i in order], (0.7, 0.15, 0.15), seed=4)
    assert again == parts
    assert group_parts(keys, groups, (0.7, 0.15, 0.15), seed=5) != parts


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 12 sample products in the fpi layout, each with a re-shot copy and a colour variant
    under new ids and titles that differ only by colour: 36 rows in 12 groups."""
    root = tmp_path_factory.mktemp("fpi-groups")
    (root / "images").mkdir()
    rows = []
    for r in _sample_rows():
        src = SAMPLES / f"{r['id']}.jpg"
        shutil.copy(src, root / "images" / f"{r['id']}.jpg")
        base = {k: r.get(k, "") for k in FIELDS}
        rows.append(base)
        reshot_id, variant_id = str(int(r["id"]) * 10 + 1), str(int(r["id"]) * 10 + 2)
        (root / "images" / f"{reshot_id}.jpg").write_bytes(_reshot(src))
        (root / "images" / f"{variant_id}.jpg").write_bytes(_recoloured(src))
        rows.append({**base, "id": reshot_id, "productDisplayName": f"Copy {reshot_id}"})  # linked by the photo only
        rows.append({**base, "id": variant_id, "productDisplayName": f"{r['productDisplayName']} Maroon"})  # by the title
    with (root / "styles.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return root


def test_no_group_straddles_two_parts_and_every_task_shares_one_assignment(catalog: Path, tmp_path: Path) -> None:
    ds = load(f"fpi:{catalog}", progress=False)
    assert len(ds.samples) == 36
    split = make_split(ds, seed=0, fractions=(0.5, 0.25, 0.25), progress=False)
    assert split.grouping is not None and split.grouping.groups == 12 and split.grouping.largest == 3
    part_of: dict[str, str] = {}
    for task, parts in split.tasks.items():
        for part, keys in parts.items():
            for k in keys:
                assert part_of.setdefault(k, part) == part, f"{k} is in two parts"
    for r in _sample_rows():
        family = {r["id"], str(int(r["id"]) * 10 + 1), str(int(r["id"]) * 10 + 2)}
        assert len({part_of[k] for k in family if k in part_of}) == 1, f"group of {r['id']} straddles parts"
    assert {p for p in part_of.values()} == set(PARTS)
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split


def test_extend_split_adds_new_rows_to_train_unless_they_copy_a_held_out_row(catalog: Path) -> None:
    """Photos only reviewers labeled join a saved split: in train, except a copy or a colour
    variant of a validation or test product, which is left out (validation and test stay unseen)."""
    from dataclasses import replace

    from training.data.split import extend_split

    full = load(f"fpi:{catalog}", progress=False)
    originals = {r["id"] for r in _sample_rows()}
    saved = make_split(replace(full, samples=[s for s in full.samples if s.key in originals]), seed=0,
                       fractions=(0.5, 0.25, 0.25), progress=False)
    part_of = {k: p for parts in saved.tasks.values() for p, keys in parts.items() for k in keys}
    assert set(part_of) == originals and len(set(part_of.values())) == 3

    extended, ext = extend_split(saved, full, progress=False)
    in_train = sum(p == "train" for p in part_of.values())
    assert (ext.added, ext.held_out) == (2 * in_train, 2 * (len(originals) - in_train))
    assert "left out (near-duplicates of validation or test rows)" in ext.line()
    for task, parts in extended.tasks.items():
        assert parts["val"] == saved.tasks[task]["val"] and parts["test"] == saved.tasks[task]["test"]
        for k in set(parts["train"]) - set(saved.tasks[task]["train"]):
            assert part_of[str(int(k) // 10)] == "train"  # a copy of a training product
        labeled = {s.key for s in full.labeled(task)}
        want = {k for k in labeled if k not in originals and part_of[str(int(k) // 10)] == "train"}
        assert set(parts["train"]) - set(saved.tasks[task]["train"]) == want
    assert extend_split(extended, replace(full, samples=[s for s in full.samples if s.key in originals]), progress=False)[1].added == 0
