"""Tiled inference: the grid, MONAI's gaussian, band-by-band blending equal to the direct reference
on real photographs, the whole-image tile equal to the untiled class map, bounded buffers, and
instances cut by tile borders merged back into one."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from segbatch.masks import encode_binary
from segbatch.models.registry import Preprocess
from segbatch.stages.classmap import upsampled_argmax
from segbatch.stages.tiling import (
    Instance,
    SemanticBlender,
    TileSpec,
    Window,
    blend_class_map,
    blend_weights,
    full_window,
    input_size,
    instance_rle,
    instances_from_masks,
    mask_match,
    merge_instances,
    parse_overlap,
    parse_tile_size,
    paste_instances,
    tile_grid,
    untiled_scale,
)
from tests.helpers import skimage_photo

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One torch thread, as the predictor's CPU actors run: on a shared 2-core machine two
    # threads spin against each other (the seeded LRASPP ran 25× slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- spec, grid, sizes, weights ---------------------------------------------------------------------


def test_cli_strings_parse_and_bad_values_are_named():
    assert parse_tile_size("1024") == (1024, 1024)
    assert parse_tile_size("768x1024") == (768, 1024)
    assert parse_overlap("256") == 256 and isinstance(parse_overlap("256"), int)
    assert parse_overlap("0.25") == 0.25 and parse_overlap(".5") == 0.5 and parse_overlap("0") == 0
    for bad in ("", "0", "12x", "x12", "1024x0", "-5", "10.5"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_tile_size(bad)
    for bad in ("1.0", "1.5", "-3", "abc", "0.2.3", "25%"):
        with pytest.raises(ValueError, match="overlap"):
            parse_overlap(bad)
    spec = TileSpec.parse("64x96", "0.25", "0.5", "gaussian")
    assert spec == TileSpec((64, 96), 0.25, 0.5, "gaussian")
    assert spec.strides() == (48, 72)  # MONAI: int(tile × (1 - overlap))
    with pytest.raises(ValueError, match=r"overlap 64 px .* 64x96"):
        TileSpec((64, 96), 64)
    with pytest.raises(ValueError, match=r"'max'.*mean, gaussian"):
        TileSpec((64, 64), blend="max")
    for scale in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            TileSpec((64, 64), scale=scale)
    with pytest.raises(ValueError, match="tile"):
        TileSpec((0, 64))


def mmseg_windows(h_img: int, w_img: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, ...]]:
    """MMSegmentation's ``slide_inference`` loop, transcribed: (y1, y2, x1, x2) of each crop."""
    h_crop, w_crop = crop
    h_stride, w_stride = stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@pytest.mark.parametrize(
    ("size", "spec"),
    [
        ((300, 451), TileSpec((96, 128), 32)),
        ((512, 512), TileSpec((128, 128), 0)),  # stride divides: no border alignment needed
        ((1000, 77), TileSpec((256, 128), 0.25)),  # narrower than the tile on one axis
        ((50, 40), TileSpec((64, 64), 16)),  # smaller than the tile: one window
        ((129, 257), TileSpec((64, 64), 63)),  # stride 1 … every step
    ],
)
def test_grid_is_mmsegmentations_and_covers_the_image(size, spec):
    h, w = size
    windows = tile_grid(h, w, spec)
    got = [(win.y0, win.y1, win.x0, win.x1) for win in windows]
    assert got == mmseg_windows(h, w, spec.tile, spec.strides())
    cover = np.zeros(size, dtype=np.int64)
    for win in windows:
        assert win.y0 >= 0 and win.y1 <= h and win.x0 >= 0 and win.x1 <= w
        assert (win.h, win.w) == (min(spec.tile[0], h), min(spec.tile[1], w))
        cover[win.y0 : win.y1, win.x0 : win.x1] += 1
    assert cover.min() >= 1
    assert max(win.y1 for win in windows) == h and max(win.x1 for win in windows) == w
    assert len(set(got)) == len(got)


