"""The audit's rankings, counts and panels, on hand-made inputs (no Ray, no run)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segbatch.audit.overlays import class_colours, confidence_colours, confidence_panels_png, flagged_panels_png
from segbatch.audit.ranking import ClassFrequency, Lowest, average_ranks, choose_rank, spearman
from segbatch.errors import JobError


@pytest.mark.parametrize(
    ("labeled", "lq", "conf", "expected"),
    [
        (True, True, True, "label-quality"),
        (True, False, True, "dice"),  # Mask R-CNN, or --quality-stride 0
        (False, False, True, "confidence"),
        (True, False, False, "dice"),  # a run of an older segbatch
    ],
)
def test_default_rank_is_label_quality_then_dice_then_confidence(labeled, lq, conf, expected):
    assert choose_rank(None, labeled=labeled, has_label_quality=lq, has_confidence=conf) == expected


def test_a_rank_the_run_cannot_have_is_refused_with_the_valid_ones():
    with pytest.raises(JobError, match=r"rank 'Dice' is unknown; valid: label-quality, dice, confidence"):
        choose_rank("Dice", labeled=True, has_label_quality=True, has_confidence=True)
    with pytest.raises(JobError, match=r"rank 'label-quality' needs label-quality columns .* valid for this run: dice"):
        choose_rank("label-quality", labeled=True, has_label_quality=False, has_confidence=False)
    with pytest.raises(JobError, match=r"valid for this run: confidence$"):
        choose_rank("dice", labeled=False, has_label_quality=False, has_confidence=True)
    with pytest.raises(JobError, match="neither labels nor confidence"):
        choose_rank(None, labeled=False, has_label_quality=False, has_confidence=False)
    assert choose_rank("dice", labeled=True, has_label_quality=True, has_confidence=True) == "dice"


def test_lowest_keeps_the_n_lowest_ascending_ties_by_image_id_and_skips_missing_scores():
    keep = Lowest(3)
    for image_id, score in [(5, 0.4), (1, 0.9), (7, None), (3, 0.4), (9, 0.1), (2, float("nan")), (4, 0.4)]:
        keep.add(score, image_id, {"image_id": image_id})
    assert [(s, i) for s, i, _ in keep.ranked()] == [(0.1, 9), (0.4, 3), (0.4, 4)]
    none = Lowest(0)
    none.add(0.5, 1, {})
    assert none.ranked() == []
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        Lowest(-1)


def test_average_ranks_share_ties_and_spearman_matches_hand_computed_values():
    assert average_ranks([0.3, 0.1, 0.3, 0.2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x (1, 2, 3), y (1, 3, 2): centred (-1, 0, 1) · (-1, 1, 0) = 1; norms √2 · √2 → 0.5
    assert spearman([0.1, 0.5, 0.9], [0.2, 0.8, 0.7]) == pytest.approx(0.5)
    assert spearman([1, 2], [1, 2]) is None  # too few
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # one side constant
    with pytest.raises(ValueError, match=r"got \(3,\) and \(2,\)"):
        spearman([1, 2, 3], [1, 2])


def test_class_frequency_counts_images_and_pixel_shares():
    freq = ClassFrequency(["background", "circle", "square"])
    freq.add(
        [{"category": "background", "pred_pixels": 60, "gt_pixels": None}, {"category": "circle", "pred_pixels": 40}]
    )
    freq.add([{"category": "background", "pred_pixels": 100, "gt_pixels": 90}, {"category": "square", "pred_pixels": 0,
               "gt_pixels": 10}])  # fmt: skip
    freq.add([])
    assert freq.images == 3
    assert freq.pred_images.tolist() == [2, 1, 0] and freq.gt_images.tolist() == [1, 0, 1]
    assert freq.pred_share().tolist() == pytest.approx([160 / 200, 40 / 200, 0.0])
    assert freq.gt_share().tolist() == pytest.approx([0.9, 0.0, 0.1])
    with pytest.raises(JobError, match=r"class 'horse' outside the run's classes"):
        freq.add([{"category": "horse", "pred_pixels": 1}])


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_flagged_panel_marks_exactly_the_flagged_pixels_red():
    rgb = np.full((20, 30, 3), 120, dtype=np.uint8)
    label = np.zeros((20, 30), dtype=np.int32)
    flagged = np.zeros((20, 30), dtype=bool)
    flagged[5:10, 3:9] = True
    out = _png(flagged_panels_png(rgb, label, label, flagged, class_colours(3), 0))
    scale = 4  # a 20-pixel-high image is enlarged 4× (nearest)
    w = 30 * scale
    fourth = out[18:, 3 * (w + 6) :]
    red = (fourth[..., 0] == 255) & (fourth[..., 1] == 40) & (fourth[..., 2] == 40)
    assert red.sum() == flagged.sum() * scale * scale
    assert red[5 * scale : 10 * scale, 3 * scale : 9 * scale].all()
    with pytest.raises(ValueError, match=r"flagged mask \(2, 2\) and label \(20, 30\)"):
        flagged_panels_png(rgb, label, label, np.zeros((2, 2), dtype=bool), class_colours(3), 0)


def test_confidence_panel_is_bright_where_unsure_and_missing_for_instance_runs():
    rgb = np.full((20, 30, 3), 120, dtype=np.uint8)
    pred = np.zeros((20, 30), dtype=np.int32)
    coarse = np.full((10, 15), 255, dtype=np.uint8)
    coarse[:, :5] = 64  # unsure on the left third (p = 0.25)
    buf = io.BytesIO()
    Image.fromarray(coarse, mode="L").save(buf, format="PNG")
    out = _png(confidence_panels_png(rgb, pred, buf.getvalue(), class_colours(3), 0))
    w = 30 * 4
    third = out[18:, 2 * (w + 6) :]
    assert out.shape[1] == 3 * w + 2 * 6
    left, right = third[:, :30].mean(axis=(0, 1)), third[:, -30:].mean(axis=(0, 1))
    assert left.sum() > 3 * right.sum()  # hot colours on the unsure side, dark on the sure one
    assert confidence_colours(np.array([1.0]))[0].tolist() == [25, 25, 35]
    assert confidence_colours(np.array([0.0]))[0].tolist() == [230, 30, 30]
    two = _png(confidence_panels_png(rgb, pred, None, class_colours(3), 0))
    assert two.shape[1] == 2 * w + 6
