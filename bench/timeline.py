"""Where a job's time goes, task by task: Ray's own timeline of one ``segbatch run``.

One job on N generated 640×480 JPEGs (``bench/throughput.py``'s images and head-fitted model),
run in this process on a local cluster started as ``segbatch run`` starts one, with no layout
flags. Afterwards ``ray.timeline()`` gives every task's start and duration: per kind of work
(model actor start and load, predict calls, read and encode tasks, argument deserialisation —
where a fresh worker process imports torch) the count, total and mean, and how many worker
processes the read and encode tasks ran in (a number near the batch count means Ray started a
new process for most tasks). ``--show N`` prints the first N events.

    .venv/bin/python bench/timeline.py [--n 128] [--model lraspp_mobilenet_v3_large] [--show 0]

It ends with ``timeline n=… ray_up_s=… job_s=… first_predict_s=… predict_mean_s=…
read_encode_workers=…``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import ray
import torch
from scratch import add_workdir_arg, scratch_dir
from throughput import bench_model, write_images

from segbatch import pipeline
from segbatch.config import JobConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="images (default 128)")
    p.add_argument("--model", default="lraspp_mobilenet_v3_large")
    p.add_argument("--show", type=int, default=0, help="print the first N task events")
    add_workdir_arg(p)
    args = p.parse_args()
    with scratch_dir("sb-timeline-", args.workdir) as work:
        paths, labels = write_images(work / "data", args.n, 640, 480)
        ckpt = work / "model.pth"
        torch.save(bench_model(args.model, paths, labels, min_size=320).state_dict(), ckpt)
        config = JobConfig(input=str(work / "data" / "images"), output=str(work / "out"), model=args.model,
                           weights=str(ckpt), report=False)  # fmt: skip
        t0 = time.time()
        pipeline._connect(None)  # the cluster `segbatch run` starts, with its settings
        t_up = time.time()
        pipeline.run(config)
        job_s = time.time() - t_up
        events = [e for e in ray.timeline() if e.get("ph") == "X"]
        ray.shutdown()
    rows = sorted((e["ts"] / 1e6 - t_up, e["dur"] / 1e6, e["name"], str(e.get("tid", ""))) for e in events)
    for start, dur, name, tid in rows[: args.show]:
        print(f"{start:8.2f} s +{dur:6.2f} s  {name}  {tid[:20]}")
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for _, dur, name, _ in rows:
        totals[name][0] += 1
        totals[name][1] += dur
    for name, (count, total) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:45s} n={int(count):5d} total={total:8.2f} s mean={1000 * total / count:8.1f} ms")
    predicts = [(s, d) for s, d, name, _ in rows if name == "predict"]
    stage_workers = {tid for _, _, name, tid in rows if name.endswith(("read_slice", "encode_commit"))}
    print(
        f"timeline n={args.n} ray_up_s={t_up - t0:.2f} job_s={job_s:.2f} "
        f"first_predict_s={predicts[0][0] if predicts else float('nan'):.2f} "
        f"predict_mean_s={sum(d for _, d in predicts) / max(1, len(predicts)):.3f} "
        f"read_encode_workers={len(stage_workers)}"
    )


if __name__ == "__main__":
    main()
