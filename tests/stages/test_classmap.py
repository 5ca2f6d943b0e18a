"""upsampled_argmax equals bilinear-upsample-then-argmax, pixel for pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbatch.stages.classmap import upsampled_argmax


def reference(logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None) -> torch.Tensor:
    z = logits[None].float()
    if via is not None:  # a torchvision model's own upsampling to its input size
        z = F.interpolate(z, size=via, mode="bilinear", align_corners=False)
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False).argmax(1)[0]


def blobs(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Logits with regions, as a segmentation model gives: smooth noise, each class winning somewhere."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, max(2, h // 8), max(2, w // 8), generator=g) * 6
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0] + 0.3 * torch.randn(
        c, h, w, generator=g
    )


@pytest.mark.parametrize(
    ("c", "low", "size"),
    [
        (21, (65, 87), (480, 640)),  # LRASPP/DeepLabV3 at 520 px → a 640×480 photo
        (21, (65, 65), (521, 333)),  # odd sizes, non-integer scales
        (3, (32, 32), (32, 32)),  # same size
        (5, (64, 48), (20, 30)),  # downsampling
        (2, (1, 7), (5, 50)),  # one row: the clamped border everywhere
    ],
)
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
    from segbatch.stages import classmap

    logits = blobs(21, 65, 87, 3)
    whole = upsampled_argmax(logits, (480, 640))
    monkeypatch.setattr(classmap, "_CHUNK", 1000)  # hundreds of chunks instead of one
    assert torch.equal(upsampled_argmax(logits, (480, 640)), whole)
    assert torch.equal(whole.long(), reference(logits, (480, 640)))


@pytest.mark.parametrize(
    ("c", "low", "via", "size"),
    [
        (21, (65, 87), (520, 693), (480, 640)),  # LRASPP: 1/8 → 520 px input → the 640×480 photo
        (21, (33, 44), (520, 693), (480, 640)),  # DeepLabV3-MobileNet: 1/16
        (5, (16, 16), (128, 128), (300, 200)),  # input smaller than the photo, both steps up
        (3, (7, 9), (60, 70), (61, 71)),
        (2, (1, 7), (8, 56), (5, 50)),  # one row: the clamped border everywhere
        (4, (40, 30), (40, 30), (100, 90)),  # the first step is the identity
    ],
)
def test_equals_two_upsamplings_in_a_row(c, low, via, size):
    for seed in range(3):
        logits = blobs(c, *low, seed)
        fast = upsampled_argmax(logits, size, via=via)
        assert fast.dtype == torch.uint8 and fast.shape == size
        assert torch.equal(fast.long(), reference(logits, size, via))


def test_photo_like_and_noise_like_maps_take_each_path_and_agree(monkeypatch):
    from segbatch.stages import classmap

    calls = []
    real = classmap._reference
    monkeypatch.setattr(classmap, "_reference", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 21, 3, 4, generator=g) * 6
    coarse[:, 3:] -= 20  # three classes in a few large regions, as on a photo
    smooth = F.interpolate(coarse, size=(65, 87), mode="bilinear", align_corners=False)[0]
    smooth += 0.05 * torch.randn(smooth.shape, generator=g)
    noise = torch.randn(21, 65, 87, generator=g)  # every pixel a boundary
    for logits, dense in ((smooth, False), (noise, True)):
        calls.clear()
        fast = upsampled_argmax(logits, (480, 640), via=(520, 693))
        assert bool(calls) == dense
        assert torch.equal(fast.long(), reference(logits, (480, 640), (520, 693)))


def test_chained_pixels_in_several_chunks_give_the_same_map(monkeypatch):
    from segbatch.stages import classmap

    logits = blobs(21, 65, 87, 4)
    whole = upsampled_argmax(logits, (480, 640), via=(520, 693))
    monkeypatch.setattr(classmap, "_CHUNK", 1000)
    assert torch.equal(upsampled_argmax(logits, (480, 640), via=(520, 693)), whole)


@pytest.mark.parametrize("via", [None, (520, 693)])
def test_a_batch_per_image_and_all_at_once_give_the_reference_maps(via):
    from segbatch.stages.classmap import upsampled_argmax_batch

    logits = torch.stack([blobs(21, 65, 87, seed) for seed in range(3)])
    expected = torch.stack([reference(z, (480, 640), via) for z in logits])
    for dense in (False, True):  # True: what a GPU runs
        maps = upsampled_argmax_batch(logits, (480, 640), via=via, dense=dense)
        assert maps.dtype == torch.uint8 and maps.shape == (3, 480, 640)
        assert torch.equal(maps.long(), expected)
    assert upsampled_argmax_batch(logits[:0], (480, 640), via=via).shape == (0, 480, 640)


@pytest.mark.parametrize("max_bytes", [1, 4 * 21 * (480 * 640 + 520 * 693) * 2])
def test_the_dense_batch_path_in_groups_bounded_by_bytes_gives_the_same_maps(max_bytes):
    from segbatch.stages.classmap import upsampled_argmax_batch

    logits = torch.stack([blobs(21, 65, 87, seed) for seed in range(3)])
    whole = upsampled_argmax_batch(logits, (480, 640), via=(520, 693), dense=True)
    # 1 byte: one image at a time (never none); two images' intermediates: groups of 2 and 1.
    grouped = upsampled_argmax_batch(logits, (480, 640), via=(520, 693), dense=True, max_bytes=max_bytes)
    assert grouped.dtype == torch.uint8 and torch.equal(grouped, whole)
    assert upsampled_argmax_batch(logits[:0], (480, 640), dense=True, max_bytes=max_bytes).shape == (0, 480, 640)


def scene(c: int, active: int, grid: tuple[int, int], low: tuple[int, int], noise: float, seed: int) -> torch.Tensor:
    """Logits in which only ``active`` of ``c`` classes appear, in regions on a ``grid`` (a photo)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, *grid, generator=g) * 6
    coarse[:, active:] -= 20  # classes absent from the scene
    logits = F.interpolate(coarse, size=low, mode="bilinear", align_corners=False)[0]
    return logits + noise * torch.randn(logits.shape, generator=g)


