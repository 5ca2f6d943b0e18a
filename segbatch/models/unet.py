"""A U-Net whose decoder upsamples with the transposed-convolution block.

Decoder block (:class:`TransposedConvUp`), ×2 spatial upsampling at low cost:
    1×1 conv (in → mid) → BN → ReLU
    depthwise ConvTranspose2d(mid, mid, kernel 4, stride 2, padding 1, groups=mid) → BN → ReLU
    1×1 conv (mid → out) → BN → ReLU
then concatenation with the encoder's skip and a double 3×3 conv. Any number of classes;
inputs of any size (padded to a multiple of ``2**depth`` and cropped back). Loaded from a
segbatch checkpoint, which carries the categories and the input size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segbatch.models.catalog import BUILTINS, DEMO_CATEGORIES, DEMO_KWARGS, DEMO_PREPROCESS, bundled_checkpoint
from segbatch.models.registry import ModelOptions, ModelSpec, register_model

__all__ = ["DEMO_CATEGORIES", "DEMO_KWARGS", "DEMO_PREPROCESS", "UNet", "bundled_checkpoint"]


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout))


class TransposedConvUp(nn.Sequential):
    """``(N, cin, h, w)`` → ``(N, cout, 2h, 2w)``: projection, depthwise transposed conv, unprojection."""

    def __init__(self, cin: int, cout: int, mid: int | None = None) -> None:
        mid = mid or max(cin // 2, 1)
        super().__init__(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, kernel_size=4, stride=2, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net: ``(N, in_channels, H, W)`` float → ``{"out": (N, num_classes, H, W)}`` logits."""

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 32, depth: int = 4) -> None:
        super().__init__()
        if num_classes < 1 or depth < 1 or base_channels < 1:
            raise ValueError(f"bad U-Net size: num_classes={num_classes}, depth={depth}, base_channels={base_channels}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(TransposedConvUp(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.fuse = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        m = 2**self.depth
        # Pad to a multiple of 2**depth so every skip matches its upsampled partner.
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            y = fuse(torch.cat([up(y), skips.pop()], dim=1))
        return {"out": self.head(y)[..., :h, :w]}


def _build(kwargs: Mapping[str, Any], options: ModelOptions) -> nn.Module:
    allowed = {"num_classes", "in_channels", "base_channels", "depth"}
    return UNet(**{k: int(v) for k, v in kwargs.items() if k in allowed})


def _infer(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    head = state_dict["head.weight"]
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("down.")})
    return {
        "num_classes": int(head.shape[0]),
        "base_channels": int(head.shape[1]),
        "depth": depth,
        "in_channels": int(state_dict["stem.0.weight"].shape[1]),
    }


_ENTRY = BUILTINS["unet"]
register_model(
    ModelSpec(
        name=_ENTRY.name,
        task=_ENTRY.task,
        description=_ENTRY.description,
        categories=_ENTRY.categories,
        preprocess=_ENTRY.preprocess,
        default_weights=_ENTRY.default_weights,
        build=_build,
        infer_kwargs=_infer,
        default_kwargs=_ENTRY.default_kwargs,
    )
)