def test_whole_image_input_size_is_the_untiled_resize():
    rng = np.random.default_rng(0)
    sizes = [(480, 640), (640, 480), (333, 521), (1365, 1024), (7, 9000)] + [
        tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)
    ]
    for short in (96, 128, 520, 800):
        pre = Preprocess(resize=short)
        for h, w in sizes:
            assert input_size(h, w, untiled_scale(short, h, w)) == pre.output_size(h, w), (short, h, w)
    assert input_size(100, 60, 1.0) == (100, 60) and input_size(3, 3, 0.1) == (1, 1)


def test_gaussian_weights_are_monais_importance_map_hand_computed():
    # MONAI compute_importance_map(mode="gaussian", sigma_scale=0.125): σ = 0.125 × side, x centred.
    h, w = 5, 3
    gy = [math.exp(-(y**2) / (2 * (0.125 * h) ** 2)) for y in (-2, -1, 0, 1, 2)]
    gx = [math.exp(-(x**2) / (2 * (0.125 * w) ** 2)) for x in (-1, 0, 1)]
    expected = np.array([[a * b for b in gx] for a in gy])
    assert expected.min() < 1e-3  # so the clamp at 1e-3 matters here
    expected = np.maximum(expected, 1e-3)
    got = blend_weights(h, w, "gaussian")
    assert got.dtype == torch.float32 and got.shape == (h, w)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # Even sides: no centre pixel, the peak is below 1.
    g = blend_weights(8, 6, "gaussian").numpy()
    ey = np.exp(-((np.arange(8) - 3.5) ** 2) / (2 * 1.0**2))
    ex = np.exp(-((np.arange(6) - 2.5) ** 2) / (2 * 0.75**2))
    np.testing.assert_allclose(g, np.maximum(np.outer(ey, ex), 1e-3), rtol=1e-6)
    wide = blend_weights(7, 7, "gaussian", sigma_scale=1.0).numpy()  # min above 1e-3: no clamp
    assert wide.min() > 1e-3 and np.isclose(wide.min(), math.exp(-9 / 98) ** 2, rtol=1e-6)  # corner: x = ±3, σ = 7
    assert torch.equal(blend_weights(4, 9, "mean"), torch.ones(4, 9))
    with pytest.raises(ValueError, match="'box'"):
        blend_weights(3, 3, "box")


# --- a real model on real photographs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A seeded LRASPP with 6 classes, BatchNorm statistics calibrated on photo crops so that its
    maps have regions (random BN statistics give one class everywhere)."""
    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    crops = [photo_rgb(n, 1)[:96, :96] for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    net.train()
    with torch.no_grad():
        net(normalize(torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in crops])))
    return net.eval()


def photo_rgb(name: str, shrink: int) -> np.ndarray:
    img = Image.open(skimage_photo(name)).convert("RGB")
    return np.asarray(img.resize((img.width // shrink, img.height // shrink)) if shrink > 1 else img).copy()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def coarse(net: torch.nn.Module, chw: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """LRASPP's logits before its own upsampling (as segbatch's predictor takes them) and ``via``."""
    with torch.inference_mode():
        x = normalize(torch.from_numpy(chw)[None])
        return net.classifier(net.backbone(x))[0], (int(x.shape[-2]), int(x.shape[-1]))


def run_tiles(net, rgb: np.ndarray, spec: TileSpec) -> list[tuple[Window, torch.Tensor, tuple[int, int]]]:
    """Each window cut, resized as the read stage resizes (``Preprocess.resize_chw``) and predicted."""
    out = []
    for win in tile_grid(rgb.shape[0], rgb.shape[1], spec):
        pre = Preprocess(resize=input_size(win.h, win.w, spec.scale))
        logits, via = coarse(net, pre.resize_chw(rgb[win.y0 : win.y1, win.x0 : win.x1]))
        out.append((win, logits, via))
    return out


def direct_reference(h, w, spec, tiles, dtype=torch.float64) -> np.ndarray:
    """All tiles' weighted logits summed into one full-size array, divided by the summed weights, argmax."""
    c = tiles[0][1].shape[0]
    sums, wsum = torch.zeros((c, h, w), dtype=dtype), torch.zeros((h, w), dtype=dtype)
    for win, logits, via in tiles:
        weights = blend_weights(win.h, win.w, spec.blend).to(dtype)
        up = logits[None]
        if via is not None:  # the model's own upsampling to its input, then to the window
            up = F.interpolate(up, size=via, mode="bilinear", align_corners=False)
        up = F.interpolate(up, size=(win.h, win.w), mode="bilinear", align_corners=False)[0].to(dtype)
        sums[:, win.y0 : win.y1, win.x0 : win.x1] += up * weights
        wsum[win.y0 : win.y1, win.x0 : win.x1] += weights
    return (sums / wsum).argmax(0).to(torch.uint8).numpy()


