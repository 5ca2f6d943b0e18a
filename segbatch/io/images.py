"""Bytes → RGB array, with EXIF orientation applied, and the image-level error taxonomy.

Every failure raises :class:`~segbatch.errors.ImageError` with stage ``"decode"`` and a
message a person can act on: not an image, corrupt or truncated, an image mode that has no
faithful RGB form, a blank image. Modes that do (L, P, RGBA, CMYK, 16-bit grayscale, …) are
converted, and :class:`Decoded` says which conversion was applied.

16-bit (and 32-bit integer) grayscale goes to 8 bits by one of :data:`HIGH_BIT_DEPTHS`:
``range`` (default) maps the image's own minimum..maximum onto 0..255, as microscopy viewers
show such images by default; ``percentile`` maps its 0.175th..99.825th percentiles (ImageJ's
"Auto" contrast, 0.35 % of pixels saturated); ``full`` divides by 257 (0..65535 → 0..255),
right for images that use the whole 16-bit range, black for a camera that fills 0..235.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from segbatch.errors import ImageError

# Modes PIL converts to RGB faithfully with Image.convert. Alpha is dropped, as
# torchvision's ImageReadMode.RGB does.
_PIL_CONVERTIBLE = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}

HighBitDepth = Literal["range", "percentile", "full"]
# Where JPEGs are decoded: in the read tasks (host), in the model actor (device: its GPU, or
# torchvision's CPU decoder on a CPU actor), or auto: device.
DecodeMode = Literal["host", "device", "auto"]
DECODE_MODES: tuple[str, ...] = ("host", "device", "auto")
# EXIF orientations 2..8 as PIL transposes (ImageOps.exif_transpose's table); 1 is "as stored".
ORIENTATIONS = range(1, 9)
HIGH_BIT_DEPTHS: tuple[str, ...] = ("range", "percentile", "full")
BLANK_LEVELS = 1  # an image whose 8-bit values span at most this many levels is blank (0..1 is black to the eye)
SATURATED = 0.35  # percent of pixels the percentile mapping saturates, split between both ends (ImageJ's default)


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what conversion, if any, made it 8-bit RGB."""

    rgb: np.ndarray  # (H, W, 3) uint8
    note: str | None  # e.g. "CMYK → RGB", "I;16 range 3..235 → 0..255"; None for plain 8-bit RGB


def decode_image(data: bytes, high_bit_depth: HighBitDepth = "range") -> np.ndarray:
    """:func:`decode`'s ``(H, W, 3) uint8`` array alone."""
    return decode(data, high_bit_depth).rgb


def decode(data: bytes, high_bit_depth: HighBitDepth = "range") -> Decoded:
    """Decode an encoded image into an RGB array.

    Args:
        data: the file's bytes (JPEG, PNG, TIFF, BMP, WebP, GIF: first frame).
        high_bit_depth: how 16/32-bit grayscale becomes 8-bit (see the module docstring).
    Returns:
        :class:`Decoded`: ``(H, W, 3) uint8``, H and W after EXIF orientation, and the conversion applied.
    Raises:
        ImageError: with stage ``decode`` (also for a blank image: every pixel one value).
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
    out = convert(img, high_bit_depth)
    rgb = out.rgb
    lo, hi = (int(rgb.min()), int(rgb.max())) if rgb.size else (0, 255)
    check_blank(lo, hi, out.note)
    return out


@dataclass(frozen=True)
class JpegHeader:
    """What the header of a JPEG that the model actor can decode says (no pixel decoded)."""

    height: int  # after EXIF orientation, as :func:`decode`'s array
    width: int
    orientation: int  # EXIF orientation 1..8 that :func:`decode` applies (1: none)
    note: str | None  # the conversion :func:`decode` reports: "L → RGB" for grayscale, None for RGB


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Check a file from its header alone (format, mode, size, EXIF), for ``--decode device``.

    Returns the header of a JPEG whose pixels torchvision's ``decode_jpeg`` gives exactly as
    :func:`decode` does (8-bit RGB or grayscale, ending in its EOI marker, within Pillow's
    decompression-bomb limit, its EXIF block readable); None for anything else — another
    format, CMYK (Pillow inverts Adobe CMYK), an oversized, odd or unreadable file — which
    the read task then decodes with :func:`decode` as before, raising the same errors.
    """
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or truncated: the host path says which
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        exif = img.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
        orientation = value if isinstance(value, int) and value in ORIENTATIONS else 1
        if orientation != 1:
            # What exif_transpose does to the metadata after turning the pixels: a block it
            # cannot rewrite fails there (host path: "cannot apply EXIF orientation").
            del exif[ExifTags.Base.Orientation]
            exif.tobytes()
    except Exception:  # Pillow raises many types on odd headers: the host path reports them
        return None
    width, height = img.size
    if orientation >= 5:  # 5..8 swap the axes
        width, height = height, width
    return JpegHeader(height, width, orientation, None if img.mode == "RGB" else "L → RGB")


