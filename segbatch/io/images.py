"""Bytes → RGB array, with EXIF orientation applied, and the image-level error taxonomy.

Every failure raises :class:`~segbatch.errors.ImageError` with stage ``"decode"`` and a
message a person can act on: not an image, corrupt or truncated, an image mode that has no
faithful RGB form. Modes that do (L, P, RGBA, CMYK, 16-bit grayscale, …) are converted.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segbatch.errors import ImageError

# Modes PIL converts to RGB faithfully with Image.convert. Alpha is dropped, as
# torchvision's ImageReadMode.RGB does.
_PIL_CONVERTIBLE = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image into an RGB array.

    Args:
        data: the file's bytes (JPEG, PNG, TIFF, BMP, WebP, GIF: first frame).
    Returns:
        ``(H, W, 3) uint8`` array, H and W after EXIF orientation.
    Raises:
        ImageError: with stage ``decode``.
    """
    if not data:
        raise ImageError("decode", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            img.load()
    except UnidentifiedImageError:
        raise ImageError("decode", f"not an image: no decoder recognises its {len(data)} bytes") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("decode", f"image too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError("decode", f"corrupt or truncated {_format_name(data)}: {err}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # a malformed EXIF block; PIL raises several types
        raise ImageError("decode", f"cannot apply EXIF orientation: {err}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded PIL image in any supported mode → ``(H, W, 3) uint8`` RGB."""
    mode = img.mode
    if mode in _PIL_CONVERTIBLE:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
        return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(
                "decode", f"unsupported image mode {mode!r}: values {arr.min()}..{arr.max()} exceed 16 bits"
            )
        # 16-bit → 8-bit by rounding v/257, so 65535 → 255 exactly (PIL's convert clips instead).
        gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    raise ImageError(
        "decode",
        f"unsupported image mode {mode!r}; supported: 8-bit modes {sorted(_PIL_CONVERTIBLE)} and 16-bit grayscale",
    )


def _format_name(data: bytes) -> str:
    """A best-effort name of the format from the magic bytes, for error messages."""
    for magic, name in (
        (b"\xff\xd8", "JPEG"),
        (b"\x89PNG", "PNG"),
        (b"GIF8", "GIF"),
        (b"RIFF", "WebP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"BM", "BMP"),
    ):
        if data.startswith(magic):
            return name
    return "image"
