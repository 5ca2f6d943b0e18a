"""upsampled_argmax equals bilinear-upsample-then-argmax, pixel for pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbatch.upsample import upsampled_argmax


def reference(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False).argmax(1)[0]


def blobs(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Logits with regions, as a segmentation model gives: smooth noise, each class winning somewhere."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, max(2, h // 8), max(2, w // 8), generator=g) * 6
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0] + \
        0.3 * torch.randn(c, h, w, generator=g)


@pytest.mark.parametrize(("c", "low", "size"), [
    (21, (65, 87), (480, 640)),  # LRASPP/DeepLabV3 at 520 px → a 640×480 photo
    (21, (65, 65), (521, 333)),  # odd sizes, non-integer scales
    (3, (32, 32), (32, 32)),  # same size
    (5, (64, 48), (20, 30)),  # downsampling
    (2, (1, 7), (5, 50)),  # one row: the clamped border everywhere
])
def test_equals_the_full_upsampling(c, low, size):
    for seed in range(3):
        logits = blobs(c, *low, seed)
        fast = upsampled_argmax(logits, size)
        assert fast.dtype == torch.uint8 and fast.shape == size
        assert torch.equal(fast.long(), reference(logits, size))


def test_ties_are_kept_and_near_ties_differ_only_within_float_rounding():
    logits = blobs(4, 40, 40, 7)
    logits[2] = logits[1]  # exact ties between classes 1 and 2 everywhere: argmax keeps the first
    logits[3] = logits[0] + 1e-6  # near-ties between 0 and 3: below the margin, so interpolated in full
    size = (123, 77)
    fast, ref = upsampled_argmax(logits, size).long(), reference(logits, size)
    assert not ((fast == 2) | (ref == 2)).any()
    # Where a pixel's top two interpolated logits are within float32 rounding, the winner
    # depends on the kernel's order of operations (ATen's CPU and CUDA kernels differ there
    # too); anywhere else the answers are the same.
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    differ = fast != ref
    gap = (up.gather(0, fast[None]) - up.gather(0, ref[None]))[0].abs()
    assert (gap[differ] < 1e-5).all()
    assert differ.float().mean() < 0.05
    assert torch.equal(upsampled_argmax(logits, size, margin=0).long(), ref)


def test_undecided_pixels_in_several_chunks_give_the_same_map(monkeypatch):
    from segbatch import upsample

    logits = blobs(21, 65, 87, 3)
    whole = upsampled_argmax(logits, (480, 640))
    monkeypatch.setattr(upsample, "_CHUNK", 1000)  # hundreds of chunks instead of one
    assert torch.equal(upsampled_argmax(logits, (480, 640)), whole)
    assert torch.equal(whole.long(), reference(logits, (480, 640)))
