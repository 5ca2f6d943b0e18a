"""torchvision's segmentation models: FCN, DeepLabV3, LRASPP and Mask R-CNN.

Each entry takes its categories and preprocessing from its torchvision weight enum, so
``--weights DEFAULT`` behaves exactly as ``weights=<Enum>.DEFAULT`` does in torchvision; its
name, description and class head from :mod:`segbatch.models.catalog` (the same table the
driver plans from without torch, checked against the enums by the tests).
Modules are always built with ``weights=None, weights_backbone=None`` (nothing is
downloaded at build time) and then loaded from the resolved checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from segbatch.models.vision_import import import_torchvision

import_torchvision()  # before any torchvision import: without torch._dynamo (~1.2 s at each actor's start)

from torchvision.models import WeightsEnum, detection, segmentation  # noqa: E402

from segbatch.models.catalog import BUILTINS, BuiltinEntry  # noqa: E402
from segbatch.models.registry import DefaultWeights, ModelOptions, ModelSpec, Preprocess, register_model  # noqa: E402


def _default_weights(enum: type[WeightsEnum]) -> DefaultWeights:
    w = enum.DEFAULT
    return DefaultWeights(label=f"{type(w).__name__}.{w.name}", url=w.url)


def _coarse_simple(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """FCN and DeepLabV3 (torchvision's ``_SimpleSegmentationModel.forward``) up to, not
    including, its ``F.interpolate(..., size=input_shape, mode="bilinear", align_corners=False)``."""
    return module.get_submodule("classifier")(module.get_submodule("backbone")(x)["out"])


def _coarse_lraspp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LRASPP.forward`` up to, not including, its final bilinear upsampling to the input size."""
    return module.get_submodule("classifier")(module.get_submodule("backbone")(x))


def _semantic(entry: BuiltinEntry, builder: Callable[..., nn.Module], enum: type[WeightsEnum]) -> ModelSpec:
    weights = enum.DEFAULT
    t = weights.transforms()  # torchvision's SemanticSegmentation preset: resize_size, mean, std
    categories = tuple(weights.meta["categories"])
    head_key = entry.classes_key

    def build(kwargs: Mapping[str, Any], options: ModelOptions) -> nn.Module:
        return builder(
            weights=None,
            weights_backbone=None,
            num_classes=int(kwargs["num_classes"]),
            **({"aux_loss": bool(kwargs.get("aux_loss", False))} if "aux_loss" in kwargs else {}),
        )

    def infer(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_classes": int(state_dict[head_key].shape[0])}
        if not entry.name.startswith("lraspp"):
            kwargs["aux_loss"] = any(k.startswith("aux_classifier.") for k in state_dict)
        return kwargs

    return ModelSpec(
        name=entry.name,
        task="semantic",
        description=entry.description,
        categories=categories,
        preprocess=Preprocess(resize=int(t.resize_size[0]), mean=tuple(t.mean), std=tuple(t.std)),
        default_weights=_default_weights(enum),
        build=build,
        infer_kwargs=infer,
        default_kwargs={"num_classes": len(categories)},
        coarse_logits=_coarse_lraspp if entry.name.startswith("lraspp") else _coarse_simple,
    )


def _instance(entry: BuiltinEntry, builder: Callable[..., nn.Module], enum: type[WeightsEnum]) -> ModelSpec:
    categories = tuple(enum.DEFAULT.meta["categories"])
    head_key = entry.classes_key

    def build(kwargs: Mapping[str, Any], options: ModelOptions) -> nn.Module:
        size: dict[str, Any] = {}
        if options.min_size is not None:
            # Keep torchvision's 800:1333 ratio between the shorter and the longer side limit.
            size = {"min_size": options.min_size, "max_size": math.ceil(options.min_size * 1333 / 800)}
        return builder(
            weights=None,
            weights_backbone=None,
            num_classes=int(kwargs["num_classes"]),
            box_score_thresh=options.score_threshold,
            **size,
        )

    def infer(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"num_classes": int(state_dict[head_key].shape[0])}

    return ModelSpec(
        name=entry.name,
        task="instance",
        description=entry.description,
        categories=categories,
        # Mask R-CNN normalizes and resizes inside its GeneralizedRCNNTransform: it takes the
        # original image as float in [0, 1] (torchvision's ObjectDetection preset).
        preprocess=Preprocess(resize=None, mean=None, std=None),
        default_weights=_default_weights(enum),
        build=build,
        infer_kwargs=infer,
        default_kwargs={"num_classes": len(categories)},
    )


S, D, B = segmentation, detection, BUILTINS
for _spec in (
    _semantic(B["fcn_resnet50"], S.fcn_resnet50, S.FCN_ResNet50_Weights),
    _semantic(B["fcn_resnet101"], S.fcn_resnet101, S.FCN_ResNet101_Weights),
    _semantic(B["deeplabv3_resnet50"], S.deeplabv3_resnet50, S.DeepLabV3_ResNet50_Weights),
    _semantic(B["deeplabv3_resnet101"], S.deeplabv3_resnet101, S.DeepLabV3_ResNet101_Weights),
    _semantic(
        B["deeplabv3_mobilenet_v3_large"], S.deeplabv3_mobilenet_v3_large, S.DeepLabV3_MobileNet_V3_Large_Weights
    ),
    _semantic(B["lraspp_mobilenet_v3_large"], S.lraspp_mobilenet_v3_large, S.LRASPP_MobileNet_V3_Large_Weights),
    _instance(B["maskrcnn_resnet50_fpn"], D.maskrcnn_resnet50_fpn, D.MaskRCNN_ResNet50_FPN_Weights),
    _instance(B["maskrcnn_resnet50_fpn_v2"], D.maskrcnn_resnet50_fpn_v2, D.MaskRCNN_ResNet50_FPN_V2_Weights),
):
    register_model(_spec)
