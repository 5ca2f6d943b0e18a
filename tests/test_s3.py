"""Object storage for real: a moto S3 server on loopback holds input, labels, weights and output.

The server is moto's own (``moto_server``, started here as a subprocess); segbatch talks
to it through s3fs exactly as it would to AWS, with the endpoint and keys in
``storage_options``. The same job on local disk must give the same outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segbatch import JobConfig
from segbatch.models.unet import bundled_checkpoint
from segbatch.pipeline import run
from tests.conftest import free_port

pytestmark = pytest.mark.ray

SECRET = "s3cr3t-for-moto-only"


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict]:
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    try:
        yield {"key": "moto-key", "secret": SECRET, "endpoint_url": endpoint}
    finally:
        server.terminate()
        server.wait(10)


def _s3(options: dict):
    import s3fs

    return s3fs.S3FileSystem(**options)


def _outputs(read) -> dict:
    """What must be equal between the S3 run and the local run (paths and timings aside)."""
    images = pq.read_table(read("images.parquet")).drop_columns(["uri", "t_read", "t_predict", "t_encode"])
    coco = json.loads(read("predictions.coco.json").read())
    coco.pop("info")  # carries the run's start time
    return {"images": images.to_pylist(), "coco": coco, "masks": read("masks.parquet").read(),
            "results": read("predictions.results.json").read(), "metrics": read("metrics.json").read()}


def test_a_job_entirely_in_buckets_equals_the_same_job_on_disk(s3_options, sample_dir, tmp_path, ray_cluster):
    fs = _s3(s3_options)
    fs.mkdir("sb-in")
    fs.mkdir("sb-out")
    fs.put(str(sample_dir / "images"), "sb-in/data/images", recursive=True)
    fs.put(str(sample_dir / "masks"), "sb-in/data/masks", recursive=True)
    fs.put(bundled_checkpoint(), "sb-in/models/unet.pt")

    s3_run = run(JobConfig(input="s3://sb-in/data/images", labels="s3://sb-in/data/masks",
                           weights="s3://sb-in/models/unet.pt", output="s3://sb-out/run1", model="unet",
                           batch_size=4, storage_options=s3_options))
    local = tmp_path / "local"
    local_run = run(JobConfig(input=str(sample_dir / "images"), labels=str(sample_dir / "masks"),
                              weights=bundled_checkpoint(), output=str(local), model="unet", batch_size=4))
    assert s3_run.num_images == local_run.num_images == 12 and s3_run.num_errors == 0
    assert fs.exists("sb-out/run1/_SUCCESS") and fs.exists("sb-out/run1/report.html")
    fs.invalidate_cache()
    got = _outputs(lambda name: fs.open(f"sb-out/run1/{name}", "rb"))
    want = _outputs(lambda name: open(local / name, "rb"))
    for key in want:
        assert got[key] == want[key], key
    # No secret lands in any output object.
    for path in fs.find("sb-out/run1"):
        assert SECRET.encode() not in fs.cat_file(path), path
    job = json.loads(fs.cat_file("sb-out/run1/job.json"))
    assert sorted(job["config"]["storage_options"]) == sorted(s3_options)

    # A rerun against the bucket resumes: nothing to do.
    again = run(JobConfig(input="s3://sb-in/data/images", labels="s3://sb-in/data/masks",
                          weights="s3://sb-in/models/unet.pt", output="s3://sb-out/run1", model="unet",
                          batch_size=4, storage_options=s3_options))
    assert (again.num_processed, again.num_skipped) == (0, 12)
