"""The host CPU cost of one image, by stage, with a model of negligible compute.

A job over ``--n`` generated 640×480 JPEGs with a 1×1 convolution at 1/8 resolution (21 classes,
``bench/overhead_model.py``, a plugin), once per ``--decode`` mode, on a fresh local Ray
cluster. CPU seconds come from the OS: every process of the run (the driver, Ray's daemons, the
task workers, the model actor) is sampled with psutil, and each section timed in the stages
(``segbatch.stages.cpu_clock``: the process's CPU during a read task, an encode, a write;
the model actor's own thread in decode + resize and in forward + class map) splits the
workers' CPU by stage. Divided by images:

- ``read_ms``, ``encode_ms``, ``write_ms``: CPU of the read tasks, the encoding and the part commit;
- ``tasks_other_ms``: the task workers' CPU outside those sections (Ray's per-task work:
  (de)serialising arguments and results, scheduling), their start-up left out (a worker Ray
  starts during the job: its CPU before its first section; ``workers_start_s``, apart);
- ``actor_host_ms``: the model actor's CPU minus its start-up (torch import, model build) minus
  the work a GPU takes over (decode, resize, forward, class map — timed by the actor itself):
  the CPU that stays on a GPU host; ``actor_work_ms`` is that work on this CPU, shown apart;
- ``driver_ms``: the driver during the job (planning, the loop, finalize);
- ``daemons_ms``: Ray's raylet, GCS and other helpers;
- ``total_host_ms``: their sum without ``actor_work_ms``.

Ray's processes burn CPU per *second* whatever the work (heartbeats, metrics, polling threads:
~60 ms/s here on an idle 2-CPU cluster). On this CPU a job runs ~25 img/s, so per second costs
look like per-image costs 100× larger than on a GPU host feeding thousands of images a second.
So each process's CPU at its idle rate (sampled for 4 s between the warm-up and the job; new
processes at a task worker's idle rate) times the job's wall time is taken off as background:
the ``*_ms`` figures are per image, ``background_ms_per_s`` is the background of the processes
a job runs, ``feeds_img_s_per_16_cores`` = (16 000 − ``background_ms_per_s``) / ``total_host_ms``
the image rate 16 host cores can feed to GPUs, and ``total_host_ms_gross`` the sum before the
background is taken off (the figure earlier versions of this script printed).

Batches of ``--batch-size`` 32 images, a GPU actor's default layout. A warm-up job of four
batches runs first on the same cluster, so that the task workers' start-up (Python, imports) is
not counted as a cost per image; the model actor starts anew in each job, and its start-up is
reported apart (``actor_start_s``). The actor runs one torch thread (its work is timed on its
own thread).

Run::

    .venv/bin/python bench/overhead.py [--n 512] [--modes host,device] [--workdir DIR]

One line per mode, e.g.
``overhead decode=device read_ms=0.9 actor_host_ms=0.4 encode_ms=1.8 write_ms=0.3 ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from scratch import add_workdir_arg, scratch_dir

BENCH = Path(__file__).resolve().parent
UNIQUE_IMAGES = 64  # distinct generated scenes; more files repeat them
SAMPLE_S = 0.25


def write_images(folder: Path, n: int, width: int, height: int) -> None:
    """``n`` JPEGs of generated shapes at ``width``×``height`` (quality 90, 4:2:0)."""
    from segbatch.sample import render_sample

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = folder / f"img_{i:05d}.jpg"
        if i < UNIQUE_IMAGES:
            rgb, _ = render_sample(rng, height, width, max_shapes=6)
            Image.fromarray(rgb).save(p, quality=90)
        else:
            shutil.copyfile(folder / f"img_{i % UNIQUE_IMAGES:05d}.jpg", p)


@dataclass
class Sampler:
    """CPU seconds (user + system) of the driver's descendant processes, polled every
    :data:`SAMPLE_S` seconds: per pid, the first and the last value seen, and what it ran as."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    own_cpu: float = 0.0  # the sampling thread's own CPU seconds (taken off the driver's)

    def poll(self, baseline: bool = False) -> None:
        for proc in psutil.Process().children(recursive=True):
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system
                if proc.pid not in self.names or "ray::" not in self.names[proc.pid]:
                    self.names[proc.pid] = " ".join(proc.cmdline())[:200] or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            # A process born during the job started from 0 CPU seconds.
            self.first.setdefault(proc.pid, cpu if baseline else 0.0)
            self.last[proc.pid] = cpu

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.poll()
        self.own_cpu = time.thread_time()

    def delta(self, pid: int) -> float:
        return self.last.get(pid, 0.0) - self.first.get(pid, 0.0)


