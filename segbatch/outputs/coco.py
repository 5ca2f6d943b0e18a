"""COCO exports of a run's masks: the dataset form and the results form, streamed.

Both are written from ``images.parquet`` and ``masks.parquet`` (sorted by image_id), so
``segbatch export RUN_DIR`` can rewrite them with other options and no model run.

* ``predictions.coco.json`` — a COCO dataset (info, images, annotations, categories).
  RLE annotations carry ``iscrowd: 1``: that is how CVAT's COCO importer (and COCO itself)
  marks a mask given as RLE, and CVAT then imports it as an editable mask. With
  ``segmentation="polygon"`` masks become polygons (``iscrowd: 0``) for tools that read
  only polygons; holes are filled, as COCO polygons cannot express them.
* ``predictions.results.json`` — the COCO results form ``[{image_id, category_id,
  segmentation, score}]`` for COCOeval-based pipelines (``COCO.loadRes``); always RLE.
  A semantic mask's ``score`` is its class's mean top-class probability over its pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from segbatch.categories import PLACEHOLDER, normalize_name, resolve_names
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.masks import decode_rle
from segbatch.outputs.folder import COCO, IMAGES, MASKS, RESULTS, OutDir

log = logging.getLogger(__name__)

SEGMENTATION_FORMATS = ("rle", "polygon")
_CHUNK = 1024


@dataclass(frozen=True)
class ExportOptions:
    """What goes into the COCO files; none of it changes the Parquet tables or metrics."""

    segmentation: str = "rle"  # "rle" | "polygon"
    polygon_tolerance: float = 1.0  # pixels: max distance of the simplified outline from the mask's
    min_area: int = 0  # masks with fewer pixels are left out
    classes: tuple[str, ...] | None = None  # model category names to export (default: all)
    category_ids_from: str | None = None  # a COCO JSON whose category ids the export uses
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATION_FORMATS:
            raise JobError(f"coco segmentation {self.segmentation!r} is not one of {list(SEGMENTATION_FORMATS)}")
        if not self.polygon_tolerance >= 0:
            raise JobError(f"polygon tolerance {self.polygon_tolerance!r} must be >= 0 pixels")
        if self.min_area < 0:
            raise JobError(f"minimum mask area {self.min_area!r} must be >= 0 pixels")

    def config_values(self) -> dict[str, Any]:
        """These options under their JobConfig keys (as in job.json ``config``)."""
        return {
            "coco_segmentation": self.segmentation,
            "polygon_tolerance": self.polygon_tolerance,
            "min_mask_area": self.min_area,
            "export_classes": None if self.classes is None else list(self.classes),
            "coco_category_ids": self.category_ids_from,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "segmentation": self.segmentation,
            "polygon_tolerance": self.polygon_tolerance,
            "min_area": self.min_area,
            "classes": None if self.classes is None else list(self.classes),
            "category_ids_from": self.category_ids_from,
        }


@dataclass(frozen=True)
class CategoryTable:
    """Model category name → exported COCO category id, and the ``categories`` list to write."""

    ids: dict[str, int]
    categories: list[dict[str, Any]]


def category_table(model_categories: tuple[str, ...], background: int | None, options: ExportOptions) -> CategoryTable:
    """Category ids: the model's own, or those of ``options.category_ids_from`` matched by name.

    With a user's COCO file, every one of its categories is listed (so an import lines up
    with the user's project) and model categories it lacks get fresh ids after its largest.
    """
    names = [n for i, n in enumerate(model_categories) if i != background and n != PLACEHOLDER]
    if options.classes is not None:
        chosen = set(resolve_names(options.classes, names, "export classes"))
        names = [n for n in names if n in chosen]
    if options.category_ids_from is None:
        first: dict[str, int] = {}
        for i, n in enumerate(model_categories):
            first.setdefault(n, i)
        ids = {n: first[n] for n in names}
        return CategoryTable(ids, [{"id": ids[n], "name": n, "supercategory": ""} for n in names])
    try:
        doc = json.loads(fsio.read_bytes(options.category_ids_from, options.storage_options))
        theirs = [
            {"id": int(c["id"]), "name": str(c["name"]), "supercategory": c.get("supercategory", "")}
            for c in doc["categories"]
        ]
    except FileNotFoundError:
        raise JobError(f"category file {options.category_ids_from!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as err:
        raise JobError(
            f"category file {options.category_ids_from!r} is not a COCO JSON with "
            f"categories [{{id, name}}]: {type(err).__name__}: {err}"
        ) from None
    by_norm = {normalize_name(c["name"]): c["id"] for c in theirs}
    ids, extra = {}, []
    next_id = max([0, *(c["id"] for c in theirs)]) + 1
    for n in names:
        if normalize_name(n) in by_norm:
            ids[n] = by_norm[normalize_name(n)]
        else:
            ids[n] = next_id
            extra.append({"id": next_id, "name": n, "supercategory": ""})
            next_id += 1
    if extra:
        log.warning(
            "categories not in %s got new ids: %s", options.category_ids_from, {c["name"]: c["id"] for c in extra}
        )
    return CategoryTable(ids, theirs + extra)


class CocoWriter:
    """Streams a COCO dataset JSON: images first, then annotations, then categories.

    Memory stays flat in the number of images and annotations: each entry is written as
    it comes. Call :meth:`image` for every image, then :meth:`annotation` for every
    annotation, then :meth:`close`.
    """

    def __init__(self, f: IO[bytes], info: Mapping[str, Any]) -> None:
        self._f = f
        self._section = "images"
        self._first = True
        self._write('{"info":' + dumps(info) + ',"licenses":[],"images":[')

    def _write(self, text: str) -> None:
        self._f.write(text.encode("utf-8"))

    def _item(self, obj: Mapping[str, Any]) -> None:
        self._write(("" if self._first else ",") + "\n" + dumps(obj))
        self._first = False

    def image(self, entry: Mapping[str, Any]) -> None:
        assert self._section == "images", "images must come before annotations"
        self._item(entry)

    def annotation(self, entry: Mapping[str, Any]) -> None:
        if self._section == "images":
            self._write('],"annotations":[')
            self._section, self._first = "annotations", True
        self._item(entry)

    def close(self, categories: Iterable[Mapping[str, Any]]) -> None:
        if self._section == "images":
            self._write('],"annotations":[')
        self._write('],"categories":' + dumps(list(categories)) + "}\n")


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces), UTF-8 kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def mask_to_polygons(mask: np.ndarray, tolerance: float) -> list[list[float]]:
    """``(H, W)`` binary mask → COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (outer outlines).

    Outlines follow the pixel edges (scikit-image's marching squares at 0.5 on the
    zero-padded mask, which cuts each corner by half a pixel), simplified with
    Douglas–Peucker to ``tolerance`` pixels.
    Polygons with fewer than 3 points are dropped.
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    polys = []
    for contour in find_contours(padded, 0.5, fully_connected="high"):
        # Marching squares gives both outer outlines and hole outlines; keep outer ones
        # (counter-clockwise in (row, col) = positive signed area), as COCO fills holes anyway.
        rows, cols = contour[:, 0], contour[:, 1]
        signed = 0.5 * float(np.dot(rows, np.roll(cols, 1)) - np.dot(cols, np.roll(rows, 1)))
        if signed <= 0:
            continue
        simple = approximate_polygon(contour, tolerance) if tolerance > 0 else contour
        if len(simple) > 1 and np.allclose(simple[0], simple[-1]):
            simple = simple[:-1]
        if len(simple) < 3:
            continue
        # (row, col) of pixel centres in the padded mask → COCO (x, y), where pixel i spans
        # [i, i + 1): undo the padding (−1) and move to the pixel grid (+0.5).
        xy = np.stack([simple[:, 1] - 0.5, simple[:, 0] - 0.5], axis=1)
        polys.append([round(float(v), 2) for v in xy.ravel()])
    return polys


