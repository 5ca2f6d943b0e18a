"""Plugin functions for tests/models/test_plugins.py (``tests.models.plugin_fixtures:NAME``)."""

from __future__ import annotations

import io
from typing import Any

import torch

from segbatch.models import ModelBundle, Preprocess
from segbatch.models.unet import UNet

CATEGORIES = ["background", "leaf", "stem"]
PREPROCESS = Preprocess(resize=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def unet_module(weights: bytes | None) -> torch.nn.Module:
    torch.manual_seed(3)
    net = UNet(num_classes=3, base_channels=4, depth=2)
    if weights is not None:
        net.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return net.eval()


def build_unet(weights: bytes | None) -> ModelBundle:
    """A small U-Net as a plugin bundle (the documented contract)."""
    return ModelBundle(
        module=unet_module(weights),
        task="semantic",
        categories=tuple(CATEGORIES),
        preprocess=PREPROCESS,
        description="test U-Net plugin",
    )


def build_mapping() -> dict[str, Any]:
    """The same as a plain mapping, preprocessing as a dict, no argument."""
    return {
        "module": unet_module(None),
        "task": "semantic",
        "categories": CATEGORIES,
        "preprocess": PREPROCESS.to_dict(),
        "background": "background",
    }


def raises(weights: bytes | None) -> ModelBundle:
    raise RuntimeError("checkpoint server unreachable")


def returns_a_module(weights: bytes | None) -> torch.nn.Module:
    return unet_module(weights)


def wrong_channels(weights: bytes | None) -> dict[str, Any]:
    return {**build_mapping(), "categories": ["background", "b", "c", "d"]}


def missing_keys(weights: bytes | None) -> dict[str, Any]:
    return {"module": unet_module(None), "task": "semantic", "labels": CATEGORIES}


NOT_A_FUNCTION = 5


def build_shapes(weights: bytes | None) -> ModelBundle:
    """A U-Net over segbatch's sample shapes (4 classes, as its mask PNGs), for the end-to-end tests."""
    torch.manual_seed(4)
    net = UNet(num_classes=4, base_channels=4, depth=2).eval()
    return ModelBundle(
        module=net,
        task="semantic",
        categories=("background", "circle", "square", "triangle"),
        preprocess=PREPROCESS,
    )
