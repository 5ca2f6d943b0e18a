"""Weights: resolve ``--weights`` to checkpoint bytes, read checkpoints, build loaded models.

``--weights`` is one of
  * ``DEFAULT`` — the spec's default weights: torchvision's weight enum URL, read from the
    ``TORCH_HOME`` cache (``$TORCH_HOME/hub/checkpoints/<file>``) or downloaded there with
    its hash checked; or, for U-Net, the checkpoint bundled with segbatch;
  * a path or fsspec URL of a checkpoint: either a plain ``state_dict`` of the named model,
    exactly as ``torch.save(model.state_dict(), f)`` writes it, or a segbatch checkpoint
    (:func:`save_checkpoint`), which also carries categories and preprocessing;
  * ``none`` — random initialisation (seeded, so every actor holds the same model).

Checkpoints are always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.bundle import ModelBundle, ModelOptions, plain_semantic
from segbatch.models.fold import fold_batchnorm
from segbatch.models.preprocess import Preprocess
from segbatch.models.registry import ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "segbatch.checkpoint/1"
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class ResolvedWeights:
    """Checkpoint bytes (None for random init), where they came from and their SHA-256."""

    source: str
    data: bytes | None
    sha256: str | None


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint. Fields other than ``state_dict`` are None for a plain state_dict."""

    state_dict: Mapping[str, torch.Tensor]
    arch: str | None = None
    categories: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    model_kwargs: Mapping[str, Any] | None = None


def resolve_weights(spec: ModelSpec, weights: str, storage_options: Mapping[str, Any] | None = None) -> ResolvedWeights:
    """Turn ``--weights`` into bytes. Raises :class:`JobError` naming the bad value."""
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
        path = dw.path if dw.path is not None else _torch_home_file(dw.url or "")
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


