"""Label Studio pre-labels: ``label-studio/tasks.json`` and ``label-studio/config.xml``.

Each image with a size becomes one task ``{"data": {"image": URL, ...}, "predictions":
[{"model_version", "score", "result": [...]}]}`` with one ``brushlabels`` result per mask
(semantic: one per class present; instance: one per instance, overlaps kept), in Label
Studio's brush RLE. ``config.xml`` is the labeling config those results fit: an ``Image``
named ``image`` and ``BrushLabels`` named ``label`` with the model's categories and colours.

Brush RLE (Label Studio's frontend decodes it with ``@thi.ng/rle-pack``): the mask as an
``(H, W, 4)`` RGBA byte image, row-major, a pixel inside the mask being ``255`` in all four
channels (the frontend reads the alpha channel). The bytes are packed into a bit stream:
a 32-bit value count (``H·W·4``), a 5-bit word size minus one (7: bytes), four 4-bit run
size classes minus one (3, 4, 8, 16 bits), then per run a flag bit (1: repeat), a 2-bit size
class, the run length minus one in that many bits and the 8-bit value; runs longer than 2^16
are split. Zero bits pad to a byte boundary (a full zero byte when already aligned, as
label-studio-sdk's ``encode_rle`` does, so the output equals the SDK's byte for byte).

Written streaming from ``images.parquet`` and ``masks.parquet`` (both sorted by image_id):
memory holds one image's masks, plus, to order by confidence, ``(image_id, confidence)``
of every image and two offsets per task into a local spill file.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segbatch.categories import PLACEHOLDER, resolve_names
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.masks import decode_rle
from segbatch.outputs.coco import dumps
from segbatch.outputs.folder import IMAGES, JOB, MASKS, OutDir
from segbatch.outputs.selection import ONLY, ORDERS, resolved_order, select_images

log = logging.getLogger(__name__)

LABEL_STUDIO_DIR = "label-studio"
TASKS = "tasks.json"
CONFIG = "config.xml"
FROM_NAME = "label"  # the BrushLabels tag
TO_NAME = "image"  # the Image tag; also the task data key ($image)
LOCAL_FILES = "/data/local-files/?d="
# URL prefixes Label Studio resolves itself: cloud URIs through a source storage of the
# project, http(s) as they are, paths on its own host (local files) relative to it.
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
WEB_SCHEMES = ("http://", "https://")
_CHUNK = 1024
_RUNS_AT_ONCE = 1 << 16


@dataclass(frozen=True)
class LabelStudioOptions:
    """What goes into the Label Studio export.

    order: ``image-id``, ``least-confident``, ``most-confident`` or ``label-quality``
        (:mod:`segbatch.outputs.selection`); None: ``image-id``, or ``label-quality`` with
        ``only="label-issues"``.
    limit: keep the first ``limit`` tasks of that order (None: all).
    only: ``label-issues``: only images whose label was flagged by label quality (None: all).
    image_root: URL prefix that replaces the input root in image URLs, e.g.
        ``s3://bucket/photos``, ``https://cdn.example.com/photos`` or
        ``/data/local-files/?d=photos``. Default: cloud and http(s) inputs keep their URI;
        a local input ``/a/b/photos`` becomes ``/data/local-files/?d=photos/<file_name>``
        (Label Studio started with LOCAL_FILES_DOCUMENT_ROOT=/a/b).
    classes: model categories to export (default: all but background).
    min_area: masks with fewer pixels are left out.
    """

    order: str | None = None
    limit: int | None = None
    image_root: str | None = None
    classes: tuple[str, ...] | None = None
    min_area: int = 0
    only: str | None = None

    def __post_init__(self) -> None:
        if self.order is not None and self.order not in ORDERS:
            raise JobError(f"label studio order {self.order!r} is not one of {list(ORDERS)}")
        if self.only is not None and self.only not in ONLY:
            raise JobError(f"label studio only {self.only!r} is not one of {list(ONLY)}")
        if self.limit is not None and (type(self.limit) is not int or self.limit < 1):  # bool is no count
            raise JobError(f"label studio limit {self.limit!r} must be >= 1 task (or none for all)")
        if self.image_root is not None and not self.image_root.startswith((*CLOUD_SCHEMES, *WEB_SCHEMES, "/")):
            raise JobError(
                f"image root {self.image_root!r} is not a URL Label Studio can resolve; valid: "
                "s3://…, gs://…, azure-blob://…, http(s)://…, or a path on the Label Studio host "
                f"such as {LOCAL_FILES}photos"
            )
        if self.min_area < 0:
            raise JobError(f"minimum mask area {self.min_area!r} must be >= 0 pixels")


@dataclass(frozen=True)
class ExportLabel:
    """One exported category: its model name, a stable colour index (0 is background) and colour."""

    name: str
    index: int
    colour: tuple[int, int, int]

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


def voc_colour(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map entry of ``index`` (distinct for every index below 2^24; 0 is black)."""
    r = g = b = 0
    c = index
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return r, g, b


