"""Class balancing as in the study: offline augmentation of minority classes.

Each augmented copy is a pure function of (source image, copy number): flips, small
rotations, shifts, zoom and brightness, drawn from a generator seeded by the image's
digest. So a copy is the same in every run and for every task, and its backbone features
are cached under :func:`augmented_key` like any other image.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from services.images import PAD_COLOR, ResizeMode, decode, resize, to_array

AUGMENT_VERSION = 1  # bump when the transforms change: the cache keys change with it


@dataclass(frozen=True)
class AugmentLimits:
    rotation_deg: float = 10.0
    shift: float = 0.08  # fraction of width/height
    zoom: float = 0.10  # +- fraction
    brightness: float = 0.15  # +- fraction
    flip: bool = True


@dataclass(frozen=True)
class AugmentParams:
    flip: bool
    rotation_deg: float
    shift_x: float
    shift_y: float
    zoom: float
    brightness: float


def augmented_key(digest: str, copy: int) -> str:
    return f"aug{AUGMENT_VERSION}:{digest}:{copy}"


def draw_params(digest: str, copy: int, limits: AugmentLimits = AugmentLimits()) -> AugmentParams:
    """The transform of copy ``copy`` of the image ``digest`` (deterministic)."""
    seed = int.from_bytes(hashlib.sha256(f"{digest}:{copy}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return AugmentParams(
        flip=limits.flip and rng.random() < 0.5,
        rotation_deg=rng.uniform(-limits.rotation_deg, limits.rotation_deg),
        shift_x=rng.uniform(-limits.shift, limits.shift),
        shift_y=rng.uniform(-limits.shift, limits.shift),
        zoom=1.0 + rng.uniform(-limits.zoom, limits.zoom),
        brightness=1.0 + rng.uniform(-limits.brightness, limits.brightness),
    )


def apply(img: Image.Image, p: AugmentParams) -> Image.Image:
    """Transform an RGB photo; uncovered areas are filled with the catalog's white."""
    w, h = img.size
    if p.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(
        p.rotation_deg,
        resample=Image.Resampling.BILINEAR,
        translate=(p.shift_x * w, p.shift_y * h),
        fillcolor=PAD_COLOR,
    )
    if p.zoom != 1.0:
        zw, zh = max(1, round(w * p.zoom)), max(1, round(h * p.zoom))
        scaled = img.resize((zw, zh), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (w, h), PAD_COLOR)
        canvas.paste(scaled, ((w - zw) // 2, (h - zh) // 2))
        img = canvas
    return ImageEnhance.Brightness(img).enhance(p.brightness)


def augmented_array(path: Path, digest: str, copy: int, size: tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """The model input of one augmented copy: augment at source resolution, then resize."""
    img = decode(Path(path).read_bytes())
    return to_array(resize(apply(img, draw_params(digest, copy)), size, mode))


def balance_plan(labels: Sequence[str], max_factor: float = 2.0) -> list[tuple[int, int]]:
    """Which augmented copies bring each minority class towards the majority's count.

    Returns ``(index into labels, copy number)`` pairs. A class of n rows gets at most
    ``(max_factor - 1) * n`` copies, so a tiny class is not filled with near-duplicates.
    """
    counts = Counter(labels)
    if not counts:
        return []
    target = max(counts.values())
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    plan = []
    for c, members in sorted(by_class.items()):
        extra = min(target - len(members), int((max_factor - 1.0) * len(members)))
        for k in range(max(0, extra)):
            plan.append((members[k % len(members)], k // len(members)))
    return plan
