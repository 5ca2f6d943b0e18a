"""Model registry of the built-in models: ``register_model`` / ``get_model_spec`` / ``list_models``.

A :class:`ModelSpec` says how to build one architecture and what its default weights
are; :func:`segbatch.models.weights.load_model` turns it into a
:class:`~segbatch.models.bundle.ModelBundle` (module + task + categories + preprocessing),
the same bundle every other model family builds — the model never travels without its
preprocessing and categories, as with torchvision's weight enums.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segbatch.errors import JobError
from segbatch.models.bundle import (
    BACKGROUND_NAMES,
    LoadedModel,
    ModelBundle,
    ModelOptions,
    Task,
    background_index,
)
from segbatch.models.catalog import DefaultWeights, ModelMeta
from segbatch.models.preprocess import Preprocess

__all__ = [
    "BACKGROUND_NAMES",
    "DefaultWeights",
    "LoadedModel",
    "ModelBundle",
    "ModelOptions",
    "ModelSpec",
    "Preprocess",
    "Task",
    "background_index",
    "get_model_spec",
    "list_models",
    "register_model",
]


@dataclass(frozen=True)
class ModelSpec(ModelMeta):
    """How to build one architecture (what it is: :class:`~segbatch.models.catalog.ModelMeta`).

    ``build(model_kwargs, options)`` returns a randomly initialised module;
    ``infer_kwargs(state_dict)`` reads ``model_kwargs`` (e.g. ``num_classes``) off a plain
    state_dict; ``categories``/``preprocess`` are those of the default weights.
    ``coarse_logits(module, x)``, for a semantic model whose forward ends by upsampling its
    logits bilinearly to the input size: those logits before that step, ``(N, C, h, w)``
    float (the predictor then resamples only where classes meet, see :mod:`segbatch.stages.classmap`).
    """

    build: Callable[[Mapping[str, Any], ModelOptions], nn.Module]
    infer_kwargs: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    coarse_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    # Importing the zoo registers the built-in models; done lazily so that importing the
    # registry alone stays cheap and free of import cycles.
    from segbatch.models import unet, zoo  # noqa: F401


def get_model_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise JobError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}") from None


def list_models() -> list[ModelSpec]:
    _ensure_builtin()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