@pytest.mark.parametrize(
    ("photo", "spec"),
    [
        ("chelsea.png", TileSpec((96, 128), 32)),
        ("chelsea.png", TileSpec((96, 128), 0.3, blend="gaussian")),
        ("coffee.png", TileSpec((120, 100), 40, scale=0.75)),  # the model sees each window smaller
        ("coffee.png", TileSpec((80, 80), 0.5, scale=1.25, blend="gaussian")),  # and larger
    ],
)
def test_blended_map_equals_the_direct_reference_in_any_tile_order(model, photo, spec):
    rgb = photo_rgb(photo, 1 if photo == "chelsea.png" else 2)
    h, w = rgb.shape[:2]
    tiles = run_tiles(model, rgb, spec)
    assert len(tiles) >= 10
    ref = direct_reference(h, w, spec, tiles)
    assert len(np.unique(ref)) >= 3, "the seeded model must predict several classes for this to mean anything"
    shuffled = tiles[:]
    random.Random(1).shuffle(shuffled)
    got = blend_class_map(h, w, spec, shuffled, num_classes=6)
    assert got.dtype == np.uint8 and got.shape == (h, w)
    assert np.array_equal(got, ref)
    # MMSegmentation's float32 accumulation in grid order rounds differently: it may differ only
    # where the blended top two classes are within float32 rounding of each other.
    ref32 = direct_reference(h, w, spec, tiles, torch.float32)
    differ = got != ref32
    assert differ.mean() < 1e-4


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("photo", ["chelsea.png", "rocket.jpg"])
def test_one_whole_image_tile_equals_the_untiled_class_map(model, photo, blend):
    rgb = photo_rgb(photo, 2)
    h, w = rgb.shape[:2]
    short = 96
    untiled = Preprocess(resize=short)
    logits, via = coarse(model, untiled.resize_chw(rgb))  # today's untiled path
    expected = upsampled_argmax(logits, (h, w), via=via).numpy()
    assert len(np.unique(expected)) >= 2
    for tile in ((h, w), (4096, 4096)):  # exactly the image, and larger than it
        spec = TileSpec(tile, 0, scale=untiled_scale(short, h, w), blend=blend)
        tiles = run_tiles(model, rgb, spec)
        assert len(tiles) == 1 and torch.equal(tiles[0][1], logits) and tiles[0][2] == via
        assert np.array_equal(blend_class_map(h, w, spec, tiles, num_classes=6), expected)


# --- bands and memory ---------------------------------------------------------------------------------


