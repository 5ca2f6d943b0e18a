"""Throughput of segbatch against the bare model and the plain loop a user would write.

One invocation, one process tree, the same generated JPEGs and the same weights for all
three measurements, per model:

1. ceiling: the model's forward pass alone on pre-decoded, pre-resized, normalized tensors;
2. plain:   the seed's single-process loop (PIL decode, torchvision transforms, forward,
            bilinear logits to the original size + argmax, pycocotools RLE, JSON;
            ``bench/plain_loop.py``), timed from its first image in this process, which
            has imported torch and built the model already (``ratio_plain``);
3. segbatch: a fresh local Ray cluster (its start-up is timed) and ``segbatch.run``, outputs
            written. Steady state is measured between the first and last committed part file.

With no layout flags on the CPU, segbatch runs as a user runs it (``segbatch run``, its own
process and cluster), ``--passes`` times, each right after a plain-loop pass and a run of the
plain loop as a user runs it too (``bench/plain_loop.py`` in its own process: imports, model
built, weights loaded, from process start to exit, as segbatch is timed: ``ratio_plain_script``),
and once more both plain forms at the end: each side is held at its best pass (this shared
machine's pace drifts by ±20 % within minutes), and every pass is printed.

Weights cannot be downloaded here: each model is seeded, its BatchNorm statistics are
calibrated on the images, and a semantic model's head is then fitted for a few seconds on
the generated labels (backbone frozen), so its class maps have regions and boundaries as a
trained model's do (a random model's maps are noise: every pixel on a class boundary, which
no real workload looks like). Run::

    .venv/bin/python bench/throughput.py [--n 256] [--models lraspp_mobilenet_v3_large,...]
        [--layouts 1x1:1,1x1:2,4x0.25]   # actors x GPU share [: calls per actor], side by side

A job's figures come with the share of the actors' time spent in the model
(``actor_busy``): near 1 the actors set the pace, well below they wait on their inputs.

It ends with one line per model, e.g.
``lraspp_mobilenet_v3_large ceiling=4.9 plain=3.7 segbatch=3.9 img/s ratio_plain=1.05 ratio_ceiling=0.93``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from plain_loop import CPU, INSTANCE, plain_loop
from scratch import add_workdir_arg, scratch_dir
from torchvision.models import get_model_builder, get_model_weights
from torchvision.transforms.functional import pil_to_tensor

DEFAULT_MODELS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "maskrcnn_resnet50_fpn")


@dataclass
class Figures:
    ceiling: float  # torchvision's model as it is
    ceiling_sb: float  # the model as segbatch runs it (NaN for Mask R-CNN)
    plain: float
    segbatch: float  # end to end, Ray start-up included
    steady: float  # first to last committed part
    first_output_s: float  # after Ray is up
    plain_script: float  # the plain loop as a script, process start to exit (NaN unless as a user runs it)
    ray_start_s: float
    gpu_util: float  # mean GPU utilisation (%) in segbatch's steady state (NaN on the CPU)
    ceiling_util: float  # the same during the ceiling's best pass
    actor_busy: float  # share of the actors' steady-state time spent in the model (copies, forward, class map)
    layout: str  # actors x GPU share per actor [: batches each takes in at once]


FIT_IMAGES = 16


UNIQUE_IMAGES = 64  # distinct generated scenes; more files repeat them (each scene takes ~60-90 ms to draw)


def write_images(root: Path, n: int, width: int, height: int) -> tuple[list[Path], list[np.ndarray]]:
    """``n`` JPEGs of generated shapes (the demo's generator) at ``width``×``height``, the
    first :data:`UNIQUE_IMAGES` distinct and the rest copies of them, and the labels
    ``(H, W) uint8`` (255 on boundaries) of the first :data:`FIT_IMAGES`."""
    from segbatch.sample import render_sample

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n):
        p = root / "images" / f"img_{i:05d}.jpg"
        if i < UNIQUE_IMAGES:
            rgb, label = render_sample(rng, height, width, max_shapes=6)
            Image.fromarray(rgb).save(p, quality=90)
            if i < FIT_IMAGES:
                labels.append(label)
        else:
            shutil.copyfile(paths[i % UNIQUE_IMAGES], p)
        paths.append(p)
    return paths, labels


def bench_model(
    name: str, paths: list[Path], labels: list[np.ndarray], min_size: int, steps: int = 40
) -> torch.nn.Module:
    """A seeded torchvision model; BN statistics calibrated on a few of the images; a
    semantic model's head then fitted on ``labels`` (``steps`` Adam steps, backbone frozen)."""
    torch.manual_seed(0)
    kwargs = {"min_size": min_size} if name in INSTANCE else {}
    model = get_model_builder(name)(weights=None, weights_backbone=None, **kwargs)
    if name in INSTANCE:
        return model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    transform = get_model_weights(name).DEFAULT.transforms()
    x = torch.stack([transform(pil_to_tensor(Image.open(p).convert("RGB"))) for p in paths[: len(labels)]])
    model.train()
    with torch.no_grad():
        model(x[:8])
    model.eval()  # BN statistics stay as calibrated while the head is fitted
    # LRASPP's head is light: fit all of it. FCN/DeepLabV3 heads end with a 1×1 convolution
    # after heavy layers (ASPP): fit that one on the cached output of the rest.
    head = model.classifier if name.startswith("lraspp") else model.classifier[-1]
    with torch.no_grad():
        features = [model.backbone(x[i : i + 4]) for i in range(0, len(x), 4)]
        if head is not model.classifier:
            rest = torch.nn.Sequential(*list(model.classifier)[:-1])
            features = [rest(f["out"]) for f in features]
    # The loss at a quarter of the label size: enough for region-shaped maps, 16× cheaper.
    y = torch.from_numpy(np.stack(labels)).long()[:, ::4, ::4]
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    for step in range(steps):
        k = step % len(features)
        out = head(features[k])
        out = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(out, y[4 * k : 4 * k + 4], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(
        f"  {name}: head fitted on {len(labels)} labels in {time.perf_counter() - t0:.1f} s, loss {loss.item():.3f}",
        flush=True,
    )
    return model.eval()


class Ceiling:
    """img/s of the forward pass alone, through segbatch's own model loading and preprocessing.

    Two forms of the model: torchvision's, as it is (``torchvision``: the issue's ceiling), and
    segbatch's (``segbatch``: BatchNorm folded, channels-last where it applies — what the
    job's actors run by default). Measured more than once (:meth:`measure`),
    the best pass counting: the ceiling is what this machine can do at its best, and on a
    shared machine a single pass swings by ±20 %.
    """

    def __init__(
        self,
        name: str,
        ckpt: Path,
        paths: list[Path],
        min_size: int,
        device: torch.device = CPU,
        precision: str = "fp32",
        channels_last: bool = True,
        fold_batchnorm: bool = True,
    ) -> None:
        import copy

        from segbatch.io.images import decode_image
        from segbatch.models.registry import ModelOptions, get_model_spec
        from segbatch.models.weights import load_model, resolve_weights

        spec = get_model_spec(name)
        self.name = name
        loaded = load_model(
            spec, resolve_weights(spec, str(ckpt)), ModelOptions(min_size=min_size if name in INSTANCE else None)
        )
        pre = loaded.preprocess
        # On a GPU the inputs wait on the device: the ceiling is the model, not the copies.
        self.tensors = [
            pre.normalize(torch.from_numpy(pre.resize_chw(decode_image(p.read_bytes())))[None])[0].to(device)
            for p in paths
        ]
        self.device = device
        self.autocast = (
            {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if device.type == "cuda" else None
        )
        self.modules = {"torchvision": copy.deepcopy(loaded.module).to(device)}
        self.layout_cl = {"torchvision": False}
        if name not in INSTANCE:
            # The model as segbatch's predictor runs it (BatchNorm folded; channels-last
            # where that applies), built by the predictor itself.
            from segbatch.stages.predict import Predictor

            pred = Predictor(
                name,
                resolve_weights(spec, str(ckpt)),
                ModelOptions(),
                precision=precision,
                channels_last=channels_last,
                fold_batchnorm=fold_batchnorm,
                device=device,
            )
            self.modules["segbatch"], self.layout_cl["segbatch"] = pred.module, pred.channels_last
        self.best = dict.fromkeys(self.modules, 0.0)
        self.best_batch = dict.fromkeys(self.modules, 1)
        self.best_util = {layout: float("nan") for layout in self.modules}

    def measure(self, batch_sizes: list[int] | None = None) -> dict[str, float]:
        """One pass over all images per layout and batch size (default: each layout's best
        so far); returns the best rate of each layout so far."""
        for layout, module in self.modules.items():
            for bs in batch_sizes or [self.best_batch[layout]]:
                with GpuLoad(self.device) as load:
                    rate = self._pass(module, bs, channels_last=self.layout_cl[layout])
                util = load.mean()
                print(
                    f"  ceiling {layout} at batch {bs}: {rate:.2f} img/s"
                    + (f", GPU busy {util:.0f} %" if util == util else ""),
                    flush=True,
                )
                if rate > self.best[layout]:
                    self.best[layout], self.best_batch[layout], self.best_util[layout] = rate, bs, util
        return dict(self.best)

    def _pass(self, module: torch.nn.Module, bs: int, channels_last: bool) -> float:
        tensors = self.tensors
        cuda = self.device.type == "cuda"
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def forward(i: int) -> None:
            if self.name in INSTANCE:
                module(tensors[i : i + bs])
            else:
                module(torch.stack(tensors[i : i + bs]).contiguous(memory_format=fmt))

        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None),
        ):
            forward(0)  # warm-up
            _sync(cuda)
            t0 = time.perf_counter()
            done = 0
            # A GPU goes through the images in a fraction of a second: repeat for ≥ 1 s, so
            # that the rate and the utilisation samples (NVML averages over ≥ 1/6 s) hold.
            while not done or (cuda and time.perf_counter() - t0 < 1.0):
                for i in range(0, len(tensors), bs):
                    forward(i)
                done += len(tensors)
                _sync(cuda)
        return done / (time.perf_counter() - t0)


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


class GpuLoad:
    """Samples GPU 0's utilisation (NVML: % of time a kernel ran) every 0.1 s while in use;
    nothing on the CPU. ``samples`` holds ``(time.time(), percent)``."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._handle = None
        if device.type == "cuda":
            try:
                import pynvml  # nvidia-ml-py, which torch.cuda.utilization uses too

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception as err:  # no NVML: the figures stay NaN
                print(f"  no GPU utilisation: {type(err).__name__}: {err}", flush=True)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.time(), float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)))

    def __enter__(self) -> GpuLoad:
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._handle is not None:
            self._thread.join()

    def mean(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Mean percent over samples in ``[start, end]``; NaN without samples."""
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else float("nan")


@dataclass
class Layout:
    """Model actors, the GPU share of each and the batches each takes in at once
    (``4x0.25:2``: four actors on one GPU, two calls each; no ``:N``: the job's default)."""

    actors: int
    gpus: float
    calls: int | None = None

    @classmethod
    def parse(cls, text: str) -> Layout:
        shape, _, calls = text.partition(":")
        actors, _, gpus = shape.partition("x")
        try:
            layout = cls(int(actors), float(gpus or 1), int(calls) if calls else None)
        except ValueError:
            raise SystemExit(f"--layouts: {text!r} is not ACTORSxGPUS[:CALLS] (e.g. 1x1, 4x0.25:2)") from None
        if layout.actors < 1 or not 0 < layout.gpus <= 1 or (layout.calls is not None and layout.calls < 1):
            raise SystemExit(f"--layouts: {text!r} needs >= 1 actor, a GPU share in (0, 1] and >= 1 call")
        return layout

    def __str__(self) -> str:
        if not self.actors:
            return "defaults"  # segbatch sized its own layout
        return f"{self.actors}x{self.gpus:g}" + (f":{self.calls}" if self.calls else "")


def segbatch_run(
    name: str, ckpt: Path, images: Path, out: Path, args: argparse.Namespace, device: torch.device, layout: Layout
) -> tuple[float, float, float, float, float, float]:
    """(end-to-end img/s incl. Ray start, steady img/s, first output s after Ray up, Ray start s,
    mean GPU utilisation % in the steady state or NaN, actor busy share in the steady state)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    from segbatch import JobConfig, run

    t0 = time.time()
    ray.init(
        num_cpus=args.ray_cpus or os.cpu_count(),
        num_gpus=1 if device.type == "cuda" else 0,
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=int(args.object_store_gb * 1e9),
    )
    t_up = time.time()
    commits: dict[str, tuple[float, int, float]] = {}  # part file → (first seen, rows, Σ t_predict)
    stop = threading.Event()

    def watch() -> None:
        # Finalize compacts the parts into a few files, so commit times are observed live.
        while not stop.is_set():
            for p in list((out / "parts").glob("*.parquet")) if (out / "parts").exists() else []:
                if p.name not in commits:
                    try:
                        seen = time.time()
                        t_predict = pq.read_table(p, columns=["t_predict"]).column("t_predict")
                        commits[p.name] = (seen, len(t_predict), float(pc.sum(t_predict).as_py() or 0.0))
                    except (OSError, pa.ArrowInvalid):
                        pass  # removed by compaction in between
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = GpuLoad(device)
    try:
        with load:
            summary = run(
                JobConfig(
                    input=str(images),
                    output=str(out),
                    model=name,
                    weights=str(ckpt),
                    batch_size=args.batch_size,
                    rows_per_part=args.batch_size,
                    cpus_per_actor=args.cpus_per_actor,
                    actors=layout.actors,
                    calls_per_actor=layout.calls,
                    gpus_per_actor=layout.gpus if device.type == "cuda" else 0.0,
                    torch_threads=args.torch_threads,
                    channels_last=not args.nchw,
                    fold_batchnorm=not args.no_fold,
                    precision=args.precision,
                    min_size=args.min_size if name in INSTANCE else None,
                    decode=args.decode,
                    report=False,
                )
            )
    finally:
        t_end = time.time()
        stop.set()
        watcher.join()
        ray.shutdown()
    assert summary.num_errors == 0, summary.lines()
    # The run's own commits, in order, up to every image once (later files are compacted copies).
    parts, total = [], 0
    for seen, rows, busy in sorted(commits.values()):
        if total >= summary.num_images:
            break
        parts.append((seen, rows, busy))
        total += rows
    first, last = parts[0][0], parts[-1][0]
    window = last - first
    steady = sum(r for _, r, _ in parts[1:]) / window if window > 0 else float("nan")
    # Utilisation = throughput × service time / servers: the steady rate times the model's
    # mean time per image (t_predict: copies in, forward, class maps out), over the actors.
    # Near 1 the actors' model work sets the pace; well below, they wait for inputs or on
    # Ray Data's hand-offs. (Summing t_predict inside the window instead overcounts the
    # batches already under way when the first part commits.)
    per_image = sum(b for _, _, b in parts) / sum(r for _, r, _ in parts)
    busy = steady * per_image / layout.actors
    return summary.num_images / (t_end - t0), steady, first - t_up, t_up - t0, load.mean(first, last), busy


def plain_script(name: str, ckpt: Path, images: Path, out: Path, min_size: int) -> float:
    """img/s of the plain loop as a user runs it: ``bench/plain_loop.py`` in a process of its own,
    from process start to exit (imports, model built, weights loaded, the loop, the JSON), as
    :func:`segbatch_as_user` times ``segbatch run``."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).with_name("plain_loop.py")), "--model", name, "--weights", str(ckpt),
           "--images", str(images), "--out", str(out), "--min-size", str(min_size)]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"plain_loop.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return len(list(images.glob("*.jpg"))) / seconds


