"""The model actor's tiled path in-process: TIFF read by region gives what the decoded-once image
gives, the read stage of a tiled run reads only headers, and bad files become error rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segbatch.models.resolve import resolve_model
from segbatch.stages.predict import UNCERTAIN_MARGIN, Predictor
from segbatch.stages.read import read_batch
from segbatch.stages.tiled import StripOutput, TiledRead, column_blocks, join_strips, label_many, label_tiled
from segbatch.stages.tiling import TileSpec, tile_grid

SAMPLE = Path(__file__).resolve().parents[2] / "segbatch" / "data" / "sample" / "images"


@pytest.fixture(scope="module")
def predictor() -> Iterator[Predictor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = TileSpec((64, 80), 16, 0.75, "gaussian")
    yield Predictor(model=resolve_model("unet", "DEFAULT"), device="cpu", tiling=TiledRead(spec, tiles_per_pass=3))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiled")
    rgb = np.asarray(Image.open(SAMPLE / "shapes_0002.jpg").convert("RGB"))  # 150x200
    assert rgb.shape == (150, 200, 3)
    out = {"png": root / "a.png", "tiff": root / "a.tif", "striped": root / "s.tif"}
    Image.fromarray(rgb).save(out["png"])
    tifffile.imwrite(out["tiff"], rgb, tile=(32, 48), photometric="rgb")
    tifffile.imwrite(out["striped"], rgb, rowsperstrip=7, photometric="rgb")
    (root / "bad.jpg").write_bytes(b"\xff\xd8not really")
    out["bad"] = root / "bad.jpg"
    out["missing"] = root / "missing.png"
    return out


def _predict(predictor: Predictor, *paths: Path, max_image_pixels: int = 0) -> dict[str, np.ndarray]:
    uris = np.array([str(p) for p in paths], dtype=object)
    batch = read_batch({"uri": uris}, predictor.preprocess, max_image_pixels=max_image_pixels, tiled=True)
    assert all(np.asarray(im).shape == (3, 0, 0) for im in batch["image"])  # only the size was read
    return predictor(batch)


def test_tiff_by_region_equals_the_image_decoded_once(predictor, files):
    out = _predict(predictor, files["png"], files["tiff"], files["striped"])
    assert list(out["status"]) == ["ok"] * 3, list(out["error"])
    assert (int(out["height"][0]), int(out["width"][0])) == (150, 200)
    reference = out["label_map"][0]
    assert reference.shape == (150, 200) and len(np.unique(reference)) > 1
    for k in (1, 2):
        assert np.array_equal(out["label_map"][k], reference)
        assert out["confidence"][k] == out["confidence"][0]
    assert 0.0 < out["confidence"][0] <= 1.0 and 0.0 <= out["uncertain_share"][0] <= 1.0
    scores = out["class_scores"][0]
    assert scores.shape == (4,) and all(0.0 < scores[c] <= 1.0 for c in np.unique(reference))
    assert all(out["t_read"] > 0) and all(out["t_predict"] > 0)
    assert out["top_prob"][0].size == 0  # no confidence image for a tiled image (README "Large images")


def test_bad_files_and_oversized_images_are_error_rows(predictor, files):
    out = _predict(predictor, files["bad"], files["missing"], files["tiff"], max_image_pixels=150 * 200 - 1)
    assert list(out["status"]) == ["error"] * 3
    assert out["error"][0].startswith("decode: cannot read the image size"), out["error"][0]
    assert out["error"][1].startswith("read: cannot read"), out["error"][1]
    assert out["error"][2] == (
        "decode: image too large to decode safely: 150x200 = 30000 pixels exceeds max_image_pixels 29999 "
        "(raise --max-image-pixels to allow it)"
    )
    assert all(m.size == 0 for m in out["label_map"])


@pytest.mark.parametrize("strips", [2, 3, 7])
def test_strips_and_column_blocks_join_into_the_whole_image_result(predictor, files, strips):
    """An image split into strips (run apart, as on different actors, then joined) and blended in
    column blocks (a blend budget too small for one) gives the whole image's class map exactly and
    its confidence to float64 rounding; more strips than grid rows leave the last ones empty."""
    grid = tile_grid(150, 200, predictor.tiling.spec)
    rows, cols, classes = len({w.y0 for w in grid}), len({w.x0 for w in grid}), len(predictor.bundle.categories)
    assert (rows, cols) == (3, 3)
    whole = predictor._tiled(str(files["tiff"]))[0]
    parts = [predictor._tiled(str(files["tiff"]), (k, strips))[0] for k in range(strips)]
    assert all(isinstance(p, StripOutput) for p in parts)
    assert sum(len(p.labels) for p in parts) == 150 and sum(not len(p.labels) for p in parts) == max(0, strips - rows)
    joined = join_strips(parts[::-1])  # in any order
    assert np.array_equal(joined.label_map, whole.label_map)
    assert joined.confidence == pytest.approx(whole.confidence, rel=1e-12)
    assert joined.uncertain_share == pytest.approx(whole.uncertain_share, rel=1e-12)
    np.testing.assert_allclose(joined.class_scores, whole.class_scores, rtol=1e-6)
    assert sum(p.tiles for p in parts) > joined.tiles - sum(p.tiles for p in parts) >= 0  # overlap rows ran twice
    blocked = dataclasses.replace(predictor.tiling, blend_budget=1)  # one block per grid column
    assert column_blocks(blocked.spec, classes, 150, 200, cols, blocked.blend_budget) == cols
    assert column_blocks(blocked.spec, classes, 150, 200, cols, 1 << 30) == 1
    with torch.inference_mode():
        label = label_tiled(str(files["tiff"]), blocked, predictor.preprocess, predictor._logits, classes,
                            predictor.device, UNCERTAIN_MARGIN)  # fmt: skip
    assert np.array_equal(label.labels, whole.label_map)
    assert label.top_sum / label.pixels == pytest.approx(whole.confidence, rel=1e-12)


def test_a_part_that_does_not_join_is_refused():
    parts = [
        StripOutput(4, 2, 0, np.zeros((2, 2), np.uint8), 1.0, 0.0, 1.0, np.zeros(2), np.zeros(2), 0.0, 1),
        StripOutput(4, 2, 3, np.zeros((1, 2), np.uint8), 1.0, 0.0, 1.0, np.zeros(2), np.zeros(2), 0.0, 1),
    ]
    with pytest.raises(ValueError, match="rows from 3, expected 2"):
        join_strips(parts)
    with pytest.raises(ValueError, match="end at row 2"):
        join_strips(parts[:1])


def test_passes_take_the_tiles_of_several_images_and_each_result_is_its_own(files, tmp_path):
    """With 8 tiles a pass (a GPU's batch), three images of 9 windows each share passes (a job's
    tiles may span two), a bad file in between fails alone, and every image's map equals the one
    it gets alone (a pass is padded to 8 on the CPU, so that a tile's logits do not depend on it)."""
    spec = TileSpec((64, 80), 16)
    predictor = Predictor(
        model=resolve_model("unet", "DEFAULT"), device="cpu", tiling=TiledRead(spec, tiles_per_pass=8)
    )
    rgb = np.asarray(Image.open(files["png"]).convert("RGB"))
    paths = [files["png"], files["bad"], files["tiff"]]
    flipped = tmp_path / "flipped.png"
    Image.fromarray(np.ascontiguousarray(rgb[::-1])).save(flipped)
    paths.append(flipped)
    passes: list[int] = []
    real = predictor._logits

    def counting(tiles):
        passes.append(len(tiles))
        return real(tiles)

    predictor._logits = counting  # type: ignore[method-assign]  # the real forward, counted
    together = _predict(predictor, *paths)
    assert list(together["status"]) == ["ok", "error", "ok", "ok"]
    # 27 tiles: image by image 6 passes (8 + 1 each); shared, 5 (the last ones padded to 8).
    assert len(tile_grid(150, 200, spec)) == 9 and len(passes) == 5 and set(passes) == {8}
    for k, path in enumerate(paths):
        if k == 1:
            continue
        alone = _predict(predictor, path)
        assert np.array_equal(alone["label_map"][0], together["label_map"][k]), path.name
        assert alone["confidence"][0] == pytest.approx(together["confidence"][k], rel=1e-6)


def test_images_open_only_as_passes_need_their_tiles():
    """label_many opens the next image only when the open ones leave room in a pass: large images
    (many windows) one or two at a time, small ones as many as fill a pass; a model error of one
    image's tiles fails that image alone."""
    state = {"open": 0, "peak": 0}

    def job(tiles: int, per_chunk: int, bad: bool = False):
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        try:
            left = tiles
            while left:
                n = min(per_chunk, left)
                logits, _ = yield [np.full((3, 2, 2), 99 if bad else tiles, np.uint8)] * n
                assert len(logits) == n
                left -= n
            return tiles
        finally:
            state["open"] -= 1

    def forward(tiles):
        if any(int(t[0, 0, 0]) == 99 for t in tiles):
            raise RuntimeError("this image's tiles break the model")
        return torch.zeros((len(tiles), 1, 2, 2)), None

    big = label_many([job(10, 4) for _ in range(4)], forward, 4)
    assert big == [10] * 4 and state["peak"] <= 2
    state["peak"] = 0
    small = label_many([job(1, 4) for _ in range(8)], forward, 4)
    assert small == [1] * 8 and state["peak"] == 4
    mixed = label_many([job(3, 4), job(2, 4, bad=True), job(3, 4)], forward, 4)
    assert mixed[0] == 3 and mixed[2] == 3 and isinstance(mixed[1], RuntimeError) and state["open"] == 0
