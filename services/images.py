"""Pure image functions: bytes -> validated RGB -> model input. No I/O, no servers.

The worker and the training code both call :func:`prepare`, so a photo is resized the
same way when it is labeled as when the model learnt from it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import BadInput
from services.events import ErrorCode

ResizeMode = Literal["pad", "stretch"]
PAD_COLOR = (255, 255, 255)  # catalog photos sit on white


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode and validate a photo; return it upright, in RGB.

    Refuses empty, oversize and non-image input, and images whose header claims more
    pixels than allowed (checked before decoding: no decompression bomb is expanded).
    Palette, alpha (composited on white), CMYK, grayscale and 16-bit inputs become RGB.
    """
    if not data:
        raise BadInput(ErrorCode.image_empty, "image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise BadInput(
            ErrorCode.image_too_large, f"image has {len(data)} bytes, limit {limits.max_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limits.max_pixels:
                raise BadInput(
                    ErrorCode.image_too_many_pixels,
                    f"image claims {width}x{height} pixels, limit {limits.max_pixels}",
                )
            if img.format not in {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}:
                raise BadInput(ErrorCode.image_unsupported, f"unsupported format {img.format}")
            img.load()
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(ErrorCode.image_too_many_pixels, str(exc)) from None
    except UnidentifiedImageError:
        raise BadInput(ErrorCode.image_unreadable, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadInput(ErrorCode.image_unreadable, f"cannot decode image: {exc}") from None
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, PAD_COLOR)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def resize(img: Image.Image, size: tuple[int, int], mode: ResizeMode = "pad") -> Image.Image:
    """To ``size`` = (height, width): keep the aspect ratio and pad with white, or stretch."""
    height, width = size
    if mode == "stretch":
        return img.resize((width, height), Image.Resampling.BILINEAR)
    return ImageOps.pad(img, (width, height), Image.Resampling.BILINEAR, color=PAD_COLOR)


def to_array(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8, what the served models take."""
    return np.asarray(img, dtype=np.uint8)


def prepare(
    data: bytes,
    size: tuple[int, int],
    mode: ResizeMode = "pad",
    limits: ImageLimits = ImageLimits(),
) -> np.ndarray:
    """Bytes -> validated, upright, RGB, resized uint8 array of shape (H, W, 3)."""
    return to_array(resize(decode(data, limits), size, mode))
