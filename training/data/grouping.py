"""Near-duplicate groups: rows that must land in the same part of a split.

A catalog holds the same garment many times: the same photo re-uploaded, the same shoot
cropped differently, the same product in another colour ("Puma Men Grey Solid T-Shirt",
"Puma Men Black Solid T-Shirt"). A split that puts one copy in training and another in
test scores memory, not generalisation. Two rows are linked when

- their photos' perceptual hashes (``imagehash.phash`` with a 16x16 DCT: 256 bits, of the
  grey image, so a colour variant of the same shot links too) differ in at most
  ``max_distance`` bits, or
- their titles are equal once lower-cased, colour words removed and punctuation dropped
  (:func:`title_key`; titles too short to say anything are not linked);

and a group is a connected component of those links (``scipy.sparse.csgraph``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

HASH_SIZE = 16  # phash DCT side: 256 bits (64 bits chain unrelated garments of one shape into giant groups)
DEFAULT_MAX_DISTANCE = 12  # of 256 bits; docs/accuracy.md shows how the groups grow with it
MIN_TITLE_WORDS = 3  # shorter colour-free titles ("men tshirt") say too little to link products

# Colour words of the catalog's baseColour column and the usual modifiers; removed from titles.
COLOUR_WORDS = frozenset(
    """black white blue brown grey gray red green pink navy purple silver beige yellow gold maroon orange olive
    multi multicolour multicolor multicoloured cream steel charcoal skin peach off lavender khaki tan magenta teal
    bronze mustard copper turquoise rust metallic burgundy mauve coffee sea rose mushroom nude taupe lime
    fluorescent violet indigo aqua coral fuchsia ivory wine camel mint denim light dark melange""".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def title_key(title: str) -> str | None:
    """The title without colour words and punctuation, or None when too short to link on."""
    words = [w for w in _WORD.findall((title or "").lower()) if w not in COLOUR_WORDS]
    return " ".join(words) if len(words) >= MIN_TITLE_WORDS else None


def photo_hash(path: Path) -> np.ndarray:
    """Perceptual hash (DCT, :data:`HASH_SIZE` squared bits) of the photo, packed into uint8."""
    import imagehash
    from PIL import Image

    with Image.open(path) as im:
        return np.packbits(imagehash.phash(im.convert("RGB"), hash_size=HASH_SIZE).hash.flatten())


def hamming_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 512) -> np.ndarray:
    """All (i, j), i < j, whose packed hashes (N, bytes) differ in at most ``max_distance`` bits: (P, 2)."""
    h = np.asarray(hashes, dtype=np.uint8).reshape(len(hashes), -1)
    out = []
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        dist = _POPCOUNT[block[:, None, :] ^ h[None, :, :]].sum(axis=2, dtype=np.uint16)
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


@dataclass(frozen=True)
class Groups:
    """``group[i]``: the group of row ``i`` (0..n_groups-1), and why rows were linked."""

    group: np.ndarray
    photo_links: int
    title_links: int

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0

    @property
    def largest(self) -> int:
        return int(np.bincount(self.group).max()) if len(self.group) else 0

    def summary(self) -> str:
        sizes = np.bincount(self.group) if len(self.group) else np.zeros(0, int)
        multi = sizes[sizes > 1]
        return (f"{len(self.group)} rows in {self.n_groups} groups ({len(multi)} with 2+ rows holding {int(multi.sum())} rows;"
                f" largest {self.largest}); links: {self.photo_links} photo, {self.title_links} title")


def group_rows(hashes: np.ndarray, titles: Sequence[str], max_distance: int = DEFAULT_MAX_DISTANCE) -> Groups:
    """Connected components of photo and title links (pure: hashes and titles in, groups out)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    if len(titles) != n:
        raise ValueError("hashes and titles differ in length")
    photo = hamming_pairs(hashes, max_distance) if n else np.zeros((0, 2), np.int64)
    first: dict[str, int] = {}
    title = []
    for i, t in enumerate(titles):
        key = title_key(t)
        if key is None:
            continue
        if key in first:
            title.append((first[key], i))
        else:
            first[key] = i
    title_arr = np.asarray(title, dtype=np.int64).reshape(-1, 2)
    edges = np.concatenate([photo.astype(np.int64), title_arr])
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return Groups(labels.astype(np.int64), len(photo), len(title_arr))


def hash_photos(paths: Sequence[Path], progress: bool = True) -> np.ndarray:
    """(N, bytes) packed hashes of the photos (about 1,700 a second here)."""
    rows = [photo_hash(Path(p)) for p in tqdm(paths, desc="perceptual hashes", unit="img", disable=not progress)]
    return np.stack(rows) if rows else np.zeros((0, HASH_SIZE * HASH_SIZE // 8), np.uint8)
