"""io/labels.py: mask PNGs and every COCO segmentation form → label maps."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segbatch.errors import ImageError, JobError
from segbatch.io.labels import UNLABELED, check_size, coco_label_map, load_coco, read_mask_png
from segbatch.sample import save_label_png


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


LABEL = np.array([[0, 1, 255], [2, 2, 0]], dtype=np.uint8)


def test_palette_mask_gives_indices_not_colours(tmp_path):
    save_label_png(LABEL, str(tmp_path / "m.png"))
    np.testing.assert_array_equal(read_mask_png((tmp_path / "m.png").read_bytes()), LABEL)


def test_grayscale_mask():
    np.testing.assert_array_equal(read_mask_png(png_bytes(Image.fromarray(LABEL, mode="L"))), LABEL)


def test_rgb_mask_is_refused_with_its_mode():
    with pytest.raises(ImageError, match=r"label: mask has mode 'RGB'"):
        read_mask_png(png_bytes(Image.fromarray(np.zeros((2, 2, 3), np.uint8))))


def test_size_mismatch_names_both_sizes():
    with pytest.raises(ImageError, match=r"label size 3x2 does not match image size 4x2"):
        check_size(LABEL, 2, 4)


def _coco_doc(annotations):
    return {
        "images": [{"id": 7, "file_name": "a/x.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}],
        "annotations": annotations,
    }


def test_coco_polygon_uncompressed_and_compressed_rle():
    big = np.zeros((3, 4), np.uint8)
    big[:, :3] = 1
    small = np.zeros((3, 4), np.uint8)
    small[1, 1] = 1
    compressed = mask_utils.encode(np.asfortranarray(small))
    compressed["counts"] = compressed["counts"].decode()
    uncompressed = {"size": [3, 4], "counts": [9, 3]}  # column-major: 9 zeros, then 3 ones → last column
    polygon = [[0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0]]  # covers columns 0..2 (pycocotools rasterisation)
    doc = _coco_doc(
        [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": polygon},
            {"id": 2, "image_id": 7, "category_id": 5, "segmentation": compressed},
            {"id": 3, "image_id": 7, "category_id": 5, "segmentation": uncompressed, "iscrowd": 1},
        ]
    )
    labels = load_coco(json.dumps(doc).encode(), "labels.json")
    assert labels.categories == {1: "cat", 5: "dog"}
    rec = labels.records["a/x.jpg"]
    out = coco_label_map(rec)
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 3, 4))).astype(bool)
    expected = np.full((3, 4), UNLABELED)
    expected[poly_mask] = 1
    expected[:, 3] = 5  # the uncompressed RLE
    expected[1, 1] = 5  # the small compressed RLE lies on top of the larger polygon
    np.testing.assert_array_equal(out, expected)


def test_overlaps_resolve_the_same_whatever_the_file_order():
    a = {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 3, 0, 3]]}
    b = {"id": 2, "image_id": 7, "category_id": 5, "segmentation": [[1, 1, 3, 1, 3, 2, 1, 2]]}
    one = coco_label_map(load_coco(json.dumps(_coco_doc([a, b])).encode(), "x").records["a/x.jpg"])
    two = coco_label_map(load_coco(json.dumps(_coco_doc([b, a])).encode(), "x").records["a/x.jpg"])
    np.testing.assert_array_equal(one, two)
    assert (one == 5).any() and (one == 1).any()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"images": []}, "not a COCO dataset"),
        ({"images": [{"id": 1, "file_name": "x", "width": 1, "height": 1}] * 2, "categories": []}, "twice"),
        (
            {
                "images": [{"id": 1, "file_name": "x", "width": 1, "height": 1}],
                "categories": [],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "segmentation": []}],
            },
            "unknown category_id 9",
        ),
    ],
)
def test_bad_coco_files_are_job_errors(doc, message):
    with pytest.raises(JobError, match=message):
        load_coco(json.dumps(doc).encode(), "labels.json")


def test_coco_rle_of_the_wrong_size_is_an_image_error():
    rle = mask_utils.encode(np.zeros((5, 5), np.uint8, order="F"))
    rle["counts"] = rle["counts"].decode()
    doc = _coco_doc([{"id": 1, "image_id": 7, "category_id": 1, "segmentation": rle}])
    with pytest.raises(ImageError, match="does not match"):
        coco_label_map(load_coco(json.dumps(doc).encode(), "x").records["a/x.jpg"])
