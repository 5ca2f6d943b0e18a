"""io/images.py: every image mode → RGB, EXIF orientation, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segbatch.errors import ImageError
from segbatch.io.images import decode, decode_image


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


def test_16bit_grayscale_full_mode_divides_by_257_not_clips():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = decode(encode(Image.fromarray(values), "PNG"), "full")
    np.testing.assert_array_equal(out.rgb[0, :, 0], [0, 1, 128, 255])
    assert (out.rgb[..., 0] == out.rgb[..., 2]).all()
    assert out.note == "I;16 full 0..65535 → 0..255 (÷257)"


def test_16bit_with_a_small_value_range_is_stretched_by_default_and_its_conversion_recorded():
    """A microscopy TIFF with values 0..235: ÷257 made it black (0..0); its own range keeps the picture."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 236, size=(20, 30)).astype(np.uint16)
    values[0, 0], values[0, 1] = 0, 235
    data = encode(Image.fromarray(values), "TIFF")
    out = decode(data)
    want = np.round(values.astype(np.float64) * 255 / 235).astype(np.uint8)
    np.testing.assert_array_equal(out.rgb[..., 1], want)
    assert out.note == "I;16 range 0..235 → 0..255"
    # percentile: ImageJ's auto contrast, the extreme 0.175 % at each end saturated
    lo, hi = np.percentile(values, [0.175, 99.825])
    pct = decode(data, "percentile")
    assert pct.note == f"I;16 percentile {round(lo)}..{round(hi)} → 0..255"
    assert pct.rgb.min() == 0 and pct.rgb.max() == 255
    # ÷257 squeezes it to 0..0: a blank picture is an error, never a clean result
    blank = r"blank image: every pixel is 0 or 1 \(of 255\) after I;16 full 0\.\.235 → 0\.\.1.*--high-bit-depth"
    with pytest.raises(ImageError, match=blank):
        decode(data, "full")


def test_a_blank_image_is_an_error_and_other_modes_record_their_conversion():
    with pytest.raises(ImageError, match=r"decode: blank image: every pixel is 7 \(of 255\)$"):
        decode(encode(Image.new("RGB", (8, 6), (7, 7, 7)), "PNG"))
    assert decode(encode(Image.fromarray(RGB).convert("CMYK"), "JPEG")).note == "CMYK → RGB"
    assert decode(encode(Image.fromarray(RGB), "PNG")).note is None


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
