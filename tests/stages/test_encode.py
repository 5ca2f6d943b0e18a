"""The encode stage reads nullable text columns as Ray Data hands them over."""

from __future__ import annotations

import numpy as np
from ray.data.block import BlockAccessor

from segbatch.stages.encode import optional_text


def _through_ray_data(column: np.ndarray) -> np.ndarray:
    """A numpy batch column as the next stage receives it: numpy → Arrow block → numpy."""
    block = BlockAccessor.batch_to_block({"c": column, "n": np.arange(len(column))})
    return BlockAccessor.for_block(block).to_batch_format("numpy")["c"]


def test_a_text_column_of_only_nulls_in_one_batch_reads_as_missing_not_as_nan():
    # A batch of images the COCO file does not list: label_record all None → Arrow null type → float NaN.
    all_null = _through_ray_data(np.array([None, None], dtype=object))
    assert all_null.dtype.kind == "f"  # what Ray Data does today: the reason for optional_text
    assert [optional_text(v) for v in all_null] == [None, None]
    mixed = _through_ray_data(np.array(['{"id": 1}', None], dtype=object))
    assert [optional_text(v) for v in mixed] == ['{"id": 1}', None]
    assert [optional_text(v) for v in (None, "", np.float32("nan"), float("nan"), "x")] == [None, None, None, None, "x"]
