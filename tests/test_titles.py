"""The title beside the photo, without servers: cleaning, per-class thresholds, the served contract, the CSV."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest

from services.inference import describe, parse_class_thresholds
from services.labeling import label_batch, resolve_title_thresholds
from services.publisher import read_metadata_csv
from services.titles import TITLE_MAX_CHARS, clean_title, has_words, title_bytes


@pytest.mark.parametrize(("metadata", "want"), [
    ({"title": "Puma Men Blue  Track\tPants "}, "Puma Men Blue Track Pants"),
    ({"title": "Nike\x00\x07Shirt\u200b"}, "Nike Shirt"),  # control and format characters become spaces
    ({"title": ""}, ""),
    ({}, ""),
    (None, ""),
    ({"filename": "a.jpg"}, ""),
    ({"title": "日本語のシャツ"}, "日本語のシャツ"),
])
def test_clean_title(metadata: dict | None, want: str) -> None:
    assert clean_title(metadata) == want


def test_a_long_title_is_cut_and_lone_surrogates_never_raise() -> None:
    long = clean_title({"title": "Wrangler Women Navy Jacket " * 400})  # 10.8 kB
    assert len(long) <= TITLE_MAX_CHARS and long.startswith("Wrangler Women Navy Jacket")
    odd = clean_title({"title": "Shirt \ud800 blue"})  # what json.loads makes of "\ud800"
    assert title_bytes(odd).decode("utf-8") == odd and "Shirt" in odd


def test_has_words_is_the_served_graphs_rule() -> None:
    assert has_words("Puma Men") and has_words("501")
    assert not has_words("") and not has_words("日本語のシャツ") and not has_words("— · —")


def test_per_class_thresholds_apply_to_rows_read_with_a_title() -> None:
    probs = {"style": np.array([[0.70, 0.20, 0.10], [0.10, 0.80, 0.10], [0.70, 0.20, 0.10]])}
    classes = {"style": ["casual", "formal", "sports"]}
    rows = label_batch(probs, classes, {"style": 0.9}, {"style": (0.5, 0.95, 0.99)}, [True, True, False])
    # row 0: casual 0.70 >= 0.5 (casual's own); row 1: formal 0.80 < 0.95; row 2: no title, 0.70 < 0.9
    assert [(r["style"].label, r["style"].threshold, r["style"].needs_review) for r in rows] == [
        ("casual", 0.5, False), ("formal", 0.95, True), ("casual", 0.9, True)]


def test_an_operators_threshold_replaces_the_per_class_ones() -> None:
    shipped = {"style": (0.5, 0.95, 0.99), "season": (0.9, 0.9, 1.0)}
    assert resolve_title_thresholds({"style": 0.8, "season": None}, shipped) == {"season": (0.9, 0.9, 1.0)}


def test_parse_class_thresholds() -> None:
    assert parse_class_thresholds("0.5,0.95,0.99", 3) == (0.5, 0.95, 0.99)
    assert parse_class_thresholds("0.5,0.95", 3) is None
    assert parse_class_thresholds("0.5,x,0.9", 3) is None
    assert parse_class_thresholds("0.5,1.5,0.9", 3) is None
    assert parse_class_thresholds(None, 2) is None


def _config(inputs: list[str], params: dict[str, str]) -> dict:
    return {
        "input": [{"name": n, "dims": ["32", "32", "3"] if n == "image" else ["1"]} for n in inputs],
        "output": [{"name": t} for t in ("style", "gender", "season")],
        "max_batch_size": 32,
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }


def test_the_worker_sends_a_title_only_to_a_model_that_takes_one() -> None:
    params = {"labels_style": "casual,formal,sports", "labels_gender": "men,women", "labels_season": "a,b,c",
              "model_version": "v", "backbone": "vgg16", "weights_source": "w", "threshold_style": "0.8",
              "threshold_style_title": "0.4,0.9,0.99", "threshold_gender_title": "0.9"}  # gender: wrong count -> ignored
    served = describe("autolabel", {"autolabel": _config(["image", "title"], params)})
    assert served.reads_title and served.calls[0].input_name == "image" and served.calls[0].title
    assert served.title_thresholds == {"style": (0.4, 0.9, 0.99)} and served.thresholds == {"style": 0.8}
    old = describe("autolabel", {"autolabel": _config(["image"], params)})
    assert not old.reads_title


def test_metadata_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "catalog.csv"
    f.write_text("id,productDisplayName,brand,empty\n42,Puma Men Blue Track Pants,Puma,\n43,,Nike,\n", encoding="utf-8")
    assert read_metadata_csv(f, "productDisplayName") == {"42": {"title": "Puma Men Blue Track Pants", "brand": "Puma"},
                                                          "43": {"brand": "Nike"}}
    assert read_metadata_csv(f)["42"] == {"productDisplayName": "Puma Men Blue Track Pants", "brand": "Puma"}
    assert "no `title` column" in capsys.readouterr().err  # the default column missing: said, not refused
    with pytest.raises(click.BadParameter, match=r"no `name` column; columns: id, productDisplayName, brand, empty"):
        read_metadata_csv(f, "name", require_title=True)  # a column the user named: refused
    for text, why in [("sku,title\n1,a\n", "no `id` column"), ("id,title\n1,a\n1,b\n", "appears twice"),
                      ("id,title\n,a\n", "empty id")]:
        f.write_text(text)
        with pytest.raises(click.BadParameter, match=why):
            read_metadata_csv(f)
    f.write_bytes(b"id,title\n1,\xff\xfe\n")
    with pytest.raises(click.BadParameter, match="cannot read"):
        read_metadata_csv(f)