def segbatch_as_user(
    name: str, ckpt: Path, images: Path, out: Path, args: argparse.Namespace
) -> tuple[float, float, float, float, float, float]:
    """The run as a user makes it: ``segbatch run`` with no layout flags, in a process of its own
    that starts its own local Ray cluster (isolated temp dir). End to end from the process start
    to its exit (imports, Ray start, model actors, finalize); steady between the first and last
    committed part. Returns the same tuple as :func:`segbatch_run` (GPU figures NaN)."""
    import subprocess
    import tempfile

    import pyarrow.parquet as pq

    commits: dict[str, tuple[float, int]] = {}  # part file → (first seen, rows)
    stop = threading.Event()

    def watch() -> None:
        # Finalize compacts the parts into a few files, so commit times are observed live.
        while not stop.is_set():
            for p in list((out / "parts").glob("*.parquet")) if (out / "parts").exists() else []:
                if p.name not in commits:
                    try:
                        seen = time.time()
                        commits[p.name] = (seen, pq.read_metadata(p).num_rows)
                    except (OSError, ValueError):
                        pass  # removed by compaction in between
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    ray_tmp = tempfile.mkdtemp(prefix="sbr-", dir="/tmp")
    cmd = [str(Path(sys.executable).parent / "segbatch"), "run", "--input", str(images), "--output", str(out),
           "--model", name, "--weights", str(ckpt), "--no-report", "--decode", args.decode]  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    watcher.start()
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    finally:
        t_end = time.time()
        stop.set()
        watcher.join()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"segbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    job = json.loads((out / "job.json").read_text())
    n = pq.read_metadata(out / "images.parquet").num_rows
    parts, total = [], 0
    for seen, rows in sorted(commits.values()):  # the run's own commits, up to every image once
        if total >= n:
            break
        parts.append((seen, rows))
        total += rows
    window = parts[-1][0] - parts[0][0] if parts else 0.0
    steady = sum(r for _, r in parts[1:]) / window if window > 0 else float("nan")
    layout = job.get("layout", {})
    print(f"  {name}: segbatch's own layout: {layout.get('actors')} actors x {layout.get('cpus_per_actor')} CPU, "
          f"{layout.get('torch_threads')} threads, batch {layout.get('batch_size')}; "
          f"timings {job.get('timings')}", flush=True)  # fmt: skip
    return (
        n / (t_end - t0),
        steady,
        job["timings"]["first_commit_s"],
        job["timings"]["ray_up_s"],
        float("nan"),
        float("nan"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="images (default 256)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="segbatch images per model batch (default 8 as the job on the CPU, 32 on a GPU)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where all three run (default: cuda when there is one)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast on a GPU, for the ceiling and segbatch (default fp32)",
    )
    p.add_argument(
        "--actors", type=int, default=None, help="(any layout flag: in-process runs, a Ray cluster per layout)"
    )
    p.add_argument("--gpus-per-actor", type=float, default=None, help="on a GPU (default 1; 0.5 shares one between 2)")
    p.add_argument(
        "--layouts",
        default=None,
        help="segbatch runs to compare against the same baselines, ACTORSxGPUS[:CALLS] each "
        "(CALLS: batches an actor takes in at once), e.g. 1x1:1,1x1:2,4x0.25 "
        "(default: --actors x --gpus-per-actor)",
    )
    p.add_argument("--plain-n", type=int, default=256, help="images the plain loop runs on (default: 256 at most)")
    p.add_argument("--object-store-gb", type=float, default=1.0)
    p.add_argument("--ceiling-n", type=int, default=256, help="images the ceiling runs on (default: 256 at most)")
    p.add_argument("--cpus-per-actor", type=float, default=None)
    p.add_argument("--torch-threads", type=int, default=None, help="per actor (default: --cpus-per-actor)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs the local Ray cluster declares (default: all)")
    p.add_argument("--min-size", type=int, default=320, help="Mask R-CNN's shorter side (default 320)")
    p.add_argument("--nchw", action="store_true", help="run segbatch with --no-channels-last")
    p.add_argument("--no-fold", action="store_true", help="run segbatch with --no-fold-batchnorm")
    p.add_argument(
        "--decode",
        choices=("auto", "host", "device"),
        default="auto",
        help="segbatch's --decode: JPEGs decoded in the read tasks (host) or in the model actor (device); "
        "default auto: device on a GPU",
    )
    p.add_argument(
        "--passes",
        type=int,
        default=2,
        help="with no layout flags on the CPU: segbatch runs, each after a plain-loop pass; both sides "
        "count their best pass (default 2)",
    )
    add_workdir_arg(p)
    args = p.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    gpu = device.type == "cuda"
    # No layout flag: segbatch is measured as a user runs it (`segbatch run`, sized by itself).
    flags = (args.layouts, args.actors, args.gpus_per_actor, args.cpus_per_actor, args.torch_threads, args.ray_cpus,
             args.batch_size)  # fmt: skip
    as_user = all(f is None for f in flags) and not gpu
    if args.batch_size is None:
        args.batch_size = 32 if gpu else 8
    args.cpus_per_actor = 1.0 if args.cpus_per_actor is None else args.cpus_per_actor
    layouts = (
        [Layout.parse(t) for t in args.layouts.split(",")]
        if args.layouts
        else [Layout(args.actors or 1, 1.0 if args.gpus_per_actor is None else args.gpus_per_actor)]
    )
    if not gpu:
        layouts = [Layout(la.actors, 0.0, la.calls) for la in layouts]
    with scratch_dir("sb-bench-", args.workdir) as work:
        t0 = time.perf_counter()
        paths, labels = write_images(work / "data", args.n, args.width, args.height)
        print(
            f"{args.n} JPEGs {args.width}x{args.height} (written in {time.perf_counter() - t0:.1f} s), "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), cuda={torch.cuda.is_available()}; "
            + (
                "segbatch as a user runs it (no layout flags), "
                if as_user
                else f"batch {args.batch_size}, actors x GPUs {','.join(map(str, layouts))}, "
                f"{args.cpus_per_actor:g} CPU each, torch threads {args.torch_threads}, "
            )
            + f"layout {'nchw' if args.nchw else 'channels_last'}, BatchNorm {'kept' if args.no_fold else 'folded'}, "
            f"device {device}"
            + (f" ({torch.cuda.get_device_name(0)}, {args.precision})" if gpu else "")
            + f", --decode {args.decode}",
            flush=True,
        )
        results: list[tuple[str, Figures]] = []
        for name in args.models.split(","):
            model = bench_model(name, paths, labels, args.min_size)
            ckpt = work / f"{name}.pth"
            torch.save(model.state_dict(), ckpt)
            ceil = Ceiling(
                name,
                ckpt,
                paths[: args.ceiling_n],
                args.min_size,
                device,
                args.precision,
                channels_last=not args.nchw,
                fold_batchnorm=not args.no_fold,
            )
            # The ceiling is the model at its best batch size: on a CPU, one image per forward pass
            # is often fastest (the activations of a batch fall out of cache); a GPU wants more.
            ceil.measure(sorted({args.batch_size, 4 * args.batch_size} if gpu else {1, args.batch_size}))
            model = model.to(device)
            plain_paths = paths[: args.plain_n]
            plains: list[float] = []
            scripts: list[float] = []  # the plain loop as a script (as a user runs it): like segbatch, end to end
            images_dir = work / "data" / "images"
            runs = []
            # As a user runs it: plain loop and segbatch alternated, --passes of each (the machine's
            # pace drifts within minutes; each side is held at its best pass). Layouts: one run each.
            for layout in [Layout(0, 0.0)] * max(1, args.passes) if as_user else layouts:
                if as_user or not plains:
                    plains.append(plain_loop(name, model, plain_paths, work / f"{name}.plain.json", device))
                    print(f"{name}: plain loop {plains[-1]:.2f} img/s", flush=True)
                if as_user:
                    scripts.append(plain_script(name, ckpt, images_dir, work / "plain.json", args.min_size))
                    print(f"{name}: plain loop as a script {scripts[-1]:.2f} img/s end to end", flush=True)
                out = work / f"{name}.segbatch"
                shutil.rmtree(out, ignore_errors=True)
                if as_user:
                    measured = segbatch_as_user(name, ckpt, work / "data" / "images", out, args)
                else:
                    measured = segbatch_run(name, ckpt, work / "data" / "images", out, args, device, layout)
                runs.append((layout, *measured))
                e2e, steady, first, ray_s, util, busy = measured
                # Printed as each run ends, so that a run cut short by a time limit keeps them.
                print(
                    f"{name} [{layout}]: segbatch {e2e:.2f} img/s end to end (Ray start {ray_s:.1f} s), "
                    f"steady {steady:.2f} img/s, first committed output {first:.1f} s after Ray was up, "
                    f"actor_busy {busy:.2f}" + (f", GPU busy {util:.0f} %" if gpu else ""),
                    flush=True,
                )
            # The baselines again, after: on a shared machine a pass swings by ±20 %, and the best
            # pass of each baseline is what segbatch is held to. (A GPU machine is not shared.)
            c = ceil.measure()
            print(f"{name}: ceiling {c} img/s (best pass)", flush=True)
            if not gpu:
                plains.append(plain_loop(name, model, plain_paths, work / f"{name}.plain.json", device))
            if as_user:
                scripts.append(plain_script(name, ckpt, images_dir, work / "plain.json", args.min_size))
            pl = max(plains)
            print(f"{name}: plain loop {pl:.2f} img/s (best of {' '.join(f'{v:.2f}' for v in plains)})", flush=True)
            if scripts:
                print(f"{name}: plain loop as a script {max(scripts):.2f} img/s end to end "
                      f"(best of {' '.join(f'{v:.2f}' for v in scripts)})", flush=True)  # fmt: skip
            if as_user:
                print(f"{name}: segbatch {max(r[1] for r in runs):.2f} img/s end to end "
                      f"(best of {' '.join(f'{r[1]:.2f}' for r in runs)})", flush=True)  # fmt: skip
                runs = [max(runs, key=lambda r: r[1])]
            for layout, e2e, steady, first, ray_s, util, busy in runs:
                results.append(
                    (
                        name,
                        Figures(
                            c["torchvision"],
                            c.get("segbatch", float("nan")),
                            pl,
                            e2e,
                            steady,
                            first,
                            max(scripts, default=float("nan")),
                            ray_s,
                            util,
                            ceil.best_util["torchvision"],
                            busy,
                            str(layout),
                        ),
                    )
                )
        print()
        for name, f in results:
            print(
                f"{name} ceiling={f.ceiling:.2f} plain={f.plain:.2f} segbatch={f.segbatch:.2f} img/s "
                f"steady={f.steady:.2f} first_output_s={f.first_output_s:.1f} "
                f"ratio_plain={f.segbatch / f.plain:.2f} ratio_ceiling={f.steady / f.ceiling:.2f} "
                f"ceiling_sb={f.ceiling_sb:.2f} ratio_ceiling_sb={f.steady / f.ceiling_sb:.2f} "
                f"layout={f.layout} actor_busy={f.actor_busy:.2f}"
                + (
                    f" plain_script={f.plain_script:.2f} ratio_plain_script={f.segbatch / f.plain_script:.2f}"
                    if not math.isnan(f.plain_script)  # measured: as a user runs it
                    else ""
                )
                + (
                    f" ratio_plain_steady={f.steady / f.plain:.2f} gpu_util={f.gpu_util:.0f} "
                    f"ceiling_gpu_util={f.ceiling_util:.0f}"
                    if gpu
                    else ""
                )
            )


if __name__ == "__main__":
    main()
