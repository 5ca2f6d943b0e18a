"""Segmentation models: one bundle type for every model, the built-in registry, and adapters
for Hugging Face transformers, segmentation-models-pytorch, exported programs and plugins.

The names below are imported on first use (PEP 562): the read and encode tasks and the
driver import submodules of this package that need no torch (``preprocess``, ``catalog``),
and importing torch costs a process ~2 s of CPU.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segbatch.models.bundle import LoadedModel, ModelBundle, ModelOptions
    from segbatch.models.preprocess import Preprocess
    from segbatch.models.registry import ModelSpec, get_model_spec, list_models, register_model

_WHERE = {
    "LoadedModel": "segbatch.models.bundle",
    "ModelBundle": "segbatch.models.bundle",
    "ModelOptions": "segbatch.models.bundle",
    "Preprocess": "segbatch.models.preprocess",
    "ModelSpec": "segbatch.models.registry",
    "get_model_spec": "segbatch.models.registry",
    "list_models": "segbatch.models.registry",
    "register_model": "segbatch.models.registry",
}

__all__ = [
    "LoadedModel",
    "ModelBundle",
    "ModelOptions",
    "ModelSpec",
    "Preprocess",
    "get_model_spec",
    "list_models",
    "register_model",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
