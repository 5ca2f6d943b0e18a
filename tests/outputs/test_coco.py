"""COCO export pieces without Ray: polygons, category ids from a user's file, option errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segbatch.errors import JobError
from segbatch.outputs.coco import ExportOptions, category_table, mask_to_polygons


def _polygon_area(polys: list[list[float]], h: int, w: int) -> int:
    rles = mask_utils.frPyObjects(polys, h, w)
    return int(mask_utils.area(mask_utils.merge(rles)))


def test_a_rectangle_becomes_one_four_corner_polygon_of_the_same_area():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 5:45] = 1  # 20 x 40 = 800 px
    polys = mask_to_polygons(mask, tolerance=1.0)
    assert len(polys) == 1 and len(polys[0]) == 8  # four corners
    xs, ys = polys[0][0::2], polys[0][1::2]
    # In COCO coordinates pixel i spans [i, i + 1): the outline runs along x 5..45, y 10..30
    # (corners cut by half a pixel).
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((5, 45, 10, 30), abs=0.5)
    assert abs(_polygon_area(polys, 40, 60) - 800) <= 0.05 * 800


def test_two_blobs_give_two_polygons_and_a_hole_is_filled():
    mask = np.zeros((50, 50), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:20, 10:20] = 0  # a hole: COCO polygons cannot carry it
    mask[30:45, 30:45] = 1
    polys = mask_to_polygons(mask, tolerance=0.5)
    assert len(polys) == 2
    assert abs(_polygon_area(polys, 50, 50) - (400 + 225)) <= 0.06 * 625


def test_tolerance_trades_points_for_fidelity():
    yy, xx = np.mgrid[:100, :100]
    disk = ((yy - 50) ** 2 + (xx - 50) ** 2 <= 35**2).astype(np.uint8)
    fine, coarse = mask_to_polygons(disk, 0.25)[0], mask_to_polygons(disk, 3.0)[0]
    assert len(coarse) < len(fine)
    true = int(disk.sum())
    assert abs(_polygon_area([fine], 100, 100) - true) < abs(_polygon_area([coarse], 100, 100) - true) + 0.02 * true
    assert abs(_polygon_area([coarse], 100, 100) - true) <= 0.05 * true


def test_a_single_pixel_has_no_polygon_at_a_coarse_tolerance():
    mask = np.zeros((5, 5), np.uint8)
    mask[2, 2] = 1
    assert mask_to_polygons(mask, 1.0) == []


def test_category_ids_come_from_the_users_coco_file(tmp_path):
    theirs = tmp_path / "labels.json"
    theirs.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": 7, "name": "Dining Table"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "tree"}],
            }
        )
    )
    cats = ("__background__", "cat", "diningtable", "dog")
    table = category_table(cats, 0, ExportOptions(category_ids_from=str(theirs)))
    assert table.ids == {"cat": 3, "diningtable": 7, "dog": 13}  # dog is new: after their largest id
    assert [c["id"] for c in table.categories] == [7, 3, 12, 13]
    own = category_table(cats, 0, ExportOptions(classes=("dog", "cat")))
    assert own.ids == {"cat": 1, "dog": 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segmentation": "mask"}, "coco segmentation 'mask' is not one of ['rle', 'polygon']"),
        ({"polygon_tolerance": -1.0}, "polygon tolerance -1.0 must be >= 0"),
        ({"min_area": -5}, "minimum mask area -5 must be >= 0"),
    ],
)
def test_bad_export_options_are_named(kwargs, message):
    with pytest.raises(JobError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ExportOptions(**kwargs)


def test_unknown_export_classes_and_missing_category_files_are_named(tmp_path):
    with pytest.raises(JobError, match=r"export classes \['horse'\] are unknown; valid: "):
        category_table(("bg", "cat"), 0, ExportOptions(classes=("horse",)))
    missing = str(tmp_path / "nope.json")
    with pytest.raises(JobError, match=f"category file '{missing}' does not exist"):
        category_table(("bg", "cat"), 0, ExportOptions(category_ids_from=missing))
