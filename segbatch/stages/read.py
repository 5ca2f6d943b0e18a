"""The read stage: fetch bytes, decode to RGB (EXIF applied), resize for the model.

Runs in CPU tasks ahead of the predict stage, so decoding overlaps with inference and the
actors receive uint8 images (4× smaller than float). A failure becomes an error row.

With ``decode="device"`` a JPEG that the model actor decodes exactly as the host would
(:func:`~segbatch.io.images.jpeg_header`: checked from its header, no pixel decoded) travels
as its encoded bytes (``encoded``, ~10× smaller than its pixels), with its EXIF
``orientation``; the actor decodes and resizes it (:mod:`segbatch.stages.device_decode`).
Every other file is decoded here, per image, as with ``decode="host"``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from segbatch.errors import ImageError
from segbatch.io import fs as fsio
from segbatch.io.images import HighBitDepth, decode, jpeg_header
from segbatch.models.registry import Preprocess
from segbatch.stages.cpu_clock import stage_clock

# The resize filters the model actor runs on decoded JPEGs (the float path of torchvision's
# resize: the same on any device); models with other filters get their images from the host.
DEVICE_FILTERS = ("torch-antialias",)

_EMPTY = np.zeros((3, 0, 0), dtype=np.uint8)


def read_batch(
    batch: Mapping[str, np.ndarray],
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None = None,
    high_bit_depth: HighBitDepth = "range",
    decode_mode: str = "host",
) -> dict[str, np.ndarray]:
    """Manifest rows → rows with ``image`` ``(3, h, w) uint8``, original ``height``/``width``,
    ``status``, ``error``, ``conversion`` (str or None: how the file became 8-bit RGB) and
    ``t_read``; the manifest columns pass through. ``decode_mode`` ``"device"`` (resolved, not
    ``auto``) adds ``encoded`` (the file's bytes as ``(B,) uint8``, None where ``image`` holds the
    pixels; ``image`` is then ``(3, 0, 0)``) and ``orientation`` (int8, EXIF 1..8)."""
    if decode_mode not in ("host", "device"):
        raise ValueError(f"decode_mode must be 'host' or 'device' here, got {decode_mode!r}")
    with stage_clock("read", len(batch["uri"])):
        return _read_batch(batch, preprocess, storage_options, high_bit_depth, decode_mode)


def _read_batch(
    batch: Mapping[str, np.ndarray],
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None,
    high_bit_depth: HighBitDepth,
    decode_mode: str,
) -> dict[str, np.ndarray]:
    n = len(batch["uri"])
    device = decode_mode == "device" and preprocess.resample in DEVICE_FILTERS
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
            try:
                data = fsio.read_bytes(uri, storage_options)
            except Exception as err:  # fsspec backends raise their own types
                raise ImageError("read", f"cannot read {uri}: {type(err).__name__}: {err}") from None
            header = jpeg_header(data) if device else None
            if header is not None:
                images[i], encoded[i], orientation[i] = _EMPTY, np.frombuffer(data, np.uint8), header.orientation
                heights[i], widths[i], conversion[i] = header.height, header.width, header.note
            else:
                decoded = decode(data, high_bit_depth)
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
