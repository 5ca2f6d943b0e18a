"""Sliced instance inference in the model actor: objects cut by tile borders come back as one
instance equal to the untiled one (a deterministic blob detector as the model: a plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from segbatch.models import ModelBundle, Preprocess
from segbatch.models.resolve import resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from segbatch.stages.tiled import TiledRead
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


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """300x400: a disc across many tile borders, a bar across a row of tiles, a small square."""
    img = Image.new("RGB", (400, 300))
    draw = ImageDraw.Draw(img)
    draw.ellipse((120, 70, 280, 230), fill=(255, 255, 255))
    draw.rectangle((10, 250, 390, 262), fill=(220, 240, 200))
    draw.rectangle((20, 20, 40, 40), fill=(200, 255, 255))
    path = tmp_path_factory.mktemp("inst") / "things.png"
    img.save(path)
    return path


def _run(image: Path, tiling: TiledRead | None) -> tuple[np.ndarray, np.ndarray]:
    predictor = Predictor(model=resolve_model(REF, "DEFAULT"), device="cpu", tiling=tiling)
    batch = read_batch({"uri": np.array([str(image)], dtype=object)}, predictor.preprocess, tiled=tiling is not None)
    out = predictor(batch)
    assert out["status"][0] == "ok", out["error"][0]
    return out["inst_masks"][0], out["inst_scores"][0]


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