def blobs(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Logits with regions, as a segmentation model gives."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, c, max(2, h // 8), max(2, w // 8), generator=g) * 6
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0] + 0.3 * torch.randn(
        c, h, w, generator=g
    )


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_bands_come_out_in_order_as_soon_as_their_tiles_are_in_and_buffers_stay_within_the_bound(blend):
    h, w, c = 700, 530, 7
    spec = TileSpec((128, 96), 40, blend=blend)
    windows = tile_grid(h, w, spec)
    tiles = {(win.row, win.col): (win, blobs(c, 16, 12, win.row * 100 + win.col), None) for win in windows}
    # Grid rows in order, tiles within each row shuffled (as actors finish them).
    rows = sorted({win.row for win in windows})
    order = []
    rnd = random.Random(0)
    for r in rows:
        row = [tiles[k] for k in tiles if k[0] == r]
        rnd.shuffle(row)
        order += row
    blender = SemanticBlender(h, w, spec, c)
    arrived: list[Window] = []
    emitted_to = 0
    out = np.empty((h, w), dtype=np.uint8)
    for win, logits, via in order:
        arrived.append(win)
        for band in blender.add(win, logits, via):
            assert band.y0 == emitted_to and band.labels.shape[1] == w and band.labels.dtype == np.uint8
            out[band.y0 : band.y0 + len(band.labels)] = band.labels
            emitted_to += len(band.labels)
        # As soon as: every row above emitted_to has all its windows in; the next row does not.
        done = np.ones(h, dtype=bool)
        for other in windows:
            if other not in arrived:
                done[other.y0 : other.y1] = False
        ready = int(np.argmin(done)) if not done.all() else h
        assert emitted_to == ready
        assert blender.buffer_bytes <= blender.row_major_bound_bytes()
    assert blender.finished and emitted_to == h
    assert blender.buffer_bytes == 0
    g = 1 if blend == "gaussian" else 0
    assert blender.row_major_bound_bytes() == 8 * (c + g) * 128 * w
    assert 0 < blender.peak_buffer_bytes <= blender.row_major_bound_bytes() < 8 * (c + g) * h * w / 5
    assert np.array_equal(out, direct_reference(h, w, spec, list(tiles.values())))
    # Any order: the same map, but open cells pile up (the bound holds for grid rows in order).
    shuffled = SemanticBlender(h, w, spec, c)
    anyhow = order[:]
    random.Random(2).shuffle(anyhow)
    bands = [b for t in anyhow for b in shuffled.add(*t)]
    assert np.array_equal(np.concatenate([b.labels for b in bands]), out)
    assert shuffled.peak_buffer_bytes > 2 * blender.row_major_bound_bytes()


def test_blender_refuses_foreign_repeated_and_misshapen_tiles():
    spec = TileSpec((32, 32), 8)
    blender = SemanticBlender(64, 80, spec, 3)
    win = blender.windows[0]
    with pytest.raises(ValueError, match="not a window"):
        blender.add(Window(1, 0, 32, 32, 0, 0), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"C=3"):
        blender.add(win, torch.zeros(4, 4, 4))
    blender.add(win, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="already added"):
        blender.add(win, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="never arrived"):
        blend_class_map(64, 80, spec, [(win, torch.zeros(3, 4, 4), None)], 3)
    with pytest.raises(ValueError, match=r"1\.\.256"):
        SemanticBlender(64, 80, spec, 300)


# --- instances -----------------------------------------------------------------------------------------

H, W = 220, 300


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy picture with objects, and its ``(H, W)`` object-id map (0 = background).

    1: a large red ellipse across several tile borders; 2: a green disc inside a tile overlap;
    3, 4: two red bars 3 px apart crossing a tile border (two objects, not one).
    """
    yy, xx = np.mgrid[:H, :W]
    ids = np.zeros((H, W), dtype=np.int64)
    ids[((yy - 110) / 70.0) ** 2 + ((xx - 120) / 95.0) ** 2 <= 1] = 1
    ids[(yy - 40) ** 2 + (xx - 240) ** 2 <= 12**2] = 2
    ids[150:200, 230:240] = 3
    ids[150:200, 243:253] = 4
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 60, (H, W, 3)).astype(np.uint8)
    rgb[(ids == 1) | (ids >= 3)] = (220, 30, 30)
    rgb[ids == 2] = (30, 220, 30)
    return rgb, ids


def detect(rgb: np.ndarray, window: Window, image: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand-in detector (a real model's masks cannot be predicted in a test): connected bright
    red (class 1) and green (class 2) regions, minus 2 px along the window's inner borders, where a
    real model's masks fray too. Returns ``(N, h, w) bool`` masks, labels, scores."""
    masks, labels, scores = [], [], []
    for label, channel in ((1, 0), (2, 1)):
        comp, n = ndimage.label(rgb[..., channel] > 150)
        for k in range(1, n + 1):
            m = comp == k
            if window.y0 > 0:
                m[:2] = False
            if window.x0 > 0:
                m[:, :2] = False
            if window.y1 < image[0]:
                m[-2:] = False
            if window.x1 < image[1]:
                m[:, -2:] = False
            if m.any():
                masks.append(m)
                labels.append(label)
                scores.append(0.5 + 0.4 * m.sum() / m.size)
    h, w = rgb.shape[:2]
    return np.array(masks, dtype=bool).reshape(-1, h, w), np.array(labels), np.array(scores)


