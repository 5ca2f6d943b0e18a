"""masks.py: RLE, area, bbox and instance merging, against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from segbatch.masks import (
    Crop,
    crop_rle,
    crops_to_label_map,
    crops_to_masks,
    decode_rle,
    encode_binary,
    instances_to_label_map,
    instances_to_masks,
    label_map_to_masks,
)


def test_rle_of_a_2x2_mask_is_hand_computed():
    # Column-major: [0, 1, 1, 1] → runs of 1 zero, 3 ones → counts [1, 3] → "13".
    mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    (rle,) = encode_binary(mask[:, :, None])
    assert rle == {"size": [2, 2], "counts": "13"}
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)


def test_label_map_gives_one_mask_per_class_with_area_and_bbox():
    lm = np.array(
        [
            [0, 0, 2, 2],
            [0, 1, 2, 2],
            [0, 1, 1, 0],
        ],
        dtype=np.uint8,
    )
    masks = label_map_to_masks(lm, skip=(0,))
    assert [m.category_id for m in masks] == [1, 2]
    one, two = masks
    assert one.area == 3
    assert one.bbox == (1.0, 1.0, 2.0, 2.0)  # x, y, w, h
    assert two.area == 4
    assert two.bbox == (2.0, 0.0, 2.0, 2.0)
    assert one.score is None
    np.testing.assert_array_equal(decode_rle(one.rle), (lm == 1).astype(np.uint8))
    np.testing.assert_array_equal(decode_rle(two.rle), (lm == 2).astype(np.uint8))


def test_label_map_without_foreground_has_no_masks():
    assert label_map_to_masks(np.zeros((5, 7), np.uint8), skip=(0,)) == []
    assert [m.category_id for m in label_map_to_masks(np.zeros((5, 7), np.uint8))] == [0]


def test_instances_keep_scores_and_overlaps():
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[1, 1:3, 1:3] = 1  # overlaps instance 0 at pixel (1, 1)
    enc = instances_to_masks(masks, np.array([3, 5]), np.array([0.9, 0.6], np.float32))
    assert [(m.category_id, round(m.score, 2), m.area) for m in enc] == [(3, 0.9, 4), (5, 0.6, 4)]


def test_instances_merge_per_class_with_the_higher_score_on_top():
    masks = np.zeros((3, 3, 3), dtype=bool)
    masks[0, 0, :] = True  # class 1, score 0.4
    masks[1, :, 0] = True  # class 2, score 0.8: wins (0, 0) from class 1
    masks[2, 2, :] = True  # class 1, score 0.9: wins (2, 0) from class 2
    lm = instances_to_label_map(masks, np.array([1, 2, 1]), np.array([0.4, 0.8, 0.9]))
    np.testing.assert_array_equal(lm, [[2, 1, 1], [2, 0, 0], [1, 1, 1]])


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(H, W\) label map"):
        label_map_to_masks(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="N labels"):
        instances_to_masks(np.zeros((2, 3, 3), np.uint8), np.array([1]), np.array([0.5]))


def test_crops_encode_as_their_pasted_masks_do():
    """Tiled instances reach encode as crops of their boxes: the same RLE, area, box, order and
    label map as the full-size masks they stand for, with no full-size mask made."""
    rng = np.random.default_rng(5)
    height, width = 23, 31
    crops = []
    for _ in range(6):
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        mask = rng.random((h, w)) < 0.6
        mask[0, :] = mask[-1, :] = True  # tight in height (as crops are); columns may hold gaps
        score = float(np.float32(rng.choice([0.5, 0.7, 0.9])))  # a model's float32 score, as crops carry it
        crops.append(Crop(int(rng.integers(1, 4)), score, y0, x0, mask))
    crops.append(Crop(2, float(np.float32(0.8)), height - 3, width - 2, np.ones((3, 2), bool)))  # at the last pixel
    full = np.zeros((len(crops), height, width), np.uint8)
    for k, c in enumerate(crops):
        full[k, c.y0 : c.y0 + c.mask.shape[0], c.x0 : c.x0 + c.mask.shape[1]] = c.mask
    labels = np.array([c.label for c in crops])
    scores = np.array([c.score for c in crops], np.float32)
    assert crops_to_masks(crops, height, width) == instances_to_masks(full, labels, scores)
    painted = crops_to_label_map(crops, height, width, background=0)
    assert painted.dtype == np.uint8
    assert np.array_equal(painted, instances_to_label_map(full, labels, scores, background=0))
    assert crops_to_label_map([Crop(300, 0.5, 0, 0, np.ones((1, 1), bool))], 2, 2).dtype == np.int32
    with pytest.raises(ValueError, match="outside the 23x31 image"):
        crop_rle(np.ones((2, 2), bool), 22, 0, height, width)
