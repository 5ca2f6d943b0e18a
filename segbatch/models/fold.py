"""BatchNorm folded into the convolution before it, for inference.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one convolution
with scaled weights and a shifted bias. Eager PyTorch runs them as two operators, each a
pass over the activations: on the CPU, folding ran LRASPP-MobileNetV3 1.3–1.4× and
DeepLabV3-MobileNetV3 1.1× faster (1 thread, 520 px; ``bench/throughput.py``'s ceilings).
The folded weights round differently (logits move by ~1e-7), so it is a job option.
"""

from __future__ import annotations

import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from segbatch.errors import JobError


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` or
    ``ConvTranspose2d`` inside an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``,
    the segmentation heads' conv-BN-ReLU blocks, the U-Net's blocks) into that convolution,
    leaving ``nn.Identity`` in its place; a grouped transposed convolution keeps its
    BatchNorm (see :func:`_foldable`). Returns how many were folded.

    Only pairs inside a ``Sequential`` are folded: there the order of application is the
    order of the children. (ResNet blocks call theirs from ``forward`` and keep them.)
    """
    if module.training:
        raise JobError(f"fold_batchnorm needs a module in eval mode, got {type(module).__name__} in training mode")
    folded = 0
    for sub in list(module.modules()):
        if not isinstance(sub, nn.Sequential):
            continue
        names = list(sub._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = sub._modules[first], sub._modules[second]
            if (
                type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and isinstance(conv, nn.Conv2d | nn.ConvTranspose2d)
                and _foldable(conv)
            ):
                setattr(sub, first, fuse_conv_bn_eval(conv, bn, transpose=type(conv) is nn.ConvTranspose2d))
                setattr(sub, second, nn.Identity())
                folded += 1
    return folded


def _foldable(conv: nn.Module) -> bool:
    # A grouped transposed convolution's weight is (in, out/groups, kh, kw): torch's fusion
    # scales its dim 1 as the output channels, which only holds for groups == 1.
    return type(conv) is nn.Conv2d or (type(conv) is nn.ConvTranspose2d and conv.groups == 1)


# Convolution → BatchNorm pairs that a module's ``forward`` applies one right after the
# other, held as named attributes rather than in a ``Sequential`` (transformers' heads):
# class name → (convolution attribute, BatchNorm attribute).
NAMED_PAIRS: dict[str, tuple[str, str]] = {
    "SegformerDecodeHead": ("linear_fuse", "batch_norm"),
    "UperNetConvModule": ("conv", "batch_norm"),
    "BeitConvLayer": ("convolution", "normalization"),
    "Data2VecVisionConvLayer": ("convolution", "normalization"),
    "MobileViTConvLayer": ("convolution", "normalization"),
}


def fold_named_pairs(module: nn.Module, pairs: dict[str, tuple[str, str]] | None = None) -> int:
    """Fold, in place, the BatchNorm of every submodule listed in ``pairs`` (default
    :data:`NAMED_PAIRS`) into its convolution, leaving ``nn.Identity``; then the ``Sequential``
    pairs (:func:`fold_batchnorm`). Returns how many were folded in all."""
    if module.training:
        raise JobError(f"fold_named_pairs needs a module in eval mode, got {type(module).__name__} in training mode")
    pairs = NAMED_PAIRS if pairs is None else pairs
    folded = 0
    for sub in list(module.modules()):
        names = pairs.get(type(sub).__name__)
        if names is None:
            continue
        conv, bn = getattr(sub, names[0], None), getattr(sub, names[1], None)
        if type(bn) is nn.BatchNorm2d and bn.track_running_stats and type(conv) is nn.Conv2d:
            setattr(sub, names[0], fuse_conv_bn_eval(conv, bn))
            setattr(sub, names[1], nn.Identity())
            folded += 1
    return folded + fold_batchnorm(module)
