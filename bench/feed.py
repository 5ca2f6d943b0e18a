"""Start-up of a large job's feed: seconds until Ray Data hands out the first model batch.

Side by side on one local Ray cluster, for a manifest of ``--n`` images in batches of
``--batch-size``: one driver-made Arrow block per batch (``ray.data.from_arrow``, what
segbatch did before) against segbatch's feed (batch indices through ``ray.data.from_items`` in at
most ``FEED_BLOCKS`` blocks, rows cut in the tasks by :func:`segbatch.stages.feed.manifest_slices`).
No image is read: this isolates the plumbing::

    .venv/bin/python bench/feed.py [--n 100000] [--batch-size 8]

Ends with one line: ``feed_first_batch_s from_arrow=… indices=… ratio=…``.
"""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
import ray

from segbatch.pipeline import FEED_BLOCKS
from segbatch.stages.feed import manifest_slices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.range(10).take(1)  # Ray Data's own first-use start-up, out of both figures
    n, bs = args.n, args.batch_size
    todo = pa.table(
        {
            "image_id": pa.array(range(1, n + 1), pa.int64()),
            "uri": pa.array([f"s3://bucket/images/{i:08d}.jpg" for i in range(n)]),
        }
    )
    num_batches = -(-n // bs)

    t0 = time.perf_counter()
    ds = ray.data.from_arrow([todo.slice(i, bs) for i in range(0, n, bs)]).map_batches(lambda b: b, batch_size=bs)
    first = next(iter(ds.iter_batches(batch_size=bs)))
    t_arrow = time.perf_counter() - t0
    assert first["image_id"][0] == 1

    t0 = time.perf_counter()
    ref = ray.put(todo)
    ds = ray.data.from_items([{"id": i} for i in range(num_batches)], override_num_blocks=min(num_batches, FEED_BLOCKS))
    ds = ds.map_batches(manifest_slices, fn_kwargs={"todo_holder": [ref], "batch_size": bs}, batch_size=1)
    first = next(iter(ds.iter_batches(batch_size=bs)))
    t_indices = time.perf_counter() - t0
    assert first["image_id"][0] == 1
    print(
        f"{n} images, {num_batches} batches of {bs}: from_arrow {t_arrow:.1f} s, "
        f"indices in {min(num_batches, FEED_BLOCKS)} blocks {t_indices:.1f} s"
    )
    print(f"feed_first_batch_s from_arrow={t_arrow:.1f} indices={t_indices:.1f} ratio={t_arrow / t_indices:.1f}")


if __name__ == "__main__":
    main()
