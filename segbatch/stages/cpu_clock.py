"""CPU seconds per stage, as each process measures it, for ``bench/overhead.py``.

Off unless the environment variable :data:`ENV` names a folder (the bench sets it before Ray
starts, so every worker inherits it): then each timed section appends one JSON line
``{"stage", "pid", "cpu_s", "images", "process_cpu_s"}`` to ``<folder>/<pid>.jsonl``
(``process_cpu_s``: the process's CPU seconds since it started, at the end of the section). Off, a section costs one
dictionary lookup.

Two clocks: ``process`` (the default) is the CPU time of the whole process during the
section — right for a task, which has its worker process to itself; ``thread`` is the
calling thread's alone — right inside a model actor, whose other threads (Ray's, a second
batch's call) run at the same time; torch's own threads are not counted, so the bench runs
the actor with one torch thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

ENV = "SEGBATCH_STAGE_CPU"


@contextmanager
def stage_clock(stage: str, images: int, clock: Literal["process", "thread"] = "process") -> Iterator[None]:
    """Time the section's CPU seconds as ``stage`` over ``images`` images (when :data:`ENV` is set)."""
    folder = os.environ.get(ENV)
    if not folder:
        yield
        return
    now = time.process_time if clock == "process" else time.thread_time
    t0 = now()
    try:
        yield
    finally:
        _write(folder, stage, now() - t0, images)


def mark(stage: str) -> None:
    """Record the process's CPU seconds so far as ``stage`` (e.g. a model actor's start-up, once
    its model is built), when :data:`ENV` is set."""
    folder = os.environ.get(ENV)
    if folder:
        _write(folder, stage, time.process_time(), 0)


def _write(folder: str, stage: str, cpu_s: float, images: int) -> None:
    record = {"stage": stage, "pid": os.getpid(), "cpu_s": cpu_s, "images": images,
              "process_cpu_s": time.process_time()}  # fmt: skip
    with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
