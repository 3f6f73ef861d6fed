"""Tiny synthetic datasets in the three source layouts, for tests and demos.

Each photo encodes its labels visibly (style: the garment's colour; gender: its shape;
season: the background's brightness), so even a small random-feature backbone can learn
them. The fpi layout also gets the dataset's known problems: a children's product
labelled Men, a duplicate photo under another id, an unreadable image and a missing one.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

STYLE_COLORS = {"Casual": (200, 40, 40), "Formal": (30, 40, 160), "Sports": (30, 170, 60)}
SEASON_BG = {"Summer": (255, 255, 255), "Winter": (120, 120, 120), "Fall": (200, 200, 160), "Spring": (200, 200, 160)}
FIELDS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage", "productDisplayName"]


def photo(usage: str, gender: str, season: str, rng: random.Random, size: tuple[int, int] = (60, 80)) -> bytes:
    """A 60x80 JPEG (width x height) showing the labels, with a little noise."""
    w, h = size
    img = Image.new("RGB", size, SEASON_BG.get(season, (230, 230, 230)))
    d = ImageDraw.Draw(img)
    color = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in STYLE_COLORS.get(usage, (150, 100, 50)))
    x0, y0 = rng.randint(4, 12), rng.randint(6, 16)
    box = (x0, y0, w - rng.randint(4, 12), h - rng.randint(6, 16))
    if gender in ("Men", "Boys"):
        d.rectangle(box, fill=color)
    else:
        d.ellipse(box, fill=color)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_fpi(root: Path, n_per_combo: int = 3, seed: int = 0) -> dict[str, object]:
    """Write ``root/styles.csv`` and ``root/images/<id>.jpg``; return what was planted."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    next_id = 1000
    for usage in ("Casual", "Formal", "Sports"):
        for gender in ("Men", "Women"):
            for season in ("Summer", "Winter", "Fall", "Spring"):
                for _ in range(n_per_combo):
                    rows.append({"id": next_id, "gender": gender, "masterCategory": "Apparel", "usage": usage, "season": season,
                                 "productDisplayName": f"Brand {usage} {gender} Shirt"})
                    (root / "images" / f"{next_id}.jpg").write_bytes(photo(usage, gender, season, rng))
                    next_id += 1
    planted = {"child": next_id, "duplicate": next_id + 1, "duplicate_of": rows[0]["id"], "unreadable": next_id + 2,
               "missing": next_id + 3, "ethnic": next_id + 4, "unisex": next_id + 5, "accessory": next_id + 6}
    rows.append({"id": planted["child"], "gender": "Men", "masterCategory": "Apparel", "usage": "Casual", "season": "Summer",
                 "productDisplayName": "Brand Boys Striped T-shirt"})
    (root / "images" / f"{planted['child']}.jpg").write_bytes(photo("Casual", "Boys", "Summer", rng))
    rows.append({**rows[0], "id": planted["duplicate"]})
    (root / "images" / f"{planted['duplicate']}.jpg").write_bytes((root / "images" / f"{rows[0]['id']}.jpg").read_bytes())
    rows.append({"id": planted["unreadable"], "gender": "Women", "masterCategory": "Apparel", "usage": "Formal", "season": "Winter",
                 "productDisplayName": "Broken"})
    (root / "images" / f"{planted['unreadable']}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    rows.append({"id": planted["missing"], "gender": "Men", "masterCategory": "Apparel", "usage": "Casual", "season": "Summer",
                 "productDisplayName": "No photo"})
    rows.append({"id": planted["ethnic"], "gender": "Women", "masterCategory": "Apparel", "usage": "Ethnic", "season": "Summer",
                 "productDisplayName": "Brand Women Kurta"})
    (root / "images" / f"{planted['ethnic']}.jpg").write_bytes(photo("Ethnic", "Women", "Summer", rng))
    rows.append({"id": planted["unisex"], "gender": "Unisex", "masterCategory": "Footwear", "usage": "Sports", "season": "Winter",
                 "productDisplayName": "Brand Unisex Shoe"})
    (root / "images" / f"{planted['unisex']}.jpg").write_bytes(photo("Sports", "Unisex", "Winter", rng))
    rows.append({"id": planted["accessory"], "gender": "Women", "masterCategory": "Accessories", "usage": "Casual", "season": "Fall",
                 "productDisplayName": "Brand Women Bag"})
    (root / "images" / f"{planted['accessory']}.jpg").write_bytes(photo("Casual", "Women", "Fall", rng))
    with (root / "styles.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS} | {"subCategory": "Topwear", "articleType": "Shirts",
                                                                  "baseColour": "Red", "year": "2012"})
    return planted


def make_folders(root: Path, n_per_class: int = 6, seed: int = 0) -> None:
    """``root/<task>/<class>/*.jpg``."""
    rng = random.Random(seed)
    spec = {
        "style": {"casual": ("Casual", None, None), "formal": ("Formal", None, None), "sports": ("Sports", None, None)},
        "gender": {"men": (None, "Men", None), "women": (None, "Women", None)},
        "season": {"spring-fall": (None, None, "Fall"), "summer": (None, None, "Summer"), "winter": (None, None, "Winter")},
    }
    for task, classes in spec.items():
        for cls, (usage, gender, season) in classes.items():
            folder = root / task / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                data = photo(usage or rng.choice(list(STYLE_COLORS)), gender or rng.choice(["Men", "Women"]),
                             season or rng.choice(["Summer", "Winter", "Fall"]), rng)
                (folder / f"{i}.jpg").write_bytes(data)


def make_manifest(root: Path, n: int = 24, seed: int = 0) -> Path:
    """``root/labels.csv`` (image, style, gender, season) + ``root/img/*.jpg``; some cells empty."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    usage_map = {"Casual": "casual", "Formal": "formal", "Sports": "sports"}
    season_map = {"Summer": "summer", "Winter": "winter", "Fall": "spring-fall"}
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "style", "gender", "season"])
        for i in range(n):
            u, g, s = list(usage_map)[i % 3], ["Men", "Women"][i % 2], list(season_map)[(i // 2) % 3]
            (root / "img" / f"{i}.jpg").write_bytes(photo(u, g, s, rng))
            w.writerow([f"img/{i}.jpg", usage_map[u], g.lower() if i % 5 else "", season_map[s]])
    return path
