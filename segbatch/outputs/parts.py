"""Part files: committing them, reading them merged, and compacting them with bounded fan-in.

Every part file (``parts/*.parquet``, :data:`segbatch.outputs.schema.PART_SCHEMA`) is sorted by
``image_id``, so any set of parts merges by a k-way heap merge holding one record batch
per open file. A retried task may have committed an image twice; both copies are equal,
and every reader here keeps the first.

Compaction rewrites many small parts (one per write task) into few larger ones, at most
``fan_in`` files at a time, so that neither it nor finalize ever opens more than
``fan_in`` files at once, whatever the number of images. It is crash-safe without any
coordination: a merged part is committed atomically before its sources are deleted, and a
crash in between only leaves duplicates, which the merge drops.
"""

from __future__ import annotations

import heapq
import io
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segbatch.io import fs as fsio
from segbatch.outputs.folder import PARTS, OutDir
from segbatch.outputs.schema import PART_SCHEMA

log = logging.getLogger(__name__)

FAN_IN = 64  # files open at once while merging
TARGET_ROWS = 4096  # parts with fewer rows are merged with their neighbours
_READ_BATCH = 64  # rows per record batch read from each open part: fan_in × this rows live at once
_ROW_GROUP = 1024  # rows per row group written
# A compaction group up to this many rows is merged in memory (plan_compaction's groups of small
# parts stay under 2 × TARGET_ROWS); larger ones (the fan-in fallback) stream row by row.
_IN_MEMORY_ROWS = 2 * TARGET_ROWS


def write_part(table: pa.Table, parts_url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Commit one part file atomically under ``parts_url``; rows sorted by image_id. Returns its name."""
    table = table.cast(PART_SCHEMA).sort_by("image_id")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    fs, root = fsio.resolve(parts_url, storage_options)
    name = f"part-{uuid.uuid4().hex}.parquet"
    fsio.write_bytes_atomic(fs, fsio.join(root, name), buf.getvalue())
    return name


def iter_part(out: OutDir, path: str, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one part file, in its (image_id) order; only ``columns`` (with image_id) if given.
    Columns a part written by an earlier version lacks read as None."""
    with out.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        want = None if columns is None else ["image_id", *(c for c in columns if c in have and c != "image_id")]
        missing = [] if columns is None else [c for c in columns if c not in have]
        for batch in pf.iter_batches(batch_size=_READ_BATCH, columns=want):
            for row in batch.to_pylist():
                row.update(dict.fromkeys(missing))
                yield row


def merge_parts(out: OutDir, paths: Sequence[str], columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of ``paths``, ascending ``image_id``, one per image (the first copy of a duplicate)."""
    last = None
    for row in heapq.merge(*(iter_part(out, p, columns) for p in paths), key=lambda r: r["image_id"]):
        if row["image_id"] == last:
            continue
        last = row["image_id"]
        yield row


def part_rows(out: OutDir, paths: Sequence[str]) -> list[int]:
    """Row count of each part, from its Parquet footer (no data read)."""
    counts = []
    for p in paths:
        with out.fs.open(p, "rb") as f:
            counts.append(pq.ParquetFile(f).metadata.num_rows)
    return counts


def plan_compaction(rows: Sequence[int], *, fan_in: int = FAN_IN, target_rows: int = TARGET_ROWS) -> list[list[int]]:
    """Which parts to merge together in one round; indices into ``rows``.

    Consecutive small parts (``< target_rows`` rows) are grouped until a group reaches
    ``target_rows`` rows or ``fan_in`` files. If that leaves nothing to do but more than
    ``fan_in`` parts, the smallest ``fan_in`` are merged, so that the final merge's fan-in
    stays bounded. Only groups of two or more files are returned.
    """
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_rows = 0
    for i, n in enumerate(rows):
        if n >= target_rows:
            continue
        cur.append(i)
        cur_rows += n
        if len(cur) == fan_in or cur_rows >= target_rows:
            groups.append(cur)
            cur, cur_rows = [], 0
    groups.append(cur)
    groups = [g for g in groups if len(g) > 1]
    if not groups and len(rows) > fan_in:
        groups = [sorted(sorted(range(len(rows)), key=lambda i: rows[i])[:fan_in])]
    return groups


def compact_parts(out: OutDir, *, fan_in: int = FAN_IN, target_rows: int = TARGET_ROWS) -> int:
    """Merge small parts (and, past ``fan_in`` files, the smallest ones) until none is left to merge.

    Returns the number of part files afterwards. Memory: ``fan_in`` open readers (one
    record batch each) plus one row group being written.
    """
    rounds = 0
    while True:
        paths = out.part_files()
        rows = part_rows(out, paths)
        groups = plan_compaction(rows, fan_in=fan_in, target_rows=target_rows)
        if not groups:
            if rounds:
                log.info("compacted parts in %d round(s): %d part files", rounds, len(paths))
            return len(paths)
        for group in groups:
            sources = [paths[i] for i in group]
            if sum(rows[i] for i in group) <= _IN_MEMORY_ROWS:
                _write_merged_table(out, sources)
            else:
                _write_merged(out, sources)
            # The merged part is committed: the sources are now duplicates and can go.
            for p in sources:
                out.fs.rm(p)
        rounds += 1


def read_part_table(out: OutDir, path: str) -> pa.Table:
    """One part file whole, as :data:`PART_SCHEMA` (columns a part written by an earlier version
    lacks are nulls, as :func:`iter_part` reads them)."""
    with out.fs.open(path, "rb") as f:
        table = pq.read_table(f)
    for field in PART_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(PART_SCHEMA.names).cast(PART_SCHEMA)


def _write_merged_table(out: OutDir, sources: Sequence[str]) -> str:
    """:func:`_write_merged` for sources small enough to hold at once (the common case: one
    group of small parts): Arrow's stable sort instead of a row-by-row heap merge of Python dicts
    (30× less CPU), the same rows in the same order, the first copy of a duplicate kept."""
    table = pa.concat_tables([read_part_table(out, p) for p in sources])
    table = table.take(pc.sort_indices(table, sort_keys=[("image_id", "ascending")]))  # stable: source order
    ids = table.column("image_id").to_numpy()
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        table = table.filter(pa.array(np.concatenate([[True], ids[1:] != ids[:-1]])))
    path = out.path(PARTS, f"part-{uuid.uuid4().hex}.parquet")
    with fsio.atomic_open(out.fs, path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=_ROW_GROUP)
    return path


def _write_merged(out: OutDir, sources: Sequence[str]) -> str:
    path = out.path(PARTS, f"part-{uuid.uuid4().hex}.parquet")
    rows: list[dict[str, Any]] = []
    with fsio.atomic_open(out.fs, path) as f, pq.ParquetWriter(f, PART_SCHEMA, compression="zstd") as writer:
        for row in merge_parts(out, sources):
            rows.append(row)
            if len(rows) == _ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA))
                rows.clear()
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA))
    return path
