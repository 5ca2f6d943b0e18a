"""Segmentation models: the registry, torchvision's zoo, the U-Net, weights loading."""

from segbatch.models.registry import (
    LoadedModel,
    ModelOptions,
    ModelSpec,
    Preprocess,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = ["LoadedModel", "ModelOptions", "ModelSpec", "Preprocess", "get_model_spec", "list_models", "register_model"]
