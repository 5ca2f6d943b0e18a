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


# Where each object store looks for credentials, and what to pass instead (storage errors).
_CREDENTIALS = {
    "s3": (
        "s3fs looked for credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), AWS_PROFILE "
        "and ~/.aws/credentials, ~/.aws/config, then the instance or container role",
        '--storage-options \'{"key": "…", "secret": "…"}\' (or \'{"anon": true}\' for a public bucket; '
        'add "endpoint_url": "http://host:port" for another S3-compatible server)',
    ),
    "gcs": (
        "gcsfs looked for GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default login and the instance's "
        "service account",
        '--storage-options \'{"token": "/path/to/key.json"}\' (or \'{"token": "anon"}\' for a public bucket)',
    ),
    "abfs": (
        "adlfs looked for AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT_NAME and a default credential",
        '--storage-options \'{"account_name": "…", "account_key": "…"}\'',
    ),
}
_NO_CREDENTIALS = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "DefaultCredentialsError",
}
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerTimeoutError", "TimeoutError", "ReadTimeoutError"}  # fmt: skip


def _family(url: str) -> str | None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "abfs": "abfs", "az": "abfs"}.get(scheme)


def describe_storage_error(url: str, what: str, err: BaseException) -> str:
    """One line for a storage failure: the URL, what went wrong, where credentials were looked for, the fix."""
    names = {type(e).__name__ for e in _chain(err)}
    family = _family(url)
    where, fix = _CREDENTIALS.get(family or "", ("", "--storage-options '{…}' with the filesystem's options"))
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if names & _NO_CREDENTIALS:
        return f"cannot access {what} {url!r}: no credentials found ({where}); pass {fix}"
    if names & _UNREACHABLE:
        return (
            f"cannot reach {what} {url!r}: {type(err).__name__}: {first}; check the network and the endpoint "
            f"(for another server pass {fix})"
        )
    if isinstance(err, PermissionError) or names & {"AccessDenied", "Forbidden", "InvalidAccessKeyId",
                                                       "SignatureDoesNotMatch"}:  # fmt: skip
        return f"access to {what} {url!r} was denied ({type(err).__name__}: {first}); check the credentials ({fix})"
    return f"cannot access {what} {url!r}: {type(err).__name__}: {first}"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


@contextmanager
def storage_errors(url: str, what: str) -> Iterator[None]:
    """Turn a storage failure under ``url`` (no credentials, unreachable endpoint, access denied, …)
    into a :class:`JobError` with one line naming the URL and the fix. JobError and
    FileNotFoundError pass through: callers give those their own message."""
    try:
        yield
    except (JobError, FileNotFoundError, KeyboardInterrupt):
        raise
    except Exception as err:  # every fsspec backend raises its own types
        raise JobError(describe_storage_error(url, what, err)) from err


def canonical_url(url: str) -> str:
    """``url`` in one spelling: local paths absolute and normalised (``./in``, ``in``, ``in/``
    and ``/abs/in`` are one folder), other URLs without a trailing ``/``."""
    if "://" not in url or url.startswith("file://"):
        path = url[len("file://") :] if url.startswith("file://") else url
        return os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{rest.rstrip('/')}"


def is_within(inner: str, outer: str) -> bool:
    """Whether URL ``inner`` is ``outer`` or lies under it (after :func:`canonical_url`)."""
    a, b = canonical_url(inner), canonical_url(outer)
    return a == b or a.startswith(b.rstrip("/") + "/")


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
