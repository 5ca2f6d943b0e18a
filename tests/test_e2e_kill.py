"""Kill for real, then resume: SIGKILL of the driver, SIGKILL of a model actor mid-run."""

from __future__ import annotations

import contextlib
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
from tests.conftest import REPO
from tests.test_e2e_resume import stable

pytestmark = pytest.mark.ray

N = 48


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    write_sample_dataset(str(root), N, seed=4242)
    return root


@pytest.fixture(scope="module")
def reference(many: Path, tmp_path_factory, ray_cluster):
    """The same job run once without interruption."""
    out = tmp_path_factory.mktemp("ref") / "out"
    run(_config(many, out))
    return stable(out)


def _config(root: Path, out: Path) -> JobConfig:
    return JobConfig(
        input=str(root / "images"),
        labels=str(root / "masks"),
        output=str(out),
        model="unet",
        batch_size=2,
        rows_per_part=2,
    )


def _committed_rows(out: Path) -> int:
    total = 0
    for p in (out / "parts").glob("*.parquet"):
        with contextlib.suppress(OSError, FileNotFoundError):
            total += pq.read_metadata(p).num_rows
    return total


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_of_the_driver_then_rerun_finishes_exactly_once(many, reference, tmp_path, ray_cluster):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "segbatch.cli",
        "run",
        "--input",
        str(many / "images"),
        "--labels",
        str(many / "masks"),
        "--output",
        str(out),
        "--model",
        "unet",
        "--batch-size",
        "2",
        "--rows-per-part",
        "2",
        "--ray-address",
        ray_cluster.address,
    ]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _committed_rows(out) >= 6 or driver.poll() is not None, 240, "committed parts")
        assert driver.poll() is None, "the job finished before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    committed = _committed_rows(out)
    assert not (out / "_SUCCESS").exists() and 6 <= committed < N

    summary = run(_config(many, out))
    # Everything committed before the kill is skipped (a part being written at the kill may
    # have landed after the count above), nothing is computed twice, every image once.
    assert summary.num_skipped >= committed and summary.num_processed + summary.num_skipped == N
    assert stable(out) == reference
    again = run(_config(many, out))
    assert (again.num_processed, again.num_skipped) == (0, N)


def _predictor_pids() -> list[int]:
    """Model actor processes: Ray titles them ``ray::ModelActor`` (``ray::ModelActor.predict`` while busy)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if title.startswith(b"ray::ModelActor"):
            pids.append(int(entry.name))
    return pids


def test_sigkill_of_a_model_actor_is_survived_without_loss(many, reference, tmp_path, ray_cluster):
    """Ray restarts the actor, the executor loads its model again and resends its batches; the run
    completes by itself."""
    import threading

    out = tmp_path / "out"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            pids = _predictor_pids()
            if pids and _committed_rows(out) >= 4:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = run(_config(many, out))
    t.join(5)
    assert killed, "no model actor was found to kill"
    assert summary.num_images == N and summary.num_errors == 0
    assert stable(out) == reference
