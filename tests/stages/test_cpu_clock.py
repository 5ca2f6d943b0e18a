"""The per-stage CPU records bench/overhead.py reads: off by default, one JSON line per section when on."""

from __future__ import annotations

import json
import os
import time

from segbatch.stages.cpu_clock import ENV, mark, stage_clock


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_nothing_is_written_unless_the_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with stage_clock("read", 3):
        _spin(0.01)
    mark("actor_start")
    assert list(tmp_path.iterdir()) == []


def test_each_section_appends_its_cpu_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))
    with stage_clock("read", 3):
        _spin(0.05)
    with stage_clock("actor_model", 2, "thread"):
        _spin(0.02)
    mark("actor_start")
    lines = (tmp_path / f"{os.getpid()}.jsonl").read_text().splitlines()
    read, model, start = (json.loads(line) for line in lines)
    assert (read["stage"], read["images"], read["pid"]) == ("read", 3, os.getpid())
    assert 0.05 <= read["cpu_s"] < 1.0 and 0.02 <= model["cpu_s"] < 1.0
    assert model["stage"] == "actor_model" and model["images"] == 2
    # A mark is the process's CPU so far: at least what the sections above spent.
    assert start["stage"] == "actor_start" and start["cpu_s"] >= read["cpu_s"] + model["cpu_s"]
    assert read["process_cpu_s"] <= model["process_cpu_s"] <= start["process_cpu_s"]
