"""Peak memory of a whole job (driver + every Ray process) at N and 10·N images.

Each size runs in a fresh local Ray cluster started by this process, so the GCS, raylet
and workers are all its descendants; a sampler thread sums their resident set sizes
(``/proc/<pid>/status`` VmRSS) every 0.1 s. Images are small generated shapes and the
model is the bundled U-Net with the images' label PNGs (so label quality is on), so the
figures show what the plumbing holds, not the model::

    .venv/bin/python bench/memory.py [--n 200]

Ends with one line: ``peak_rss_mb N=… 10N=… ratio=…``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from scratch import add_workdir_arg, scratch_dir


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, in MiB."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class PeakSampler:
    def __init__(self, interval: float = 0.1) -> None:
        self.peak, self.interval, self._stop = 0.0, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_size(n: int, work: Path, batch_size: int) -> tuple[float, float]:
    """(peak MiB, wall s) of one job over ``n`` images, Ray start included."""
    import ray

    from segbatch import JobConfig, run
    from segbatch.pipeline import LOCAL_SYSTEM_CONFIG
    from segbatch.sample import write_sample_dataset

    data = work / f"data-{n}"
    if not data.exists():
        write_sample_dataset(str(data), n, seed=n)
    t0 = time.perf_counter()
    with PeakSampler() as sampler:
        ray.init(  # with the settings of the clusters `segbatch run` starts (idle workers kept)
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level="ERROR",
            object_store_memory=500_000_000,
            _system_config=LOCAL_SYSTEM_CONFIG,
        )
        try:
            summary = run(
                JobConfig(
                    input=str(data / "images"),
                    labels=str(data / "masks"),
                    output=str(work / f"out-{n}"),
                    model="unet",
                    batch_size=batch_size,
                    report=False,
                )
            )
        finally:
            ray.shutdown()
    assert summary.num_images == n and summary.num_errors == 0
    return sampler.peak, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    add_workdir_arg(p)
    args = p.parse_args()
    with scratch_dir("sb-mem-", args.workdir) as work:
        base = tree_rss_mb(os.getpid())
        small, t_small = one_size(args.n, work, args.batch_size)
        large, t_large = one_size(10 * args.n, work, args.batch_size)
        print(f"driver alone before Ray: {base:.0f} MiB")
        print(
            f"N={args.n}: peak {small:.0f} MiB, {t_small:.1f} s; "
            f"10N={10 * args.n}: peak {large:.0f} MiB, {t_large:.1f} s"
        )
        print(f"peak_rss_mb N={small:.0f} 10N={large:.0f} ratio={large / small:.2f}")


if __name__ == "__main__":
    main()
