"""The negligible model of ``bench/overhead.py``, as a plugin (``--model overhead_model:build``):
a 1×1 convolution at 1/8 resolution, 21 classes, the input resized to a shorter side of 520 as
the torchvision segmentation models are (so that the resize is part of what is measured)."""

from __future__ import annotations

from typing import Any

import torch

CLASSES = 21


def build(weights: bytes | None = None) -> dict[str, Any]:
    """The plugin bundle (seeded: every actor builds the same model)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(3, CLASSES, 1))
    return {
        "module": module,
        "task": "semantic",
        "categories": ["background"] + [f"class_{i}" for i in range(1, CLASSES)],
        "preprocess": {"resize": 520},
        "description": "1x1 convolution at 1/8 resolution (bench/overhead.py)",
    }
