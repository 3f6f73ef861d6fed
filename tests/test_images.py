import io

import numpy as np
import pytest
from corpus import bad_images, hard_but_valid_images, sample_jpeg
from PIL import Image

from services.errors import BadInput
from services.events import ErrorCode
from services.images import ImageLimits, decode, prepare, resize


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_inputs_get_their_code(name):
    data, code = bad_images()[name]
    with pytest.raises(BadInput) as info:
        decode(data)
    assert info.value.code == code


@pytest.mark.parametrize("name", sorted(hard_but_valid_images()))
def test_odd_modes_become_rgb(name):
    img = decode(hard_but_valid_images()[name])
    assert img.mode == "RGB" and img.size == (30, 40)


def test_sixteen_bit_keeps_its_range():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = np.asarray(decode(buf.getvalue()))
    assert out.min() == 255  # white stays white, not clipped garbage


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert np.asarray(decode(buf.getvalue())).min() == 255


def test_limits():
    with pytest.raises(BadInput) as info:
        decode(sample_jpeg(), ImageLimits(max_bytes=100))
    assert info.value.code == ErrorCode.image_too_large
    with pytest.raises(BadInput) as info:
        decode(sample_jpeg(), ImageLimits(max_pixels=100))
    assert info.value.code == ErrorCode.image_too_many_pixels


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode(buf.getvalue()).size == (10, 20)


def test_pad_keeps_aspect_and_stretch_does_not():
    img = Image.new("RGB", (60, 80), (0, 0, 0))
    padded = np.asarray(resize(img, (224, 224), "pad"))
    assert padded.shape == (224, 224, 3)
    assert padded[112, 0].tolist() == [255, 255, 255]  # white side bars
    assert padded[112, 112].tolist() == [0, 0, 0]
    stretched = np.asarray(resize(img, (224, 224), "stretch"))
    assert stretched[112, 0].tolist() == [0, 0, 0]


def test_prepare_gives_model_input():
    arr = prepare(sample_jpeg(), (32, 48))
    assert arr.shape == (32, 48, 3) and arr.dtype == np.uint8
