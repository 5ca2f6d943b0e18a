"""Which images an export covers, and in what order: one choice shared by every export form.

Read from ``images.parquet`` alone, streaming; memory holds ``(image_id, key)`` of every
image with a size (two numbers each), never a row.

Orders (``--order``):
    ``image-id``         ascending image_id (sorted path, or the COCO id; default).
    ``least-confident``  ascending ``confidence`` (needs the column; images without one last).
    ``most-confident``   descending ``confidence``.
    ``label-quality``    ascending ``label_quality``, the most likely wrong labels first
                         (runs with labels; images without a score last).
Ties go by image_id. Subsets (``--only``):
    ``label-issues``     images whose ``label_issue_share`` is > 0 (a label-quality run
                         flagged pixels of their label); ordered by ``label-quality`` unless
                         an order is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segbatch.errors import JobError
from segbatch.outputs.folder import IMAGES, OutDir

ORDERS = ("image-id", "least-confident", "most-confident", "label-quality")
ONLY = ("label-issues",)
# The images.parquet column each order sorts by, and the sign that puts the first image first.
_ORDER_KEYS = {"least-confident": ("confidence", 1.0), "most-confident": ("confidence", -1.0),
               "label-quality": ("label_quality", 1.0)}  # fmt: skip
_BATCH = 65536


def check_order(order: str | None) -> None:
    if order is not None and order not in ORDERS:
        raise JobError(f"order {order!r} is not one of {list(ORDERS)}")


def check_only(only: str | None) -> None:
    if only is not None and only not in ONLY:
        raise JobError(f"only {only!r} is not one of {list(ONLY)}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise JobError(f"limit {limit!r} must be an integer >= 1 (or none for all)")


def resolved_order(order: str | None, only: str | None) -> str:
    """The order that applies: the one given, else ``label-quality`` for label issues, else ``image-id``."""
    if order is not None:
        return order
    return "label-quality" if only == "label-issues" else "image-id"


def _filled(out: OutDir, columns: Sequence[str]) -> dict[str, bool]:
    """Which of ``columns`` images.parquet has with at least one non-null value."""
    with out.fs.open(out.path(IMAGES), "rb") as f:
        names = set(pq.ParquetFile(f).schema_arrow.names)
    present = [c for c in columns if c in names]
    result = dict.fromkeys(columns, False)
    if present:
        with out.fs.open(out.path(IMAGES), "rb") as f:
            table = pq.read_table(f, columns=present)
        for c in present:
            result[c] = table.column(c).null_count < table.num_rows
    return result


def select_images(
    out: OutDir, order: str | None = None, limit: int | None = None, only: str | None = None
) -> np.ndarray:
    """``(N,) int64`` image_ids of the images that have a size, restricted to ``only``, in
    ``order`` (module docstring), cut to the first ``limit``.

    Raises :class:`JobError` naming the orders the run supports when the column an order
    or subset needs is missing or empty.
    """
    check_order(order)
    check_only(only)
    check_limit(limit)
    order = resolved_order(order, only)
    filled = _filled(out, ["confidence", "label_quality", "label_issue_share"])
    if only == "label-issues" and not filled["label_issue_share"]:
        raise JobError(
            f"only 'label-issues' needs the label_issue_share column of {IMAGES}, which this run has no values "
            "in: label quality is computed by runs of a semantic model with labels (--labels) and "
            "--quality-stride >= 1"
        )
    key_column = _ORDER_KEYS[order][0] if order in _ORDER_KEYS else None
    if key_column is not None and not filled[key_column]:
        valid = [o for o in ORDERS if o not in _ORDER_KEYS or filled[_ORDER_KEYS[o][0]]]
        raise JobError(
            f"order {order!r} needs the {key_column} column of {IMAGES}, which this run has no values in "
            f"(a run without labels, or written by an older segbatch); valid orders for it: {valid}"
        )
    columns = ["image_id", "width"]
    if key_column is not None:
        columns.append(key_column)
    if only == "label-issues" and "label_issue_share" not in columns:
        columns.append("label_issue_share")
    ids, keys = [], []
    with out.fs.open(out.path(IMAGES), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_BATCH, columns=columns):
            keep = pc.is_valid(batch.column("width"))
            if only == "label-issues":
                keep = pc.and_(keep, pc.fill_null(pc.greater(batch.column("label_issue_share"), 0.0), False))
            chosen = batch.filter(keep)
            ids.append(chosen.column("image_id").to_numpy(zero_copy_only=False).astype(np.int64))
            if key_column is not None:
                key = chosen.column(key_column).cast(pa.float64()).fill_null(np.nan)
                keys.append(key.to_numpy(zero_copy_only=False))
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if key_column is None:
        result = np.sort(all_ids)
    else:
        values = np.concatenate(keys) if keys else np.zeros(0)
        missing = np.isnan(values)
        key = np.where(missing, 0.0, values * _ORDER_KEYS[order][1])
        result = all_ids[np.lexsort((all_ids, key, missing))]  # last key sorts first: images without a value last
    return result if limit is None else result[:limit]
