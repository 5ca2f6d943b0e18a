"""The `segbatch` command as a user's shell runs it: its own local Ray cluster, signals, exit status, console."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port

EXE = str(Path(sys.executable).parent / "segbatch")


@pytest.fixture()
def ray_tmp():
    """A short temp root of the run's own local Ray cluster (it holds unix sockets), so that its
    processes can be found by it and it never finds another cluster."""
    path = tempfile.mkdtemp(prefix="sbi-", dir="/tmp")
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _env(ray_tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    return {**env, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _ray_processes(ray_tmp: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(ray_tmp in part for part in p.info["cmdline"] or []):
                found.append(f"{p.info['pid']} {' '.join(p.info['cmdline'])[:120]}")
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from segbatch.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("cliproc")
    write_sample_dataset(str(root), 48, seed=11)
    return root


def test_a_ray_address_with_no_cluster_exits_2_within_seconds_naming_it(images, tmp_path, ray_tmp):
    address = f"127.0.0.1:{free_port()}"
    args = [EXE, "run", "--input", str(images / "images"), "--output", str(tmp_path / "o"), "--model", "unet"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [*args, "--ray-address", address], capture_output=True, text=True, timeout=120, env=_env(ray_tmp)
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    assert f"no Ray cluster answers at {address}" in proc.stderr and "ray start --head" in proc.stderr


@pytest.mark.parametrize("delay", [2.0, "first part"])
def test_one_ctrl_c_stops_a_run_says_what_is_committed_and_leaves_no_ray_process(images, tmp_path, ray_tmp, delay):
    """SIGINT during start-up (2 s in: torch and Ray still starting) and mid-run (a first part committed)."""
    out = tmp_path / "o"
    args = [EXE, "run", "--input", str(images / "images"), "--labels", str(images / "masks"), "--output", str(out)]
    args += ["--model", "unet", "--batch-size", "2", "--rows-per-part", "2"]
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=_env(ray_tmp), text=True)
        if delay == "first part":
            deadline = time.monotonic() + 120
            while not list((out / "parts").glob("*.parquet")) and proc.poll() is None:
                assert time.monotonic() < deadline, err_path.read_text()[-2000:]
                time.sleep(0.1)
        else:
            time.sleep(float(delay))
        assert proc.poll() is None, err_path.read_text()[-2000:]
        t_signal = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    took = time.monotonic() - t_signal
    text = err_path.read_text()
    assert code == 130, text[-3000:]
    assert took < 20, (took, text[-2000:])
    assert "Ctrl-C: stopping the run" in text and "rerun the same command to resume" in text
    assert "images are committed in" in text or "could not count" in text
    time.sleep(1.0)
    assert _ray_processes(ray_tmp) == []
    assert "Traceback" not in text

    # The same command resumes and finishes, and the console carries no Ray noise that reads as a failure.
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env(ray_tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "48 images (" in done.stdout
    if delay == "first part":
        assert " 0 resumed" not in done.stdout, done.stdout  # what was committed before the Ctrl-C is kept
    assert "constructor arguments in the object store" not in done.stderr
    assert _ray_processes(ray_tmp) == []