def sliced(rgb, spec) -> list[Instance]:
    out = []
    for win in tile_grid(H, W, spec):
        out += instances_from_masks(win, *detect(rgb[win.y0 : win.y1, win.x0 : win.x1], win, (H, W)))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def best_ious(instances: list[Instance], ids: np.ndarray) -> dict[int, list[float]]:
    """For each object id: the IoU of every instance that overlaps it."""
    masks = paste_instances(instances, H, W)[0].astype(bool)
    return {k: [iou(m, ids == k) for m in masks if (m & (ids == k)).any()] for k in range(1, int(ids.max()) + 1)}


def test_merge_rejoins_objects_cut_by_tile_borders():
    rgb, ids = scene()
    spec = TileSpec((96, 96), 32)
    pieces = sliced(rgb, spec)
    assert sum((paste_instances([p], H, W)[0][0].astype(bool) & (ids == 1)).any() for p in pieces) >= 4
    merged = merge_instances(pieces, "merge", 0.5)
    assert len(merged) == 4, [(m.label, m.box) for m in merged]
    for k, ious in best_ious(merged, ids).items():
        assert len(ious) == 1 and ious[0] >= 0.95, (k, ious)
    assert [m.score for m in merged] == sorted((m.score for m in merged), reverse=True)
    # Mask-IoU NMS keeps one piece of the large object (a partial mask) but is right for the disc,
    # which lies whole in two overlapping tiles.
    kept = merge_instances(pieces, "nms", 0.5)
    nms = best_ious(kept, ids)
    assert len(nms[2]) == 1 and nms[2][0] >= 0.95
    assert max(nms[1]) < 0.95


