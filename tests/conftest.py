"""Shared fixtures: one real local Ray cluster for every end-to-end test, sample data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, for ray.init
    dashboard: str  # http://…, for `ray job submit`
    temp_dir: str  # the head's --temp-dir (sessions, logs, unpacked working dirs)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A real Ray head started with `ray start --head --block` and joined by this process.

    Started once per session (10–20 s here). The head runs in its own process group and
    is stopped by signalling that group, so a developer's own Ray cluster is untouched.
    """
    import ray

    gcs_port, dash_port = free_port(), free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # A temp dir of its own (short: it holds unix sockets) keeps this cluster's address
    # file away from /tmp/ray, so a later plain `ray.init()` never finds a dead cluster.
    temp_dir = tempfile.mkdtemp(prefix="sbray-", dir="/tmp")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
         "--object-store-memory=600000000", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    address = f"127.0.0.1:{gcs_port}"
    deadline = time.time() + 120
    while True:
        try:
            ray.init(address=address, logging_level="WARNING")
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray head did not start; see {log.name}") from None
            time.sleep(1)
    try:
        yield RayCluster(address=address, dashboard=f"http://127.0.0.1:{dash_port}", temp_dir=temp_dir)
    finally:
        ray.shutdown()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 generated shape images (JPEG) with VOC-style mask PNGs, unseen by the demo model."""
    from segbatch.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(str(root), 12, seed=777)
    return root


@pytest.fixture()
def copy_of(tmp_path: Path):
    def _copy(src: Path, name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy
