"""CVAT's "Segmentation mask 1.1" form of a run: ``cvat-masks/`` and ``cvat-masks.zip``.

The layout CVAT's exporter writes (Datumaro's ``voc_segmentation`` with a colour map) and
its importer reads (the zip, imported as Datumaro's ``voc``, which takes the
``ImageSets/Segmentation`` list):

    labelmap.txt                       ``name:r,g,b::`` per label, ``background:0,0,0::`` first
    ImageSets/Segmentation/default.txt one item id per line (file_name without extension)
    SegmentationClass/<item id>.png    class of each pixel, told by its labelmap colour
    SegmentationObject/<item id>.png   instance of each pixel, by the VOC colour of 1, 2, … (0: none)

The importer reads labels off colours, so each label has its own colour (the VOC colour map
of its index). Both PNGs are palette PNGs (RGB where the labels outnumber a palette).
Every mask becomes one instance in SegmentationObject — for semantic runs one per class, as
CVAT's own export does — so CVAT creates one editable mask per instance and none for
background. A VOC map holds one label per pixel: where instances overlap, the higher score is
painted on top (as :func:`segbatch.masks.instances_to_label_map`; equal scores: the later
mask id), so an instance keeps only its visible pixels and one hidden entirely is left out.
Instances are numbered by descending score; an image keeps its 254 highest-scoring masks
(255 is VOC's "void").

Images without masks are listed without PNGs (as CVAT exports them); undecodable images are
left out. Written streaming, one image's masks in memory at a time.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.masks import decode_rle
from segbatch.outputs.folder import IMAGES, JOB, OutDir
from segbatch.outputs.label_studio import ExportLabel, export_labels, iter_images_with_masks, mask_filter, voc_colour

CVAT_DIR = "cvat-masks"
CVAT_ZIP = "cvat-masks.zip"
LABELMAP = "labelmap.txt"
SUBSET_LIST = "ImageSets/Segmentation/default.txt"
CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
BACKGROUND = "background"
MAX_INSTANCES = 254


@dataclass(frozen=True)
class CvatMasksOptions:
    """classes: model categories to export (default: all); min_area: masks with fewer pixels are left out."""

    classes: tuple[str, ...] | None = None
    min_area: int = 0

    def __post_init__(self) -> None:
        if self.min_area < 0:
            raise JobError(f"minimum mask area {self.min_area!r} must be >= 0 pixels")


def labelmap_text(labels: Sequence[ExportLabel]) -> str:
    """``labelmap.txt``: background first, then ``labels`` (``name:r,g,b:parts:actions``)."""
    lines = ["# label:color_rgb:parts:actions", f"{BACKGROUND}:0,0,0::"]
    for lab in labels:
        if ":" in lab.name or "\n" in lab.name or lab.name.strip() != lab.name:
            raise JobError(
                f"category {lab.name!r} cannot go into {LABELMAP}: names there may not contain ':' or line "
                "breaks, nor start or end with spaces; leave it out with the export classes"
            )
        if lab.name == BACKGROUND:
            raise JobError(f"category {lab.name!r} is not the model's background but {LABELMAP} reserves that name")
        lines.append(f"{lab.name}:{','.join(str(c) for c in lab.colour)}::")
    return "\n".join(lines) + "\n"


def item_id(file_name: str) -> str:
    """The VOC item id of an image: its file_name without extension (``a/b/x.jpg`` → ``a/b/x``)."""
    return posixpath.splitext(file_name)[0]


def paint(
    masks: Sequence[dict[str, Any]], label_index: dict[str, int], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Masks → ``(H, W)`` labelmap-index map, ``(H, W) uint8`` instance map, and how many were dropped.

    Higher score on top (ties: later mask id); instances numbered 1, 2, … by descending
    score; only the :data:`MAX_INSTANCES` highest-scoring masks are kept.
    """
    ranked = sorted(masks, key=lambda m: (-(m["score"] if m["score"] is not None else 0.0), -m["id"]))
    kept = ranked[:MAX_INSTANCES]
    dtype = np.uint8 if len(label_index) <= 256 else np.uint16
    classes = np.zeros((height, width), dtype)
    instances = np.zeros((height, width), np.uint8)
    for number in range(len(kept), 0, -1):  # lowest first, so higher scores paint over it
        m = kept[number - 1]
        if list(m["segmentation"]["size"]) != [height, width]:
            raise JobError(
                f"mask {m['id']} is {m['segmentation']['size']} (height, width), its image {[height, width]}"
            )
        region = decode_rle(m["segmentation"]).astype(bool)
        classes[region] = label_index[m["category"]]
        instances[region] = number
    return classes, instances, len(ranked) - len(kept)


