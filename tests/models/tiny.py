"""Small seeded models saved the way each library saves them, for the adapter tests (no download).

Random weights give a constant class map on photographs; :func:`fit_linear_head` makes the
maps region-shaped: the classifier becomes a least-squares fit (one forward pass, closed form)
of the features to colour clusters of the photos, so class boundaries run along the image's
edges, as a trained model's do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.helpers import skimage_photo

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
SEMANTIC_LABELS = ["background", "sky", "grass", "person", "cat", "road"]
INSTANCE_LABELS = ["person", "car", "tree", "sky", "dog"]
CENTERS = torch.tensor(
    [[0, 0, 0], [255, 255, 255], [200, 60, 60], [60, 200, 60], [60, 60, 200], [128, 128, 128]], dtype=torch.float32
)


def photos() -> list[str]:
    return [skimage_photo(n) for n in PHOTOS]


def rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).copy()


def _colour_targets(size: tuple[int, int], stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos resized to ``size`` as normalized ``(N, 3, h, w)`` and their colour-cluster ids
    at ``1/stride`` resolution ``(N, h/stride, w/stride)``."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    xs, ys = [], []
    for p in photos():
        t = torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize(size[::-1])).copy()).permute(2, 0, 1)
        t = t.float()
        xs.append((t / 255 - mean) / std)
        small = torch.nn.functional.avg_pool2d(t[None], stride)[0]
        ys.append(((small.permute(1, 2, 0)[..., None, :] - CENTERS) ** 2).sum(-1).argmin(-1))
    return torch.stack(xs), torch.stack(ys)


def fit_linear_head(model: torch.nn.Module, classifier: torch.nn.Conv2d, run, size=(128, 160), stride=4) -> None:
    """Set ``classifier`` (a 1×1 convolution) to the least-squares map from its input features
    to colour clusters of the photos; ``run(model, x)`` runs the forward pass."""
    x, y = _colour_targets(size, stride)
    feats = {}
    hook = classifier.register_forward_hook(lambda mod, inp, out: feats.__setitem__("f", inp[0]))
    with torch.no_grad():
        run(model, x)
    hook.remove()
    f = feats["f"]
    f = torch.nn.functional.interpolate(f, size=y.shape[-2:], mode="bilinear", align_corners=False)
    design = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), torch.ones(f.numel() // f.shape[1], 1)], 1)
    n = classifier.out_channels
    target = torch.nn.functional.one_hot(y.reshape(-1) % n, n).float() * 10 - 5
    w = torch.linalg.lstsq(design, target).solution
    classifier.weight.data = w[:-1].t().reshape(n, -1, 1, 1).contiguous()
    classifier.bias.data = w[-1].contiguous()


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm statistics away from the identity, so that folding has work to do."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)


def segformer(folder: Path, *, size=(128, 160), labels: list[str] = SEMANTIC_LABELS) -> torch.nn.Module:
    """A tiny SegFormer (``labels``: 6 classes) and its image processor, saved with save_pretrained."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    model = SegformerForSemanticSegmentation(config).eval()
    randomize_batchnorm(model)
    fit_linear_head(model, model.decode_head.classifier, lambda m, x: m(pixel_values=x), size=size)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": size[0], "width": size[1]}).save_pretrained(folder)
    return model


def upernet(folder: Path) -> torch.nn.Module:
    """A tiny UperNet on a ConvNeXt backbone (5 classes), saved with save_pretrained."""
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(0)
    backbone = ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_in_channels=16,
        auxiliary_channels=8,
        num_labels=5,
        id2label={i: f"c{i}" for i in range(5)},
        label2id={f"c{i}": i for i in range(5)},
    )
    model = UperNetForSemanticSegmentation(config).eval()
    randomize_batchnorm(model)
    fit_linear_head(model, model.decode_head.classifier, lambda m, x: m(pixel_values=x), size=(96, 128))
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 96, "width": 128}).save_pretrained(folder)
    return model


def mask2former(folder: Path) -> torch.nn.Module:
    """A tiny Mask2Former (Swin backbone, 5 classes, 12 queries) with its processor (shorter side 128)."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=swin,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=12,
        num_attention_heads=2,
        dim_feedforward=32,
        encoder_feedforward_dim=32,
        num_labels=len(INSTANCE_LABELS),
        id2label=dict(enumerate(INSTANCE_LABELS)),
        label2id={n: i for i, n in enumerate(INSTANCE_LABELS)},
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 128, "longest_edge": 224}).save_pretrained(folder)
    return model


def smp_unet(folder: Path, classes: int = 4, activation: str | None = None) -> torch.nn.Module:
    """A tiny smp U-Net on timm's ResNet-18 (random init), saved with save_pretrained."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet(
        "tu-resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        classes=classes,
        activation=activation,
    ).eval()
    randomize_batchnorm(model)
    head = model.segmentation_head[0]
    # A 1×1 head fitted like the others (smp's head is a 3×3 conv: refit it as 1×1 padded).
    fit = torch.nn.Conv2d(head.in_channels, head.out_channels, 1)
    fit_linear_head(model, fit, lambda m, x: fit(m.decoder(m.encoder(x))), size=(96, 128), stride=1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :, 1, 1] = fit.weight[:, :, 0, 0]
        head.bias.copy_(fit.bias)
    model.save_pretrained(str(folder))
    return model
