"""List images, pair each with its label, and freeze the result as the manifest.

Manifest columns (:data:`MANIFEST_SCHEMA`): ``image_id`` (stable: the COCO id when labels
are COCO, else 1..N by sorted path), ``file_name`` (path relative to the input root),
``uri`` (full URL), ``label_uri`` (mask PNG, or null), ``label_record`` (the image's COCO
annotations as JSON, or null).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.labels import CocoLabels, load_coco

MANIFEST_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("label_uri", pa.string()),
    pa.field("label_record", pa.string()),
])


@dataclass(frozen=True)
class Plan:
    """What a run covers."""

    manifest: pa.Table
    unmatched_labels: int  # labels (PNG files / COCO images) that no listed image uses


def _strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


def list_images(fs: Any, root: str, input_url: str, extensions: tuple[str, ...],
                exclude: str | None = None) -> list[str]:
    """Sorted paths (relative to ``root``) of files with an image extension.

    Raises :class:`JobError` if the input is missing, not a folder, or holds no image.
    ``exclude`` is a sub-folder (e.g. mask PNGs kept inside the input) that is not listed.
    """
    fsio.require_shared_folder(fs, input_url, "input")
    if not fs.exists(root):
        raise JobError(f"input {input_url!r} does not exist")
    if not fs.isdir(root):
        raise JobError(f"input {input_url!r} is a file; pass the folder (or prefix) that holds the images")
    rels = []
    prefix = root.rstrip("/") + "/"
    skip = exclude.rstrip("/") + "/" if exclude else None
    for path in fs.find(root):
        if skip and path.startswith(skip):
            continue
        if posixpath.splitext(path)[1].lower() in extensions:
            rels.append(path[len(prefix):])
    if not rels:
        raise JobError(f"input {input_url!r} holds no images with extensions {', '.join(extensions)}")
    return sorted(rels)


@dataclass(frozen=True)
class LabelSource:
    """Where the labels are and what they are: mask PNGs (a folder) or a COCO JSON file."""

    url: str
    kind: str  # "png" | "coco"
    fs: Any
    root: str
    coco: CocoLabels | None  # parsed when kind == "coco"


def open_labels(labels_url: str, storage_options: Mapping[str, Any] | None = None) -> LabelSource:
    """Check the labels exist and say what they are; parses a COCO file."""
    fs, root = fsio.resolve(labels_url, storage_options)
    if not fs.exists(root):
        raise JobError(f"labels {labels_url!r} do not exist; pass a folder of mask PNGs or a COCO JSON file")
    if fs.isdir(root):
        fsio.require_shared_folder(fs, labels_url, "labels")  # mask PNGs are read by the workers
        return LabelSource(labels_url, "png", fs, root, None)
    if not root.lower().endswith(".json"):
        raise JobError(f"labels {labels_url!r} are a file but not a COCO .json; pass a COCO JSON or a folder of mask PNGs")
    return LabelSource(labels_url, "coco", fs, root, load_coco(fs.cat_file(root), labels_url))


def build_plan(input_url: str, labels: LabelSource | None, extensions: tuple[str, ...],
               storage_options: Mapping[str, Any] | None = None) -> Plan:
    """List the input, pair labels, and build the manifest table."""
    fs, root = fsio.resolve(input_url, storage_options)
    nested_masks = labels is not None and labels.kind == "png" and labels.fs.protocol == fs.protocol
    rels = list_images(fs, root, input_url, extensions, exclude=labels.root if nested_masks else None)
    uris = [fsio.to_url(fs, fsio.join(root, r)) for r in rels]
    n = len(rels)
    label_uris: list[str | None] = [None] * n
    records: list[str | None] = [None] * n
    ids = list(range(1, n + 1))
    unmatched = 0
    if labels is not None and labels.kind == "png":
        label_uris, unmatched = _pair_masks(labels.fs, labels.root, rels)
    elif labels is not None and labels.coco is not None:
        ids, records, unmatched = _pair_coco(labels.coco, rels)
    manifest = pa.table({
        "image_id": pa.array(ids, pa.int64()),
        "file_name": pa.array(rels, pa.string()),
        "uri": pa.array(uris, pa.string()),
        "label_uri": pa.array(label_uris, pa.string()),
        "label_record": pa.array(records, pa.string()),
    }, schema=MANIFEST_SCHEMA)
    return Plan(manifest=manifest, unmatched_labels=unmatched)


def _pair_masks(fs: Any, root: str, rels: list[str]) -> tuple[list[str | None], int]:
    """Match images to mask PNGs by relative path without extension, else by unique stem."""
    prefix = root.rstrip("/") + "/"
    masks = [p[len(prefix):] for p in fs.find(root) if p.lower().endswith(".png")]
    by_rel = {_strip_ext(m): m for m in masks}
    by_stem: dict[str, list[str]] = {}
    for m in masks:
        by_stem.setdefault(posixpath.basename(_strip_ext(m)), []).append(m)
    out: list[str | None] = []
    used = set()
    for rel in rels:
        m = by_rel.get(_strip_ext(rel))
        if m is None:
            cands = by_stem.get(posixpath.basename(_strip_ext(rel)), [])
            m = cands[0] if len(cands) == 1 else None
        if m is not None:
            used.add(m)
        out.append(None if m is None else fsio.to_url(fs, fsio.join(root, m)))
    return out, len(set(masks) - used)


def _pair_coco(coco: CocoLabels, rels: list[str]) -> tuple[list[int], list[str | None], int]:
    """Match images to COCO entries by file_name (relative path, else unique basename)."""
    by_base: dict[str, list[str]] = {}
    for name in coco.records:
        by_base.setdefault(posixpath.basename(name), []).append(name)
    ids: list[int | None] = []
    records: list[str | None] = []
    used = set()
    for rel in rels:
        name = rel if rel in coco.records else None
        if name is None:
            cands = by_base.get(posixpath.basename(rel), [])
            name = cands[0] if len(cands) == 1 else None
        if name is None:
            ids.append(None)
            records.append(None)
            continue
        used.add(name)
        rec = coco.records[name]
        ids.append(rec["id"])
        records.append(json.dumps(rec, separators=(",", ":")))
    # Images the COCO file does not list get ids above its largest, in path order.
    next_id = max([r["id"] for r in coco.records.values()], default=0) + 1
    final_ids = []
    for i in ids:
        if i is None:
            i, next_id = next_id, next_id + 1
        final_ids.append(i)
    return final_ids, records, len(coco.records) - len(used)