def export_labels(
    categories: Sequence[str], background: int | None, classes: Sequence[str] | None = None
) -> list[ExportLabel]:
    """The model's categories that get exported, in model id order, background and ``N/A`` left out.

    Colour indices count all such categories from 1 (so a class keeps its colour whichever
    ``classes`` are chosen; for VOC-style models index = model class id).
    """
    names: list[str] = []
    for i, name in enumerate(categories):
        if i != background and name != PLACEHOLDER and name not in names:
            names.append(name)
    labels = [ExportLabel(n, k + 1, voc_colour(k + 1)) for k, n in enumerate(names)]
    if classes is not None:
        chosen = set(resolve_names(classes, names, "export classes"))
        labels = [lab for lab in labels if lab.name in chosen]
    if not labels:
        raise JobError(f"no categories to export: the model has {list(categories)} (background {background})")
    return labels


def brush_rle(mask: np.ndarray) -> list[int]:
    """``(H, W)`` bool or 0/1 mask → Label Studio brush RLE: a list of byte values (module docstring)."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    flat = np.ascontiguousarray(mask).ravel() != 0  # row-major, as the browser's ImageData
    num = flat.size * 4
    if num >= 1 << 32:
        raise ValueError(f"a {mask.shape[0]}×{mask.shape[1]} mask is too large for brush RLE's 32-bit length")
    if flat.size:
        starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
        lengths = np.diff(np.append(starts, flat.size)).astype(np.int64) * 4  # 4 channels per pixel
        values = np.where(flat[starts], 255, 0).astype(np.int64)
    else:
        lengths = values = np.zeros(0, np.int64)
    # Size class per run: 0 (3 bits) up to 8, 1 (4 bits) up to 16, 2 (8 bits) up to 256, else
    # 3 (16 bits) in pieces of at most 2^16.
    cls = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")
    pieces = np.where(cls == 3, -(-lengths // 65536), 1)
    run = np.repeat(np.arange(len(lengths)), pieces)
    k = np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece index within its run
    last = k == pieces[run] - 1
    piece_len = np.where(cls[run] == 3, np.where(last, lengths[run] - 65536 * (pieces[run] - 1), 65536), lengths[run])
    size_bits = np.array([3, 4, 8, 16])[cls[run]]
    flag = (piece_len > 1).astype(np.int64)  # 0: a literal of one value
    codes = (((flag << 2 | cls[run]) << size_bits | (piece_len - 1)) << 8) | values[run]
    widths = 3 + size_bits + 8
    header = f"{num:032b}{7:05b}" + "".join(f"{n - 1:04b}" for n in (3, 4, 8, 16))
    total = len(header) + int(widths.sum())
    bits = np.zeros(total + 8 - total % 8, np.uint8)  # the padding stays zero
    bits[: len(header)] = np.frombuffer(header.encode(), np.uint8) - ord("0")
    ends = len(header) + np.cumsum(widths)
    for i in range(0, len(codes), _RUNS_AT_ONCE):  # bounded memory for masks of many short runs
        c, w, e = codes[i : i + _RUNS_AT_ONCE], widths[i : i + _RUNS_AT_ONCE], ends[i : i + _RUNS_AT_ONCE]
        start = int(e[0] - w[0])
        shift = np.repeat(e, w) - 1 - np.arange(start, int(e[-1]))
        bits[start : int(e[-1])] = (np.repeat(c, w) >> shift) & 1
    return np.packbits(bits).tolist()


def check_image_source(input_url: str, image_root: str | None) -> None:
    """Raise :class:`JobError` before a run when Label Studio could not load its images: an input
    whose URLs it cannot resolve (``hf://``, ``memory://``…) and no ``image_root``."""
    if (
        image_root is None
        and "://" in input_url
        and not input_url.startswith((*CLOUD_SCHEMES, *WEB_SCHEMES, "file://"))
    ):
        raise JobError(
            f"Label Studio cannot load images of input {input_url!r}: pass an image root it can resolve "
            f"(s3://…, gs://…, azure-blob://…, http(s)://… or {LOCAL_FILES}<folder>)"
        )


def image_url(uri: str, file_name: str, image_root: str | None) -> str:
    """The URL Label Studio loads an image from (see :class:`LabelStudioOptions` ``image_root``)."""
    if image_root is not None:
        base = image_root.rstrip("/") + "/"
        return base + (file_name if image_root.startswith(CLOUD_SCHEMES) else quote(file_name))
    if uri.startswith((*CLOUD_SCHEMES, *WEB_SCHEMES)):
        return uri
    if "://" in uri and not uri.startswith("file://"):
        raise JobError(
            f"Label Studio cannot load image {uri!r}: pass an image root it can resolve "
            f"(s3://…, gs://…, azure-blob://…, http(s)://… or {LOCAL_FILES}<folder>)"
        )
    path = uri.removeprefix("file://")
    if not path.endswith("/" + file_name):
        raise JobError(f"image {uri!r} does not end with its file_name {file_name!r}; pass an image root")
    folder = posixpath.basename(path[: -len(file_name) - 1])
    return LOCAL_FILES + quote(posixpath.join(folder, file_name))


def labeling_config(labels: Sequence[ExportLabel]) -> str:
    """Label Studio's labeling config (XML) for brush masks of ``labels`` on an image."""
    lines = [
        "<View>",
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" zoomControl="true"/>',
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">',
        *(f"    <Label value={quoteattr(lab.name)} background={quoteattr(lab.hex)}/>" for lab in labels),
        "  </BrushLabels>",
        "</View>",
    ]
    return "\n".join(lines) + "\n"


def model_version(model: dict[str, Any]) -> str:
    """``<model name>@<first 12 hex digits of the weights' SHA-256>`` (the source where none was hashed)."""
    weights = model.get("weights") or {}
    sha = weights.get("sha256")
    return f"{model['name']}@{sha[:12] if sha else weights.get('source', 'unknown')}"


def image_columns(out: OutDir) -> list[str]:
    with out.fs.open(out.path(IMAGES), "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def iter_images_with_masks(
    out: OutDir, keep: np.ndarray | None = None, columns: Sequence[str] = ("image_id", "file_name", "uri")
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Images that have a size, in image_id order, each with its masks.parquet rows.

    Joins images.parquet and masks.parquet (both sorted by image_id) in one pass. ``keep``:
    the image_ids to yield (others are skipped, their masks never converted to Python).
    """
    wanted = np.sort(keep) if keep is not None else None
    masks = _iter_mask_rows(out, wanted)
    pending = next(masks, None)
    cols = list(dict.fromkeys([*columns, "image_id", "width", "height"]))
    previous = None
    with out.fs.open(out.path(IMAGES), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_CHUNK, columns=cols):
            batch = batch.filter(pc.is_valid(batch.column("width")))
            if wanted is not None:
                batch = batch.filter(_in_sorted(batch.column("image_id").to_numpy(), wanted))
            for im in batch.to_pylist():
                if previous is not None and im["image_id"] <= previous:
                    raise JobError(f"{IMAGES} is not sorted by image_id ({im['image_id']} after {previous})")
                previous = im["image_id"]
                own = []
                while pending is not None and pending["image_id"] <= im["image_id"]:
                    if pending["image_id"] == im["image_id"]:
                        own.append(pending)
                    pending = next(masks, None)
                yield im, own


def _in_sorted(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``(N,) bool``: which of ``ids`` are in the sorted array ``wanted`` (a binary search each)."""
    if not len(wanted):
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
    return wanted[pos] == ids


def _iter_mask_rows(out: OutDir, wanted: np.ndarray | None) -> Iterator[dict[str, Any]]:
    previous = None
    with out.fs.open(out.path(MASKS), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_CHUNK):
            ids = batch.column("image_id").to_numpy()
            if len(ids) and ((previous is not None and ids[0] < previous) or (np.diff(ids) < 0).any()):
                raise JobError(f"{MASKS} is not sorted by image_id; rewrite the run with `segbatch export`")
            if len(ids):
                previous = ids[-1]
            if wanted is not None:
                batch = batch.filter(_in_sorted(ids, wanted))
            yield from batch.to_pylist()


def mask_filter(
    labels: Sequence[ExportLabel], min_area: int, counts: dict[str, int]
) -> Callable[[dict[str, Any]], bool]:
    """A predicate on mask rows: exported class and at least ``min_area`` pixels (counts what it drops)."""
    names = {lab.name for lab in labels}

    def keep(m: dict[str, Any]) -> bool:
        if m["category"] not in names:
            counts["other_class"] += 1
            return False
        if m["area"] < min_area:
            counts["below_min_area"] += 1
            return False
        return True

    return keep


def _task(
    im: dict[str, Any], masks: list[dict[str, Any]], version: str, image_root: str | None, task: str
) -> dict[str, Any]:
    h, w = im["height"], im["width"]
    results = []
    for m in masks:
        size = list(m["segmentation"]["size"])
        if size != [h, w]:
            raise JobError(f"mask {m['id']} of image {im['image_id']} is {size[0]}×{size[1]}, the image {h}×{w}")
        result: dict[str, Any] = {
            "id": f"m{m['id']}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle(decode_rle(m["segmentation"])), "brushlabels": [m["category"]]},
        }
        if task == "instance" and m["score"] is not None:
            result["score"] = m["score"]
        results.append(result)
    prediction: dict[str, Any] = {"model_version": version, "result": results}
    data: dict[str, Any] = {
        TO_NAME: image_url(im["uri"], im["file_name"], image_root),
        "image_id": im["image_id"],
        "file_name": im["file_name"],
    }
    if im.get("confidence") is not None:
        prediction["score"] = im["confidence"]
        data["confidence"] = im["confidence"]
    return {"data": data, "predictions": [prediction]}


def write_label_studio(out: OutDir, options: LabelStudioOptions) -> dict[str, int]:
    """Write ``label-studio/tasks.json`` and ``label-studio/config.xml``; returns counts.

    Counts: ``tasks``, ``results`` (brush masks), ``other_class`` and ``below_min_area``
    (masks left out), ``no_size`` (undecodable images, which get no task).
    """
    model = out.read_json(JOB)["model"]
    labels = export_labels(model["categories"], model["background"], options.classes)
    version = model_version(model)
    order = select_images(out, options.order, options.limit, options.only)
    counts = {"tasks": 0, "results": 0, "other_class": 0, "below_min_area": 0, "no_size": 0}
    keep_mask = mask_filter(labels, options.min_area, counts)
    columns = ["image_id", "file_name", "uri", *(["confidence"] if "confidence" in image_columns(out) else [])]

    def tasks() -> Iterator[tuple[int, bytes]]:
        for im, masks in iter_images_with_masks(out, keep=order, columns=columns):
            kept = [m for m in masks if keep_mask(m)]
            counts["results"] += len(kept)
            yield im["image_id"], dumps(_task(im, kept, version, options.image_root, model["task"])).encode()

    fsio.write_bytes_atomic(out.fs, out.path(LABEL_STUDIO_DIR, CONFIG), labeling_config(labels).encode())
    with fsio.atomic_open(out.fs, out.path(LABEL_STUDIO_DIR, TASKS)) as f:
        f.write(b"[")
        if resolved_order(options.order, options.only) == "image-id":
            for _, text in tasks():
                _append(f, text, counts)
        else:
            _write_reordered(f, tasks(), order, counts)
        f.write(b"\n]\n")
    counts["no_size"] = _count_unsized(out)
    return counts


def _append(f: IO[bytes], text: bytes, counts: dict[str, int]) -> None:
    f.write((b"\n" if counts["tasks"] == 0 else b",\n") + text)
    counts["tasks"] += 1


def _write_reordered(
    f: IO[bytes], tasks: Iterator[tuple[int, bytes]], order: np.ndarray, counts: dict[str, int]
) -> None:
    """Tasks come in image_id order; write them in ``order`` through a local spill file.

    Memory: two int64 per task (offset and length in the spill file), never the tasks.
    """
    ascending = np.sort(order)
    offsets = np.zeros(len(order), np.int64)
    lengths = np.zeros(len(order), np.int64)
    with tempfile.TemporaryFile(prefix="segbatch-ls-") as spill:
        pos = 0
        for k, (image_id, text) in enumerate(tasks):
            assert ascending[k] == image_id, (ascending[k], image_id)
            spill.write(text)
            offsets[k], lengths[k] = pos, len(text)
            pos += len(text)
        rank = np.searchsorted(ascending, order)  # where each task of the output order sits in the spill
        for k in rank:
            spill.seek(int(offsets[k]))
            _append(f, spill.read(int(lengths[k])), counts)


def _count_unsized(out: OutDir) -> int:
    with out.fs.open(out.path(IMAGES), "rb") as f:
        table = pq.read_table(f, columns=["width"])
    return int(table.column("width").null_count)
