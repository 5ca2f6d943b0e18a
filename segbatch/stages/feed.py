"""The feed: the images to label, one manifest slice per model batch, cut in the read tasks.

Ray Data gets the batch indices (``from_items``, at most ``FEED_BLOCKS`` blocks of them)
instead of one Arrow block per batch made on the driver: ``from_arrow`` of 12 500 blocks
(100 000 images) spent 30 s putting them and computing their metadata in remote tasks
before any image was read. The images to label travel once, as one object; each read task
slices its rows out of it (zero-copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from segbatch.io.images import HighBitDepth
from segbatch.models.registry import Preprocess
from segbatch.stages.read import read_batch


def read_slices(
    batch: Mapping[str, np.ndarray],
    todo_holder: list[Any],
    batch_size: int,
    preprocess: Preprocess,
    storage_options: Mapping[str, Any] | None = None,
    high_bit_depth: HighBitDepth = "range",
) -> dict[str, np.ndarray]:
    """Batch indices (``id``) → their manifest rows, read (see :func:`read_batch`).

    ``todo_holder`` is ``[ObjectRef]`` of the manifest table of the images to label; the
    list keeps Ray from resolving it when the task is built.
    """
    rows = manifest_slices(batch, todo_holder, batch_size)
    return read_batch(rows, preprocess, storage_options, high_bit_depth)


def manifest_slices(batch: Mapping[str, np.ndarray], todo_holder: list[Any], batch_size: int) -> dict[str, np.ndarray]:
    """Batch indices (``id``) → the manifest rows of those model batches, as numpy columns."""
    todo: pa.Table = ray.get(todo_holder[0])
    rows = pa.concat_tables([todo.slice(int(i) * batch_size, batch_size) for i in batch["id"]])
    return {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
