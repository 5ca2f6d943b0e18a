"""The read stage: fetch bytes, decode to RGB (EXIF applied), resize for the model.

Runs in CPU tasks ahead of the predict stage, so decoding overlaps with inference and the
actors receive uint8 images (4× smaller than float). A failure becomes an error row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from segbatch.errors import ImageError
from segbatch.io import fs as fsio
from segbatch.io.images import HighBitDepth, decode
from segbatch.models.registry import Preprocess

_EMPTY = np.zeros((3, 0, 0), dtype=np.uint8)


def read_batch(
    batch: Mapping[str, np.ndarray],
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None = None,
    high_bit_depth: HighBitDepth = "range",
) -> dict[str, np.ndarray]:
    """Manifest rows → rows with ``image`` ``(3, h, w) uint8``, original ``height``/``width``,
    ``status``, ``error``, ``conversion`` (str or None: how the file became 8-bit RGB) and
    ``t_read``; the manifest columns pass through."""
    n = len(batch["uri"])
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
    }
