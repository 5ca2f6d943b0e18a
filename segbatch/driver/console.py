"""What a person sees on the console while a run goes: no noise that reads as a failure.

:class:`StderrFilter` drops known-harmless lines that Ray's C++ core writes straight to file
descriptor 2 of the driver, where Python's logging cannot reach them. The one today: every run
printed ``E … core_worker.cc … has constructor arguments in the object store and max_restarts >
0`` — Ray Data always passes an actor pool's function and context to its actors as object
references (ray-project/ray#53727) and segbatch keeps actor restarts on (a dead actor is
replaced), so the condition holds by design and the line says nothing a user can act on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from types import TracebackType

# Lines of Ray's own output that are expected in every segbatch run (see the module docstring).
_LINE_END = re.compile(rb"(\r\n|\n|\r)")
HARMLESS = (re.compile(r"core_worker\.cc.*has constructor arguments in the object store and max_restarts > 0"),)


class StderrFilter:
    """Context manager: file descriptor 2 goes through a pipe; a thread passes every line on to
    the real stderr except those matching :data:`HARMLESS`. Ray's node processes write to their
    own log files, so only this process's writes pass through here."""

    def __init__(self, patterns: tuple[re.Pattern[str], ...] = HARMLESS) -> None:
        self.patterns = patterns
        self.dropped = 0
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StderrFilter:
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        self._saved = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end, self._saved), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sys.stderr.flush()
        if self._saved is not None:
            os.dup2(self._saved, 2)  # closes the pipe's last write end held by fd 2: the pump sees EOF
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._saved is not None:
            os.close(self._saved)
            self._saved = None

    def _pump(self, read_end: int, out: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                try:
                    chunk = pipe.read(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    if pending:
                        self._emit(pending, out)
                    return
                pending += chunk
                # A line ends at \n, or at \r: a progress bar redraws its line with \r and must
                # show at once, not when a newline finally comes.
                *lines, pending = _LINE_END.split(pending)
                for body, end in zip(lines[::2], lines[1::2], strict=True):
                    self._emit(body + end, out)

    def _emit(self, line: bytes, out: int) -> None:
        text = line.decode("utf-8", "replace")
        if any(p.search(text) for p in self.patterns):
            self.dropped += 1
            return
        with contextlib.suppress(OSError):  # the real stderr is gone: nothing to show it on
            os.write(out, line)
