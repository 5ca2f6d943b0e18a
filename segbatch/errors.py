"""The two kinds of failure segbatch knows.

A :class:`JobError` is a job-level problem found before any work starts (missing input,
unknown model, unreadable weights, an output that holds another job); the CLI turns it
into exit status 2. An :class:`ImageError` is a problem with one image or its label; the
pipeline turns it into an error row and the job goes on.
"""

from __future__ import annotations


class JobError(Exception):
    """A job-level problem; the message names the bad value and what would be valid."""


class ImageError(Exception):
    """A per-image problem; ``str(err)`` becomes the ``error`` column of its row."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
