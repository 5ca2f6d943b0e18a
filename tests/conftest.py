"""Shared fixtures: one real local Ray cluster for every end-to-end test, sample data."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

# Ray turns token authentication on for `ray start --head` whenever ~/.ray/auth_token
# exists (a local `ray.init()`, e.g. `make demo`, leaves one behind), while a client given an
# explicit address sends a token only when RAY_AUTH_MODE=token. Pin the mode and one session
# token for every process the tests start, so the suite behaves the same on any machine.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked (ports picked one
    at a time can repeat, and a Ray node given one port for two components does not start)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


# The ports every Ray node opens besides the head's own (GCS, dashboard, client server): given
# explicitly, since Ray's defaults clash between two nodes on one machine.
NODE_PORT_FLAGS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, for ray.init
    dashboard: str  # http://…, for `ray job submit`
    temp_dir: str  # the head's --temp-dir (sessions, logs, unpacked working dirs)


def _ray_start(args: list[str], log_path: Path, what: str) -> subprocess.Popen:
    """`ray start … --block` in its own process group, once its log says the runtime started."""
    # Idle workers kept as segbatch's own local clusters and cluster.yaml keep them. (Imported
    # here: ray reads RAY_AUTH_MODE, set above, when it is first imported.)
    from segbatch.pipeline import IDLE_WORKER_KEEP_MS

    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_idle_worker_killing_time_threshold_ms": str(IDLE_WORKER_KEEP_MS),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.time() + 120
    while b"Ray runtime started" not in log_path.read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"{what} did not start; see {log_path}")
        time.sleep(0.5)
    return proc


@contextmanager
def ray_head(log_path: Path, *, num_cpus: int, num_gpus: int) -> Iterator[RayCluster]:
    """A real Ray head (`ray start --head --block`) in its own process group, stopped on exit.

    Every port it binds is picked free: Ray's fixed defaults (52365 for the dashboard
    agent, 10001 for the client server…) collide with any other cluster on the machine,
    and the job agent then never registers ("No available agent"). A temp dir of its own
    (short: it holds unix sockets) keeps its address file away from /tmp/ray, so a later
    plain `ray.init()` never finds a dead cluster.
    """
    flags = (*NODE_PORT_FLAGS, "--ray-client-server-port")
    gcs_port, dash_port, *others = free_ports(2 + len(flags))
    side_ports = dict(zip(flags, others, strict=True))
    temp_dir = tempfile.mkdtemp(prefix="sbray-", dir="/tmp")
    proc = _ray_start(
        [
            "--head",
            f"--temp-dir={temp_dir}",
            f"--port={gcs_port}",
            f"--dashboard-port={dash_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            "--object-store-memory=600000000",
            *(f"{flag}={port}" for flag, port in side_ports.items()),
        ],
        log_path,
        "ray head",
    )
    try:
        yield RayCluster(address=f"127.0.0.1:{gcs_port}", dashboard=f"http://127.0.0.1:{dash_port}", temp_dir=temp_dir)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def ray_worker_node(
    head: RayCluster, log_path: Path, *, num_cpus: int, num_gpus: int = 0
) -> Iterator[subprocess.Popen]:
    """A second Ray node on this machine (`ray start --address … --block`), in its own process group.

    Killing that group (``os.killpg(proc.pid, SIGKILL)``) stops the node the way a
    preempted machine stops: raylet, object store and workers at once.
    """
    side_ports = dict(zip(NODE_PORT_FLAGS, free_ports(len(NODE_PORT_FLAGS)), strict=True))
    proc = _ray_start(
        [
            f"--address={head.address}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            "--object-store-memory=400000000",
            *(f"{flag}={port}" for flag, port in side_ports.items()),
        ],
        log_path,
        "ray worker node",
    )
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The shared local cluster (2 CPUs, no GPU), joined by this process; started once per session (10–20 s)."""
    import ray

    with ray_head(tmp_path_factory.mktemp("ray") / "head.log", num_cpus=2, num_gpus=0) as cluster:
        deadline = time.time() + 60
        while True:
            try:
                ray.init(address=cluster.address, logging_level="WARNING")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        try:
            yield cluster
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def job_server(ray_cluster: RayCluster) -> str:
    """The dashboard address of ``ray_cluster`` once it accepts job submissions.

    The head's dashboard agent registers a few seconds after `ray.init` can connect; until
    then a submission fails with "No available agent". A throwaway job proves it is ready.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard)
    deadline = time.time() + 120
    while True:
        try:
            job_id = client.submit_job(entrypoint="true")
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(1)
    while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() > deadline:
            raise RuntimeError(f"probe job {job_id} did not finish: {client.get_job_logs(job_id)}")
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)
    return ray_cluster.dashboard


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
