"""List images, pair each with its label, and freeze the result as the manifest.

Manifest columns (:data:`MANIFEST_SCHEMA`): ``image_id`` (stable: the COCO id when labels
are COCO, else 1..N by sorted path), ``file_name`` (path relative to the input root),
``uri`` (full URL), ``label_uri`` (mask PNG, or null), ``label_record`` (the image's COCO
annotations as JSON, or null).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.labels import CocoLabels, load_coco

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("label_uri", pa.string()),
        pa.field("label_record", pa.string()),
    ]
)


@dataclass(frozen=True)
class Plan:
    """What a run covers."""

    manifest: pa.Table
    unmatched_labels: int  # labels (PNG files / COCO images) that no listed image uses


def _strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


PAGE = 10_000  # paths held as Python strings at once while listing


def iter_paths(fs: Any, root: str, page: int | None = None) -> Iterator[list[str]]:
    """Every file path under ``root`` (recursive, any order), ``page`` paths at a time.

    Streams instead of listing everything at once: S3 one ListObjectsV2 page (≤ 1000
    keys) after another, local folders through ``os.scandir``, and any other filesystem
    one directory at a time (``fs.walk``).
    """
    page = page or PAGE
    if _is_s3(fs) and hasattr(fs, "_call_s3"):
        yield from _s3_pages(fs, root, min(page, 1000))
        return
    buf: list[str] = []
    if fsio.is_local(fs):
        entries: Iterable[str] = _scandir_files(root)
    else:
        entries = (fsio.join(d, f) for d, _, files in fs.walk(root) for f in files)
    for path in entries:
        buf.append(path)
        if len(buf) == page:
            yield buf
            buf = []
    if buf:
        yield buf


def _is_s3(fs: Any) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _scandir_files(root: str) -> Iterator[str]:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield entry.path


def _s3_pages(fs: Any, root: str, max_keys: int) -> Iterator[list[str]]:
    """Keys under ``root``, one ListObjectsV2 page (``max_keys`` ≤ 1000 keys) per step, in key order.

    Pages are requested one at a time through s3fs's request path (its retries, its
    credentials and endpoint), so only one page is ever in memory.
    """
    from fsspec.asyn import sync

    bucket, _, prefix = root.partition("/")
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": prefix.rstrip("/") + "/" if prefix else "",
        "MaxKeys": max_keys,
        **getattr(fs, "req_kw", {}),
    }
    while True:
        out = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        names = [f"{bucket}/{c['Key']}" for c in out.get("Contents", []) if not c["Key"].endswith("/")]
        if names:
            yield names
        if not out.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = out["NextContinuationToken"]


def list_images(
    fs: Any, root: str, input_url: str, extensions: tuple[str, ...], exclude: str | None = None, page: int | None = None
) -> pa.Table:
    """Image files under ``root``: a table of ``file_name`` (relative to ``root``) and ``uri``, sorted by name.

    Raises :class:`JobError` if the input is missing, not a folder, or holds no image.
    ``exclude`` is a sub-folder (e.g. mask PNGs kept inside the input) that is not listed.
    Python holds one page of paths at a time; the table is Arrow memory.
    """
    fsio.require_shared_folder(fs, input_url, "input")
    if not fs.exists(root):
        raise JobError(f"input {input_url!r} does not exist")
    if not fs.isdir(root):
        raise JobError(f"input {input_url!r} is a file; pass the folder (or prefix) that holds the images")
    prefix = root.rstrip("/") + "/"
    skip = exclude.rstrip("/") + "/" if exclude else None
    chunks = []
    for paths in iter_paths(fs, root, page):
        rels = [
            p[len(prefix) :]
            for p in paths
            if posixpath.splitext(p)[1].lower() in extensions and not (skip and p.startswith(skip))
        ]
        if rels:
            chunks.append(
                pa.table(
                    {
                        "file_name": pa.array(rels, pa.string()),
                        "uri": pa.array([fsio.to_url(fs, prefix + r) for r in rels], pa.string()),
                    }
                )
            )
    if not chunks:
        raise JobError(f"input {input_url!r} holds no images with extensions {', '.join(extensions)}")
    # Arrow sorts UTF-8 bytes, which is code-point order: the same order as Python's sorted().
    return pa.concat_tables(chunks).sort_by("file_name").combine_chunks()


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
        raise JobError(
            f"labels {labels_url!r} are a file but not a COCO .json; pass a COCO JSON or a folder of mask PNGs"
        )
    return LabelSource(labels_url, "coco", fs, root, load_coco(fs.cat_file(root), labels_url))


def build_plan(
    input_url: str,
    labels: LabelSource | None,
    extensions: tuple[str, ...],
    storage_options: Mapping[str, Any] | None = None,
) -> Plan:
    """List the input, pair labels, and build the manifest table (Arrow; paths never all in Python at once)."""
    fs, root = fsio.resolve(input_url, storage_options)
    exclude = labels.root if labels is not None and labels.kind == "png" and labels.fs.protocol == fs.protocol else None
    images = list_images(fs, root, input_url, extensions, exclude=exclude)
    n = images.num_rows
    names = images.column("file_name")
    label_uris: pa.Array = pa.nulls(n, pa.string())
    records: pa.Array = pa.nulls(n, pa.string())
    ids: pa.Array = pa.array(range(1, n + 1), pa.int64())
    unmatched = 0
    if labels is not None and labels.kind == "png":
        label_uris, unmatched = _pair_masks(labels.fs, labels.root, names)
    elif labels is not None and labels.coco is not None:
        ids, records, unmatched = _pair_coco(labels.coco, names)
    manifest = pa.table(
        {
            "image_id": ids,
            "file_name": names,
            "uri": images.column("uri"),
            "label_uri": label_uris,
            "label_record": records,
        },
        schema=MANIFEST_SCHEMA,
    )
    return Plan(manifest=manifest, unmatched_labels=unmatched)


def _keys(rels: list[str]) -> tuple[list[str], list[str]]:
    """Relative paths → (path without extension, its basename): the two ways a mask matches."""
    keys = [_strip_ext(r) for r in rels]
    return keys, [posixpath.basename(k) for k in keys]


def _pair_masks(fs: Any, root: str, names: pa.ChunkedArray) -> tuple[pa.Array, int]:
    """Match images to mask PNGs by relative path without extension, else by unique stem.

    Both sides are Arrow tables joined by Arrow (hash joins), so millions of images and
    masks are paired without a Python object per file.
    """
    prefix = root.rstrip("/") + "/"
    chunks = []
    for paths in iter_paths(fs, root):
        rels = [p[len(prefix) :] for p in paths if p.lower().endswith(".png")]
        keys, stems = _keys(rels)
        chunks.append(
            pa.table(
                {
                    "mask": pa.array(rels, pa.string()),
                    "key": pa.array(keys, pa.string()),
                    "stem": pa.array(stems, pa.string()),
                }
            )
        )
    masks = (
        pa.concat_tables(chunks)
        if chunks
        else pa.table(
            {"mask": pa.array([], pa.string()), "key": pa.array([], pa.string()), "stem": pa.array([], pa.string())}
        )
    )
    by_key = masks.group_by("key").aggregate([("mask", "min")]).rename_columns(["key", "by_key"])
    stems = masks.group_by("stem").aggregate([("mask", "count"), ("mask", "min")])
    by_stem = (
        stems.filter(pc.equal(stems.column("mask_count"), 1))
        .select(["stem", "mask_min"])
        .rename_columns(["stem", "by_stem"])
    )
    img_chunks = []
    for start in range(0, len(names), PAGE):
        keys, img_stems = _keys(names.slice(start, PAGE).to_pylist())
        img_chunks.append(pa.table({"key": pa.array(keys, pa.string()), "stem": pa.array(img_stems, pa.string())}))
    images = pa.concat_tables(img_chunks).append_column("row", pa.array(range(len(names)), pa.int64()))
    joined = images.join(by_key, "key", join_type="left outer").join(by_stem, "stem", join_type="left outer")
    joined = joined.sort_by("row")
    chosen = pc.coalesce(joined.column("by_key"), joined.column("by_stem"))
    url_prefix = fsio.to_url(fs, prefix)
    uris = pc.binary_join_element_wise(url_prefix, chosen, "")  # null where no mask matched
    used = pc.count_distinct(chosen).as_py()
    return uris.combine_chunks(), masks.num_rows - used


def _pair_coco(coco: CocoLabels, names: pa.ChunkedArray) -> tuple[pa.Array, pa.Array, int]:
    """Match images to COCO entries by file_name (relative path, else unique basename).

    Images the COCO file does not list get ids above its largest, in path order.
    """
    by_base: dict[str, list[str]] = {}
    for key in coco.records:
        by_base.setdefault(posixpath.basename(key), []).append(key)
    next_id = max([r["id"] for r in coco.records.values()], default=0) + 1
    used = set()
    id_chunks, record_chunks = [], []
    for start in range(0, len(names), PAGE):
        ids: list[int] = []
        records: list[str | None] = []
        for rel in names.slice(start, PAGE).to_pylist():
            name: str | None = rel if rel in coco.records else None
            if name is None:
                cands = by_base.get(posixpath.basename(rel), [])
                name = cands[0] if len(cands) == 1 else None
            if name is None:
                ids.append(next_id)
                next_id += 1
                records.append(None)
                continue
            used.add(name)
            rec = coco.records[name]
            ids.append(rec["id"])
            records.append(json.dumps(rec, separators=(",", ":")))
        id_chunks.append(pa.array(ids, pa.int64()))
        record_chunks.append(pa.array(records, pa.string()))
    return (pa.concat_arrays(id_chunks), pa.concat_arrays(record_chunks), len(coco.records) - len(used))
