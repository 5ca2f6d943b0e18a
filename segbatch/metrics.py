"""Pixel sums and their reduction to Dice / IoU. Pure numpy.

Everything is computed from a confusion matrix over K evaluation classes:
    conf[g, p]  (K, K) int64  pixels whose label is class g and prediction class p
From it, per class c: ``intersection = conf[c, c]``, ``pred = conf[:, c].sum()``,
``gt = conf[c, :].sum()``; ``Dice_c = 2·I / (P + G)``, ``IoU_c = I / (P + G − I)``.
Dataset figures come from confusion matrices *summed* over images, never from averages
of per-image averages. Pixels whose label is :data:`IGNORE` count nowhere.

Shapes and dtypes:
    gt, pred        (H, W) integer arrays of evaluation class ids in [0, K); gt may hold IGNORE
    conf            (K, K) int64
    sums            (K,) int64 each
This module imports neither torch nor Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IGNORE = -1


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K) int64`` confusion matrix of one image; rows are labels, columns predictions."""
    return _pair_counts(gt, pred, num_classes, num_classes)


def _pair_counts(gt: np.ndarray, pred: np.ndarray, labels: int, preds: int) -> np.ndarray:
    """``(labels, preds) int64`` pixels per (label id, prediction id), ignored labels left out."""
    if gt.shape != pred.shape:
        raise ValueError(f"label shape {gt.shape} != prediction shape {pred.shape}")
    g = gt.ravel().astype(np.int64, copy=False)
    p = pred.ravel().astype(np.int64, copy=False)
    keep = g != IGNORE
    if not keep.all():
        g, p = g[keep], p[keep]
    if g.size and (g.min() < 0 or g.max() >= labels or p.min() < 0 or p.max() >= preds):
        where = "label or prediction" if labels == preds else f"label or [0, {preds}) in prediction"
        raise ValueError(f"class ids outside [0, {labels}) in {where}")
    return np.bincount(g * preds + p, minlength=labels * preds).reshape(labels, preds)


def fold_columns(counts: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts over model ids ``(..., C_model) int64`` → over evaluation ids ``(..., K) int64``:
    column ``c`` added into column ``lut[c]`` (exact: integer sums)."""
    onehot = np.zeros((len(lut), num_classes), dtype=np.int64)
    onehot[np.arange(len(lut)), lut] = 1
    return counts @ onehot


def confusion_mapped(gt: np.ndarray, model_ids: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """``confusion(gt, lut[model_ids], num_classes)`` without mapping every pixel: the confusion of
    labels against model ids, its columns folded through ``lut`` (:func:`fold_columns`)."""
    by_model = _pair_counts(gt, model_ids, num_classes, len(lut))
    return fold_columns(by_model, lut, num_classes)


def mapped_counts(model_counts: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K,) int64`` predicted pixels per evaluation class from the ``bincount`` of the model ids
    (:func:`prediction_counts` of ``lut[model_ids]``, without mapping every pixel)."""
    if len(model_counts) > len(lut) and model_counts[len(lut) :].any():
        raise ValueError(f"model class ids outside [0, {len(lut)}) in prediction")
    counts = np.zeros(len(lut), dtype=np.int64)
    counts[: min(len(lut), len(model_counts))] = model_counts[: len(lut)]
    return fold_columns(counts, lut, num_classes)


def prediction_counts(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K,) int64`` predicted pixels per class, for an image without a label."""
    return np.bincount(pred.ravel().astype(np.int64, copy=False), minlength=num_classes)[:num_classes]


@dataclass(frozen=True)
class ClassSums:
    """Per-class pixel sums, each ``(K,) int64``."""

    intersection: np.ndarray
    pred: np.ndarray
    gt: np.ndarray

    @classmethod
    def from_confusion(cls, conf: np.ndarray) -> ClassSums:
        return cls(intersection=np.diag(conf).copy(), pred=conf.sum(axis=0), gt=conf.sum(axis=1))

    def dice(self) -> np.ndarray:
        """``(K,) float64`` Dice per class; NaN where the class is in neither label nor prediction."""
        denom = (self.pred + self.gt).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2.0 * self.intersection / denom, np.nan)

    def iou(self) -> np.ndarray:
        """``(K,) float64`` IoU per class; NaN where the class is in neither."""
        union = (self.pred + self.gt - self.intersection).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.intersection / union, np.nan)

    def present(self) -> np.ndarray:
        """``(K,) bool``: the class occurs in the label or the prediction."""
        return (self.pred + self.gt) > 0


def mean_over_present(values: np.ndarray, present: np.ndarray, background: int | None) -> float | None:
    """Mean of ``values`` over present classes, background left out; None if none is present."""
    keep = present.copy()
    if background is not None and 0 <= background < len(keep):
        keep[background] = False
    if not keep.any():
        return None
    return float(np.mean(values[keep]))


def image_dice(conf: np.ndarray, background: int | None) -> float | None:
    """Per-image Dice: mean Dice over classes in this image's label or prediction, background out."""
    sums = ClassSums.from_confusion(conf)
    return mean_over_present(sums.dice(), sums.present(), background)


class DiceEvaluator:
    """Accumulates confusion matrices and reduces them once (detectron2's evaluator shape)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.pred_unlabeled = np.zeros(self.num_classes, dtype=np.int64)
        self.num_labeled = 0

    def process(self, conf: np.ndarray) -> None:
        """Add one labeled image's ``(K, K)`` confusion matrix."""
        self.conf += conf
        self.num_labeled += 1

    def process_unlabeled(self, pred_counts: np.ndarray) -> None:
        """Add one unlabeled image's ``(K,)`` predicted pixel counts."""
        self.pred_unlabeled += pred_counts

    def evaluate(self, names: list[str], background: int | None, counted: np.ndarray | None = None) -> dict:
        """The ``classes`` / ``mean_dice`` / ``mean_iou`` / ``mean_over`` part of metrics.json.

        With labeled images, sums run over them; with none, ``classes`` reports predicted
        pixels of every image and Dice/IoU are null. ``counted`` (``(K,) bool``, default all):
        the classes that may count in the means (both model and labels know them); the means
        average those present, background left out, and ``mean_over`` names them.
        """
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} names for {self.num_classes} classes")
        labeled = self.num_labeled > 0
        if labeled:
            sums = ClassSums.from_confusion(self.conf)
        else:
            zeros = np.zeros(self.num_classes, dtype=np.int64)
            sums = ClassSums(intersection=zeros, pred=self.pred_unlabeled, gt=zeros)
        dice, iou, present = sums.dice(), sums.iou(), sums.present()
        in_mean = present & (counted if counted is not None else True)
        if background is not None:
            in_mean[background] = False
        classes = {}
        for c in np.flatnonzero(present):
            classes[names[c]] = {
                "dice": _finite(dice[c]) if labeled else None,
                "iou": _finite(iou[c]) if labeled else None,
                "intersection": int(sums.intersection[c]),
                "pred_pixels": int(sums.pred[c]),
                "gt_pixels": int(sums.gt[c]),
            }
        return {
            "classes": classes,
            "mean_dice": mean_over_present(dice, in_mean, background) if labeled else None,
            "mean_iou": mean_over_present(iou, in_mean, background) if labeled else None,
            "mean_over": [names[c] for c in np.flatnonzero(in_mean)] if labeled else [],
            "pixel_accuracy": float(np.trace(self.conf) / self.conf.sum()) if labeled and self.conf.sum() else None,
        }


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
