"""What label quality and confidence cost a labeled run: ``--quality-stride 0`` against the default.

One invocation, the same generated JPEGs with their label PNGs and the same head-fitted
weights (``bench/throughput.py``'s model) for every run; ``segbatch run --labels`` as a user
runs it (no layout flags, its own local Ray cluster, from process start to exit), the two
settings alternated ``--rounds`` times so that a drifting machine shifts both alike. The
best run of each setting counts. Confidence columns are computed in both (they come from
softmax over the coarse logits the model made anyway); ``--quality-stride 0`` leaves out the
per-pixel label evidence and the finalize pass that flags label issues.

    .venv/bin/python bench/quality_cost.py [--n 128] [--rounds 2] [--model lraspp_mobilenet_v3_large]

It ends with ``quality_cost stride=4 … img/s stride=0 … img/s cost=…%``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scratch import add_workdir_arg, scratch_dir
from throughput import FIT_IMAGES, bench_model

from segbatch.sample import render_sample, save_label_png


def write_labeled(root: Path, n: int, width: int, height: int) -> tuple[list[Path], list[np.ndarray]]:
    """``n`` JPEGs with label PNGs (``images/``, ``masks/``); the labels of the first few."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n):
        rgb, label = render_sample(rng, height, width, max_shapes=6)
        p = root / "images" / f"img_{i:05d}.jpg"
        Image.fromarray(rgb).save(p, quality=90)
        save_label_png(label, str(root / "masks" / f"img_{i:05d}.png"))
        paths.append(p)
        if i < FIT_IMAGES:
            labels.append(label)
    return paths, labels


def run_cli(model: str, ckpt: Path, data: Path, out: Path, stride: int) -> tuple[float, dict[str, object]]:
    """img/s of one labeled ``segbatch run`` from process start to exit, and its metrics.json."""
    shutil.rmtree(out, ignore_errors=True)
    ray_tmp = tempfile.mkdtemp(prefix="sbr-", dir="/tmp")
    cmd = [str(Path(sys.executable).parent / "segbatch"), "run", "--input", str(data / "images"),
           "--labels", str(data / "masks"), "--output", str(out), "--model", model, "--weights", str(ckpt),
           "--quality-stride", str(stride), "--no-report"]  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    finally:
        elapsed = time.perf_counter() - t0
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"segbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    n = len(list((data / "images").iterdir()))
    return n / elapsed, json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="labeled images (default 128)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each setting, alternated (default 2)")
    p.add_argument("--model", default="lraspp_mobilenet_v3_large")
    p.add_argument("--stride", type=int, default=4, help="the quality stride compared with 0 (default 4)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    add_workdir_arg(p)
    args = p.parse_args()
    with scratch_dir("sb-quality-", args.workdir) as work:
        paths, labels = write_labeled(work / "data", args.n, args.width, args.height)
        model = bench_model(args.model, paths, labels, min_size=320)
        ckpt = work / "model.pth"
        torch.save(model.state_dict(), ckpt)
        print(f"{args.n} labeled JPEGs {args.width}x{args.height}, {os.cpu_count()} CPUs, {args.model}", flush=True)
        best = {args.stride: 0.0, 0: 0.0}
        for r in range(args.rounds):
            for stride in (args.stride, 0):
                rate, metrics = run_cli(args.model, ckpt, work / "data", work / f"run{stride}", stride)
                best[stride] = max(best[stride], rate)
                lq = metrics.get("label_quality")
                flagged = f", flagged share {lq['flagged_share']:.4f}" if isinstance(lq, dict) else ""
                print(f"  round {r + 1} stride {stride}: {rate:.2f} img/s{flagged}", flush=True)
        cost = 1.0 - best[args.stride] / best[0]
        print(
            f"quality_cost stride={args.stride} {best[args.stride]:.2f} img/s "
            f"stride=0 {best[0]:.2f} img/s cost={100 * cost:.1f}%"
        )


if __name__ == "__main__":
    main()
