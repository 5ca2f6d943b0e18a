"""`ray job submit … -- python jobs/label.py …` against the shared local Ray cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RAY, REPO

pytestmark = pytest.mark.ray


def test_ray_job_submit_runs_the_job_entry_point(sample_dir, tmp_path, ray_cluster, job_server):
    out = tmp_path / "submitted"
    # The job's interpreter is this venv's python: the cluster was started from it, as
    # cluster.yaml's setup commands arrange on a real cluster.
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        job_server,
        "--working-dir",
        ".",
        "--",
        sys.executable,
        "jobs/label.py",
        "--input",
        str(sample_dir / "images"),
        "--labels",
        str(sample_dir / "masks"),
        "--output",
        str(out),
        "--model",
        "unet",
        "--batch-size",
        "4",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log
    assert "mean Dice" in log
    # The working dir went up without the virtual environment: look at what was unpacked.
    unpacked = [
        p
        for p in Path(ray_cluster.temp_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
        if p.is_dir()
    ]
    assert unpacked
    for pkg in unpacked:
        assert (pkg / "jobs" / "label.py").exists() and (pkg / "segbatch" / "pipeline.py").exists()
        assert not (pkg / ".venv").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 12 and metrics["num_errors"] == 0
    assert (out / "_SUCCESS").exists()


def test_job_level_errors_fail_the_submitted_job(tmp_path, job_server):
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        job_server,
        "--working-dir",
        ".",
        "--",
        sys.executable,
        "jobs/label.py",
        "--input",
        str(tmp_path / "missing"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "unet",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"input '{tmp_path / 'missing'}' does not exist" in log
    assert not Path(tmp_path / "o").exists()
