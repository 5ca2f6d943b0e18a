"""The encode + score stage: predictions → RLE masks, labels → pixel sums, one part row per image.

Runs in CPU tasks after the predict stage. For each image: encode the prediction's masks
at the original size (COCO RLE, area, bbox); where a label exists, read it, map both
sides into the evaluation class space and sum the confusion matrix; a label problem
becomes the row's error while its prediction is kept.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from segbatch.categories import PLACEHOLDER, EvalSpace, QualitySpace
from segbatch.errors import ImageError
from segbatch.io import fs as fsio
from segbatch.io.labels import check_size, coco_label_map, read_mask_png
from segbatch.masks import (
    EncodedMask,
    class_counts,
    crops_to_label_map,
    crops_to_masks,
    instances_to_label_map,
    instances_to_masks,
    label_map_to_masks,
)
from segbatch.metrics import confusion_mapped, image_dice, mapped_counts
from segbatch.outputs.schema import PART_SCHEMA
from segbatch.quality import ImageEvidence, image_evidence_from_maps

NEAR_THRESHOLD = 0.1  # instance scores this far above the detection threshold count as near it


@dataclass(frozen=True)
class EncodeSpec:
    """What the encode stage needs to know about the run (explicit, picklable)."""

    task: str  # "semantic" | "instance"
    categories: tuple[str, ...]  # model categories, by model class id
    background: int | None  # model class id of background (no mask is written for it)
    eval_space: EvalSpace
    label_kind: str | None  # "png" | "coco" | None
    missing_labels: str  # "error" | "ignore"
    storage_options: Mapping[str, Any]
    score_threshold: float = 0.5  # instance models: the detection threshold (for near_threshold)
    quality_stride: int | None = None  # labeled semantic runs: the grid of the label-quality evidence

    @property
    def quality_space(self) -> QualitySpace:
        return QualitySpace.of(self.eval_space)


def encode_batch(batch: Mapping[str, np.ndarray], spec: EncodeSpec) -> pa.Table:
    """A predicted batch (see :mod:`segbatch.stages.predict`) → a :data:`PART_SCHEMA` table."""
    rows = [_encode_row({k: batch[k][i] for k in batch}, spec) for i in range(len(batch["image_id"]))]
    return pa.Table.from_pylist(rows, schema=PART_SCHEMA)


def _encode_row(row: Mapping[str, Any], spec: EncodeSpec) -> dict[str, Any]:
    t0 = time.perf_counter()
    ok = row["status"] == "ok"
    out: dict[str, Any] = {
        "image_id": int(row["image_id"]),
        "file_name": str(row["file_name"]),
        "uri": str(row["uri"]),
        "width": int(row["width"]) if ok or int(row["width"]) > 0 else None,
        "height": int(row["height"]) if ok or int(row["height"]) > 0 else None,
        "status": str(row["status"]),
        "error": None if ok else str(row["error"]),
        "labeled": False,
        "dice": None,
        "num_masks": 0,
        "class_stats": [],
        "confusion": [],
        "masks": [],
        "t_read": float(row["t_read"]),
        "t_predict": float(row["t_predict"]),
        "t_encode": None,
        "worker": optional_text(row.get("worker")),
        "conversion": optional_text(row.get("conversion")),
    }
    if not ok:
        out["t_encode"] = time.perf_counter() - t0
        return out
    h, w = out["height"], out["width"]
    class_scores: np.ndarray | None = None
    if spec.task == "semantic":
        model_map = np.asarray(row["label_map"])
        model_counts = class_counts(model_map)  # shared by the masks and the unlabeled counts
        masks = label_map_to_masks(model_map, () if spec.background is None else (spec.background,), model_counts)
        class_scores = _confidence(row, out)
    else:
        labels, scores = np.asarray(row["inst_labels"]), np.asarray(row["inst_scores"])
        # Placeholder ids (torchvision's unused COCO ids) are no category: a trained model
        # never predicts them, an untrained one may.
        real = np.array([spec.categories[int(c)] != PLACEHOLDER for c in labels], dtype=bool)
        labels, scores = labels[real], scores[real]
        crops = row.get("inst_crops")
        if crops is not None:  # a tiled image: crops of their boxes, never N full-size masks
            kept = [c for c, r in zip(crops, real, strict=True) if r]
            masks = crops_to_masks(kept, h, w)
            model_map = crops_to_label_map(kept, h, w, background=spec.background or 0)
        else:
            inst = np.asarray(row["inst_masks"]).reshape(-1, h, w)[real]
            masks = instances_to_masks(inst, labels, scores)
            model_map = instances_to_label_map(inst, labels, scores, background=spec.background or 0)
        model_counts = None
        out["confidence"] = float(scores.mean()) if len(scores) else None
        out["near_threshold"] = int((scores < spec.score_threshold + NEAR_THRESHOLD).sum())
    out["masks"] = [_mask_dict(m, spec.categories, class_scores) for m in masks]
    out["num_masks"] = len(masks)
    es = spec.eval_space
    try:
        gt = read_label(row, spec, h, w)
    except ImageError as err:
        gt = None
        out["status"], out["error"] = "error", str(err)
    # Both sums fold model ids into evaluation ids through the table (es.predictions(model_map)
    # maps every pixel: 0.6 of the ~3 ms an image took here, for the same integers).
    if gt is None:
        counts = mapped_counts(class_counts(model_map) if model_counts is None else model_counts, es.model_lut,
                               es.num_classes)  # fmt: skip
        out["class_stats"] = [
            {"category": es.names[c], "intersection": None, "pred_pixels": int(counts[c]), "gt_pixels": None}
            for c in np.flatnonzero(counts)
        ]
    else:
        conf = confusion_mapped(gt, model_map, es.model_lut, es.num_classes)
        inter, p, g = np.diag(conf), conf.sum(axis=0), conf.sum(axis=1)
        out["labeled"] = True
        out["dice"] = image_dice(conf, es.background)
        out["class_stats"] = [
            {"category": es.names[c], "intersection": int(inter[c]), "pred_pixels": int(p[c]), "gt_pixels": int(g[c])}
            for c in np.flatnonzero(p + g)
        ]
        gi, pi = np.nonzero(conf)
        out["confusion"] = [
            {"gt": int(a), "pred": int(b), "pixels": int(conf[a, b])} for a, b in zip(gi, pi, strict=True)
        ]
        probs = row.get("quality_probs")
        if spec.quality_stride and probs is not None and np.asarray(probs).size:
            evidence = label_evidence(np.asarray(probs), gt, spec, h, w)
            out["label_quality"] = None if np.isnan(evidence.score) else float(evidence.score)
            out["quality_evidence"] = evidence.to_bytes()
    out["t_encode"] = time.perf_counter() - t0
    return out


def read_label(row: Mapping[str, Any], spec: EncodeSpec, h: int, w: int) -> np.ndarray | None:
    """The image's label in evaluation ids ``(H, W) int32``, None if unlabeled (and allowed)."""
    if spec.label_kind is None:
        return None
    if spec.label_kind == "png":
        uri = optional_text(row.get("label_uri"))
        if uri is None:
            _missing(spec, f"no mask PNG matches {row['file_name']!r} (by relative path or unique stem){_why(row)}")
            return None
        try:
            data = fsio.read_bytes(str(uri), spec.storage_options)
        except Exception as err:  # fsspec backends raise their own types
            raise ImageError("label", f"cannot read {uri}: {type(err).__name__}: {err}") from None
        raw = read_mask_png(data)
    else:
        record = optional_text(row.get("label_record"))
        if record is None:
            _missing(spec, f"the COCO labels list no image with file_name {row['file_name']!r}{_why(row)}")
            return None
        raw = coco_label_map(json.loads(record))
    check_size(raw, h, w)
    try:
        return spec.eval_space.labels(raw)
    except ValueError as err:
        raise ImageError("label", str(err)) from None