def _torch_home_file(url: str) -> str:
    """The TORCH_HOME cache path of a torchvision weights URL, downloading it if absent."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.exists(path):
        return path
    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
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


def parse_checkpoint(data: bytes, source: str) -> Checkpoint:
    """Checkpoint bytes → :class:`Checkpoint`, loaded with ``weights_only=True``."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's message is long and styled for terminals: keep its first sentence, plain.
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().split(". ")[0].splitlines()[0] if str(err) else ""
        raise JobError(
            f"cannot load weights {source!r} with torch.load(weights_only=True): {type(err).__name__}: "
            f"{first}; expected a state_dict or a segbatch checkpoint"
        ) from err
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        try:
            return Checkpoint(
                state_dict=obj["state_dict"],
                arch=str(obj["arch"]),
                categories=tuple(str(c) for c in obj["categories"]),
                preprocess=Preprocess.from_dict(obj["preprocess"]),
                model_kwargs=dict(obj.get("model_kwargs") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise JobError(f"segbatch checkpoint {source!r} is malformed: missing or bad field {err}") from err
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(state_dict=obj)
    raise JobError(
        f"weights {source!r} hold a {type(obj).__name__}, not a state_dict (a mapping of names to tensors) "
        f"or a segbatch checkpoint (format {CHECKPOINT_FORMAT!r})"
    )


def save_checkpoint(
    path: str,
    arch: str,
    module: nn.Module,
    categories: list[str] | tuple[str, ...],
    preprocess: Preprocess,
    model_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a segbatch checkpoint (loadable with ``weights_only=True``); returns its SHA-256."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": arch,
            "categories": list(categories),
            "preprocess": preprocess.to_dict(),
            "model_kwargs": dict(model_kwargs or {}),
            "state_dict": module.state_dict(),
        },
        buf,
    )
    data = buf.getvalue()
    fs, p = fsio.resolve(path, storage_options)
    fsio.write_bytes_atomic(fs, p, data)
    return hashlib.sha256(data).hexdigest()


def load_model(spec: ModelSpec, weights: ResolvedWeights, options: ModelOptions) -> ModelBundle:
    """Build ``spec`` and load ``weights`` into it: a :class:`ModelBundle`, in eval mode on the CPU."""
    if weights.data is None:
        torch.manual_seed(RANDOM_INIT_SEED)
        module = spec.build(spec.default_kwargs, options)
        return _loaded(spec, module, spec.categories, spec.preprocess, weights)
    ckpt = parse_checkpoint(weights.data, weights.source)
    if ckpt.arch is not None and ckpt.arch != spec.name:
        raise JobError(
            f"weights {weights.source!r} are a checkpoint of model {ckpt.arch!r}, not {spec.name!r}; "
            f"run with --model {ckpt.arch}"
        )
    if ckpt.model_kwargs is not None:
        kwargs = {**spec.default_kwargs, **ckpt.model_kwargs}
    else:
        try:
            kwargs = {**spec.default_kwargs, **spec.infer_kwargs(ckpt.state_dict)}
        except KeyError as err:
            raise JobError(
                f"weights {weights.source!r} do not look like a state_dict of {spec.name!r}: no key {err}"
            ) from None
    module = spec.build(kwargs, options)
    check_shapes(module, ckpt.state_dict, weights.source, spec.name)
    result = module.load_state_dict(ckpt.state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise JobError(
            f"weights {weights.source!r} do not fit model {spec.name!r}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )
    num_classes = int(kwargs.get("num_classes", len(spec.categories)))
    categories = ckpt.categories or (spec.categories if num_classes == len(spec.categories) else None)
    if categories is None:
        categories = tuple(f"class_{i}" for i in range(num_classes))
        log.warning(
            "weights %r have %d classes but carry no names; calling them class_0..class_%d "
            "(a segbatch checkpoint carries names)",
            weights.source,
            num_classes,
            num_classes - 1,
        )
    if len(categories) != num_classes:
        raise JobError(f"weights {weights.source!r} name {len(categories)} categories for {num_classes} classes")
    return _loaded(spec, module, tuple(categories), ckpt.preprocess or spec.preprocess, weights)


def check_shapes(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, model: str, fix: str | None = None
) -> None:
    """Raise :class:`JobError` for the first tensor (in the module's order) whose shape in
    ``state_dict`` differs from the module's — torch's own ``size mismatch for …`` is a
    traceback listing every key at once. ``fix``: what to do instead (default: for a built-in)."""
    own = module.state_dict()
    for key, mine in own.items():
        theirs = state_dict.get(key)
        if theirs is not None and tuple(theirs.shape) != tuple(mine.shape):
            raise JobError(
                f"weights {source!r} do not fit model {model!r}: {key!r} has shape {tuple(theirs.shape)} "
                f"in the weights but {tuple(mine.shape)} in the model; "
                + (
                    fix
                    or f"pass weights trained for {model!r} with this configuration (a segbatch checkpoint, "
                    "written by segbatch.models.weights.save_checkpoint, records the model's size)"
                )
            )


def _loaded(
    spec: ModelSpec, module: nn.Module, categories: tuple[str, ...], preprocess: Preprocess, weights: ResolvedWeights
) -> ModelBundle:
    module.eval()
    if spec.task == "semantic" and getattr(module, "aux_classifier", None) is not None:
        # The auxiliary head only matters for training; dropping it saves its forward pass.
        module.aux_classifier = None  # type: ignore[assignment]  # torchvision declares it Optional
    if spec.task == "semantic" and len(categories) > 255:
        raise JobError(f"model {spec.name!r} has {len(categories)} classes; label maps hold at most 255")
    coarse = spec.coarse_logits
    bundle = ModelBundle(
        module=module,
        task=spec.task,
        categories=categories,
        preprocess=preprocess,
        semantic=None if spec.task != "semantic" else (_with_via(coarse) if coarse is not None else plain_semantic),
        name=spec.name,
        description=spec.description,
        fold=fold_batchnorm,
        fast_paths=(
            "exact class map from coarse logits; BatchNorm folding; channels-last on CPU"
            if coarse is not None
            else "BatchNorm folding" + ("; channels-last on CPU" if spec.task == "semantic" else "")
        ),
        weights_source=weights.source,
        weights_sha256=weights.sha256,
    )
    return bundle.check(f"model {spec.name!r}")


def _with_via(
    coarse: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, tuple[int, int] | None]]:
    """A torchvision model's coarse logits with ``via`` = its input size (the forward's own upsampling)."""

    def semantic(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        return coarse(module, x), (int(x.shape[-2]), int(x.shape[-1]))

    return semantic
