"""Finalize: committed parts → images.parquet, masks.parquet, COCO exports, metrics.json.

Runs on the driver and streams: part files are first compacted (:mod:`segbatch.outputs.parts`),
then merged by ``image_id`` (each part is sorted) with duplicates from retried tasks
dropped, and every output is written incrementally, so memory does not grow with the
number of annotations. Outputs are sorted by ``image_id``, so the same job gives the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.outputs.coco import ExportOptions, write_coco_exports
from segbatch.outputs.folder import IMAGES, MASKS, METRICS, OutDir
from segbatch.outputs.label_quality import LabelQuality
from segbatch.outputs.parts import compact_parts, merge_parts
from segbatch.outputs.run_metrics import RunMetrics, coco_mask_ap
from segbatch.outputs.schema import IMAGES_SCHEMA, MASKS_SCHEMA

log = logging.getLogger(__name__)

_CHUNK = 1024


@dataclass(frozen=True)
class FinalizeSpec:
    task: str
    categories: tuple[str, ...]  # model categories by id
    background: int | None  # model id of background
    eval_classes: Mapping[str, Any]  # EvalSpace.to_dict(), as in job.json
    coco_info: Mapping[str, Any]
    export: ExportOptions = field(default_factory=ExportOptions)
    coco_labels: str | None = None  # COCO label URL, for COCOeval with instance models


def finalize(out: OutDir, manifest_ids: set[int], spec: FinalizeSpec) -> dict[str, Any]:
    """Write the final tables, the COCO exports and metrics.json; returns the metrics."""
    # Few, large parts: the merge below then opens a bounded number of files.
    compact_parts(out)
    quality = LabelQuality.reduce(out, manifest_ids, spec.eval_classes)
    acc = RunMetrics(spec.eval_classes)
    seen: set[int] = set()
    next_ann = 1
    img_rows: list[dict[str, Any]] = []
    mask_rows: list[dict[str, Any]] = []
    with fsio.atomic_open(out.fs, out.path(IMAGES)) as f_img, fsio.atomic_open(out.fs, out.path(MASKS)) as f_mask:
        w_img = pq.ParquetWriter(f_img, IMAGES_SCHEMA, compression="zstd")
        w_mask = pq.ParquetWriter(f_mask, MASKS_SCHEMA, compression="zstd")
        for row in merge_parts(out, out.part_files()):
            if row["image_id"] not in manifest_ids:
                continue
            seen.add(row["image_id"])
            masks = row.pop("masks") or []
            evidence = row.pop("quality_evidence", None)
            if quality is not None and evidence is not None:
                quality.flag(row, evidence)
            acc.add(row)
            for m in masks:
                mask_rows.append({"id": next_ann, "image_id": row["image_id"], **m})
                next_ann += 1
            img_rows.append(row)
            if len(img_rows) >= _CHUNK:
                w_img.write_table(pa.Table.from_pylist(img_rows, schema=IMAGES_SCHEMA))
                img_rows.clear()
            if len(mask_rows) >= _CHUNK:
                w_mask.write_table(pa.Table.from_pylist(mask_rows, schema=MASKS_SCHEMA))
                mask_rows.clear()
        if img_rows:
            w_img.write_table(pa.Table.from_pylist(img_rows, schema=IMAGES_SCHEMA))
        if mask_rows:
            w_mask.write_table(pa.Table.from_pylist(mask_rows, schema=MASKS_SCHEMA))
        w_img.close()
        w_mask.close()
        missing = manifest_ids - seen
        if missing:
            raise JobError(
                f"{len(missing)} images have no committed result (e.g. image_id {min(missing)}); "
                "rerun the same command to resume"
            )
    write_coco_exports(
        out,
        task=spec.task,
        model_categories=spec.categories,
        background=spec.background,
        info=spec.coco_info,
        options=spec.export,
    )
    metrics = acc.result()
    if quality is not None:
        metrics["label_quality"] = quality.metrics()
    if spec.task == "instance" and spec.coco_labels is not None:
        metrics["coco_segm"] = coco_mask_ap(out, spec.eval_classes["matched"], spec.coco_labels, sorted(seen))
    out.write_json(METRICS, metrics)
    return metrics
