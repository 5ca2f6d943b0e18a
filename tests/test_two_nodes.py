"""One job across two Ray nodes on this machine, and the loss of one of them mid-run.

A head (4 CPUs) and a worker node (2 CPUs, `ray start --address`) form a real two-node
cluster; the job's two model actors are spread over both. Once both nodes have committed
images, the worker node is killed (its whole process group: raylet, object store, workers,
as a preempted machine goes). Its work is redone on the head — Ray Data retries what it
can, and batches whose retries ran out while the node was gone are labeled image by image —
and the job finishes with every image exactly once and the same results as a run that
lost nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segbatch import JobConfig
from segbatch.pipeline import run
from segbatch.sample import write_sample_dataset
from tests.conftest import REPO, ray_head, ray_worker_node
from tests.helpers import assert_same_outputs
from tests.test_e2e_resume import stable

pytestmark = pytest.mark.ray

N = 64


def _committed_nodes(out: Path) -> dict[str, int]:
    """node id prefix → images committed by model actors on that node."""
    nodes: dict[str, int] = {}
    for p in (out / "parts").glob("*.parquet"):
        try:
            workers = pq.read_table(p, columns=["worker"]).column(0).to_pylist()
        except (OSError, FileNotFoundError):
            continue  # being compacted away
        for w in workers:
            node = dict(kv.split("=", 1) for kv in (w or "").split()).get("node", "?")
            nodes[node] = nodes.get(node, 0) + 1
    return nodes


def test_a_job_spans_two_nodes_and_survives_losing_one(tmp_path, ray_cluster):
    data = tmp_path / "data"
    write_sample_dataset(str(data), N, seed=99)
    reference_out = tmp_path / "reference"
    run(
        JobConfig(
            input=str(data / "images"),
            labels=str(data / "masks"),
            output=str(reference_out),
            model="unet",
            batch_size=2,
            rows_per_part=2,
        )
    )

    out = tmp_path / "out"
    with (
        ray_head(tmp_path / "head.log", num_cpus=4, num_gpus=0) as head,
        ray_worker_node(head, tmp_path / "worker.log", num_cpus=2) as worker,
    ):
        from ray.util.state import list_nodes

        alive = [n for n in list_nodes(address=head.dashboard) if n.state == "ALIVE"]
        assert len(alive) == 2
        worker_node = next(n.node_id for n in alive if not n.is_head_node)
        cmd = [
            sys.executable,
            "-m",
            "segbatch.cli",
            "run",
            "--input",
            str(data / "images"),
            "--labels",
            str(data / "masks"),
            "--output",
            str(out),
            "--model",
            "unet",
            "--batch-size",
            "2",
            "--rows-per-part",
            "2",
            "--actors",
            "2",
            "--cpus-per-actor",
            "1",
            "--ray-address",
            head.address,
        ]
        # The driver's output goes to a file: a pipe nobody reads while we poll could fill and stall it.
        log_file = tmp_path / "driver.log"
        with open(log_file, "w") as sink:
            driver = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not (len(nodes := _committed_nodes(out)) >= 2 and worker_node[:12] in nodes):
                assert driver.poll() is None, f"the job ended before both nodes had committed: {log_file.read_text()}"
                assert time.time() < deadline, f"both nodes never committed: {nodes}"
                time.sleep(0.1)
            os.killpg(worker.pid, signal.SIGKILL)  # the worker node goes, mid-run
            killed_at = sum(nodes.values())
            driver.wait(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
    print(f"worker node killed after {killed_at} of {N} images committed")
    assert driver.returncode == 0, log_file.read_text()[-3000:]
    assert killed_at < N, "the worker node was stopped after the job had committed everything"
    rows = pq.read_table(out / "images.parquet", columns=["image_id", "status", "worker"]).to_pylist()
    assert len(rows) == N == len({r["image_id"] for r in rows})
    assert all(r["status"] == "ok" for r in rows)
    nodes = {dict(kv.split("=", 1) for kv in r["worker"].split())["node"] for r in rows}
    assert worker_node[:12] in nodes and len(nodes) == 2  # both nodes labeled images that were kept
    # Two actors of one torch thread against one of two: the same maps, floats to their last bits.
    assert_same_outputs(stable(out), stable(reference_out))
