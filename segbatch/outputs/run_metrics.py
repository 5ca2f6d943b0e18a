"""metrics.json of a run, from its per-image rows: during finalize and again from Parquet.

:class:`RunMetrics` folds ``images.parquet`` rows (:data:`segbatch.outputs.schema.IMAGES_SCHEMA`)
into counts and the summed confusion matrix; :func:`recompute_metrics` reads a finished
run's ``images.parquet`` and ``job.json`` and gives what finalize wrote to metrics.json,
with no model run (``segbatch metrics RUN_DIR``).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from segbatch.categories import EvalSpace
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.metrics import DiceEvaluator
from segbatch.outputs.folder import IMAGES, JOB, MASKS, OutDir
from segbatch.outputs.label_quality import recompute_label_quality

_ROW_COLUMNS = ["image_id", "status", "error", "labeled", "num_masks", "class_stats", "confusion"]


class RunMetrics:
    """Accumulates image rows; :meth:`result` is the metrics.json document (without COCO AP)."""

    def __init__(self, eval_classes: Mapping[str, Any]) -> None:
        self.names: list[str] = list(eval_classes["names"])
        self.background: int | None = eval_classes["background"]
        self.model_only = list(eval_classes["model_only"])
        self.label_only = list(eval_classes["label_only"])
        self.counted = EvalSpace.from_dict(eval_classes).counted_mask()
        self._index = {n: i for i, n in enumerate(self.names)}
        self.evaluator = DiceEvaluator(len(self.names))
        self.counts = {"num_images": 0, "num_errors": 0, "num_labeled": 0, "num_masks": 0}
        self.errors_by_stage: dict[str, int] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        """One image row (dict with the :data:`_ROW_COLUMNS`)."""
        self.counts["num_images"] += 1
        self.counts["num_masks"] += int(row["num_masks"])
        if row["status"] != "ok":
            self.counts["num_errors"] += 1
            stage = (row["error"] or "unknown").split(":", 1)[0]
            self.errors_by_stage[stage] = self.errors_by_stage.get(stage, 0) + 1
            return
        k = len(self.names)
        if row["labeled"]:
            self.counts["num_labeled"] += 1
            self.evaluator.process(confusion_matrix(row["confusion"], k))
        else:
            pred = np.zeros(k, dtype=np.int64)
            for s in row["class_stats"] or []:
                pred[self._index[s["category"]]] = s["pred_pixels"]
            self.evaluator.process_unlabeled(pred)

    def result(self) -> dict[str, Any]:
        ev = self.evaluator
        doc: dict[str, Any] = {
            **self.counts,
            **ev.evaluate(self.names, self.background, self.counted),
            "errors_by_stage": self.errors_by_stage,
            "unmatched": self._unmatched(),
        }
        if ev.num_labeled:
            # Pixels; rows: label class, columns: predicted class, over the classes present in
            # either (a PNG label space has 255 ids, most of them unused).
            present = np.flatnonzero(ev.conf.sum(axis=0) + ev.conf.sum(axis=1))
            doc["confusion"] = {
                "classes": [self.names[c] for c in present],
                "matrix": ev.conf[np.ix_(present, present)].tolist(),
            }
        return doc

    def _unmatched(self) -> dict[str, Any]:
        """Categories one side alone knows, and the pixels of every such class that occurred (a
        label id the model has no class for, e.g. ``label_7``, counts here, not in the means)."""
        ev = self.evaluator
        gt, pred = ev.conf.sum(axis=1), ev.conf.sum(axis=0) + ev.pred_unlabeled
        label_only = list(self.label_only)
        pixels: dict[str, dict[str, int]] = {}
        for c in np.flatnonzero(~self.counted & (gt + pred > 0)):
            name = self.names[c]
            if c == self.background:
                continue
            if gt[c] and name not in label_only and name not in self.model_only:
                label_only.append(name)
            pixels[name] = {"label_pixels": int(gt[c]), "predicted_pixels": int(pred[c])}
        return {"model_only": self.model_only, "label_only": label_only, "pixels": pixels}


def confusion_matrix(entries: Sequence[Mapping[str, int]] | None, num_classes: int) -> np.ndarray:
    """A row's sparse ``confusion`` column → ``(K, K) int64`` (rows label, columns prediction)."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for e in entries or []:
        conf[e["gt"], e["pred"]] = e["pixels"]
    return conf


def iter_image_rows(out: OutDir, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a finished run's ``images.parquet``, streamed in batches."""
    if not out.exists(IMAGES):
        raise JobError(f"{out.url!r} holds no finished segbatch run ({IMAGES} is missing)")
    with out.fs.open(out.path(IMAGES), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=list(columns) if columns else None):
            yield from batch.to_pylist()


def recompute_metrics(out: OutDir) -> dict[str, Any]:
    """metrics.json recomputed from ``images.parquet`` (and ``masks.parquet`` for COCO AP)."""
    job = out.read_json(JOB)
    acc = RunMetrics(job["eval_classes"])
    image_ids = []
    for row in iter_image_rows(out, _ROW_COLUMNS):
        acc.add(row)
        image_ids.append(row["image_id"])
    doc = acc.result()
    quality = recompute_label_quality(out, set(image_ids), job["eval_classes"])
    if quality is not None:
        doc["label_quality"] = quality
    labels = job["config"].get("labels")
    if job["model"]["task"] == "instance" and job["labels"]["kind"] == "coco" and labels:
        doc["coco_segm"] = coco_mask_ap(out, job["eval_classes"]["matched"], labels, image_ids)
    return doc


def coco_mask_ap(
    out: OutDir, matched: Sequence[Sequence[str]], coco_labels: str, image_ids: list[int]
) -> dict[str, Any]:
    """COCO mask AP/AR (pycocotools COCOeval, iouType "segm") of ``masks.parquet`` against COCO labels.

    ``matched`` holds ``(model category, label category)`` name pairs (job.json
    ``eval_classes.matched``); predictions of other categories are not scored.
    """
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    gt_doc = json.loads(fsio.read_bytes(coco_labels, out.storage_options))
    label_id_by_name = {c["name"]: int(c["id"]) for c in gt_doc["categories"]}
    model_to_label = {m: label_id_by_name[lab] for m, lab in matched if lab in label_id_by_name}
    dets: list[dict[str, Any]] = []
    with out.fs.open(out.path(MASKS), "rb") as fm:
        columns = ["image_id", "category", "segmentation", "score"]
        for batch in pq.ParquetFile(fm).iter_batches(batch_size=4096, columns=columns):
            dets.extend(
                {
                    "image_id": m["image_id"],
                    "category_id": model_to_label[m["category"]],
                    "segmentation": m["segmentation"],
                    "score": m["score"],
                }
                for m in batch.to_pylist()
                if m["category"] in model_to_label
            )
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
    names = [
        "AP",
        "AP50",
        "AP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR1",
        "AR10",
        "AR100",
        "AR_small",
        "AR_medium",
        "AR_large",
    ]
    return {n: (None if v < 0 else float(v)) for n, v in zip(names, ev.stats, strict=True)}
