"""Object storage for real: a moto S3 server on loopback, and single files over http(s).

The server is moto's own (``moto_server``, started here as a subprocess); segbatch talks
to it through s3fs exactly as it would to AWS, with the endpoint and keys in
``storage_options``. The same job on local disk must give the same outputs.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segbatch import JobConfig
from segbatch.models.unet import bundled_checkpoint
from segbatch.pipeline import run
from tests.conftest import free_port

pytestmark = pytest.mark.ray

SECRET = "s3cr3t-for-moto-only"


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict]:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def _outputs(read_bytes) -> dict:
    """What must be equal between runs on different storage (paths and timings aside)."""

    def read(name: str) -> io.BytesIO:
        return io.BytesIO(read_bytes(name))

    images = pq.read_table(read("images.parquet")).drop_columns(["uri", "t_read", "t_predict", "t_encode", "worker"])
    coco = json.loads(read("predictions.coco.json").read())
    coco.pop("info")  # carries the run's start time
    return {
        "images": images.to_pylist(),
        "coco": coco,
        "masks": read("masks.parquet").read(),
        "results": read("predictions.results.json").read(),
        "metrics": read("metrics.json").read(),
    }


def coco_labels_from_masks(sample_dir: Path) -> bytes:
    """The sample's mask PNGs as a COCO dataset (compressed RLE per class and image)."""
    images, annotations = [], []
    for image_id, png in enumerate(sorted((sample_dir / "masks").glob("*.png")), start=1):
        label = np.asarray(Image.open(png))
        images.append(
            {"id": image_id, "file_name": png.stem + ".jpg", "height": label.shape[0], "width": label.shape[1]}
        )
        for c in (1, 2, 3):
            if (label == c).any():
                rle = mask_utils.encode(np.asfortranarray((label == c).astype(np.uint8)))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": c,
                        "iscrowd": 0,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": float(mask_utils.area(rle)),
                        "bbox": mask_utils.toBbox(rle).tolist(),
                    }
                )
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    return json.dumps({"images": images, "annotations": annotations, "categories": cats}).encode()


@pytest.fixture(scope="module")
def local_reference(sample_dir: Path, tmp_path_factory, ray_cluster) -> tuple[Path, dict]:
    """The job on local disk: images, COCO labels and the checkpoint as files."""
    root = tmp_path_factory.mktemp("local")
    (root / "labels.json").write_bytes(coco_labels_from_masks(sample_dir))
    out = root / "out"
    summary = run(
        JobConfig(
            input=str(sample_dir / "images"),
            labels=str(root / "labels.json"),
            weights=bundled_checkpoint(),
            output=str(out),
            model="unet",
            batch_size=4,
        )
    )
    assert summary.num_images == 12 and summary.num_errors == 0 and summary.num_labeled == 12
    return root, _outputs(lambda name: (out / name).read_bytes())


def test_a_job_entirely_in_buckets_equals_the_same_job_on_disk(s3_options, sample_dir, local_reference, ray_cluster):
    root, want = local_reference
    fs = _s3(s3_options)
    fs.mkdir("sb-in")
    fs.mkdir("sb-out")
    fs.put(str(sample_dir / "images"), "sb-in/data/images", recursive=True)
    fs.put(str(root / "labels.json"), "sb-in/data/labels.json")
    fs.put(bundled_checkpoint(), "sb-in/models/unet.pt")
    config = JobConfig(
        input="s3://sb-in/data/images",
        labels="s3://sb-in/data/labels.json",
        weights="s3://sb-in/models/unet.pt",
        output="s3://sb-out/run1",
        model="unet",
        batch_size=4,
        storage_options=s3_options,
    )
    s3_run = run(config)
    assert s3_run.num_images == 12 and s3_run.num_errors == 0
    assert fs.exists("sb-out/run1/_SUCCESS") and fs.exists("sb-out/run1/report.html")
    # The end-of-run report reads the images from the bucket with the run's storage options.
    report = fs.cat_file("sb-out/run1/report.html").decode()
    assert "could not draw" not in report
    assert len(fs.glob("sb-out/run1/report/worst/*.png")) == 12
    fs.invalidate_cache()
    got = _outputs(lambda name: fs.cat_file(f"sb-out/run1/{name}"))
    for key in want:
        assert got[key] == want[key], key
    # No secret lands in any output object.
    for path in fs.find("sb-out/run1"):
        assert SECRET.encode() not in fs.cat_file(path), path
    job = json.loads(fs.cat_file("sb-out/run1/job.json"))
    assert sorted(job["config"]["storage_options"]) == sorted(s3_options)
    # A rerun against the bucket resumes: nothing to do.
    again = run(config)
    assert (again.num_processed, again.num_skipped) == (0, 12)


def test_weights_and_labels_over_http_equal_local_files(sample_dir, local_reference, tmp_path, ray_cluster):
    root, want = local_reference
    shutil.copy(bundled_checkpoint(), root / "unet.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out = tmp_path / "out"
        summary = run(
            JobConfig(
                input=str(sample_dir / "images"),
                labels=f"{base}/labels.json",
                weights=f"{base}/unet.pt",
                output=str(out),
                model="unet",
                batch_size=4,
            )
        )
    finally:
        server.shutdown()
    assert summary.num_images == 12 and summary.num_errors == 0
    assert _outputs(lambda name: (out / name).read_bytes()) == want


def test_s3_listing_pages_through_the_bucket(s3_options, sample_dir, tmp_path, monkeypatch):
    """Listing streams ListObjectsV2 pages (5 keys each here) and pairs mask PNGs across pages."""
    from segbatch.config import IMAGE_EXTENSIONS
    from segbatch.io import listing

    fs = _s3(s3_options)
    fs.mkdir("pages")
    fs.put(str(sample_dir / "images"), "pages/ds/images", recursive=True)
    fs.put(str(sample_dir / "masks"), "pages/ds/masks", recursive=True)
    pages = list(listing.iter_paths(fs, "pages/ds/images", page=5))
    assert [len(p) for p in pages] == [5, 5, 2]
    assert sorted(p for page in pages for p in page) == sorted(fs.find("pages/ds/images"))

    monkeypatch.setattr(listing, "PAGE", 5)
    labels = listing.open_labels("s3://pages/ds/masks", s3_options)
    plan = listing.build_plan("s3://pages/ds/images", labels, IMAGE_EXTENSIONS, s3_options).manifest.to_pylist()
    local = listing.build_plan(
        str(sample_dir / "images"), listing.open_labels(str(sample_dir / "masks")), IMAGE_EXTENSIONS
    ).manifest.to_pylist()
    assert [r["file_name"] for r in plan] == [r["file_name"] for r in local] and len(plan) == 12
    assert [r["label_uri"].removeprefix("s3://pages/ds/masks/") for r in plan] == [
        Path(r["label_uri"]).name for r in local
    ]
