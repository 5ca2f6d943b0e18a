"""Finalize: committed parts → images.parquet, masks.parquet, predictions.coco.json, metrics.json.

Runs on the driver and streams: part files are merged by ``image_id`` (each part is
sorted), duplicates from retried tasks are dropped (first committed copy wins), and every
output is written incrementally, so memory does not grow with the number of images or
annotations. Outputs are sorted by ``image_id``, so the same job gives the same bytes.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from segbatch.categories import PLACEHOLDER, EvalSpace
from segbatch.errors import JobError
from segbatch.export import IMAGES_SCHEMA, MASKS_SCHEMA, CocoWriter
from segbatch.io import fs as fsio
from segbatch.metrics import DiceEvaluator
from segbatch.outdir import COCO, IMAGES, MASKS, METRICS, OutDir

log = logging.getLogger(__name__)

_CHUNK = 1024


@dataclass(frozen=True)
class FinalizeSpec:
    task: str
    categories: tuple[str, ...]  # model categories by id
    background: int | None  # model id of background
    eval_space: EvalSpace
    coco_info: Mapping[str, Any]
    coco_labels: str | None = None  # COCO label URL, for COCOeval with instance models


def _iter_part(out: OutDir, path: str) -> Iterator[dict[str, Any]]:
    with out.fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def merged_rows(out: OutDir) -> Iterator[dict[str, Any]]:
    """All committed rows, ascending ``image_id``, one per image."""
    streams = [_iter_part(out, p) for p in out.part_files()]
    last = None
    for row in heapq.merge(*streams, key=lambda r: r["image_id"]):
        if row["image_id"] == last:
            continue  # a retried task committed this image twice; both copies are equal
        last = row["image_id"]
        yield row


def coco_categories(spec: FinalizeSpec) -> list[dict[str, Any]]:
    return [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(spec.categories)
            if i != spec.background and n != PLACEHOLDER]


def finalize(out: OutDir, manifest_ids: set[int], spec: FinalizeSpec) -> dict[str, Any]:
    """Write the final tables, the COCO JSON and metrics.json; returns the metrics."""
    es = spec.eval_space
    name_to_eval = {n: i for i, n in enumerate(es.names)}
    evaluator = DiceEvaluator(es.num_classes)
    seen: set[int] = set()
    counts = {"num_images": 0, "num_errors": 0, "num_labeled": 0, "num_masks": 0}
    errors_by_stage: dict[str, int] = {}
    next_ann = 1
    img_rows: list[dict[str, Any]] = []
    mask_rows: list[dict[str, Any]] = []
    with fsio.atomic_open(out.fs, out.path(IMAGES)) as f_img, fsio.atomic_open(out.fs, out.path(MASKS)) as f_mask:
        w_img = pq.ParquetWriter(f_img, IMAGES_SCHEMA, compression="zstd")
        w_mask = pq.ParquetWriter(f_mask, MASKS_SCHEMA, compression="zstd")
        for row in merged_rows(out):
            if row["image_id"] not in manifest_ids:
                continue
            seen.add(row["image_id"])
            masks = row.pop("masks") or []
            counts["num_images"] += 1
            if row["status"] != "ok":
                counts["num_errors"] += 1
                stage = (row["error"] or "unknown").split(":", 1)[0]
                errors_by_stage[stage] = errors_by_stage.get(stage, 0) + 1
            else:
                _accumulate(evaluator, row, es, name_to_eval)
                counts["num_labeled"] += int(row["labeled"])
            for m in masks:
                mask_rows.append({"id": next_ann, "image_id": row["image_id"], **m})
                next_ann += 1
            counts["num_masks"] += len(masks)
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
            raise JobError(f"{len(missing)} images have no committed result (e.g. image_id {min(missing)}); "
                           "rerun the same command to resume")
    _write_coco(out, spec)
    metrics = {**counts, **evaluator.evaluate(list(es.names), es.background),
               "errors_by_stage": errors_by_stage,
               "unmatched": {"model_only": list(es.model_only), "label_only": list(es.label_only)}}
    if spec.task == "instance" and spec.coco_labels is not None:
        metrics["coco_segm"] = coco_mask_ap(out, spec, sorted(seen))
    out.write_json(METRICS, metrics)
    return metrics


def _accumulate(evaluator: DiceEvaluator, row: Mapping[str, Any], es: EvalSpace, name_to_eval: dict[str, int]) -> None:
    if row["labeled"]:
        conf = np.zeros((es.num_classes, es.num_classes), dtype=np.int64)
        for e in row["confusion"] or []:
            conf[e["gt"], e["pred"]] = e["pixels"]
        evaluator.process(conf)
    else:
        pred = np.zeros(es.num_classes, dtype=np.int64)
        for s in row["class_stats"] or []:
            pred[name_to_eval[s["category"]]] = s["pred_pixels"]
        evaluator.process_unlabeled(pred)


def _write_coco(out: OutDir, spec: FinalizeSpec) -> None:
    """Stream predictions.coco.json from images.parquet and masks.parquet (both sorted by image_id)."""
    instance = spec.task == "instance"
    with fsio.atomic_open(out.fs, out.path(COCO)) as f:
        writer = CocoWriter(f, spec.coco_info)
        with out.fs.open(out.path(IMAGES), "rb") as fi:
            columns = ["image_id", "file_name", "width", "height"]
            for batch in pq.ParquetFile(fi).iter_batches(batch_size=_CHUNK, columns=columns):
                for im in batch.to_pylist():
                    if im["width"] is not None:  # an undecodable image has no size to declare
                        writer.image({"id": im["image_id"], "file_name": im["file_name"],
                                      "width": im["width"], "height": im["height"]})
        with out.fs.open(out.path(MASKS), "rb") as fm:
            for batch in pq.ParquetFile(fm).iter_batches(batch_size=_CHUNK):
                for m in batch.to_pylist():
                    ann = {"id": m["id"], "image_id": m["image_id"], "category_id": m["category_id"],
                           "segmentation": m["segmentation"], "area": m["area"], "bbox": m["bbox"], "iscrowd": 0}
                    if instance:
                        ann["score"] = m["score"]
                    writer.annotation(ann)
        writer.close(coco_categories(spec))


def coco_mask_ap(out: OutDir, spec: FinalizeSpec, image_ids: list[int]) -> dict[str, Any]:
    """COCO mask AP/AR (pycocotools COCOeval, iouType "segm") of the predictions against the COCO labels."""
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    es = spec.eval_space
    gt_doc = json.loads(fsio.read_bytes(spec.coco_labels or "", out.storage_options))
    label_id_by_name = {c["name"]: int(c["id"]) for c in gt_doc["categories"]}
    model_to_label = {m: label_id_by_name[lab] for m, lab in es.pairs if lab in label_id_by_name}
    dets = []
    with out.fs.open(out.path(MASKS), "rb") as fm:
        for m in pq.read_table(fm).to_pylist():
            if m["category"] in model_to_label:
                dets.append({"image_id": m["image_id"], "category_id": model_to_label[m["category"]],
                             "segmentation": m["segmentation"], "score": m["score"]})
    if not dets:
        return {"AP": None, "note": "no predictions of a category the labels know"}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        gt = CocoApi()
        gt.dataset = gt_doc
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
             "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
    return {n: (None if v < 0 else float(v)) for n, v in zip(names, ev.stats, strict=True)}
