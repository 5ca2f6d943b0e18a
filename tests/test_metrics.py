"""metrics.py: confusion, Dice and IoU from summed pixel counts, against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segbatch.metrics import (
    IGNORE,
    ClassSums,
    DiceEvaluator,
    confusion,
    confusion_mapped,
    image_dice,
    mapped_counts,
    prediction_counts,
)

GT_A = np.array([[0, 1], [1, 1]])
PRED_A = np.array([[1, 1], [0, 1]])


def test_confusion_rows_are_labels_and_columns_predictions():
    np.testing.assert_array_equal(confusion(GT_A, PRED_A, 2), [[0, 1], [1, 2]])


def test_dice_and_iou_of_one_image():
    sums = ClassSums.from_confusion(confusion(GT_A, PRED_A, 2))
    # class 1: I=2, P=3, G=3 → Dice 4/6, IoU 2/4; class 0: I=0, P=1, G=1 → 0
    np.testing.assert_allclose(sums.dice(), [0.0, 4 / 6])
    np.testing.assert_allclose(sums.iou(), [0.0, 0.5])
    assert image_dice(confusion(GT_A, PRED_A, 2), background=0) == pytest.approx(4 / 6)


def test_dataset_dice_sums_pixels_instead_of_averaging_images():
    gt_b = np.ones((2, 2), int)
    pred_b = np.array([[1, 0], [0, 0]])  # class 1: I=1, P=1, G=4 → image Dice 0.4
    ev = DiceEvaluator(2)
    ev.process(confusion(GT_A, PRED_A, 2))
    ev.process(confusion(gt_b, pred_b, 2))
    result = ev.evaluate(["background", "thing"], background=0)
    # Summed: I=3, P=4, G=7 → 6/11, not the mean of per-image Dice (4/6 + 0.4) / 2.
    assert result["classes"]["thing"]["dice"] == pytest.approx(6 / 11)
    assert result["classes"]["thing"]["iou"] == pytest.approx(3 / 8)
    assert (
        result["classes"]["thing"]["intersection"],
        result["classes"]["thing"]["pred_pixels"],
        result["classes"]["thing"]["gt_pixels"],
    ) == (3, 4, 7)
    assert result["mean_dice"] == pytest.approx(6 / 11)  # background left out
    assert result["classes"]["background"]["dice"] == pytest.approx(2 * 0 / (4 + 1))
    assert result["pixel_accuracy"] == pytest.approx(3 / 8)


def test_ignore_pixels_count_nowhere():
    gt = np.array([[IGNORE, 1], [1, 1]])
    pred = np.array([[1, 1], [1, 1]])
    conf = confusion(gt, pred, 2)
    assert conf.sum() == 3
    assert image_dice(conf, background=0) == pytest.approx(1.0)


def test_classes_absent_from_both_sides_are_not_listed_or_averaged():
    ev = DiceEvaluator(3)
    ev.process(confusion(np.array([[0, 2]]), np.array([[0, 2]]), 3))
    result = ev.evaluate(["bg", "never", "seen"], background=0)
    assert set(result["classes"]) == {"bg", "seen"}
    assert result["mean_dice"] == pytest.approx(1.0)


def test_image_without_foreground_has_no_dice():
    conf = confusion(np.zeros((2, 2), int), np.zeros((2, 2), int), 2)
    assert image_dice(conf, background=0) is None
    assert math.isnan(ClassSums.from_confusion(conf).dice()[1])


def test_unlabeled_runs_report_predicted_pixels_without_dice():
    ev = DiceEvaluator(2)
    ev.process_unlabeled(prediction_counts(np.array([[0, 1, 1]]), 2))
    result = ev.evaluate(["bg", "thing"], background=0)
    assert result["classes"]["thing"] == {
        "dice": None,
        "iou": None,
        "intersection": 0,
        "pred_pixels": 2,
        "gt_pixels": 0,
    }
    assert result["mean_dice"] is None


def test_out_of_range_ids_are_refused():
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([[0, 5]]), np.array([[0, 1]]), 2)
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)


def test_sums_folded_through_the_category_table_equal_sums_of_the_mapped_map():
    """The encode stage folds model ids into evaluation ids after counting (no per-pixel mapping):
    the very integers of mapping every pixel first, ignored label pixels and all."""
    rng = np.random.default_rng(3)
    lut = np.array([0, 2, 2, 1, 3, 0], dtype=np.int32)  # 6 model classes into 4, two merged twice
    model = rng.integers(0, 6, size=(37, 53)).astype(np.uint8)
    gt = rng.integers(0, 4, size=(37, 53)).astype(np.int32)
    gt[rng.random(gt.shape) < 0.2] = IGNORE
    assert np.array_equal(confusion_mapped(gt, model, lut, 4), confusion(gt, lut[model], 4))
    assert np.array_equal(mapped_counts(np.bincount(model.ravel()), lut, 4), prediction_counts(lut[model], 4))
    with pytest.raises(ValueError, match=r"or \[0, 6\) in prediction"):
        confusion_mapped(gt, np.full_like(model, 6), lut, 4)
    with pytest.raises(ValueError, match=r"model class ids outside \[0, 6\)"):
        mapped_counts(np.bincount(np.array([0, 7])), lut, 4)