IDLE_S = 4.0


@dataclass
class Idle:
    """CPU seconds per second of each process (and of the driver) while the cluster holds no work."""

    rates: dict[int, float]
    driver: float
    worker: float  # a task worker's, for the processes started during the job (the model actor too)


def idle_rates(seconds: float = IDLE_S) -> Idle:
    """Sample every process of the cluster for ``seconds`` while nothing runs: Ray's background
    CPU (heartbeats, metrics, polling threads), which a job pays per second, not per image."""
    sampler = Sampler()
    sampler.poll(baseline=True)
    me = psutil.Process()
    t = me.cpu_times()
    driver0, t0 = t.user + t.system, time.perf_counter()
    time.sleep(seconds)
    sampler.poll()
    t = me.cpu_times()
    dt = time.perf_counter() - t0
    rates = {pid: sampler.delta(pid) / dt for pid in sampler.last}
    workers = sorted(r for pid, r in rates.items() if "ray::" in sampler.names.get(pid, "")) or [0.0]
    return Idle(rates, (t.user + t.system - driver0) / dt, workers[len(workers) // 2])


def read_records(folder: Path) -> list[dict]:
    records = []
    for p in folder.glob("*.jsonl"):
        records.extend(json.loads(line) for line in p.read_text().splitlines() if line)
    return records


def measure(mode: str, images: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """One job over ``images`` with ``--decode mode`` (after a warm-up job); the figures per image."""
    from segbatch import JobConfig, run
    from segbatch.stages.cpu_clock import ENV

    def job(folder: Path, out: Path) -> None:
        summary = run(
            JobConfig(
                input=str(folder),
                output=str(out),
                model="overhead_model:build",
                batch_size=args.batch_size,
                actors=1,
                torch_threads=1,
                decode=mode,  # type: ignore[arg-type]
                report=False,
            )
        )
        assert summary.num_errors == 0, summary.lines()

    records = Path(os.environ[ENV])
    warm = work / "warm"
    if not warm.exists():
        warm.mkdir()
        for p in sorted(images.iterdir())[: 4 * args.batch_size]:
            shutil.copyfile(p, warm / p.name)
    shutil.rmtree(work / f"warm.{mode}", ignore_errors=True)
    job(warm, work / f"warm.{mode}")
    idle = idle_rates()
    for p in records.glob("*.jsonl"):
        p.unlink()
    sampler = Sampler()
    sampler.poll(baseline=True)
    thread = threading.Thread(target=sampler.run, daemon=True)
    me = psutil.Process()
    t = me.cpu_times()
    driver0 = t.user + t.system
    thread.start()
    out = work / f"out.{mode}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    job(images, out)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    thread.join()
    sampler.poll()
    t = me.cpu_times()
    driver = t.user + t.system - driver0 - sampler.own_cpu

    recs = read_records(records)
    by_stage: dict[str, float] = defaultdict(float)
    last_cpu: dict[int, float] = {}
    before_first: dict[int, float] = {}  # a process's CPU seconds before its first timed section
    stage_pids: dict[str, set[int]] = defaultdict(set)
    for r in sorted(recs, key=lambda r: r["process_cpu_s"]):
        by_stage[r["stage"]] += r["cpu_s"]
        stage_pids[r["stage"]].add(r["pid"])
        last_cpu[r["pid"]] = max(last_cpu.get(r["pid"], 0.0), r["process_cpu_s"])
        before_first.setdefault(r["pid"], r["process_cpu_s"] - r["cpu_s"])
    actors = stage_pids["actor_start"]
    workers = set().union(*(stage_pids[s] for s in ("read", "encode", "write"))) - actors
    actor_cpu = 0.0
    # Background CPU (Ray's threads and daemons, paid per second whatever the work), at the idle
    # rates measured just before: the job's wall time at each process's rate.
    bg = {"actor": 0.0, "workers": 0.0, "daemons": 0.0, "driver": idle.driver * wall}
    for pid in actors:
        # The actor exits when the job's batches are done: its last record may be later than the
        # last sample (new in this job: from 0 CPU seconds).
        actor_cpu += max(sampler.delta(pid), last_cpu[pid])
        bg["actor"] += idle.worker * wall
    worker_cpu, daemon_cpu, workers_start = 0.0, 0.0, 0.0
    for pid in sampler.last:
        if pid in actors:
            continue
        name = sampler.names.get(pid, "")
        born = sampler.first.get(pid) == 0.0  # started during the job
        if pid in workers:
            # A worker Ray started during the job: its start-up (Python, Ray, the stage's imports,
            # before its first section) is a fixed cost, reported apart.
            start = before_first[pid] if born else 0.0
            worker_cpu += sampler.delta(pid) - start
            workers_start += start
            bg["workers"] += idle.rates.get(pid, idle.worker) * wall
        elif "default_worker" in name or name.startswith("ray::"):
            workers_start += sampler.delta(pid)  # started, never used for a stage: start-up alone
        else:
            daemon_cpu += sampler.delta(pid)
            bg["daemons"] += idle.rates.get(pid, 0.0) * wall
    n = args.n
    staged = by_stage["read"] + by_stage["encode"] + by_stage["write"]
    work_s = by_stage["actor_decode"] + by_stage["actor_model"]
    gross = {
        "read_ms": by_stage["read"],
        "actor_host_ms": actor_cpu - by_stage["actor_start"] - work_s,
        "encode_ms": by_stage["encode"],
        "write_ms": by_stage["write"],
        "tasks_other_ms": max(0.0, worker_cpu - staged),
        "driver_ms": driver,
        "daemons_ms": daemon_cpu,
    }
    # Per image: each process's CPU less its background (the stage sections are short: their
    # share of background is left in them, an overstatement of well under 0.1 ms).
    background_of = {"actor_host_ms": "actor", "tasks_other_ms": "workers", "driver_ms": "driver",
                     "daemons_ms": "daemons"}  # fmt: skip
    fig = {k: 1000 * max(0.0, v - bg.get(background_of.get(k, ""), 0.0)) / n for k, v in gross.items()}
    fig["total_host_ms"] = sum(fig.values())
    # Background per second of the processes a job runs (one actor, these workers, daemons, driver):
    # what 16 host cores lose whatever the image rate, before they feed images.
    fig["background_ms_per_s"] = 1000 * sum(bg.values()) / wall
    fig["feeds_img_s_per_16_cores"] = (16000 - fig["background_ms_per_s"]) / fig["total_host_ms"]
    fig["total_host_ms_gross"] = 1000 * sum(gross.values()) / n
    fig["actor_work_ms"] = 1000 * work_s / n
    fig["actor_decode_ms"] = 1000 * by_stage["actor_decode"] / n
    fig["actor_start_s"] = by_stage["actor_start"]
    fig["workers_start_s"] = workers_start
    fig["job_img_s"] = n / wall
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="images (default 512)")
    p.add_argument("--modes", default="host,device", help="--decode modes, in order (default host,device)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model batch (default 32: a GPU actor's)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs the local Ray cluster declares (default: all)")
    add_workdir_arg(p)
    args = p.parse_args()
    for mode in args.modes.split(","):
        if mode not in ("host", "device"):
            sys.exit(f"--modes: each mode must be host or device, got {mode!r}")

    import ray

    from segbatch.stages.cpu_clock import ENV

    with scratch_dir("segbatch-overhead-", args.workdir) as work:
        images = work / "images"
        if not images.exists() or len(list(images.iterdir())) != args.n:
            shutil.rmtree(images, ignore_errors=True)
            write_images(images, args.n, args.width, args.height)
        records = work / "cpu"
        records.mkdir(exist_ok=True)
        # Set before Ray starts: its daemons, and every worker they start, inherit them (the
        # workers import the plugin model from bench/).
        os.environ[ENV] = str(records)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
        sys.path.insert(0, str(BENCH))
        from segbatch.pipeline import LOCAL_SYSTEM_CONFIG

        ray.init(num_cpus=args.ray_cpus or os.cpu_count(), include_dashboard=False, logging_level="ERROR",
                 _system_config=LOCAL_SYSTEM_CONFIG)  # fmt: skip
        try:
            print(f"{args.n} JPEGs {args.width}x{args.height}, batch {args.batch_size}, "
                  f"{os.cpu_count()} CPUs, 1 model actor (1 torch thread)", flush=True)  # fmt: skip
            lines = []
            for mode in args.modes.split(","):
                fig = measure(mode, images, work, args)
                lines.append(
                    f"overhead decode={mode} "
                    + " ".join(f"{k}={v:.2f}" if not k.startswith("feeds") else f"{k}={v:.0f}" for k, v in fig.items())
                )
                print(lines[-1], flush=True)
        finally:
            ray.shutdown()
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main()
