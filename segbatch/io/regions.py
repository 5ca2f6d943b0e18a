"""Regions of large images as RGB, without decoding the whole image where the format allows it.

TIFF and BigTIFF (tiled or striped, first page = level 0; pyramid levels and SubIFDs are ignored)
are read through ``tifffile``: only the tiles or strips that meet the region are read and decoded
(``TiffPage.dataoffsets`` / ``databytecounts`` and ``TiffPage.decode``; LZW and JPEG need the
``imagecodecs`` package). Pixel values become ``(h, w, 3) uint8`` exactly as
:func:`segbatch.io.images.decode` makes them from the whole file: grayscale repeated, alpha
dropped, 16-bit RGB by its high byte (Pillow's rule), 16-bit grayscale by ``high_bit_depth``,
whose ``range``/``percentile`` levels are the whole image's (one streaming pass over its
segments, a 65536-bin histogram). TIFFs outside that set (EXIF orientation ≠ 1, planar
separate, palette, 1-bit, 32-bit, float, white-is-zero, YCbCr not in JPEG) and every other
format (JPEG, PNG, …) are decoded once by :func:`segbatch.io.images.decode_image` and sliced;
:attr:`RegionReader.by_region` tells which.

``max_image_pixels`` replaces Pillow's fixed decompression-bomb guard with an explicit one, for
both paths: an image with more pixels is refused (``None``: no limit; the default is Pillow's
own limit, so behaviour stays as today unless a job raises it).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
from PIL import Image

from segbatch.errors import ImageError
from segbatch.io.images import HIGH_BIT_DEPTHS, SATURATED, HighBitDepth, decode_image

log = logging.getLogger(__name__)

Source = bytes | str | os.PathLike[str] | IO[bytes]

# Pillow's default Image.MAX_IMAGE_PIXELS (1024 × 1024 × 1024 // 4 // 3): decode_image refuses more.
PILLOW_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ORIENTATION = 274  # the TIFF/EXIF tag; 5-8 swap height and width
_PIL_LIMIT = threading.Lock()
# (photometric, samples per pixel) read by region: MINISBLACK gray, RGB, RGB + alpha, YCbCr inside JPEG.
_PHOTOMETRIC = {(1, 1): "gray", (2, 3): "rgb", (2, 4): "rgb", (6, 3): "rgb"}
_JPEG = 7
_READ_AHEAD = 1 << 20


@contextmanager
def pillow_pixel_limit(max_image_pixels: int | None) -> Iterator[None]:
    """Pillow's bomb guard set to ``max_image_pixels`` (``None``: off) for the ``with`` body.

    Pillow reads one process-wide ``Image.MAX_IMAGE_PIXELS``; it is swapped and restored under a
    lock, so two limited opens never interleave. An unlimited open elsewhere in the process during
    the swap would see this limit: the read stage runs one image at a time per worker.
    """
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _is_tiff(head: bytes) -> bool:
    return head[:4] in _TIFF_MAGIC


def _as_bytes(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            return f.read()
    source.seek(0)
    return source.read()


def _open_binary(source: Source) -> tuple[IO[bytes], bool]:
    """A seekable binary stream of ``source`` and whether this module opened it (and closes it)."""
    if isinstance(source, bytes):
        return io.BytesIO(source), True
    if isinstance(source, str | os.PathLike):
        return open(source, "rb"), True
    return source, False


def _peek(stream: IO[bytes]) -> bytes:
    pos = stream.tell()
    head = stream.read(4)
    stream.seek(pos)
    return head


def image_size(source: Source) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header alone (no pixel is decoded)."""
    stream, owned = _open_binary(source)
    try:
        if _is_tiff(_peek(stream)):
            import tifffile

            with tifffile.TiffFile(stream) as tif:
                page: Any = tif.pages[0]
                h, w = int(page.imagelength), int(page.imagewidth)
                tag = page.tags.get(_ORIENTATION)
                return (w, h) if tag is not None and tag.value in (5, 6, 7, 8) else (h, w)
        try:
            with pillow_pixel_limit(None), Image.open(stream) as img:
                w, h = img.size
                # getexif() would decode a PNG to look for an eXIf chunk after the pixels: use
                # what the header held (JPEG's APP1, a PNG eXIf chunk before IDAT) if anything.
                raw = img.info.get("exif")
                if raw:
                    exif = Image.Exif()
                    exif.load(raw)
                    orientation = exif.get(_ORIENTATION, 1)
                else:
                    orientation = 1 if img.format == "PNG" else img.getexif().get(_ORIENTATION, 1)
        except Exception as err:  # PIL raises several types for what it cannot identify
            raise ImageError("decode", f"cannot read the image size: {type(err).__name__}: {err}") from None
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    finally:
        if owned:
            stream.close()


