"""Part files: merged reading with dedupe, and compaction with bounded fan-in (no Ray)."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segbatch.outputs import parts
from segbatch.outputs.folder import PARTS, OutDir
from segbatch.outputs.parts import compact_parts, merge_parts, part_rows, plan_compaction, write_part
from segbatch.outputs.schema import PART_SCHEMA


def rows(ids: list[int]) -> pa.Table:
    """Part rows for ``ids``, each with one mask whose counts name the image (to spot mix-ups)."""
    return pa.Table.from_pylist(
        [
            {
                "image_id": i,
                "file_name": f"{i}.jpg",
                "uri": f"/data/{i}.jpg",
                "status": "ok",
                "labeled": False,
                "num_masks": 1,
                "masks": [
                    {
                        "category_id": 1,
                        "category": "a",
                        "area": i,
                        "bbox": [0.0, 0.0, 1.0, 1.0],
                        "segmentation": {"size": [2, 2], "counts": f"img{i}"},
                    }
                ],
            }
            for i in ids
        ],
        schema=PART_SCHEMA,
    )


def write_parts(out: OutDir, groups: list[list[int]]) -> None:
    for ids in groups:
        write_part(rows(ids), out.url_of(PARTS))


def test_merge_is_sorted_and_keeps_one_copy_of_a_duplicate(tmp_path):
    out = OutDir.open(str(tmp_path))
    write_parts(out, [[5, 1, 9], [2, 5], [7, 3], [9]])  # 5 and 9 committed twice (a retried task)
    merged = list(merge_parts(out, out.part_files()))
    assert [r["image_id"] for r in merged] == [1, 2, 3, 5, 7, 9]
    assert [r["masks"][0]["segmentation"]["counts"] for r in merged] == [f"img{i}" for i in (1, 2, 3, 5, 7, 9)]


def test_plan_groups_small_neighbours_and_bounds_the_final_fan_in():
    assert plan_compaction([10, 10, 10, 10, 10], fan_in=3, target_rows=100) == [[0, 1, 2], [3, 4]]
    assert plan_compaction([60, 60, 200, 60], fan_in=8, target_rows=100) == [[0, 1]]
    assert plan_compaction([200, 5, 300], fan_in=8, target_rows=100) == []  # one small part: nothing to merge with
    # Nothing small, but more files than the fan-in: the smallest ones merge.
    assert plan_compaction([500, 100, 300, 200], fan_in=3, target_rows=100) == [[1, 2, 3]]
    with pytest.raises(ValueError, match="fan_in must be at least 2, got 1"):
        plan_compaction([1, 2], fan_in=1)


def test_compaction_keeps_every_image_once_and_never_opens_more_than_fan_in(tmp_path, monkeypatch):
    out = OutDir.open(str(tmp_path))
    ids = list(range(1, 401))
    random.Random(0).shuffle(ids)
    groups = [ids[i : i + 4] for i in range(0, len(ids), 4)]  # 100 parts of 4 rows: one per write task
    groups += [ids[:3], ids[100:102]]  # two retried tasks committed again
    write_parts(out, groups)
    before = sorted(r["image_id"] for r in merge_parts(out, out.part_files()))

    # Count the part files open at the same time (fs.open wrapped; the files are real).
    real_open, state = out.fs.open, {"open": 0, "peak": 0}

    class Tracked:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])
            return self.f.__enter__()

        def __exit__(self, *exc):
            state["open"] -= 1
            return self.f.__exit__(*exc)

    monkeypatch.setattr(out.fs, "open", lambda path, mode="rb", **kw: Tracked(real_open(path, mode, **kw)))
    n_files = compact_parts(out, fan_in=8, target_rows=64)
    monkeypatch.undo()

    assert n_files == len(out.part_files()) <= 8
    assert state["peak"] <= 8
    counts = part_rows(out, out.part_files())
    # Nothing lost; a duplicate goes where both copies meet in one merge (else the final merge drops it).
    assert 400 <= sum(counts) <= 405
    assert sorted(r["image_id"] for r in merge_parts(out, out.part_files())) == before == list(range(1, 401))
    for p in out.part_files():  # every compacted part is itself sorted, as merging requires
        col = pq.read_table(p, columns=["image_id"]).column(0).to_pylist()
        assert col == sorted(col)
    assert not [p for p in (tmp_path / PARTS).iterdir() if not p.name.endswith(".parquet")]  # no temporaries left
    # Compacting again has nothing to do.
    files = out.part_files()
    assert compact_parts(out, fan_in=8, target_rows=64) == len(files) and out.part_files() == files


def test_in_memory_and_streamed_merges_write_the_same_part(tmp_path):
    """Compaction merges small groups in memory (Arrow's stable sort) and large ones row by row:
    the same rows in the same order, the first copy of a duplicate kept, and a part written by an
    earlier version (without a column) read with nulls there."""
    out = OutDir.open(str(tmp_path))
    write_parts(out, [[5, 1, 9], [2, 5], [7, 3]])
    old = rows([4, 9]).drop_columns(["worker"]).set_column(1, "file_name", pa.array(["old4.jpg", "old9.jpg"]))
    pq.write_table(old, tmp_path / PARTS / "part-old.parquet")
    sources = out.part_files()
    streamed = pq.read_table(parts._write_merged(out, sources))
    in_memory = pq.read_table(parts._write_merged_table(out, sources))
    assert in_memory.schema.equals(streamed.schema)
    assert in_memory.to_pylist() == streamed.to_pylist()
    assert in_memory.column("image_id").to_pylist() == [1, 2, 3, 4, 5, 7, 9]
    first = {r["image_id"]: r for r in merge_parts(out, sources)}  # the reader's choice of copy
    assert [r["file_name"] for r in in_memory.to_pylist()] == [first[i]["file_name"] for i in (1, 2, 3, 4, 5, 7, 9)]
    assert "old4.jpg" in in_memory.column("file_name").to_pylist()  # the old part, read with its missing column
