"""Dataset sources, the label mapping, deduplication and the subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.rows import DatasetError
from training.data.datasets import is_child_product, load, map_fpi_labels, parse_spec
from training.data.rows import cap_per_class
from training.data.synthetic import make_folders, make_fpi, make_manifest


@pytest.fixture(scope="module")
def fpi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fpi")
    planted = make_fpi(root, n_per_combo=2)
    return root, planted


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"usage": "Casual", "gender": "Men", "season": "Summer"}, {"style": "casual", "gender": "men", "season": "summer"}),
        ({"usage": "Formal", "gender": "Women", "season": "Spring"}, {"style": "formal", "gender": "women", "season": "spring-fall"}),
        ({"usage": "Smart Casual", "gender": "Women", "season": "Fall"}, {"style": "formal", "gender": "women", "season": "spring-fall"}),
        ({"usage": "Sports", "gender": "Unisex", "season": "Winter"}, {"style": "sports", "gender": None, "season": "winter"}),
        ({"usage": "Ethnic", "gender": "Boys", "season": ""}, {"style": None, "gender": None, "season": None}),
        ({"usage": "Party", "gender": "Girls", "season": "Summer"}, {"style": None, "gender": None, "season": "summer"}),
    ],
)
def test_label_mapping(row: dict, expected: dict) -> None:
    labels, why = map_fpi_labels({**row, "productDisplayName": "Brand Shirt"})
    assert labels == expected
    assert set(why) == {t for t, v in expected.items() if v is None}


def test_children_products_lose_their_gender_only() -> None:
    labels, why = map_fpi_labels({"usage": "Casual", "gender": "Men", "season": "Summer", "productDisplayName": "CSK Boys Fangear Tee"})
    assert labels == {"style": "casual", "gender": None, "season": "summer"}
    assert "children" in why["gender"]
    assert is_child_product("Kids Shoe") and is_child_product("girls top") and not is_child_product("Boyfriend Jeans")


def test_fpi_loader_handles_the_known_problems(fpi: tuple[Path, dict]) -> None:
    root, planted = fpi
    ds = load(f"fpi:{root}", progress=False)
    keys = {s.key for s in ds.samples}
    assert str(planted["duplicate"]) not in keys and str(planted["duplicate_of"]) in keys
    assert str(planted["unreadable"]) not in keys and str(planted["missing"]) not in keys
    by_key = {s.key: s for s in ds.samples}
    assert by_key[str(planted["child"])].label("gender") is None
    assert by_key[str(planted["child"])].label("style") == "casual"
    assert by_key[str(planted["ethnic"])].label("style") is None
    assert by_key[str(planted["unisex"])].label("gender") is None
    r = ds.report
    assert r.dropped["image unreadable"] == 1 and r.dropped["image file missing"] == 1
    assert r.dropped["duplicate photo (same bytes as a kept row)"] == 1
    assert r.kept == len(ds.samples) == r.rows - sum(r.dropped.values())
    assert r.unlabeled["gender"]["children's product labelled Men/Women"] == 1
    text = "\n".join(r.lines())
    assert "kept" in text and "duplicate photo" in text and "unreadable" in text
    # each task trains on the rows where its label is defined
    assert all(s.label("style") is not None for s in ds.labeled("style"))
    assert len(ds.labeled("gender")) < len(ds.samples)


def test_fpi_category_filter(fpi: tuple[Path, dict]) -> None:
    root, planted = fpi
    ds = load(f"fpi:{root}", categories=["Apparel"], progress=False)
    keys = {s.key for s in ds.samples}
    assert str(planted["accessory"]) not in keys and str(planted["unisex"]) not in keys  # Accessories, Footwear
    assert any("masterCategory" in reason for reason in ds.report.dropped)


def test_duplicates_with_conflicting_labels_lose_that_label(tmp_path: Path) -> None:
    make_fpi(tmp_path, n_per_combo=1)
    text = (tmp_path / "styles.csv").read_text().splitlines()
    header, first = text[0], text[1].split(",")
    clone = list(first)
    clone[0] = "9999"
    clone[8] = "Sports" if first[8] != "Sports" else "Casual"  # usage differs
    (tmp_path / "images" / "9999.jpg").write_bytes((tmp_path / "images" / f"{first[0]}.jpg").read_bytes())
    (tmp_path / "styles.csv").write_text("\n".join([header, *text[1:], ",".join(clone)]) + "\n")
    ds = load(f"fpi:{tmp_path}", progress=False)
    kept = {s.key: s for s in ds.samples}[first[0]]
    assert kept.label("style") is None and kept.label("gender") is not None
    assert ds.report.unlabeled["style"]["duplicate photos with conflicting labels"] == 1


def test_manifest_source(tmp_path: Path) -> None:
    csv_path = make_manifest(tmp_path, n=12)
    with csv_path.open("a") as f:
        f.write("img/nothere.jpg,casual,men,summer\n")
    (tmp_path / "img" / "bad.jpg").write_bytes(b"garbage")
    with csv_path.open("a") as f:
        f.write("img/bad.jpg,formal,women,winter\n")
    ds = load(f"manifest:{csv_path}", progress=False)
    assert len(ds.samples) == 12
    assert ds.report.dropped["image file missing"] == 1 and ds.report.dropped["image unreadable"] == 1
    assert ds.classes["style"] == ("casual", "formal", "sports")
    assert len(ds.labeled("gender")) < 12  # empty cells: no label
    assert ds.counts("style") == {"casual": 4, "formal": 4, "sports": 4}


def test_folders_source(tmp_path: Path) -> None:
    make_folders(tmp_path, n_per_class=3)
    (tmp_path / "style" / "casual" / "broken.jpg").write_bytes(b"not an image")
    ds = load(f"folders:{tmp_path}", progress=False)
    assert ds.classes == {"style": ("casual", "formal", "sports"), "gender": ("men", "women"),
                          "season": ("spring-fall", "summer", "winter")}
    assert ds.counts("style") == {"casual": 3, "formal": 3, "sports": 3}
    assert ds.counts("gender") == {"men": 3, "women": 3}
    assert ds.report.dropped["image unreadable"] == 1
    # a photo of the style folder has no gender label
    assert all(s.label("gender") is None for s in ds.labeled("style"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nokind", "KIND:PATH"), ("csv:/tmp", "unknown dataset kind"), ("fpi:/does/not/exist", "not found"),
     ("manifest:/does/not/exist.csv", "not found")],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_spec(spec)


def test_fpi_without_styles_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="styles.csv"):
        load(f"fpi:{tmp_path}", progress=False)


def test_cap_per_class_limits_rare_and_common_classes(fpi: tuple[Path, dict]) -> None:
    root, _ = fpi
    ds = load(f"fpi:{root}", progress=False)
    sub = cap_per_class(ds, 5, seed=1)
    assert len(sub.samples) < len(ds.samples)
    for task in sub.tasks:
        assert all(n >= 5 for n in sub.counts(task).values())  # every class filled up to the cap
    assert cap_per_class(ds, 5, seed=1).samples == sub.samples  # deterministic
    assert any("subset" in line for line in sub.report.lines())
    assert not any("subset" in line for line in ds.report.lines())