class RegionReader:
    """Reads regions of one image as ``(h, w, 3) uint8`` RGB (see the module docstring).

    ``source``: the file's bytes, a local path, or a seekable binary file object (e.g. an fsspec
    file, read lazily by region for TIFF). Opened once per image; not thread-safe (one per thread).
    Raises :class:`~segbatch.errors.ImageError` (stage ``decode``) for what cannot be decoded.
    """

    def __init__(
        self,
        source: Source,
        max_image_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS,
        high_bit_depth: HighBitDepth = "range",
    ) -> None:
        if high_bit_depth not in HIGH_BIT_DEPTHS:
            raise ValueError(f"high_bit_depth must be one of {', '.join(HIGH_BIT_DEPTHS)}, got {high_bit_depth!r}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1 or None (no limit), got {max_image_pixels!r}")
        self.max_image_pixels = max_image_pixels
        self.high_bit_depth = high_bit_depth
        self._rgb: np.ndarray | None = None
        self._tif: Any = None
        self._stream: IO[bytes] | None = None
        self._owned = False
        self._levels: tuple[int, int] | None = None
        self._kind = "rgb"
        stream, owned = _open_binary(source)
        tif = page = None
        try:
            if _is_tiff(_peek(stream)):
                tif, page = self._open_tiff(stream)
        except ImageError:
            if owned:
                stream.close()
            raise
        if page is None:
            if tif is not None:
                tif.close()
            if owned:
                stream.close()
            self._decode_once(source)
        else:
            self._tif, self._stream, self._owned, self._page = tif, stream, owned, page
            self.height, self.width = int(page.imagelength), int(page.imagewidth)

    @property
    def by_region(self) -> bool:
        """True when regions are read tile by tile (TIFF), False when the image was decoded once."""
        return self._rgb is None

    def _check_pixels(self, height: int, width: int) -> None:
        if self.max_image_pixels is not None and height * width > self.max_image_pixels:
            raise ImageError(
                "decode",
                f"image too large to decode safely: {height}x{width} = {height * width} pixels "
                f"exceeds max_image_pixels {self.max_image_pixels} (raise --max-image-pixels to allow it)",
            )

    def _open_tiff(self, stream: IO[bytes]) -> tuple[Any, Any]:
        """The open ``TiffFile`` and its first page, or the file and None when the page cannot be
        read by region (the caller then decodes once)."""
        import tifffile

        try:
            tif = tifffile.TiffFile(stream)
            page: Any = tif.pages[0]  # a TiffPage: the first page is never a TiffFrame
        except Exception as err:  # tifffile raises several types on broken files
            raise ImageError("decode", f"corrupt or truncated TIFF: {type(err).__name__}: {err}") from None
        try:
            self._check_pixels(int(page.imagelength), int(page.imagewidth))
        except ImageError:
            tif.close()
            raise
        orientation = page.tags.get(_ORIENTATION)
        kind = _PHOTOMETRIC.get((int(page.photometric), int(page.samplesperpixel)))
        reason = None
        if kind is None or (int(page.photometric) == 6 and int(page.compression) != _JPEG):
            reason = f"photometric {page.photometric!r} with {page.samplesperpixel} samples"
        elif page.dtype not in (np.uint8, np.uint16) or int(page.bitspersample) not in (8, 16):
            reason = f"{page.bitspersample}-bit {page.dtype} samples"
        elif int(page.planarconfig) != 1 or int(page.imagedepth) != 1:
            reason = "planar-separate or volumetric layout"
        elif orientation is not None and orientation.value != 1:
            reason = f"orientation {orientation.value}"
        else:
            try:
                # Raise KeyError when a codec is missing (LZW, JPEG, … need imagecodecs).
                if int(page.compression) != 1:
                    tifffile.TIFF.DECOMPRESSORS[int(page.compression)]
                if int(page.predictor) != 1:
                    tifffile.TIFF.UNPREDICTORS[int(page.predictor)]
            except KeyError as err:
                reason = f"no decoder here ({err.args[0] if err.args else err})"
        if reason is not None:
            log.warning("TIFF read whole, not by region: %s", reason)
            return tif, None
        self._kind = kind or "rgb"
        return tif, page

    def _decode_once(self, source: Source) -> None:
        data = _as_bytes(source)
        with pillow_pixel_limit(self.max_image_pixels):
            self._rgb = decode_image(data, self.high_bit_depth)
        self.height, self.width = self._rgb.shape[:2]

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        if self._stream is not None and self._owned:
            self._stream.close()
        self._stream = None
        self._rgb = None

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Rows ``y0 … y0+h-1``, columns ``x0 … x0+w-1`` as a new ``(h, w, 3) uint8`` array."""
        if not (h >= 1 and w >= 1 and y0 >= 0 and x0 >= 0 and y0 + h <= self.height and x0 + w <= self.width):
            raise ValueError(
                f"region (y0={y0}, x0={x0}, h={h}, w={w}) is not inside the {self.height}x{self.width} image"
            )
        if self._rgb is not None:
            return self._rgb[y0 : y0 + h, x0 : x0 + w].copy()
        if self._tif is None:
            raise ValueError("the reader is closed")
        raw = self._read_raw(y0, x0, h, w)
        return self._to_rgb(raw)

    def _segments(self, y0: int, x0: int, h: int, w: int) -> list[int]:
        page = self._page
        if page.is_tiled:
            tl, tw = int(page.tilelength), int(page.tilewidth)
            across = -(-self.width // tw)
            return [
                ty * across + tx
                for ty in range(y0 // tl, (y0 + h - 1) // tl + 1)
                for tx in range(x0 // tw, (x0 + w - 1) // tw + 1)
            ]
        rows = int(page.rowsperstrip) or self.height
        return list(range(y0 // rows, (y0 + h - 1) // rows + 1))

    def _decoded(self, indices: list[int]) -> Iterator[tuple[np.ndarray | None, int, int, int, int]]:
        """``(segment (rows, cols, samples) or None when empty, y, x, rows, cols)`` of each index."""
        page = self._page
        fh = self._tif.filehandle
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        try:
            # Neighbouring segments are read together up to _READ_AHEAD bytes (fewer requests to
            # object storage), one decoded at a time.
            for data, index in fh.read_segments(offsets, counts, indices=indices, sort=True, buffersize=_READ_AHEAD):
                seg, pos, shape = page.decode(data, index, jpegtables=page.jpegtables)
                yield (None if seg is None else seg[0]), int(pos[2]), int(pos[3]), int(shape[1]), int(shape[2])
        except ImageError:
            raise
        except Exception as err:  # codec errors come in many types
            raise ImageError("decode", f"corrupt or truncated TIFF segment: {type(err).__name__}: {err}") from None

    def _read_raw(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The region's samples ``(h, w, spp)`` in the file's dtype."""
        page = self._page
        out = np.zeros((h, w, int(page.samplesperpixel)), dtype=page.dtype)  # empty segments read as 0, as tifffile
        for seg, sy, sx, rows, cols in self._decoded(self._segments(y0, x0, h, w)):
            # Segments at the right and bottom edges extend past the image: clip to the region.
            ya, yb = max(y0, sy), min(y0 + h, sy + rows)
            xa, xb = max(x0, sx), min(x0 + w, sx + cols)
            if seg is not None and ya < yb and xa < xb:
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = seg[ya - sy : yb - sy, xa - sx : xb - sx]
        return out

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        if self._kind == "rgb":
            rgb = raw[..., :3]
            return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else np.ascontiguousarray(rgb)
        gray = raw[..., 0]
        if gray.dtype == np.uint16:
            gray = self._gray16(gray)
        return np.repeat(gray[..., None], 3, axis=2)

    def _gray16(self, gray: np.ndarray) -> np.ndarray:
        """16-bit → 8-bit as ``segbatch.io.images._to_8bit`` does, with the whole image's levels."""
        arr = gray.astype(np.int64)
        if self.high_bit_depth == "full":
            return ((arr * 255 + 32767) // 65535).astype(np.uint8)
        if self._levels is None:
            self._levels = self._whole_levels()
        lo, hi = self._levels
        if hi <= lo:
            return np.zeros(arr.shape, np.uint8)
        return (((np.clip(arr, lo, hi) - lo) * 255 * 2 + (hi - lo)) // (2 * (hi - lo))).astype(np.uint8)

    def _whole_levels(self) -> tuple[int, int]:
        """``(lo, hi)`` of the whole image for ``range`` (min, max) or ``percentile``, one pass over its segments."""
        hist = np.zeros(65536, dtype=np.int64)
        for seg, sy, sx, rows, cols in self._decoded(list(range(len(self._page.dataoffsets)))):
            valid_rows, valid_cols = min(rows, self.height - sy), min(cols, self.width - sx)
            if seg is None:
                hist[0] += valid_rows * valid_cols
            else:
                hist += np.bincount(seg[:valid_rows, :valid_cols, 0].ravel(), minlength=65536)
        values = np.flatnonzero(hist)
        if self.high_bit_depth == "range":
            return int(values[0]), int(values[-1])
        q = np.array([SATURATED / 2, 100 - SATURATED / 2]) / 100
        lo, hi = (round(float(v)) for v in _percentiles_from_histogram(hist, q))
        return lo, hi


def _percentiles_from_histogram(hist: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.percentile(values, 100 q)`` (method ``linear``) of the values counted in ``hist``, with
    numpy's own float operations: virtual index ``(n-1) q``, ``lerp`` of the two order statistics."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    nxt = prev + 1
    prev[virtual >= n - 1] = nxt[virtual >= n - 1] = n - 1
    gamma = virtual - prev
    a = np.searchsorted(cum, prev.astype(np.int64), side="right").astype(np.int64)  # value of order statistic
    b = np.searchsorted(cum, nxt.astype(np.int64), side="right").astype(np.int64)
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


def read_region(
    source: Source,
    y0: int,
    x0: int,
    h: int,
    w: int,
    max_image_pixels: int | None = PILLOW_MAX_IMAGE_PIXELS,
    high_bit_depth: HighBitDepth = "range",
) -> np.ndarray:
    """One region ``(h, w, 3) uint8`` of an image (opens, reads, closes: use :class:`RegionReader` for many)."""
    with RegionReader(source, max_image_pixels, high_bit_depth) as reader:
        return reader.read(y0, x0, h, w)