def png(index_map: np.ndarray, colours: np.ndarray) -> bytes:
    """``(H, W)`` indices into ``(K, 3) uint8`` colours → PNG bytes (palette PNG when K <= 256)."""
    if len(colours) <= 256:
        image = Image.fromarray(index_map.astype(np.uint8, copy=False), mode="P")
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(colours)] = colours
        image.putpalette(palette.ravel().tolist())
    else:
        image = Image.fromarray(colours[index_map])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _check_unique_ids(out: OutDir) -> None:
    """Refuse two images whose file names differ only in extension (one VOC item id)."""
    hashes = []
    with out.fs.open(out.path(IMAGES), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["file_name", "width"]):
            names = batch.filter(pc.is_valid(batch.column("width"))).column("file_name").to_pylist()
            hashes.append(np.array([_hash(item_id(n)) for n in names], np.uint64))
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    values, counts = np.unique(every, return_counts=True)
    dup = set(values[counts > 1].tolist())
    if not dup:
        return
    with out.fs.open(out.path(IMAGES), "rb") as f:
        names = pq.read_table(f, columns=["file_name"]).column("file_name").to_pylist()
    clash = sorted(n for n in names if _hash(item_id(n)) in dup)
    raise JobError(
        f"images {clash[:6]} share a VOC item id (file name without extension), which {CVAT_DIR} cannot "
        "tell apart; rename them or export COCO instead"
    )


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class _Writer:
    """Writes each file both into ``cvat-masks/`` and into the zip."""

    def __init__(self, out: OutDir, archive: zipfile.ZipFile) -> None:
        self.out, self.archive = out, archive

    def put(self, name: str, data: bytes, compress: bool) -> None:
        fsio.write_bytes_atomic(self.out.fs, self.out.path(CVAT_DIR, name), data)
        self.archive.writestr(_info(name, compress), data)

    def put_file(self, name: str, src: IO[bytes]) -> None:
        """Copy ``src`` (a seekable local file, at its start) into both, streaming."""
        with fsio.atomic_open(self.out.fs, self.out.path(CVAT_DIR, name)) as dst:
            shutil.copyfileobj(src, dst)
        src.seek(0)
        with self.archive.open(_info(name, True), "w") as dst:
            shutil.copyfileobj(src, dst)


def _info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed date: same run, same bytes
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED  # PNGs are compressed already
    return info


def write_cvat_masks(out: OutDir, options: CvatMasksOptions, image_ids: np.ndarray | None = None) -> dict[str, int]:
    """Write ``cvat-masks/`` and ``cvat-masks.zip`` (module docstring); returns counts.

    ``image_ids``: ``(N,) int64``, the images to list (default: every image with a size).

    Counts: ``items`` (listed images), ``pngs`` (images with masks), ``instances`` (visible
    instances painted), ``hidden`` (instances covered entirely by higher scores),
    ``dropped`` (beyond :data:`MAX_INSTANCES`), ``other_class`` and ``below_min_area``.
    """
    model = out.read_json(JOB)["model"]
    labels = export_labels(model["categories"], model["background"], options.classes)
    text = labelmap_text(labels)
    _check_unique_ids(out)
    label_index = {lab.name: k + 1 for k, lab in enumerate(labels)}  # 0: background
    class_colours = np.array([(0, 0, 0), *(lab.colour for lab in labels)], np.uint8)
    instance_colours = np.array([voc_colour(i) for i in range(256)], np.uint8)
    counts = {"items": 0, "pngs": 0, "instances": 0, "hidden": 0, "dropped": 0, "other_class": 0, "below_min_area": 0}
    keep = mask_filter(labels, options.min_area, counts)
    if out.fs.exists(out.path(CVAT_DIR)):
        out.fs.rm(out.path(CVAT_DIR), recursive=True)  # files of an earlier export would linger
    with (
        tempfile.TemporaryFile(prefix="segbatch-cvat-") as ids,  # the item list, written last
        fsio.atomic_open(out.fs, out.path(CVAT_ZIP)) as f,
        zipfile.ZipFile(f, "w") as archive,
    ):
        writer = _Writer(out, archive)
        writer.put(LABELMAP, text.encode(), compress=True)
        for im, masks in iter_images_with_masks(out, keep=image_ids, columns=("image_id", "file_name")):
            name = item_id(im["file_name"])
            ids.write(name.encode() + b"\n")
            counts["items"] += 1
            kept = [m for m in masks if keep(m)]
            if not kept:
                continue
            classes, instances, dropped = paint(kept, label_index, im["height"], im["width"])
            visible = int(np.count_nonzero(np.bincount(instances.ravel(), minlength=len(kept) + 1)[1:]))
            counts["instances"] += visible
            counts["hidden"] += len(kept) - dropped - visible
            counts["dropped"] += dropped
            writer.put(f"{CLASS_DIR}/{name}.png", png(classes, class_colours), compress=False)
            writer.put(f"{OBJECT_DIR}/{name}.png", png(instances, instance_colours), compress=False)
            counts["pngs"] += 1
        ids.seek(0)
        writer.put_file(SUBSET_LIST, ids)
    return counts
