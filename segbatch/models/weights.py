"""Weights into modules: read checkpoints with ``torch.load(weights_only=True)``, build loaded
models, write segbatch checkpoints.

``--weights`` becomes bytes in :mod:`segbatch.models.weight_files` (no torch: the driver
resolves it); what a checkpoint says is interpreted in :mod:`segbatch.models.catalog`, the same
way for a file loaded here and for its header read on the driver.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.bundle import ModelBundle, ModelOptions, plain_semantic
from segbatch.models.catalog import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    check_arch,
    class_names,
    fast_paths,
    interpret_checkpoint,
)
from segbatch.models.fold import fold_batchnorm
from segbatch.models.preprocess import Preprocess
from segbatch.models.registry import ModelSpec
from segbatch.models.weight_files import RANDOM_INIT_SEED, ResolvedWeights, resolve_weights

__all__ = [
    "CHECKPOINT_FORMAT",
    "RANDOM_INIT_SEED",
    "Checkpoint",
    "ResolvedWeights",
    "check_shapes",
    "load_model",
    "parse_checkpoint",
    "resolve_weights",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


def parse_checkpoint(data: bytes, source: str) -> Checkpoint:
    """Checkpoint bytes → :class:`Checkpoint`, loaded with ``torch.load(weights_only=True)``."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's message is long and styled for terminals: keep its first sentence, plain.
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().split(". ")[0].splitlines()[0] if str(err) else ""
        raise JobError(
            f"cannot load weights {source!r} with torch.load(weights_only=True): {type(err).__name__}: "
            f"{first}; expected a state_dict or a segbatch checkpoint"
        ) from err
    return interpret_checkpoint(obj, source, torch.Tensor)


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
    check_arch(ckpt, weights.source, spec.name)
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
    categories = class_names(spec.name, spec.task, spec.categories, num_classes, ckpt, weights.source)
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
        fast_paths=fast_paths(spec.task, coarse is not None),
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