def optional_text(value: Any) -> str | None:
    """A nullable string column's value as str or None.

    Ray Data turns an object column that holds only None in one batch into Arrow's null type,
    which comes back as float NaN: a batch of images the COCO file does not list then carried
    ``label_record`` NaN, and ``json.loads("nan")`` failed every such batch. None, NaN and ""
    all mean "no value" here.
    """
    if value is None or isinstance(value, float | np.floating) or value == "":
        return None  # a float here is Ray's NaN for a null: text columns hold str or nothing
    return str(value)


def _why(row: Mapping[str, Any]) -> str:
    note = optional_text(row.get("label_note"))
    return f" ({note})" if note else ""


def _missing(spec: EncodeSpec, message: str) -> None:
    """Raise for a missing label unless the run ignores missing labels."""
    if spec.missing_labels == "error":
        raise ImageError("label", f"missing label: {message}")


def _confidence(row: Mapping[str, Any], out: dict[str, Any]) -> np.ndarray | None:
    """Copy the predict stage's confidence figures into the row; returns the per-class mask scores."""
    conf, share = row.get("confidence"), row.get("uncertain_share")
    out["confidence"] = None if conf is None or np.isnan(conf) else float(conf)
    out["uncertain_share"] = None if share is None or np.isnan(share) else float(share)
    top = row.get("top_prob")
    if top is not None and np.asarray(top).size:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(top, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=False)
        out["confidence_map"] = buf.getvalue()
    scores = row.get("class_scores")
    if scores is None or not np.asarray(scores).size:
        return None
    return np.asarray(scores)


def label_evidence(probs: np.ndarray, gt: np.ndarray, spec: EncodeSpec, height: int, width: int) -> ImageEvidence:
    """The label-quality evidence of one image: class probabilities ``(C_model, h, w)`` float16 at
    every ``spec.quality_stride``-th pixel, and the label ``(H, W)`` in evaluation ids."""
    qs = spec.quality_space
    stride = spec.quality_stride or 1
    p = qs.probs(probs)
    lab = qs.labels(gt[::stride, ::stride])
    top_class = p.argmax(axis=0)
    top_prob = np.take_along_axis(p, top_class[None], axis=0)[0]
    self_conf = np.take_along_axis(p, np.maximum(lab, 0)[None].astype(np.intp), axis=0)[0]
    return image_evidence_from_maps(self_conf, top_prob, top_class, lab, num_classes=qs.num_classes, stride=stride,
                                    image_size=(height, width))  # fmt: skip


def _mask_dict(m: EncodedMask, categories: tuple[str, ...], class_scores: np.ndarray | None = None) -> dict[str, Any]:
    name = categories[m.category_id] if 0 <= m.category_id < len(categories) else f"class_{m.category_id}"
    if class_scores is not None and m.score is None and 0 <= m.category_id < len(class_scores):
        # A semantic mask's score: the mean top-class probability over its pixels.
        m = dataclasses.replace(m, score=float(class_scores[m.category_id]))
    return {
        "category_id": m.category_id,
        "category": name,
        "score": m.score,
        "area": m.area,
        "bbox": list(m.bbox),
        "segmentation": {"size": m.rle["size"], "counts": m.rle["counts"]},
    }