def test_a_full_image_pass_at_a_lower_resolution_joins_the_merge():
    rgb, ids = scene()
    small = np.asarray(Image.fromarray(rgb).resize((W // 2, H // 2), Image.NEAREST))
    masks, labels, scores = detect(small, full_window(H // 2, W // 2), (H // 2, W // 2))
    full = instances_from_masks(full_window(H, W), masks, labels, scores + 0.5)  # the full pass wins ties
    # Masks at half size are mapped onto the image by nearest neighbour (torch's nearest-exact).
    expected = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=(H, W), mode="nearest-exact")
    assert np.array_equal(paste_instances(full, H, W)[0], expected[:, 0].numpy().astype(np.uint8))
    merged = merge_instances(full + sliced(rgb, TileSpec((96, 96), 32)), "merge", 0.5)
    assert len(merged) == 4
    ious = best_ious(merged, ids)
    assert all(len(v) == 1 for v in ious.values()), ious
    # The large object is whole; the small ones carry the half-resolution pass's staircase
    # edges, OR-ed into their tile masks.
    assert ious[1][0] >= 0.95 and min(v[0] for v in ious.values()) >= 0.9, ious


def crop(label, score, y0, x0, rows: list[str], seen=(0, 0, 100, 100)) -> Instance:
    return Instance(label, score, y0, x0, np.array([[ch == "#" for ch in r] for r in rows]), seen)


def test_merge_is_transitive_nms_is_not_and_classes_are_kept_apart():
    a = crop(1, 0.9, 0, 0, ["####", "####"])  # 8 px
    b = crop(1, 0.8, 0, 2, ["####", "####"])  # 4 px shared with a: IoS 0.5, IoU 1/3
    c = crop(1, 0.7, 0, 4, ["####", "####"])  # 4 px shared with b, none with a
    d = crop(2, 0.95, 0, 0, ["####", "####"])  # another class on top of a
    e = crop(1, 0.6, 5, 0, ["#"])  # alone
    merged = merge_instances([a, b, c, d, e], "merge", 0.5)
    assert [(m.label, m.score, m.box, m.area) for m in merged] == [
        (2, 0.95, (0, 0, 2, 4), 8),
        (1, 0.9, (0, 0, 2, 8), 16),  # a, b and c: c joins through b
        (1, 0.6, (5, 0, 6, 1), 1),
    ]
    agnostic = merge_instances([a, b, c, d, e], "merge", 0.5, class_agnostic=True)
    assert [(m.label, m.score, m.box) for m in agnostic] == [(2, 0.95, (0, 0, 2, 8)), (1, 0.6, (5, 0, 6, 1))]
    assert len(merge_instances([a, b, c], "merge", 0.6)) == 3
    # NMS by mask IoU: a drops b at 0.3; c, which only b matched, stays.
    assert len(merge_instances([a, b], "nms", 0.5)) == 2
    assert [m.score for m in merge_instances([a, b, c], "nms", 0.3)] == [0.9, 0.7]
    with pytest.raises(ValueError, match=r"'wbf'.*nms, merge"):
        merge_instances([a], "wbf")
    with pytest.raises(ValueError, match="'dice'"):
        merge_instances([a], "merge", metric="dice")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            merge_instances([a], "merge", bad)


def test_pieces_are_compared_where_both_windows_saw():
    # An object cut by a border: tile A saw columns 0-9, tile B columns 8-29; each sees its part.
    piece_a = crop(1, 0.9, 0, 0, ["#" * 10] * 4, seen=(0, 0, 10, 10))
    piece_b = crop(1, 0.8, 0, 8, ["#" * 22] * 4, seen=(0, 8, 10, 30))
    other = crop(1, 0.7, 5, 12, ["#" * 6] * 2, seen=(0, 8, 10, 30))  # in B's window only
    assert mask_match(piece_a, piece_b, "ios") == 1.0 and mask_match(piece_a, piece_b, "iou") == 1.0
    whole = np.zeros((10, 30), dtype=bool)
    whole[:4, :30] = True
    assert 8 / 40 < 0.5  # on whole masks the pieces would not match
    assert mask_match(piece_a, other, "ios") == 0.0
    merged = merge_instances([piece_a, piece_b, other], "merge", 0.5)
    assert len(merged) == 2 and np.array_equal(paste_instances(merged[:1], 10, 30)[0][0].astype(bool), whole)
    assert merged[0].seen == (0, 0, 10, 30)


def test_instance_rle_from_a_crop_equals_pycocotools_on_the_full_mask():
    rng = np.random.default_rng(0)
    for t in range(200):
        h_img, w_img = (int(v) for v in rng.integers(1, 40, 2))
        h, w = int(rng.integers(1, h_img + 1)), int(rng.integers(1, w_img + 1))
        y0, x0 = int(rng.integers(0, h_img - h + 1)), int(rng.integers(0, w_img - w + 1))
        mask = rng.random((h, w)) < rng.random()
        if t % 7 == 0:
            mask[:] = True  # runs that wrap from one column's bottom to the next column's top
        inst = Instance(1, 0.5, y0, x0, mask, (0, 0, h_img, w_img))
        full = np.zeros((h_img, w_img), dtype=np.uint8)
        full[y0 : y0 + h, x0 : x0 + w] = mask
        assert instance_rle(inst, h_img, w_img) == encode_binary(full[..., None])[0], (h_img, w_img, h, w, y0, x0)
    empty = instances_from_masks(Window(0, 0, 5, 6), np.zeros((1, 5, 6), bool), np.array([3]), np.array([0.4]))
    assert empty[0].area == 0 and instance_rle(empty[0], 5, 6) == encode_binary(np.zeros((5, 6, 1), np.uint8))[0]
    with pytest.raises(ValueError, match="outside"):
        instance_rle(Instance(1, 0.5, 4, 0, np.ones((3, 3), bool), (0, 0, 5, 5)), 5, 5)
