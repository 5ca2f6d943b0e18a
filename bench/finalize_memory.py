"""Peak memory of finalize at A and 10·A annotations (target: ≤ 1 GiB at 1 M annotations).

Writes the committed state a run leaves behind — part files of ``--rows-per-part``
images, each image with ``--masks-per-image`` real COCO RLE masks (pycocotools, 640×480)
— then runs finalize (compaction, images/masks.parquet, predictions.coco.json and
.results.json, metrics.json) in a fresh child process and reads that child's peak
resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``)::

    .venv/bin/python bench/finalize_memory.py [--annotations 1000000]

Ends with one line: ``finalize_peak_rss_mb A=… 10A=… ratio=…`` where ``A`` is a tenth of
``--annotations``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils
from scratch import add_workdir_arg, scratch_dir

from segbatch.categories import build_eval_space
from segbatch.outputs.folder import PARTS, OutDir
from segbatch.outputs.parts import write_part
from segbatch.outputs.schema import PART_SCHEMA

CATEGORIES = ("background", "a", "b", "c")
H, W = 480, 640


def mask_pool(n: int, seed: int) -> list[dict]:
    """``n`` distinct masks (random ellipses) as COCO RLE, area and bbox."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    pool = []
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(40, H - 40), rng.uniform(40, W - 40), rng.uniform(10, 120), rng.uniform(10, 160)
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        pool.append(
            {
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            }
        )
    return pool


def write_state(out: OutDir, n_images: int, masks_per_image: int, rows_per_part: int) -> None:
    """Part files for ``n_images`` images, committed in shuffled chunks as parallel tasks would."""
    pool = mask_pool(200, seed=0)
    ids = list(range(1, n_images + 1))
    random.Random(0).shuffle(ids)
    for start in range(0, n_images, rows_per_part):
        rows = []
        for i in ids[start : start + rows_per_part]:
            masks = [
                {**pool[(i * 7 + k) % len(pool)], "category_id": 1 + k % 3, "category": CATEGORIES[1 + k % 3]}
                for k in range(masks_per_image)
            ]
            rows.append(
                {
                    "image_id": i,
                    "file_name": f"img/{i:08d}.jpg",
                    "uri": f"s3://bucket/img/{i:08d}.jpg",
                    "width": W,
                    "height": H,
                    "status": "ok",
                    "labeled": False,
                    "num_masks": masks_per_image,
                    "masks": masks,
                }
            )
        write_part(pa.Table.from_pylist(rows, schema=PART_SCHEMA), out.url_of(PARTS))
    out.write_json("bench.json", {"n_images": n_images})


def run_finalize(root: str) -> None:
    """Child process: finalize ``root`` as a run would."""
    from segbatch.outputs.finalize import FinalizeSpec, finalize

    out = OutDir.open(root)
    n = out.read_json("bench.json")["n_images"]
    space = build_eval_space(CATEGORIES, 0, None)
    finalize(
        out,
        set(range(1, n + 1)),
        FinalizeSpec(
            task="semantic",
            categories=CATEGORIES,
            background=0,
            eval_classes=space.to_dict(),
            coco_info={"description": "bench"},
        ),
    )


def measure(work: Path, n_annotations: int, masks_per_image: int, rows_per_part: int) -> tuple[float, float, int]:
    """(peak MiB, finalize s, part files before) for one size."""
    n_images = n_annotations // masks_per_image
    out = OutDir.open(str(work / f"out-{n_annotations}"))
    write_state(out, n_images, masks_per_image, rows_per_part)
    n_parts = len(out.part_files())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--finalize", out.root], check=True)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: sizes run small to large.
    assert peak_kb >= before
    metrics = json.loads((work / f"out-{n_annotations}" / "metrics.json").read_text())
    assert metrics["num_masks"] == n_images * masks_per_image, metrics["num_masks"]
    return peak_kb / 1024, seconds, n_parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotations", type=int, default=1_000_000)
    p.add_argument("--masks-per-image", type=int, default=10)
    p.add_argument("--rows-per-part", type=int, default=64)
    p.add_argument("--finalize", help=argparse.SUPPRESS)
    add_workdir_arg(p)
    args = p.parse_args()
    if args.finalize:
        run_finalize(args.finalize)
        return
    with scratch_dir("sb-finalize-", args.workdir) as work:
        figures = []
        for n in (args.annotations // 10, args.annotations):
            peak, seconds, n_parts = measure(work, n, args.masks_per_image, args.rows_per_part)
            n_after = len(OutDir.open(str(work / f"out-{n}")).part_files())
            coco_mb = (work / f"out-{n}" / "predictions.coco.json").stat().st_size / 2**20
            print(
                f"{n} annotations ({n // args.masks_per_image} images, {n_parts} parts -> {n_after} after compaction): "
                f"finalize peak {peak:.0f} MiB, {seconds:.1f} s, predictions.coco.json {coco_mb:.0f} MiB"
            )
            figures.append(peak)
        print(f"finalize_peak_rss_mb A={figures[0]:.0f} 10A={figures[1]:.0f} ratio={figures[1] / figures[0]:.2f}")


if __name__ == "__main__":
    main()
