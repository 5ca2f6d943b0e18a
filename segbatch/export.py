"""Output formats: the Parquet schemas (defined once, here), part files, the COCO writer.

Part files (``parts/*.parquet``) hold one row per image in :data:`PART_SCHEMA`: the
``images.parquet`` columns plus the image's masks nested. Finalize splits them into
``images.parquet`` (:data:`IMAGES_SCHEMA`) and ``masks.parquet`` (:data:`MASKS_SCHEMA`).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from segbatch.io import fs as fsio

SEGMENTATION_TYPE = pa.struct([
    pa.field("size", pa.list_(pa.int32())),  # [height, width]
    pa.field("counts", pa.string()),  # COCO compressed RLE
])

MASK_FIELDS = [
    pa.field("category_id", pa.int32()),
    pa.field("category", pa.string()),
    pa.field("score", pa.float32()),  # null for semantic models
    pa.field("area", pa.int64()),
    pa.field("bbox", pa.list_(pa.float64(), 4)),  # [x, y, w, h]
    pa.field("segmentation", SEGMENTATION_TYPE),
]

CLASS_STATS_TYPE = pa.struct([
    pa.field("category", pa.string()),  # evaluation class name (metrics.json "classes" key)
    pa.field("intersection", pa.int64()),  # null when the image has no label
    pa.field("pred_pixels", pa.int64()),
    pa.field("gt_pixels", pa.int64()),  # null when the image has no label
])

CONFUSION_TYPE = pa.struct([
    pa.field("gt", pa.int32()),  # evaluation class ids (job.json "eval_classes")
    pa.field("pred", pa.int32()),
    pa.field("pixels", pa.int64()),
])

IMAGE_FIELDS = [
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("width", pa.int32()),  # after EXIF orientation; null if undecodable
    pa.field("height", pa.int32()),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
    pa.field("error", pa.string()),  # "<stage>: <message>", null when ok
    pa.field("labeled", pa.bool_(), nullable=False),
    pa.field("dice", pa.float64()),  # per-image Dice; null without label or foreground
    pa.field("num_masks", pa.int32(), nullable=False),
    pa.field("class_stats", pa.list_(CLASS_STATS_TYPE)),
    pa.field("confusion", pa.list_(CONFUSION_TYPE)),
    pa.field("t_read", pa.float64()),  # seconds: fetch + decode + resize
    pa.field("t_predict", pa.float64()),  # seconds: this image's share of its model batch
    pa.field("t_encode", pa.float64()),  # seconds: RLE + label + scoring
    pa.field("worker", pa.string()),  # where the model ran: "node=… pid=… device=cpu|cuda gpus=0"
]

IMAGES_SCHEMA = pa.schema(IMAGE_FIELDS)
PART_SCHEMA = pa.schema([*IMAGE_FIELDS, pa.field("masks", pa.list_(pa.struct(MASK_FIELDS)))])
MASKS_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),  # COCO annotation id
    pa.field("image_id", pa.int64(), nullable=False),
    *MASK_FIELDS,
])


def write_part(table: pa.Table, parts_url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Commit one part file atomically under ``parts_url``; rows sorted by image_id. Returns its name."""
    table = table.cast(PART_SCHEMA).sort_by("image_id")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    fs, root = fsio.resolve(parts_url, storage_options)
    name = f"part-{uuid.uuid4().hex}.parquet"
    fsio.write_bytes_atomic(fs, fsio.join(root, name), buf.getvalue())
    return name


class CocoWriter:
    """Streams a COCO dataset JSON: images first, then annotations, then categories.

    Memory stays flat in the number of images and annotations: each entry is written as
    it comes. Call :meth:`image` for every image, then :meth:`annotation` for every
    annotation, then :meth:`close`.
    """

    def __init__(self, f: IO[bytes], info: Mapping[str, Any]) -> None:
        self._f = f
        self._section = "images"
        self._first = True
        self._write('{"info":' + dumps(info) + ',"licenses":[],"images":[')

    def _write(self, text: str) -> None:
        self._f.write(text.encode("utf-8"))

    def _item(self, obj: Mapping[str, Any]) -> None:
        self._write(("" if self._first else ",") + "\n" + dumps(obj))
        self._first = False

    def image(self, entry: Mapping[str, Any]) -> None:
        assert self._section == "images", "images must come before annotations"
        self._item(entry)

    def annotation(self, entry: Mapping[str, Any]) -> None:
        if self._section == "images":
            self._write('],"annotations":[')
            self._section, self._first = "annotations", True
        self._item(entry)

    def close(self, categories: Iterable[Mapping[str, Any]]) -> None:
        if self._section == "images":
            self._write('],"annotations":[')
        self._write('],"categories":' + dumps(list(categories)) + "}\n")


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces), UTF-8 kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
