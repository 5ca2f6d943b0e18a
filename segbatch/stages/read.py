"""The read stage: fetch bytes, decode to RGB (EXIF applied), resize for the model.

Runs in CPU tasks ahead of the predict stage, so decoding overlaps with inference and the
actors receive uint8 images (4× smaller than float). A failure becomes an error row.

With ``decode="device"`` a JPEG that the model actor decodes exactly as the host would
(:func:`~segbatch.io.images.jpeg_header`: checked from its header, no pixel decoded) travels
as its encoded bytes (``encoded``, ~10× smaller than its pixels), with its EXIF
``orientation``; the actor decodes and resizes it (:mod:`segbatch.stages.device_decode`).
Every other file is decoded here, per image, as with ``decode="host"``.

Tiled runs (``tiled=True``, large images) only read each image's size from its header here and
check it against ``max_image_pixels``: the model actor reads the image region by region
(:mod:`segbatch.stages.tiled`), so a whole large image never travels between processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from segbatch.errors import ImageError
from segbatch.io import fs as fsio
from segbatch.io.images import HighBitDepth, decode, jpeg_header
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS, image_size, pillow_pixel_limit
from segbatch.models.preprocess import TORCH_FILTERS, Preprocess
from segbatch.stages.cpu_clock import stage_clock

# The resize filters a model actor runs on decoded JPEGs: on a GPU the float path of torchvision's
# resize (the same on any device); on a CPU actor every torch filter, the very kernels a read task
# would run. Models with other filters (Pillow's) get their images from the read tasks.
DEVICE_FILTERS = ("torch-antialias",)
CPU_DEVICE_FILTERS = TORCH_FILTERS

_EMPTY = np.zeros((3, 0, 0), dtype=np.uint8)


def read_batch(
    batch: Mapping[str, np.ndarray],
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None = None,
    high_bit_depth: HighBitDepth = "range",
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS,
    tiled: bool = False,
    decode_mode: str = "host",
    device_filters: tuple[str, ...] = DEVICE_FILTERS,
) -> dict[str, np.ndarray]:
    """Manifest rows → rows with ``image`` ``(3, h, w) uint8``, original ``height``/``width``,
    ``status``, ``error``, ``conversion`` (str or None: how the file became 8-bit RGB) and
    ``t_read``; the manifest columns pass through.

    ``max_image_pixels``: an image with more pixels is an error row (0: no limit). ``tiled``:
    ``image`` is ``(3, 0, 0)`` and only the size is read (see the module docstring).
    ``decode_mode`` ``"device"`` (resolved, not ``auto``) adds ``encoded`` (the file's bytes as
    ``(B,) uint8``, None where ``image`` holds the pixels; ``image`` is then ``(3, 0, 0)``) and
    ``orientation`` (int8, EXIF 1..8), for models whose resize filter is in ``device_filters``
    (:data:`DEVICE_FILTERS` for GPU actors, :data:`CPU_DEVICE_FILTERS` for CPU actors)."""
    if decode_mode not in ("host", "device"):
        raise ValueError(f"decode_mode must be 'host' or 'device' here, got {decode_mode!r}")
    with stage_clock("read", len(batch["uri"])):
        return _read_batch(batch, preprocess, storage_options, high_bit_depth, max_image_pixels or None, tiled,
                           decode_mode, device_filters)  # fmt: skip


def _read_batch(
    batch: Mapping[str, np.ndarray],
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None,
    high_bit_depth: HighBitDepth,
    limit: int | None,
    tiled: bool,
    decode_mode: str,
    device_filters: tuple[str, ...],
) -> dict[str, np.ndarray]:
    n = len(batch["uri"])
    device = decode_mode == "device" and preprocess.resample in device_filters
    encoded = np.full(n, None, dtype=object)
    orientation = np.ones(n, dtype=np.int8)
    images = np.empty(n, dtype=object)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    status = np.full(n, "ok", dtype=object)
    error = np.full(n, None, dtype=object)
    conversion = np.full(n, None, dtype=object)
    t_read = np.zeros(n, dtype=np.float64)
    for i in range(n):
        t0 = time.perf_counter()
        uri = str(batch["uri"][i])
        try:
            if tiled:
                heights[i], widths[i] = header_size(uri, storage_options, limit)
                images[i] = _EMPTY
                t_read[i] = time.perf_counter() - t0
                continue
            try:
                data = fsio.read_bytes(uri, storage_options)
            except Exception as err:  # fsspec backends raise their own types
                raise ImageError("read", f"cannot read {uri}: {type(err).__name__}: {err}") from None
            with pillow_pixel_limit(limit):
                header = jpeg_header(data) if device else None
                if header is None:
                    decoded = decode(data, high_bit_depth)
            if header is not None:
                images[i], encoded[i], orientation[i] = _EMPTY, np.frombuffer(data, np.uint8), header.orientation
                heights[i], widths[i], conversion[i] = header.height, header.width, header.note
            else:
                rgb, conversion[i] = decoded.rgb, decoded.note
                heights[i], widths[i] = rgb.shape[:2]
                images[i] = preprocess.resize_chw(rgb)
        except ImageError as err:
            images[i], status[i], error[i] = _EMPTY, "error", str(err)
        except Exception as err:  # anything else in one image must not stop the batch
            images[i], status[i], error[i] = _EMPTY, "error", f"read: {type(err).__name__}: {err}"
        t_read[i] = time.perf_counter() - t0
    return {
        **batch,
        "image": images,
        "height": heights,
        "width": widths,
        "status": status,
        "error": error,
        "conversion": conversion,
        "t_read": t_read,
        **({"encoded": encoded, "orientation": orientation} if decode_mode == "device" else {}),
    }


def header_size(uri: str, storage_options: Mapping[str, Any] | None, max_image_pixels: int | None) -> tuple[int, int]:
    """``(height, width)`` of the image at ``uri`` after EXIF orientation, from its header alone;
    raises :class:`ImageError` when it cannot be read or has more than ``max_image_pixels`` pixels."""
    try:
        fs, path = fsio.resolve(uri, storage_options)
        f = fs.open(path, "rb")
    except Exception as err:  # fsspec backends raise their own types
        raise ImageError("read", f"cannot read {uri}: {type(err).__name__}: {err}") from None
    with f:
        try:
            height, width = image_size(f)
        except ImageError:
            raise
        except Exception as err:  # tifffile raises several types on broken headers
            raise ImageError("decode", f"cannot read the image size: {type(err).__name__}: {err}") from None
    if max_image_pixels is not None and height * width > max_image_pixels:
        raise ImageError(
            "decode",
            f"image too large to decode safely: {height}x{width} = {height * width} pixels "
            f"exceeds max_image_pixels {max_image_pixels} (raise --max-image-pixels to allow it)",
        )
    return height, width
