"""segbatch: batch dataset labeling with segmentation models on Ray.

Importing segbatch starts nothing; :func:`run` connects to (or starts) Ray when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segbatch._version import __version__
from segbatch.config import JobConfig
from segbatch.errors import ImageError, JobError

if TYPE_CHECKING:
    from segbatch.pipeline import RunSummary

__all__ = ["ImageError", "JobConfig", "JobError", "__version__", "run"]


def run(config: JobConfig) -> RunSummary:
    """Run one labeling job; see :func:`segbatch.pipeline.run`."""
    from segbatch.pipeline import run as _run

    return _run(config)
