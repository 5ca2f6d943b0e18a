"""Preprocess.resize_chw does exactly what torchvision's F.resize does to a uint8 tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from segbatch.models.registry import Preprocess


@pytest.mark.parametrize(
    ("hw", "resize"),
    [
        ((480, 640), 520),
        ((640, 480), 520),
        ((333, 517), 96),
        ((100, 100), 520),
        ((520, 700), 520),
        ((7, 1000), 64),
        ((480, 640), (256, 256)),
        ((50, 60), (50, 60)),
    ],
)
def test_resize_equals_torchvision(hw, resize):
    rgb = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours = Preprocess(resize=resize).resize_chw(rgb)
    size = [resize] if isinstance(resize, int) else list(resize)
    theirs = F.resize(
        torch.from_numpy(rgb).permute(2, 0, 1), size, interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    assert ours.dtype == np.uint8 and ours.shape == tuple(theirs.shape)
    assert np.array_equal(ours, theirs.numpy())


def test_no_resize_keeps_the_image():
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(Preprocess(resize=None).resize_chw(rgb), rgb.transpose(2, 0, 1))
