"""Labels: mask PNGs and COCO JSON → label maps of raw label category ids.

Two sources:
  * a folder of mask PNGs (grayscale ``L`` or palette ``P``; VOC-style class ids, 255 =
    ignore), decoded to ``(H, W) uint8``;
  * a COCO JSON file; each image's annotations (polygons, uncompressed or compressed RLE)
    are kept in the manifest as a small JSON record and painted on demand into an
    ``(H, W) int32`` map of COCO category ids, :data:`UNLABELED` where no annotation lies.
    Overlaps are resolved deterministically: larger annotations first, smaller on top;
    equal areas by annotation id.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from segbatch.categories import UNLABELED
from segbatch.errors import ImageError, JobError


def read_mask_png(data: bytes) -> np.ndarray:
    """Mask PNG bytes → ``(H, W) uint8`` class ids (palette indices for mode ``P``)."""
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError("label", "mask file is not an image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError("label", f"corrupt mask file: {err}") from None
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 255:
            raise ImageError("label", f"mask values {arr.min()}..{arr.max()} do not fit class ids 0..255")
        return arr.astype(np.uint8)
    raise ImageError("label", f"mask has mode {img.mode!r}; expected a single-channel class-id PNG (mode L or P)")


def check_size(label: np.ndarray, height: int, width: int) -> None:
    if label.shape != (height, width):
        raise ImageError(
            "label", f"label size {label.shape[1]}x{label.shape[0]} does not match image size {width}x{height} (WxH)"
        )


@dataclass(frozen=True)
class CocoLabels:
    """A parsed COCO label file: category names and one record per image, keyed by file_name."""

    categories: dict[int, str]
    records: dict[str, dict[str, Any]]  # file_name → {"id", "width", "height", "annotations"}


def load_coco(data: bytes, source: str) -> CocoLabels:
    """Parse a COCO dataset JSON (images, annotations, categories)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise JobError(f"labels {source!r} are not valid JSON: {err}") from err
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("categories"), list)
    ):
        raise JobError(f"labels {source!r} are not a COCO dataset: expected 'images' and 'categories' lists")
    categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    records: dict[str, dict[str, Any]] = {}
    by_id: dict[int, dict[str, Any]] = {}
    for im in doc["images"]:
        name = str(im["file_name"])
        if name in records:
            raise JobError(f"labels {source!r} list file_name {name!r} twice")
        rec: dict[str, Any] = {
            "id": int(im["id"]),
            "width": int(im["width"]),
            "height": int(im["height"]),
            "annotations": [],
        }
        if rec["id"] in by_id:
            raise JobError(f"labels {source!r} use image id {rec['id']} twice")
        records[name] = by_id[rec["id"]] = rec
    for ann in doc.get("annotations") or []:
        owner = by_id.get(int(ann["image_id"]))
        if owner is None:
            continue  # an annotation of an image the file does not list: nothing to pair it with
        if int(ann["category_id"]) not in categories:
            raise JobError(
                f"labels {source!r}: annotation {ann.get('id')} has unknown category_id {ann['category_id']}"
            )
        owner["annotations"].append(
            {
                "id": int(ann.get("id", 0)),
                "category_id": int(ann["category_id"]),
                "segmentation": ann.get("segmentation"),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    return CocoLabels(categories=categories, records=records)


def _ann_rle(segmentation: Any, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) → one compressed RLE."""
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(dict(segmentation), height, width)
    if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), str | bytes):
        counts = segmentation["counts"]
        return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


def coco_label_map(record: Mapping[str, Any]) -> np.ndarray:
    """Paint one image's COCO annotations into a ``(H, W) int32`` map of category ids.

    Pixels under no annotation are :data:`UNLABELED`. Larger annotations are painted
    first so that smaller ones stay visible; equal areas by ascending annotation id.
    """
    h, w = int(record["height"]), int(record["width"])
    out = np.full((h, w), UNLABELED, dtype=np.int32)
    anns = record.get("annotations") or []
    try:
        rles = [_ann_rle(a["segmentation"], h, w) for a in anns]
    except (ValueError, TypeError, KeyError) as err:
        raise ImageError("label", f"bad COCO segmentation: {err}") from None
    for rle in rles:
        if list(rle["size"]) != [h, w]:
            raise ImageError("label", f"COCO RLE size {list(rle['size'])} does not match the image entry {[h, w]}")
    areas = mask_utils.area(rles) if rles else []
    order = sorted(range(len(anns)), key=lambda i: (-int(areas[i]), anns[i]["id"]))
    for i in order:
        out[mask_utils.decode(rles[i]).astype(bool)] = anns[i]["category_id"]
    return out
