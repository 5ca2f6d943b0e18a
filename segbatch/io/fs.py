"""fsspec in one place: URL → (filesystem, path), joins, and atomic writes.

Every other module reaches storage through these helpers, so local paths, ``s3://``,
``gs://``, ``memory://`` and ``http(s)://`` behave the same everywhere.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from segbatch.errors import JobError


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """``url`` → (filesystem, path inside it). Raises :class:`JobError` for an unknown protocol."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as err:
        raise JobError(f"cannot open {url!r}: {err}") from err
    return fs, path.rstrip("/") if path not in ("/", "") else path


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def require_shared_folder(fs: AbstractFileSystem, url: str, what: str) -> None:
    """Refuse a folder that Ray workers cannot list, read or write: ``memory://`` and ``http(s)://``.

    fsspec's memory filesystem lives in one process, so the workers (other processes) would
    see it empty; http(s) serves single files (weights, a COCO JSON, a label map), not folders.
    """
    protos = _protocols(fs)
    if "memory" in protos:
        raise JobError(
            f"{what} {url!r} is on fsspec's in-process memory filesystem, which Ray workers (other "
            "processes) cannot see; use a local path every worker can reach, or object storage "
            "(s3://, gs://, …)"
        )
    if "http" in protos or "https" in protos:
        raise JobError(
            f"{what} {url!r} is an http(s) URL, which serves single files (weights, COCO labels, a "
            "label map), not folders; use a local path or object storage (s3://, gs://, …)"
        )


def join(*parts: str) -> str:
    """Join path parts with ``/`` (fsspec paths are posix on every filesystem)."""
    return posixpath.join(*parts)


def to_url(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of ``path`` on ``fs`` (with protocol, except for local paths)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """All bytes of one file at ``url``."""
    fs, path = resolve(url, storage_options)
    return fs.cat_file(path)


@contextmanager
def atomic_open(fs: AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary writing so that no reader ever sees a partial file.

    Local files are written beside their target and renamed into place; object stores
    (S3, GCS, …) publish an object only when its upload completes, so a failed write is
    discarded instead of committed.
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()  # abort the multipart upload: nothing becomes visible
        raise
    f.close()


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    with atomic_open(fs, path) as f:
        f.write(data)
