"""A bad-input corpus, generated (nothing binary is committed)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from services.events import ErrorCode

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample_jpeg() -> bytes:
    return sorted(SAMPLES.glob("*.jpg"))[0].read_bytes()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def bad_images() -> dict[str, tuple[bytes, ErrorCode]]:
    """name -> (bytes, the dead-letter code they must get)."""
    jpeg = sample_jpeg()
    return {
        "corrupt.jpg": (jpeg[: len(jpeg) // 2], ErrorCode.image_unreadable),
        "empty.jpg": (b"", ErrorCode.image_empty),
        "text.jpg": (b"this is not an image, just text pretending\n" * 3, ErrorCode.image_unreadable),
        "bomb.png": (png_header_claiming(30000, 30000), ErrorCode.image_too_many_pixels),
    }


def hard_but_valid_images() -> dict[str, bytes]:
    """Inputs that must be converted to RGB and labeled, not dead-lettered."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA")
    cmyk = Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG")
    gray16 = Image.fromarray((rng.integers(0, 65535, (40, 30))).astype(np.uint16))
    palette = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8), "RGB").convert("P")
    return {"alpha.png": _png(rgba), "cmyk.jpg": buf.getvalue(), "gray16.png": _png(gray16), "palette.png": _png(palette)}
