"""Segmentation models: one bundle type for every model, the built-in registry, and adapters
for Hugging Face transformers, segmentation-models-pytorch, exported programs and plugins."""

from segbatch.models.bundle import LoadedModel, ModelBundle, ModelOptions
from segbatch.models.preprocess import Preprocess
from segbatch.models.registry import ModelSpec, get_model_spec, list_models, register_model

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
