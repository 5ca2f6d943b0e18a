"""The local Ray cluster segbatch starts keeps idle worker processes for the job.

Ray kills a worker idle for 1 s once more workers exist than CPUs are free; with the model
actors holding a small machine's CPUs, every read and encode task then paid a new process and
its torch import. A real local cluster (its own process and temp dir, not the suite's shared
one) started by :func:`segbatch.pipeline._connect`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SCRIPT = """
import os, time, ray
from segbatch.pipeline import _connect
_connect(None)
cpus = ray.cluster_resources()["CPU"]

@ray.remote(num_cpus=cpus)
class Hold:  # holds every CPU, as the model actors hold most of them
    def ping(self):
        return 1

hold = Hold.remote()
ray.get(hold.ping.remote())

@ray.remote(num_cpus=0)
def pid():
    return os.getpid()

first = ray.get(pid.remote())
time.sleep(3)  # Ray's default kills an idle worker after 1 s here
print("PIDS", first, ray.get(pid.remote()))
ray.shutdown()
"""


def test_segbatchs_local_cluster_reuses_idle_workers():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory(prefix="sblc-", dir="/tmp") as tmp:
        env.update(RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0")
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PIDS"))
    first, second = line.split()[1:]
    assert first == second, "the task ran in a new worker process: the idle one was killed"
