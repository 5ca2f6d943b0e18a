"""The progress display and the stall watchdog, with a fake counter and fake nodes (no Ray needed)."""

from __future__ import annotations

import io
import logging
import time

import pytest

from segbatch.driver import progress
from segbatch.driver.progress import Monitor, Needs, Snapshot
from segbatch.errors import JobError

GPU_NODE = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}
CPU_NODE = {"Alive": True, "Resources": {"CPU": 8.0}}


def test_the_line_says_done_of_total_errors_rate_and_eta():
    s = Snapshot(done=300, total=1000, errors=2, elapsed=60.0, rate=10.0)
    assert s.line() == "300/1000 images (30.0 %), 2 errors, 10.0 img/s, ETA 1m10s"
    assert s.bar().startswith("[########") and s.bar().endswith(s.line())
    assert Snapshot(0, 10, 0, 1.0, None).line() == "0/10 images (0.0 %), 0 errors, starting"


def test_an_interactive_terminal_gets_a_bar_redrawn_in_place(monkeypatch):
    counts = iter([(0, 0, None), (4, 0, 1.0), (8, 1, 1.0)])
    stream = io.StringIO()
    monkeypatch.setattr(progress, "REDRAW_EVERY_S", 0.0)
    m = Monitor(8, lambda: next(counts), Needs(0, 1), 600, lambda: [CPU_NODE], stream=stream, interactive=True)
    for _ in range(3):
        m.poll()
        time.sleep(0.01)
    m.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K[") == 4 and text.endswith("8/8 images (100.0 %), 1 errors, " + text.split(", ")[-1])
    assert m.first_commit == 1.0


def test_a_log_line_every_few_seconds_otherwise(monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    m = Monitor(10, lambda: (5, 0, 1.0), Needs(0, 1), 600, lambda: [CPU_NODE], stream=io.StringIO(), interactive=False)
    with caplog.at_level(logging.INFO, logger="segbatch"):
        m.poll()
    assert "progress: 5/10 images (50.0 %), 0 errors" in caplog.text


def test_a_stall_while_the_gpu_node_is_gone_stops_the_run_naming_what_it_waits_for():
    m = Monitor(10, lambda: (3, 0, 1.0), Needs(gpus=1.0, cpus=1.0), 0.2, lambda: [CPU_NODE], stream=io.StringIO())
    m.poll()
    time.sleep(0.3)
    with pytest.raises(
        JobError, match=r"no image committed for 0 s while the run waits for a node with 1 GPU and 1 CPU"
    ):
        m.poll()


def test_a_stall_with_the_resources_there_only_warns(caplog):
    m = Monitor(10, lambda: (3, 0, 1.0), Needs(gpus=1.0, cpus=1.0), 0.2, lambda: [GPU_NODE], stream=io.StringIO())
    m.poll()
    time.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="segbatch"):
        m.poll()
    assert "although the cluster has the resources" in caplog.text


def test_needs_reads_ray_nodes():
    assert Needs(1, 1).missing([GPU_NODE]) is None
    assert "live nodes: 8 CPU/0 GPU" in (Needs(1, 1).missing([CPU_NODE]) or "")
    assert "no live node" in (Needs(0, 1).missing([{"Alive": False, "Resources": {"CPU": 8}}]) or "")
