"""One Ctrl-C stops a run within seconds, says what is committed, and leaves no Ray process behind.

:class:`GracefulStop` (used by the CLI around a run) replaces the SIGINT/SIGTERM handlers. On
the first signal the handler only starts a stopper thread and returns: nothing is raised into
whatever the main thread was doing (an interrupt raised inside ``logging``'s handler lock once
left the lock held, and the Ray executor thread then blocked on it forever). The stopper writes
straight to file descriptor 2 (not through ``logging``), counts the committed images (bounded
wait), stops the local Ray cluster this process started (its node processes are this process's
children), and exits with 130 (SIGINT) or 143 (SIGTERM). A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

COUNT_TIMEOUT_S = 5.0  # counting committed images on a slow store must not hold the exit
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_active: GracefulStop | None = None


def write_stderr(text: str) -> None:
    """Write to file descriptor 2 directly: no lock that an interrupted thread might hold."""
    data = (text if text.endswith("\n") else text + "\n").encode("utf-8", "replace")
    while data:
        try:
            n = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


class GracefulStop:
    """Context manager: SIGINT/SIGTERM stop the run cleanly (see the module docstring).

    ``committed`` returns a line saying what is committed (called once, in the stopper thread,
    with a :data:`COUNT_TIMEOUT_S` limit); ``resume`` says how to resume.
    """

    def __init__(self, committed: Callable[[], str] | None = None, resume: str = "") -> None:
        self.committed = committed
        self.resume = resume
        self.stopping = threading.Event()
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        global _active
        _active = self
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _active
        _active = None
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def install(self) -> None:
        """(Re)install the handlers; ``ray.init`` installs a SIGTERM handler of its own."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, self._handle)
            self._saved.setdefault(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)
        if self.stopping.is_set():
            write_stderr("segbatch: stopping now")
            _kill_children()
            os._exit(code)
        self.stopping.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        write_stderr(f"\nsegbatch: {name}: stopping the run (committed work is kept; {name} again to stop at once)")
        threading.Thread(target=self._stop, args=(code,), name="segbatch-stop", daemon=True).start()

    def _stop(self, code: int) -> None:
        try:
            if self.committed is not None:
                line = _bounded(self.committed, COUNT_TIMEOUT_S)
                if line:
                    write_stderr(f"segbatch: {line}")
            if self.resume:
                write_stderr(f"segbatch: {self.resume}")
            _kill_children()
        finally:
            os._exit(code)


def fast_exit(code: int) -> None:
    """End the process now that its work is done and printed: stop the local Ray cluster it
    started (its children) at once and skip the interpreter's slow teardown (Ray's own shutdown
    takes ~1.5 s here, the interpreter ~1 s more; everything is committed by now)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _kill_children()
    os._exit(code)


def reinstall() -> None:
    """Put the active run's handlers back (after ``ray.init`` replaced SIGTERM's)."""
    if _active is not None:
        _active.install()


def _bounded(fn: Callable[[], str], timeout: float) -> str | None:
    result: list[str] = []

    def target() -> None:
        try:
            result.append(fn())
        except Exception as err:  # the stop must go on whatever the store says
            result.append(f"could not count committed images ({type(err).__name__}: {err})")

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0] if result else f"(counting committed images took over {timeout:g} s; skipped)"


def _kill_children() -> None:
    """Stop every process this one started: a local Ray cluster's GCS, raylet, dashboard and
    workers are its children. A cluster joined by address is not a child and is left running
    (Ray ends this driver's job, its actors and tasks, when the driver exits).

    The descendants are first frozen (SIGSTOP) until no new one appears — a raylet killed first
    would leave the workers it was starting orphaned, out of reach — and then killed by a
    separate ``kill`` process while this one exits: Ray's core worker in this process ends it
    with status 1 the moment its raylet dies, which would replace the caller's exit status."""
    import subprocess

    import psutil

    frozen: dict[int, Any] = {}
    for _ in range(20):
        try:
            found = [p for p in psutil.Process().children(recursive=True) if p.pid not in frozen]
        except psutil.Error:
            break
        if not found:
            break
        for p in found:
            with contextlib.suppress(psutil.Error):
                p.suspend()
            frozen[p.pid] = p
    if frozen:
        with contextlib.suppress(OSError):
            subprocess.Popen(["kill", "-9", *map(str, frozen)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
