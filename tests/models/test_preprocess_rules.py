"""Preprocess's rules and filters, each equal to the library operation it reproduces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F2

from segbatch.errors import JobError
from segbatch.models.preprocess import Preprocess

SIZES = [((480, 640), (384, 512)), ((333, 517), (128, 160)), ((181, 243), (362, 486)), ((600, 400), (97, 131))]


def image(hw: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)


@pytest.mark.parametrize(("hw", "size"), SIZES)
@pytest.mark.parametrize(
    ("resample", "mode"),
    [("torch-antialias-uint8", InterpolationMode.BILINEAR), ("torch-bicubic", InterpolationMode.BICUBIC)],
)
def test_torch_uint8_filters_equal_torchvision_v2(hw, size, resample, mode):
    rgb = image(hw)
    ours = Preprocess(resize=size, resample=resample).resize_chw(rgb)
    theirs = F2.resize(torch.from_numpy(rgb).permute(2, 0, 1), list(size), interpolation=mode, antialias=True)
    assert np.array_equal(ours, theirs.numpy())


def test_the_v1_and_v2_torch_filters_round_differently():
    """Why torch-antialias (torchvision's presets) and torch-antialias-uint8 (transformers) both exist."""
    rgb = image((480, 640))
    a = Preprocess(resize=(384, 512)).resize_chw(rgb)
    b = Preprocess(resize=(384, 512), resample="torch-antialias-uint8").resize_chw(rgb)
    assert np.abs(a.astype(int) - b.astype(int)).max() == 1 and (a != b).mean() > 0.01


@pytest.mark.parametrize(("hw", "size"), SIZES)
@pytest.mark.parametrize("name", ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"])
def test_pillow_filters_equal_pillow(hw, size, name):
    rgb = image(hw)
    ours = Preprocess(resize=size, resample=f"pillow-{name}").resize_chw(rgb)
    filt = getattr(Image.Resampling, name.upper())
    theirs = np.asarray(Image.fromarray(rgb).resize(size[::-1], resample=filt)).transpose(2, 0, 1)
    assert np.array_equal(ours, theirs)


def test_shortest_and_longest_edge_rule_equals_transformers():
    from transformers.image_transforms import get_size_with_aspect_ratio

    pre = Preprocess(resize=800, longest_edge=1333)
    for h in range(100, 3000, 97):
        for w in range(100, 3000, 89):
            assert pre.output_size(h, w) == get_size_with_aspect_ratio((h, w), 800, 1333), (h, w)


def test_size_divisor_rounds_up_and_crop_cuts_the_centre():
    assert Preprocess(resize=128, longest_edge=224, size_divisor=32).output_size(400, 600) == (128, 192)
    assert Preprocess(resize=None, size_divisor=32).output_size(333, 517) == (352, 544)
    rgb = image((300, 451))
    pre = Preprocess(resize=224, crop=(256, 200), resample="torch-bicubic")
    resized = Preprocess(resize=224, resample="torch-bicubic").resize_chw(rgb)  # 224 x 336
    assert np.array_equal(pre.resize_chw(rgb), F2.center_crop(torch.from_numpy(resized), [256, 200]).numpy())
    assert pre.input_size(300, 451) == (256, 200)


def test_bgr_rescale_and_no_normalization():
    batch = torch.from_numpy(image((4, 5)).transpose(2, 0, 1).copy())[None]
    x = Preprocess(mean=None, std=None, channel_order="BGR").normalize(batch)
    assert torch.allclose(x, batch.flip(1).float() / 255)
    y = Preprocess(mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0), rescale=None).normalize(batch)
    assert torch.allclose(y, (batch.float() - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / 2)


def test_to_dict_round_trips_and_old_dicts_still_load():
    pre = Preprocess(resize=512, longest_edge=800, size_divisor=32, crop=(256, 256), resample="pillow-bicubic",
                     rescale=None, mean=None, std=None, channel_order="BGR")  # fmt: skip
    assert Preprocess.from_dict(pre.to_dict()) == pre
    builtin = Preprocess(resize=520)
    assert builtin.to_dict() == {"resize": 520, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preprocess.from_dict({"resize": [32, 48], "mean": None, "std": None}) == Preprocess(
        resize=(32, 48), mean=None, std=None
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resample": "bilinear"}, r"unknown resample filter 'bilinear'; valid filters: torch-antialias, "),
        ({"colour": "RGB"}, r"unknown preprocessing key\(s\) \['colour'\]; valid keys: "),
        ({"channel_order": "RGBA"}, r"channel_order must be one of RGB, BGR, got 'RGBA'"),
        ({"mean": [0.5, 0.5, 0.5], "std": None}, r"mean and std go together"),
        ({"resize": [1, 2, 3]}, r"resize must be a shorter side or \[height, width\], got \[1, 2, 3\]"),
    ],
)
def test_bad_preprocessing_is_a_job_error(values, message):
    with pytest.raises(JobError, match=message):
        Preprocess.from_dict({"resize": None, "mean": None, "std": None, **values})
