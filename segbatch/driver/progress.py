"""Progress a person can read, and a watchdog for a run that cannot move.

The write tasks return one small row per committed image, which the thread that drives the
Ray Data pipeline adds to a :class:`CommitCounter`: the driver knows how many images are done
without listing storage. While that thread runs, :class:`Monitor` shows ``images committed of the total,
errors so far, img/s, ETA`` — a bar redrawn in place on an interactive terminal, a log line every
:data:`LOG_EVERY_S` seconds otherwise (Ray jobs, CI) — and stops the run when nothing has been
committed for ``stall_timeout`` seconds while a resource the layout needs is missing from the
cluster (a GPU node gone and not replaced, an autoscaler that never delivered).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from segbatch.errors import JobError

log = logging.getLogger("segbatch")

LOG_EVERY_S = 10.0
REDRAW_EVERY_S = 0.5
BAR_WIDTH = 28


class CommitCounter:
    """Images committed and errors so far, updated by the thread that consumes the pipeline's
    output and read by the monitor (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.images = 0
        self.errors = 0
        self.first: float | None = None  # wall clock of the first commit

    def add(self, images: int, errors: int) -> None:
        with self._lock:
            self.images += images
            self.errors += errors
            if self.first is None and images:
                self.first = time.time()

    def read(self) -> tuple[int, int, float | None]:
        with self._lock:
            return self.images, self.errors, self.first


@dataclass
class Snapshot:
    """What the progress line shows."""

    done: int  # images committed by this run
    total: int  # images this run labels
    errors: int
    elapsed: float  # seconds since the pipeline started
    rate: float | None  # img/s over the recent window

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = f"{self.rate:.1f} img/s" if self.rate else "starting"
        left = self.total - self.done
        eta = f", ETA {_clock(left / self.rate)}" if self.rate and left > 0 else ""
        return f"{self.done}/{self.total} images ({pct:.1f} %), {self.errors} errors, {rate}{eta}"

    def bar(self) -> str:
        filled = round(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.line()}"


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


@dataclass(frozen=True)
class Needs:
    """What the layout needs from the cluster to make progress: a node with these resources."""

    gpus: float
    cpus: float

    def missing(self, nodes: list[dict[str, Any]]) -> str | None:
        """What is missing among ``nodes`` (``ray.nodes()`` entries), or None if some live node has it all."""
        alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
        if any(r.get("GPU", 0) >= self.gpus and r.get("CPU", 0) >= self.cpus for r in alive):
            return None
        have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in alive) or "no live node"
        want = f"{self.gpus:g} GPU and {self.cpus:g} CPU" if self.gpus else f"{self.cpus:g} CPU"
        return f"a node with {want} for a model actor (live nodes: {have})"


class Monitor:
    """Progress display and stall watchdog around a running pipeline (see the module docstring)."""

    def __init__(
        self,
        total: int,
        read: Callable[[], tuple[int, int, float | None]],
        needs: Needs,
        stall_timeout: float,
        nodes: Callable[[], list[dict[str, Any]]],
        stream: IO[str] | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.total = total
        self.read = read
        self.needs = needs
        self.stall_timeout = stall_timeout
        self.nodes = nodes
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.started = time.monotonic()
        self.first_commit: float | None = None  # wall clock (time.time) of the first committed part
        self._last_change = self.started
        self._last_done = 0
        self._history: list[tuple[float, int]] = [(self.started, 0)]
        self._last_log = self.started
        self._last_draw = 0.0
        self._warned_at = 0.0
        self.snapshot = Snapshot(0, total, 0, 0.0, None)

    def poll(self) -> None:
        """Read the counter, redraw or log, and raise :class:`JobError` if the run is stuck."""
        now = time.monotonic()
        done, errors, first = self.read()
        if first is not None and self.first_commit is None:
            self.first_commit = first
            # The rate counts from the first commit: start-up would make the ETA absurd.
            self._history = [(now, 0)]
        if done != self._last_done:
            self._last_change, self._last_done = now, done
        self._history.append((now, done))
        window = [(t, d) for t, d in self._history if now - t <= 30.0] or self._history[-1:]
        self._history = window
        t0, d0 = window[0]
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
        self.snapshot = Snapshot(done, self.total, errors, now - self.started, rate)
        if self.interactive:
            if now - self._last_draw >= REDRAW_EVERY_S:
                self.stream.write("\r\x1b[2K" + self.snapshot.bar())
                self.stream.flush()
                self._last_draw = now
        elif now - self._last_log >= LOG_EVERY_S:
            log.info("progress: %s", self.snapshot.line())
            self._last_log = now
        self._watch(now)

    def _watch(self, now: float) -> None:
        stalled = now - self._last_change
        if not self.stall_timeout or stalled < self.stall_timeout:
            return
        missing = self.needs.missing(self.nodes())
        if missing is not None:
            self.close()
            raise JobError(
                f"no image committed for {stalled:.0f} s while the run waits for {missing}: a node was lost and "
                "not replaced, or the autoscaler has not delivered. Committed work is kept: rerun the same "
                "command to resume once the cluster has the resources (--stall-timeout sets this limit)"
            )
        if now - self._warned_at >= self.stall_timeout:
            log.warning(
                "no image committed for %.0f s although the cluster has the resources the layout needs; still "
                "waiting (--verbose shows Ray Data's operators)",
                stalled,
            )
            self._warned_at = now

    def close(self) -> None:
        """End the bar's line (interactive) so that later output starts on a fresh line."""
        if self.interactive and self._last_draw:
            self.stream.write("\r\x1b[2K" + self.snapshot.bar() + "\n")
            self.stream.flush()
            self._last_draw = 0.0
