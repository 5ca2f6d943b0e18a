"""The work folder of one bench run.

A run writes images, checkpoints and segbatch outputs — hundreds of MB to GBs — so a
temp folder is removed when the run ends, failed or interrupted included; a folder the
user names (``--workdir``) is kept for inspection.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def add_workdir_arg(parser: argparse.ArgumentParser) -> None:
    """``--workdir DIR``: write there and keep it (default: a temp folder, removed at the end)."""
    parser.add_argument(
        "--workdir",
        default=None,
        help="write the run's data and outputs here and keep them (default: a temp folder, removed when the run ends)",
    )


@contextmanager
def scratch_dir(prefix: str, workdir: str | None = None) -> Iterator[Path]:
    """``workdir`` (made if missing, kept), else a fresh temp folder removed on exit."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
