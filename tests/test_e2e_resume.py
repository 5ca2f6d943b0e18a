"""Resume from committed parts, and finalize's dedupe of parts written twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segbatch import JobConfig
from segbatch.pipeline import run

pytestmark = pytest.mark.ray


def stable(out: Path) -> tuple[list, dict, dict]:
    """The outputs that must not depend on how a run was split (timings excluded)."""
    images = (
        pq.read_table(out / "images.parquet").drop_columns(["t_read", "t_predict", "t_encode", "worker"]).to_pylist()
    )
    coco = json.loads((out / "predictions.coco.json").read_text())
    coco.pop("info")
    return images, coco, json.loads((out / "metrics.json").read_text())


def test_a_rerun_computes_only_what_was_not_committed(sample_dir, tmp_path, ray_cluster):
    out = tmp_path / "out"
    config = JobConfig(
        input=str(sample_dir / "images"),
        labels=str(sample_dir / "masks"),
        output=str(out),
        model="unet",
        batch_size=2,
        rows_per_part=2,
    )
    first = run(config)
    assert first.num_processed == 12
    parts = sorted((out / "parts").glob("*.parquet"))
    assert len(parts) == 1  # finalize compacted the 2-row parts (one per write task) into one file
    reference = stable(out)

    # Lose committed images (as if the run died before their part was written) and the marker.
    committed = pq.read_table(parts[0])
    parts[0].unlink()
    pq.write_table(committed.slice(0, 5), out / "parts" / "part-kept.parquet")
    (out / "_SUCCESS").unlink()
    second = run(config)
    assert (second.num_processed, second.num_skipped) == (7, 5)
    assert stable(out) == reference

    # A retried task may commit an image twice: finalize keeps one copy.
    shutil.copy(sorted((out / "parts").glob("*.parquet"))[0], out / "parts" / "part-duplicate.parquet")
    (out / "_SUCCESS").unlink()
    third = run(config)
    assert third.num_processed == 0
    images, _coco, _ = stable(out)
    assert len(images) == 12 == len({r["image_id"] for r in images})
    assert stable(out) == reference


def test_other_batch_sizes_and_part_sizes_give_the_same_outputs(sample_dir, tmp_path, ray_cluster):
    """How images are cut into model batches and grouped into part files changes no result."""

    def config(out: Path, batch: int, part: int) -> JobConfig:
        return JobConfig(
            input=str(sample_dir / "images"),
            labels=str(sample_dir / "masks"),
            output=str(out),
            model="unet",
            batch_size=batch,
            rows_per_part=part,
        )

    run(config(tmp_path / "small", 2, 2))
    summary = run(config(tmp_path / "grouped", 3, 9))  # three batches per part, the last one short
    assert summary.num_processed == 12 and summary.num_errors == 0
    assert stable(tmp_path / "grouped") == stable(tmp_path / "small")