@pytest.mark.parametrize("via", [None, (520, 693)])
def test_only_classes_that_can_win_are_resampled_and_the_map_is_the_reference(monkeypatch, via):
    from segbatch.stages import classmap
    from segbatch.stages.classmap import contenders

    seen = []
    real = classmap._class_map
    monkeypatch.setattr(classmap, "_class_map", lambda z, *a: seen.append(z.shape[0]) or real(z, *a))
    for seed in range(3):
        logits = scene(21, 4, (9, 11), (65, 87), 0.3, seed)
        keep = contenders(logits, (480, 640), via)
        expected = reference(logits, (480, 640), via)
        assert 1 < len(keep) < 21
        assert set(expected.unique().tolist()) <= set(keep.tolist())
        seen.clear()
        assert torch.equal(upsampled_argmax(logits, (480, 640), via=via).long(), expected)
        assert seen == [len(keep)]


def test_a_class_winning_everywhere_fills_the_map_and_near_winners_are_kept():
    from segbatch.stages.classmap import MARGIN, contenders

    logits = blobs(5, 20, 20, 1)
    logits[3] += 100
    assert contenders(logits, (61, 77)).tolist() == [3]
    fast = upsampled_argmax(logits, (61, 77), via=(160, 160))
    assert torch.equal(fast.long(), reference(logits, (61, 77), (160, 160)))
    # Below a flat winner everywhere: within the margin, rounding could make it win (kept);
    # ten margins below, it cannot (left out).
    logits[3] = 100.0
    logits[1] = 100.0 - MARGIN / 2
    logits[0] = 100.0 - 10 * MARGIN
    assert contenders(logits, (61, 77)).tolist() == [1, 3]
    assert torch.equal(upsampled_argmax(logits, (61, 77)).long(), reference(logits, (61, 77)))


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_and_absent_classes_give_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    c, h, w, big_h, big_w = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                             ((2, 30), (1, 40), (1, 40), (1, 200), (1, 200)))  # fmt: skip
    active = int(torch.randint(1, c + 1, (1,), generator=g))
    logits = scene(c, active, (max(1, h // 5), max(1, w // 5)), (h, w), 0.5, seed)
    for via in (None, (h * 8, w * 8), (max(1, h // 2), w + 3)):
        expected = reference(logits, (big_h, big_w), via)
        assert torch.equal(upsampled_argmax(logits, (big_h, big_w), via=via).long(), expected), via


def test_undecided_fraction_counts_pixels_between_classes_that_can_win():
    from segbatch.stages.classmap import MARGIN, undecided_fraction

    logits = blobs(4, 20, 20, 2)
    logits[3] = 100.0  # wins everywhere: nothing is computed in full
    assert undecided_fraction(logits, (61, 77), via=(160, 160)) == 0.0
    logits[2] = 100.0 - MARGIN / 2  # within the margin everywhere: every pixel is
    assert undecided_fraction(logits, (61, 77), via=(160, 160)) == 1.0