def check_blank(lo: int, hi: int, note: str | None = None) -> None:
    """Raise the blank-image :class:`ImageError` when 8-bit values ``lo..hi`` span at most
    :data:`BLANK_LEVELS` levels (``note``: the conversion that made them, if any)."""
    if hi - lo <= BLANK_LEVELS:
        # A model's output on a (nearly) constant picture means nothing: never report it as a clean result.
        levels = f"is {lo}" if lo == hi else f"is {lo} or {hi}"
        raise ImageError(
            "decode",
            f"blank image: every pixel {levels} (of 255)"
            + (f" after {note}; choose another --high-bit-depth" if note and "→" in note else ""),
        )


def to_rgb(img: Image.Image, high_bit_depth: HighBitDepth = "range") -> np.ndarray:
    """A decoded PIL image in any supported mode → ``(H, W, 3) uint8`` RGB (see :func:`convert`)."""
    return convert(img, high_bit_depth).rgb


def convert(img: Image.Image, high_bit_depth: HighBitDepth = "range") -> Decoded:
    """A decoded PIL image in any supported mode → ``(H, W, 3) uint8`` RGB and the conversion applied."""
    if high_bit_depth not in HIGH_BIT_DEPTHS:
        raise ValueError(f"high_bit_depth must be one of {', '.join(HIGH_BIT_DEPTHS)}, got {high_bit_depth!r}")
    mode = img.mode
    if mode in _PIL_CONVERTIBLE:
        note = None if mode == "RGB" else f"{mode} → RGB"
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
        return Decoded(np.array(img.convert("RGB"), dtype=np.uint8), note)  # a writable copy
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageError("decode", f"unsupported image mode {mode!r}: values {lo}..{hi} exceed 16 bits")
        gray, note = _to_8bit(arr, lo, hi, high_bit_depth)
        return Decoded(np.repeat(gray[..., None], 3, axis=2), f"{mode} {note}")
    raise ImageError(
        "decode",
        f"unsupported image mode {mode!r}; supported: 8-bit modes {sorted(_PIL_CONVERTIBLE)} and 16-bit grayscale",
    )


def _to_8bit(arr: np.ndarray, lo: int, hi: int, how: str) -> tuple[np.ndarray, str]:
    """``(H, W)`` int64 in 0..65535 → ``(H, W) uint8`` and what was done, e.g. ``range 3..235 → 0..255``."""
    if how == "full":
        # v/257 rounded, so 65535 → 255 exactly (PIL's convert clips instead).
        gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return gray, f"full {lo}..{hi} → {int(gray.min())}..{int(gray.max())} (÷257)"
    if how == "percentile":
        lo, hi = (round(float(v)) for v in np.percentile(arr, [SATURATED / 2, 100 - SATURATED / 2]))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8), f"{how} {lo}..{hi} → 0..0"
    # Rounded linear map of lo..hi onto 0..255, values outside clipped (percentile mode).
    gray = ((np.clip(arr, lo, hi) - lo) * 255 * 2 + (hi - lo)) // (2 * (hi - lo))
    return gray.astype(np.uint8), f"{how} {lo}..{hi} → 0..255"


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
