"""List images, pair each with its label, and freeze the result as the manifest.

Manifest columns (:data:`MANIFEST_SCHEMA`): ``image_id`` (stable: the COCO id when labels
are COCO, else 1..N by sorted path), ``file_name`` (path relative to the input root),
``uri`` (full URL), ``label_uri`` (mask PNG, or null), ``label_record`` (the image's COCO
annotations as JSON, or null), ``label_note`` (why an image has no label although a
candidate exists, e.g. a stem shared by several images; else null).

Hidden entries (a name starting with ``.``: ``.DS_Store``, macOS ``._a.jpg``, ``.thumbs/``)
are skipped everywhere, and every skip is counted (:class:`Skipped`).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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
        pa.field("label_note", pa.string()),
    ]
)

EXAMPLES = 3  # example names kept per kind of skip, for messages


@dataclass
class Skipped:
    """Files the listing left out, by reason, with a few example names each."""

    hidden: int = 0  # names (or a folder on the way) starting with "."
    other_extension: int = 0  # not one of the image extensions
    broken_links: int = 0  # symbolic links to nothing
    examples: dict[str, list[str]] = field(default_factory=dict)
    extensions: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, rel: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(rel)

    def describe(self) -> str | None:
        """One line for the log, or None when nothing was skipped."""
        parts = []
        if self.hidden:
            parts.append(f"{self.hidden} hidden (name starting with '.', e.g. {', '.join(self.examples['hidden'])})")
        if self.other_extension:
            common = ", ".join(f"{ext or '(none)'} ×{n}" for ext, n in self.extensions.most_common(4))
            parts.append(f"{self.other_extension} with other extensions ({common})")
        if self.broken_links:
            parts.append(f"{self.broken_links} broken symbolic links (e.g. {', '.join(self.examples['broken_links'])})")
        return "skipped " + "; ".join(parts) if parts else None

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "other_extension": self.other_extension, "broken_links": self.broken_links}


@dataclass(frozen=True)
class Plan:
    """What a run covers."""

    manifest: pa.Table
    unmatched_labels: int  # labels (PNG files / COCO images) that no listed image uses
    skipped: Skipped = field(default_factory=Skipped)
    ambiguous: int = 0  # images left unpaired because their stem/basename is not unique


def _strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


def is_hidden(rel: str) -> bool:
    """Whether a relative path has a component starting with ``.`` (a hidden file or folder)."""
    return any(part.startswith(".") for part in rel.split("/"))


PAGE = 10_000  # paths held as Python strings at once while listing


def iter_paths(fs: Any, root: str, page: int | None = None, skipped: Skipped | None = None) -> Iterator[list[str]]:
    """Every file path under ``root`` (recursive, any order), ``page`` paths at a time.

    Streams instead of listing everything at once: S3 one ListObjectsV2 page (≤ 1000
    keys) after another, local folders through ``os.scandir`` (hidden folders are not
    entered; symbolic links are followed, and a link that loops raises :class:`JobError`),
    and any other filesystem one directory at a time (``fs.walk``).
    """
    page = page or PAGE
    if _is_s3(fs) and hasattr(fs, "_call_s3"):
        yield from _s3_pages(fs, root, min(page, 1000))
        return
    buf: list[str] = []
    entries = (
        _scandir_files(root, skipped if skipped is not None else Skipped())
        if fsio.is_local(fs)
        else (fsio.join(d, f) for d, _, files in fs.walk(root) for f in files)
    )
    for path in entries:
        buf.append(path)
        if len(buf) == page:
            yield buf
            buf = []
    if buf:
        yield buf


def _is_s3(fs: Any) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _scandir_files(root: str, skipped: Skipped) -> Iterator[str]:
    """Files under ``root``; hidden folders are counted, not entered; links are followed once."""
    real_root = os.path.realpath(root)
    seen = {_dir_key(root)}
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                    is_file = not is_dir and entry.is_file(follow_symlinks=True)
                except OSError as err:  # ELOOP: a link that resolves to itself
                    raise JobError(_loop_message(root, entry.path, err)) from None
                if entry.name.startswith(".") and (is_dir or is_file):
                    skipped.add("hidden", rel + ("/" if is_dir else ""))
                elif is_dir:
                    key = _dir_key(entry.path)
                    if key in seen:  # a link back to a folder already listed: a cycle
                        target = os.path.relpath(os.path.realpath(entry.path), real_root)
                        raise JobError(
                            f"input {root!r}: the symbolic link {rel!r} leads back to {target!r}, a folder already "
                            "listed (a loop); remove the link, or point --input at a folder without it"
                        )
                    seen.add(key)
                    stack.append(entry.path)
                elif is_file:
                    yield entry.path
                elif entry.is_symlink():
                    skipped.add("broken_links", rel)


def _dir_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _loop_message(root: str, path: str, err: OSError) -> str:
    rel = os.path.relpath(path, root)
    return (
        f"input {root!r}: cannot follow the symbolic link {rel!r} ({err.strerror}): it loops; "
        "remove the link, or point --input at a folder without it"
    )


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
    fs: Any,
    root: str,
    input_url: str,
    extensions: tuple[str, ...],
    exclude: str | None = None,
    page: int | None = None,
    skipped: Skipped | None = None,
) -> pa.Table:
    """Image files under ``root``: a table of ``file_name`` (relative to ``root``) and ``uri``, sorted by name.

    Raises :class:`JobError` if the input is missing, not a folder, or holds no image.
    ``exclude`` is a sub-folder (e.g. mask PNGs kept inside the input) that is not listed.
    Hidden entries and other extensions are counted into ``skipped``.
    Python holds one page of paths at a time; the table is Arrow memory.
    """
    fsio.require_shared_folder(fs, input_url, "input")
    if not fs.exists(root):
        raise JobError(f"input {input_url!r} does not exist")
    if not fs.isdir(root):
        raise JobError(f"input {input_url!r} is a file; pass the folder (or prefix) that holds the images")
    skipped = skipped if skipped is not None else Skipped()
    prefix = root.rstrip("/") + "/"
    skip = exclude.rstrip("/") + "/" if exclude else None
    chunks = []
    for paths in iter_paths(fs, root, page, skipped):
        rels = []
        for p in paths:
            if skip and p.startswith(skip):
                continue
            rel = p[len(prefix) :]
            ext = posixpath.splitext(rel)[1].lower()
            if is_hidden(rel):
                skipped.add("hidden", rel)
            elif ext not in extensions:
                skipped.add("other_extension", rel)
                skipped.extensions[ext] += 1
            else:
                rels.append(rel)
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
        raise JobError(
            f"input {input_url!r} holds no images with extensions {', '.join(extensions)}"
            + (f" ({skipped.describe()})" if skipped.describe() else "")
        )
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
    skipped = Skipped()
    images = list_images(fs, root, input_url, extensions, exclude=exclude, skipped=skipped)
    n = images.num_rows
    names = images.column("file_name")
    label_uris: pa.Array = pa.nulls(n, pa.string())
    records: pa.Array = pa.nulls(n, pa.string())
    notes: pa.Array = pa.nulls(n, pa.string())
    ids: pa.Array = pa.array(range(1, n + 1), pa.int64())
    unmatched = 0
    if labels is not None and labels.kind == "png":
        label_uris, notes, unmatched = _pair_masks(labels.fs, labels.root, names)
    elif labels is not None and labels.coco is not None:
        ids, records, notes, unmatched = _pair_coco(labels.coco, names)
    manifest = pa.table(
        {
            "image_id": ids,
            "file_name": names,
            "uri": images.column("uri"),
            "label_uri": label_uris,
            "label_record": records,
            "label_note": notes,
        },
        schema=MANIFEST_SCHEMA,
    )
    ambiguous = n - notes.null_count
    return Plan(manifest=manifest, unmatched_labels=unmatched, skipped=skipped, ambiguous=ambiguous)


def with_manifest_schema(table: pa.Table) -> pa.Table:
    """A manifest frozen by an earlier version, with the columns added since (null) — resume keeps working."""
    for f in MANIFEST_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def _keys(rels: list[str]) -> tuple[list[str], list[str]]:
    """Relative paths → (path without extension, its basename): the two ways a mask matches."""
    keys = [_strip_ext(r) for r in rels]
    return keys, [posixpath.basename(k) for k in keys]


def _counts(table: pa.Table, key: str, name: str) -> pa.Table:
    """``key`` → how many rows of ``table`` have it, as a table (``key``, ``name``)."""
    return table.group_by(key).aggregate([(key, "count")]).rename_columns([key, name])


def _pair_masks(fs: Any, root: str, names: pa.ChunkedArray) -> tuple[pa.Array, pa.Array, int]:
    """Match images to mask PNGs by relative path without extension, else by stem.

    A stem pairs an image and a mask only when exactly one image and exactly one mask have it:
    ``a/dup.jpg`` and ``b/dup.jpg`` never share one ``dup.png``. Unpaired images whose stem
    was ambiguous get a ``label_note`` saying why. Both sides are Arrow tables joined by Arrow
    (hash joins), so millions of images and masks are paired without a Python object per file.
    Returns (label URIs, notes, masks no image uses).
    """
    prefix = root.rstrip("/") + "/"
    chunks = []
    for paths in iter_paths(fs, root):
        rels = [r for r in (p[len(prefix) :] for p in paths) if r.lower().endswith(".png") and not is_hidden(r)]
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
    empty = pa.array([], pa.string())
    masks = pa.concat_tables(chunks) if chunks else pa.table({"mask": empty, "key": empty, "stem": empty})
    by_key = masks.group_by("key").aggregate([("mask", "min")]).rename_columns(["key", "by_key"])
    mask_stems = (
        masks.group_by("stem")
        .aggregate([("mask", "count"), ("mask", "min")])
        .rename_columns(["stem", "masks", "by_stem"])
    )
    img_chunks = []
    for start in range(0, len(names), PAGE):
        keys, img_stems = _keys(names.slice(start, PAGE).to_pylist())
        img_chunks.append(pa.table({"key": pa.array(keys, pa.string()), "stem": pa.array(img_stems, pa.string())}))
    images = pa.concat_tables(img_chunks).append_column("row", pa.array(range(len(names)), pa.int64()))
    images = images.join(_counts(images, "stem", "images"), "stem")
    joined = images.join(by_key, "key", join_type="left outer").join(mask_stems, "stem", join_type="left outer")
    joined = joined.sort_by("row")
    unique = pc.and_(pc.equal(joined.column("images"), 1), pc.equal(joined.column("masks"), 1))
    by_stem = pc.if_else(pc.fill_null(unique, False), joined.column("by_stem"), pa.scalar(None, pa.string()))
    chosen = pc.coalesce(joined.column("by_key"), by_stem)
    url_prefix = fsio.to_url(fs, prefix)
    uris = pc.binary_join_element_wise(url_prefix, chosen, "")  # null where no mask matched
    stem = joined.column("stem")
    many_masks = pc.binary_join_element_wise(
        "its stem '", stem, "' matches ", pc.cast(joined.column("masks"), pa.string()),
        " mask PNGs; a mask pairs by stem only when its stem is unique", "",
    )  # fmt: skip
    many_images = pc.binary_join_element_wise(
        "its stem '", stem, "' is shared by ", pc.cast(joined.column("images"), pa.string()),
        " images; a mask pairs by stem only when one image has that stem", "",
    )  # fmt: skip
    no_key = pc.is_null(joined.column("by_key"))
    note = pc.if_else(
        pc.and_(no_key, pc.greater(pc.fill_null(joined.column("masks"), 0), 1)),
        many_masks,
        pc.if_else(
            pc.and_(
                no_key,
                pc.and_(pc.equal(pc.fill_null(joined.column("masks"), 0), 1), pc.greater(joined.column("images"), 1)),
            ),
            many_images,
            pa.scalar(None, pa.string()),
        ),
    )
    used = pc.count_distinct(chosen).as_py()
    return uris.combine_chunks(), note.combine_chunks(), masks.num_rows - used


def _pair_coco(coco: CocoLabels, names: pa.ChunkedArray) -> tuple[pa.Array, pa.Array, pa.Array, int]:
    """Match images to COCO entries by file_name (relative path), else by basename when exactly
    one listed image and exactly one COCO entry have it (so no COCO entry, hence no image id,
    is ever used twice). Images the COCO file does not list get ids above its largest, in path
    order. Returns (image ids, label records, notes, COCO entries no image uses)."""
    by_base: dict[str, list[str]] = {}
    for key in coco.records:
        by_base.setdefault(posixpath.basename(key), []).append(key)
    bases = pa.table({"base": pc.replace_substring_regex(names, r"^.*/", "")})
    counts = _counts(bases, "base", "n")
    shared = set(counts.filter(pc.greater(counts.column("n"), 1)).column("base").to_pylist())
    next_id = max([r["id"] for r in coco.records.values()], default=0) + 1
    used: set[str] = set()
    id_chunks, record_chunks, note_chunks = [], [], []
    for start in range(0, len(names), PAGE):
        ids: list[int] = []
        records: list[str | None] = []
        notes: list[str | None] = []
        for rel in names.slice(start, PAGE).to_pylist():
            base = posixpath.basename(rel)
            note = None
            name: str | None = rel if rel in coco.records else None
            if name is None:
                cands = by_base.get(base, [])
                if len(cands) > 1:
                    note = f"its basename {base!r} names {len(cands)} images in the COCO file"
                elif cands and base in shared:
                    note = f"its basename {base!r} is shared by several listed images"
                elif cands:  # one COCO entry, one listed image: an image matching it exactly would share the basename
                    name = cands[0]
            if name is None or name in used:
                ids.append(next_id)
                next_id += 1
                records.append(None)
                notes.append(note)
                continue
            used.add(name)
            rec = coco.records[name]
            ids.append(rec["id"])
            records.append(json.dumps(rec, separators=(",", ":")))
            notes.append(None)
        id_chunks.append(pa.array(ids, pa.int64()))
        record_chunks.append(pa.array(records, pa.string()))
        note_chunks.append(pa.array(notes, pa.string()))
    return (
        pa.concat_arrays(id_chunks),
        pa.concat_arrays(record_chunks),
        pa.concat_arrays(note_chunks),
        len(coco.records) - len(used),
    )
