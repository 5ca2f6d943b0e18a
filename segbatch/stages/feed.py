"""The feed: the rows of one model batch, cut from the images to label inside the read task.

The table of images to label travels once, as one object in Ray's object store; each read
task gets its reference and the row range of its batch and slices them out (zero-copy), so a
million images start in seconds: nothing is cut or shipped per batch on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from segbatch.io.images import HighBitDepth
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS
from segbatch.models.preprocess import Preprocess
from segbatch.stages.read import DEVICE_FILTERS, read_batch


def read_rows(
    todo_holder: list[Any],
    start: int,
    stop: int,
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None = None,
    high_bit_depth: HighBitDepth = "range",
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS,
    tiled: bool = False,
    decode_mode: str = "host",
    device_filters: tuple[str, ...] = DEVICE_FILTERS,
) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of the images to label, read (see :func:`read_batch`).

    ``todo_holder`` is ``[ObjectRef]`` of the manifest table of the images to label; the list
    keeps Ray from resolving (and copying) it when the task is built.
    """
    rows = manifest_rows(todo_holder, start, stop)
    return read_batch(rows, preprocess, storage_options, high_bit_depth, max_image_pixels, tiled, decode_mode,
                      device_filters)  # fmt: skip


def manifest_rows(todo_holder: list[Any], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of the manifest table in ``todo_holder``, as numpy columns."""
    todo: pa.Table = ray.get(todo_holder[0])
    rows = todo.slice(start, stop - start)
    return {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
