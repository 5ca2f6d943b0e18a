"""GPU scheduling on a cluster that declares GPUs this CPU machine does not have.

A second local head is started with ``--num-gpus 2`` (Ray then schedules GPU actors
exactly as on a GPU node); CUDA is absent, so each actor must take its own GPU id and
still run on the CPU. The job runs as a subprocess, since this process is joined to the
shared cluster.

The model is a plugin whose forward calls, in each actor, wait until every actor of the job
has called one (``tests.models.plugin_fixtures:build_gathered``): twelve small images would
otherwise be done by the first actors up before the others have started, and a job that
ends kills those unannounced.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, ray_head

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    with ray_head(tmp_path_factory.mktemp("gpu-ray") / "head.log", num_cpus=4, num_gpus=2) as cluster:
        yield cluster


def _run(gpu_cluster, sample_dir: Path, out: Path, actors: int, *args: str) -> tuple[list[dict], str]:
    gate = out.parent / f"{out.name}-gate"
    gate.mkdir()
    spec = out.parent / f"{out.name}-gate.json"
    spec.write_text(json.dumps({"folder": str(gate), "count": actors}))
    cmd = [
        sys.executable,
        "-m",
        "segbatch.cli",
        "run",
        "--input",
        str(sample_dir / "images"),
        "--output",
        str(out),
        "--model",
        "tests.models.plugin_fixtures:build_gathered",
        "--weights",
        str(spec),
        "--actors",
        str(actors),
        "--batch-size",
        "1",
        "--ray-address",
        gpu_cluster.address,
        "--verbose",  # each model actor says where it runs
        *args,
    ]
    # Ray folds log lines that differ only in numbers ("[repeated 2x across cluster]"): keep them all.
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 GPU + " in proc.stderr or "0.5 GPU + " in proc.stderr
    rows = pq.read_table(out / "images.parquet", columns=["status", "worker"]).to_pylist()
    assert all(r["status"] == "ok" for r in rows)
    return rows, proc.stdout + proc.stderr


def _parse(worker: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in worker.split())


def _actors(rows: list[dict]) -> dict[str, dict[str, str]]:
    """pid → parsed ``worker`` fields of the actors that ran the images."""
    return {_parse(r["worker"])["pid"]: _parse(r["worker"]) for r in rows}


def _started(log: str) -> dict[str, dict[str, str]]:
    """pid → fields of every model actor that started (each prints one line as it is created,
    forwarded by Ray; one that the job did not need before it ended may never load its model)."""
    found = re.findall(r"segbatch: model actor started: (node=\S+ pid=\S+ device=\S+ gpus=\S*)", log)
    return {_parse(w)["pid"]: _parse(w) for w in found}


def test_each_actor_gets_its_own_gpu_and_runs_on_the_cpu_without_cuda(gpu_cluster, sample_dir, tmp_path):
    rows, log = _run(gpu_cluster, sample_dir, tmp_path / "whole", 2, "--cpus-per-actor", "1")
    ran = _actors(rows)  # every actor ran images (the gate): images.parquet says where
    assert len(ran) == 2, ran
    assert set(ran) <= set(_started(log))  # each said where it runs as it started (--verbose)
    assert sorted(a["gpus"] for a in ran.values()) == ["0", "1"]
    assert all(a["device"] == "cpu" for a in ran.values())  # CUDA absent: clean CPU fallback
    assert "2 batch(es) in at once" in log  # a GPU actor's default: the next batch in while one runs


def test_fractional_gpus_pack_two_actors_per_gpu(gpu_cluster, sample_dir, tmp_path):
    rows, log = _run(
        gpu_cluster,
        sample_dir,
        tmp_path / "half",
        4,
        "--gpus-per-actor",
        "0.5",
        "--cpus-per-actor",
        "0.5",
    )
    ran = _actors(rows)
    assert len(ran) == 4, ran
    assert set(ran) <= set(_started(log))
    per_gpu = collections.Counter(a["gpus"] for a in ran.values())
    assert per_gpu == {"0": 2, "1": 2}  # two half-GPU actors on each GPU
    assert all(a["device"] == "cpu" for a in ran.values())
