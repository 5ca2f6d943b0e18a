"""Sliced instance inference in the model actor: objects cut by tile borders come back as one
instance equal to the untiled one (a deterministic blob detector as the model: a plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from segbatch.io.regions import RegionReader
from segbatch.masks import crop_rle, decode_rle
from segbatch.models import ModelBundle, Preprocess
from segbatch.models.resolve import resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from segbatch.stages.tiled import TiledRead, reduced_image
from segbatch.stages.tiling import TileSpec

REF = "tests.stages.test_tiled_instance:build_blobs"


def _blobs(module, images, sizes, options):
    """Each connected bright region of a (3, h, w) image in [0, 1] is one 'thing' (score 0.9)."""
    out = []
    for image, size in zip(images, sizes, strict=True):
        assert tuple(image.shape[1:]) == tuple(size)  # scale 1.0: the window's own pixels
        regions, n = ndimage.label((image.mean(0) > 0.5).cpu().numpy())
        masks = np.stack([regions == k + 1 for k in range(n)]).astype(np.uint8) if n else np.zeros((0, *size), np.uint8)
        out.append((masks, np.ones(n, np.int64), np.full(n, 0.9, np.float32)))
    return out


def build_blobs() -> ModelBundle:
    return ModelBundle(module=torch.nn.Identity(), task="instance", categories=("background", "thing"),
                       preprocess=Preprocess(resize=None, mean=None, std=None), instance=_blobs)  # fmt: skip


def draw_things(path: Path) -> Path:
    """300x400 PNG at ``path``: a disc across many tile borders, a bar across a row of tiles, a small square."""
    img = Image.new("RGB", (400, 300))
    draw = ImageDraw.Draw(img)
    draw.ellipse((120, 70, 280, 230), fill=(255, 255, 255))
    draw.rectangle((10, 250, 390, 262), fill=(220, 240, 200))
    draw.rectangle((20, 20, 40, 40), fill=(200, 255, 255))
    img.save(path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return draw_things(tmp_path_factory.mktemp("inst") / "things.png")


def _run(image: Path, tiling: TiledRead | None) -> tuple[np.ndarray, np.ndarray]:
    predictor = Predictor(model=resolve_model(REF, "DEFAULT"), device="cpu", tiling=tiling)
    batch = read_batch({"uri": np.array([str(image)], dtype=object)}, predictor.preprocess, tiled=tiling is not None)
    out = predictor(batch)
    assert out["status"][0] == "ok", out["error"][0]
    if tiling is None:
        return out["inst_masks"][0], out["inst_scores"][0]
    # Tiled: crops of their boxes, never full-size masks; pasted here to compare.
    assert out["inst_masks"][0].size == 0
    crops, (h, w) = out["inst_crops"][0], (int(out["height"][0]), int(out["width"][0]))
    assert [c.score for c in crops] == list(out["inst_scores"][0])
    return np.stack([decode_rle(crop_rle(c.mask, c.y0, c.x0, h, w)) for c in crops]), out["inst_scores"][0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("overlap", [32, 0.25])
def test_objects_cut_by_tile_borders_merge_back_into_the_untiled_instances(image, overlap):
    untiled, _ = _run(image, None)
    assert len(untiled) == 3
    tiled, scores = _run(image, TiledRead(TileSpec((96, 128), overlap), merge="merge", merge_threshold=0.5))
    assert tiled.shape == untiled.shape and list(scores) == [pytest.approx(0.9)] * 3
    for mask in untiled.astype(bool):
        assert max(_iou(mask, t) for t in tiled.astype(bool)) >= 0.95


def test_nms_drops_duplicates_but_leaves_a_cut_object_in_pieces(image):
    """Mask NMS keeps one of the detections that match where their tiles overlap: the disc stays in
    pieces (``merge`` is what joins them)."""
    untiled, _ = _run(image, None)
    pieces, _ = _run(image, TiledRead(TileSpec((96, 128), 32), merge="nms", merge_threshold=0.5))
    assert len(pieces) > 3
    best = [max(_iou(mask, p) for p in pieces.astype(bool)) for mask in untiled.astype(bool)]
    assert sorted(best)[0] < 0.5 and sorted(best)[-1] == 1.0  # the small square is one piece, the disc is not


def test_a_full_image_pass_joins_pieces_that_tiles_without_overlap_cannot(image):
    """Without overlap no two windows see the same pixels, so the disc's pieces cannot be matched;
    the full-image pass sees it whole and every piece merges into it (SAHI's standard prediction)."""
    untiled, _ = _run(image, None)
    spec = TileSpec((96, 128), 0)
    pieces, _ = _run(image, TiledRead(spec, merge="merge"))
    assert len(pieces) > 3
    whole, scores = _run(image, TiledRead(spec, merge="merge", full_pass=True))
    assert len(whole) == 3 and list(scores) == [pytest.approx(0.9)] * 3
    for mask in untiled.astype(bool):
        assert max(_iou(mask, t) for t in whole.astype(bool)) >= 0.95


def test_the_full_pass_reads_a_large_image_box_reduced_by_bands(image):
    """Past FULL_PASS_PIXELS the full pass sees the image reduced by an integer factor, read in bands:
    the same pixels as Pillow's reduce of the whole image."""
    rgb = np.asarray(Image.open(image).convert("RGB"))
    with RegionReader(str(image), None) as reader:
        assert np.array_equal(reduced_image(reader, rgb.shape[0] * rgb.shape[1]), rgb)
        small = reduced_image(reader, 10_000)  # 120 000 pixels: factor 4
    assert np.array_equal(small, np.asarray(Image.fromarray(rgb).reduce(4)))