def polygon_area_bbox(polygons: list[list[float]], height: int, width: int) -> tuple[float, list[float]]:
    """Area (pixels of the rasterised union, as pycocotools counts it) and ``[x, y, w, h]`` box of COCO polygons."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def iter_masks(out: OutDir, image_ids: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """masks.parquet rows, in file order; ``image_ids``: only the masks of these images."""
    keep = None if image_ids is None else pa.array(np.asarray(image_ids, np.int64))
    with out.fs.open(out.path(MASKS), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_CHUNK):
            if keep is not None:
                batch = batch.filter(pc.is_in(batch.column("image_id"), value_set=keep))
            yield from batch.to_pylist()


def write_coco_exports(
    out: OutDir,
    *,
    task: str,
    model_categories: tuple[str, ...],
    background: int | None,
    info: Mapping[str, Any],
    options: ExportOptions,
    image_ids: np.ndarray | None = None,
    only: str | None = None,
) -> dict[str, int]:
    """Write ``predictions.coco.json`` and ``predictions.results.json``; returns counts.

    ``image_ids``: ``(N,) int64``, the images to write (default: every image with a size), the
    subset ``only`` names (recorded in ``info.segbatch_export``).
    """
    keep = None if image_ids is None else pa.array(np.asarray(image_ids, np.int64))
    table = category_table(model_categories, background, options)
    polygon = options.segmentation == "polygon"
    counts = {"annotations": 0, "below_min_area": 0, "other_class": 0, "no_polygon": 0}
    with fsio.atomic_open(out.fs, out.path(COCO)) as f, fsio.atomic_open(out.fs, out.path(RESULTS)) as fr:
        recorded = {**options.to_dict(), **({"only": only} if only is not None else {})}
        writer = CocoWriter(f, {**info, "segbatch_export": recorded})
        with out.fs.open(out.path(IMAGES), "rb") as fi:
            columns = ["image_id", "file_name", "width", "height"]
            for batch in pq.ParquetFile(fi).iter_batches(batch_size=_CHUNK, columns=columns):
                if keep is not None:
                    batch = batch.filter(pc.is_in(batch.column("image_id"), value_set=keep))
                for im in batch.to_pylist():
                    if im["width"] is not None:  # an undecodable image has no size to declare
                        writer.image(
                            {
                                "id": im["image_id"],
                                "file_name": im["file_name"],
                                "width": im["width"],
                                "height": im["height"],
                            }
                        )
        fr.write(b"[")
        first = True
        for m in iter_masks(out, image_ids):
            if m["category"] not in table.ids:
                counts["other_class"] += 1
                continue
            if m["area"] < options.min_area:
                counts["below_min_area"] += 1
                continue
            cat = table.ids[m["category"]]
            # Semantic masks: their class's mean top-class probability; 1.0 in runs made before it.
            score = 1.0 if m["score"] is None else m["score"]
            rle = m["segmentation"]
            fr.write(
                (
                    ("" if first else ",")
                    + "\n"
                    + dumps({"image_id": m["image_id"], "category_id": cat, "segmentation": rle, "score": score})
                ).encode()
            )
            first = False
            area, bbox = m["area"], m["bbox"]
            if polygon:
                segmentation: Any = mask_to_polygons(decode_rle(rle), options.polygon_tolerance)
                if not segmentation:
                    counts["no_polygon"] += 1
                    continue
                # The area and box of what the file holds (the filled polygons), as COCO's own
                # polygon annotations carry: the mask's would disagree with a tool's recount.
                area, bbox = polygon_area_bbox(segmentation, *rle["size"])
            else:
                segmentation = rle
            ann = {
                "id": m["id"],
                "image_id": m["image_id"],
                "category_id": cat,
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0 if polygon else 1,
            }
            if m["score"] is not None:
                ann["score"] = m["score"]
            writer.annotation(ann)
            counts["annotations"] += 1
        fr.write(b"\n]\n")
        writer.close(table.categories)
    if counts["no_polygon"]:
        log.warning(
            "%d masks too small for a polygon at tolerance %g were left out of %s",
            counts["no_polygon"],
            options.polygon_tolerance,
            COCO,
        )
    return counts
