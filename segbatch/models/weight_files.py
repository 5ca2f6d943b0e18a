"""``--weights`` → checkpoint bytes, their source and SHA-256 (no torch: the driver resolves it).

``--weights`` is one of
  * ``DEFAULT`` — the model's default weights: torchvision's weight enum URL, read from the
    ``TORCH_HOME`` cache (``$TORCH_HOME/hub/checkpoints/<file>``) or downloaded there with
    its hash checked; or, for U-Net, the checkpoint bundled with segbatch;
  * a path or fsspec URL of a checkpoint: either a plain ``state_dict`` of the named model,
    exactly as ``torch.save(model.state_dict(), f)`` writes it, or a segbatch checkpoint
    (:func:`segbatch.models.weights.save_checkpoint`), which also carries categories and
    preprocessing;
  * ``none`` — random initialisation (seeded, so every actor holds the same model).

The bytes are read here and loaded where the model is built, always with
``torch.load(..., weights_only=True)`` (:mod:`segbatch.models.weights`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.catalog import ModelMeta, torch_hub_dir

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class ResolvedWeights:
    """Checkpoint bytes (None for random init), where they came from and their SHA-256."""

    source: str
    data: bytes | None
    sha256: str | None


def resolve_weights(spec: ModelMeta, weights: str, storage_options: Mapping[str, Any] | None = None) -> ResolvedWeights:
    """Turn ``--weights`` into bytes for model ``spec`` (a registry spec or a catalog entry).
    Raises :class:`JobError` naming the bad value."""
    if weights.lower() == "none":
        log.warning(
            "WEIGHTS=none: model %r is RANDOMLY INITIALISED (seed %d); its predictions are noise. "
            "Use --weights DEFAULT or a checkpoint for real labels.",
            spec.name,
            RANDOM_INIT_SEED,
        )
        return ResolvedWeights(source="none", data=None, sha256=None)
    if weights.upper() == "DEFAULT":
        if spec.default_weights is None:
            raise JobError(f"model {spec.name!r} has no DEFAULT weights; pass --weights PATH_OR_URL (or none)")
        dw = spec.default_weights
        path = dw.path if dw.path is not None else torch_home_file(dw.url or "")
        data = _read_local(path, f"DEFAULT weights of {spec.name!r} ({dw.label})")
        return ResolvedWeights(source=f"DEFAULT:{dw.label}", data=data, sha256=hashlib.sha256(data).hexdigest())
    try:
        data = fsio.read_bytes(weights, storage_options)
    except JobError:
        raise
    except FileNotFoundError:
        raise JobError(
            f"weights file {weights!r} does not exist; valid values: DEFAULT, none, or a checkpoint path/URL"
        ) from None
    except Exception as err:  # fsspec backends raise their own types
        raise JobError(f"cannot read weights {weights!r}: {type(err).__name__}: {err}") from err
    return ResolvedWeights(source=weights, data=data, sha256=hashlib.sha256(data).hexdigest())


def torch_home_file(url: str) -> str:
    """The TORCH_HOME cache path of a torchvision weights URL, downloading it if absent."""
    name = os.path.basename(url)
    path = os.path.join(torch_hub_dir(), "checkpoints", name)
    if os.path.exists(path):
        return path
    import torch.hub  # only to download (hash-checked, as torchvision does)

    match = torch.hub.HASH_REGEX.search(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None, progress=False)
    except Exception as err:
        raise JobError(
            f"DEFAULT weights are not in the TORCH_HOME cache ({path}) and downloading {url} failed "
            f"({type(err).__name__}: {err}); copy the file there, set TORCH_HOME, or pass --weights PATH"
        ) from err
    return path


def _read_local(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise JobError(f"cannot read {what} at {path!r}: {err.strerror}") from err
