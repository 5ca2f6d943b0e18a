"""Layouts a user asks for on the shared 2-CPU cluster either run or exit 2 at once, and a run
whose GPU node goes away stops with a message naming what it waits for (a real second node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segbatch import JobConfig, JobError
from segbatch.pipeline import run
from segbatch.sample import write_sample_dataset
from tests.conftest import REPO, ray_head, ray_worker_node

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    write_sample_dataset(str(root), 6, seed=2)
    return root / "images"


def _run_within(config: JobConfig, seconds: float) -> object:
    """The run's summary, or JobError; fails the test if it does neither within ``seconds``."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_outcome(config)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"{config.actors} actors × {config.cpus_per_actor} CPU did not finish within {seconds} s"
    return result[0]


def _outcome(config: JobConfig) -> object:
    try:
        return run(config)
    except JobError as err:
        return err


@pytest.mark.parametrize("actors", [1, 2, 3, 4])
@pytest.mark.parametrize("cpus", [0.5, 1.0, 2.0])
def test_every_layout_of_the_grid_runs_or_exits_2_at_once(small, tmp_path, ray_cluster, actors, cpus):
    """Before, e.g. --actors 2 (both CPUs held by actors, the read task waiting forever) hung for good."""
    config = JobConfig(input=str(small), output=str(tmp_path / "o"), model="unet", actors=actors, cpus_per_actor=cpus)
    t0 = time.monotonic()
    outcome = _run_within(config, 120)
    if isinstance(outcome, JobError):
        assert time.monotonic() - t0 < 30 and "--actors" in str(outcome)
        return
    assert outcome.num_images == 6 and outcome.num_errors == 0  # type: ignore[attr-defined]


def test_a_run_whose_gpu_node_is_lost_stops_naming_what_it_waits_for(tmp_path, ray_cluster):
    """A head without GPUs and a worker node declaring one GPU (CUDA is absent: the actor runs on the
    CPU, scheduled as on a GPU node); the worker node is killed after the first commits."""
    data = tmp_path / "data"
    write_sample_dataset(str(data), 60, seed=8)
    out = tmp_path / "out"
    with (
        ray_head(tmp_path / "head.log", num_cpus=2, num_gpus=0) as head,
        ray_worker_node(head, tmp_path / "worker.log", num_cpus=2, num_gpus=1) as worker,
    ):
        cmd = [sys.executable, "-m", "segbatch.cli", "run", "--input", str(data / "images"), "--output", str(out),
               "--model", "unet", "--batch-size", "1", "--rows-per-part", "1", "--stall-timeout", "8",
               "--ray-address", head.address]  # fmt: skip
        log_file = tmp_path / "driver.log"
        with open(log_file, "w") as sink:
            driver = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not list((out / "parts").glob("*.parquet")) if (out / "parts").exists() else True:
                assert driver.poll() is None, log_file.read_text()[-3000:]
                assert time.time() < deadline, "no part was ever committed"
                time.sleep(0.1)
            os.killpg(worker.pid, signal.SIGKILL)  # the only GPU node goes, mid-run
            killed = time.monotonic()
            code = driver.wait(timeout=120)
            took = time.monotonic() - killed
        finally:
            if driver.poll() is None:
                driver.kill()
    text = log_file.read_text()
    assert code == 2, text[-3000:]
    assert "1 GPU + " in text  # sized from the cluster: one actor for the one GPU
    assert "no image committed for" in text and "waits for a node with 1 GPU" in text, text[-2000:]
    assert "rerun the same command to resume" in text and took < 60
    committed = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("*.parquet"))
    assert 0 < committed < 60  # what was committed stays for the rerun
