"""A poison image — one that kills its model worker every time — becomes an error row.

Its batch fails after the bounded retries (the actor is restarted each time); the images of
the failed batch are then labeled one per task, so its batch-mates come out normally and the
poison image alone is committed as an error. The job finishes; nothing is lost or doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.ray

DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from segbatch import JobConfig
    from segbatch.pipeline import run

    address, data, out = sys.argv[1:4]
    ray.init(address=address, runtime_env={"worker_process_setup_hook": "tests.poison.install",
                                           "env_vars": {"PYTHONPATH": sys.argv[4]}})
    s = run(JobConfig(input=data + "/images", labels=data + "/masks", output=out, model="unet", batch_size=4,
                      rows_per_part=4))
    print("SUMMARY " + json.dumps({"images": s.num_images, "errors": s.num_errors, "processed": s.num_processed}))
""")


def test_a_poison_image_becomes_an_error_row_and_the_job_goes_on(sample_dir, tmp_path, ray_cluster):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    images = sorted((data / "images").glob("*.jpg"))
    # Third in path order, so it shares a batch of 4 with healthy images.
    shutil.copy(images[2], data / "images" / (images[2].stem + "-poison.jpg"))
    out = tmp_path / "out"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, ray_cluster.address, str(data), str(out), str(REPO)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.split("SUMMARY ", 1)[1])
    assert summary == {"images": 13, "errors": 1, "processed": 13}

    rows = pq.read_table(out / "images.parquet").to_pylist()
    assert len(rows) == 13 == len({r["image_id"] for r in rows})
    bad = [r for r in rows if r["status"] == "error"]
    assert [r["file_name"] for r in bad] == [images[2].stem + "-poison.jpg"]
    assert bad[0]["error"].startswith("predict: the worker died or failed on this image alone 3 times")
    # Its batch-mates, labeled one by one, are as good as any other image.
    assert all(r["dice"] is not None for r in rows if r["status"] == "ok")
    assert "labeling them one per task" in proc.stderr
    coco = json.loads((out / "predictions.coco.json").read_text())
    # An error row carries no size, so COCO lists the 12 others; the error is in images.parquet.
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(p.name for p in images)
