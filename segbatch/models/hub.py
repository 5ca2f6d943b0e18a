"""Hugging Face hub ids → a local snapshot folder, through the standard cache (driver only).

The cache is huggingface_hub's: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``. ``HF_HUB_OFFLINE=1`` reads the cache only; otherwise missing
files are downloaded there. ``revision`` pins a branch, tag or commit. Only what segbatch
loads is fetched: ``*.json`` and ``*.safetensors``.
"""

from __future__ import annotations

import os

from segbatch.errors import JobError

ALLOW_PATTERNS = ["*.json", "*.safetensors"]


def cache_dir() -> str:
    """The hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


def snapshot(repo_id: str, revision: str | None, what: str) -> tuple[str, str]:
    """``repo_id`` at ``revision`` → (local snapshot folder, commit hash). :class:`JobError` when it
    cannot be had (offline and not cached, unknown repo or revision, no network)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with both extras
        raise JobError(f"{what} needs huggingface_hub: pip install 'segbatch[hf]' ({err})") from None
    cache = cache_dir()
    at = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline(),
            allow_patterns=ALLOW_PATTERNS,
        )
    except RevisionNotFoundError:
        raise JobError(f"{what}: hub repository {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise JobError(
            f"{what}: hub repository {repo_id!r} does not exist (or needs a token: set HF_TOKEN); "
            f"no local folder {repo_id!r} either"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached"
        raise JobError(
            f"{what}: hub id {at} is not in the Hugging Face cache ({cache}) and {why}; download it where a "
            f"network exists (hf download {repo_id}) with HF_HOME pointing at that cache, or pass a local folder "
            f"(no local folder {repo_id!r} exists)"
        ) from None
    except Exception as err:  # network errors of every kind
        raise JobError(f"{what}: cannot fetch hub id {at}: {type(err).__name__}: {err}") from None
    return folder, os.path.basename(os.path.normpath(folder))
