"""io/images.py: every image mode → RGB, EXIF orientation, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segbatch.errors import ImageError
from segbatch.io.images import decode_image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)


def test_rgb_png_is_returned_exactly():
    out = decode_image(encode(Image.fromarray(RGB), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, RGB)
    out[0, 0] = 0  # writable: torch.from_numpy needs no copy and warns about nothing


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_other_8bit_modes_become_rgb_like_pil_convert(mode):
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "LA" else "PNG")
    src = Image.fromarray(RGB).convert(mode)
    out = decode_image(encode(src, fmt))
    assert out.shape == (6, 9, 3)
    if fmt == "PNG":
        np.testing.assert_array_equal(out, np.asarray(src.convert("RGB")))


def test_palette_with_transparency_drops_alpha():
    src = Image.fromarray(RGB).convert("P")
    out = decode_image(encode(src, "PNG", transparency=0))
    np.testing.assert_array_equal(out, np.asarray(src.convert("RGBA").convert("RGB")))


def test_16bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encode(img, "PNG", exif=exif))
    assert out.shape == (9, 6, 3)
    np.testing.assert_array_equal(out, np.rot90(RGB, k=-1))


def test_float_images_are_refused_with_their_mode():
    f = Image.fromarray(np.zeros((4, 4), np.float32), mode="F")
    with pytest.raises(ImageError, match=r"decode: unsupported image mode 'F'"):
        decode_image(encode(f, "TIFF"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture", "not an image"),
        (None, "corrupt or truncated JPEG"),
    ],
)
def test_bad_files_raise_image_errors(data, message):
    if data is None:
        data = encode(Image.fromarray(RGB), "JPEG")[:200]  # truncated
    with pytest.raises(ImageError, match=message) as info:
        decode_image(data)
    assert info.value.stage == "decode"
