"""Tiled inference end to end on the shared Ray cluster (issue 19): a whole-image tile equals the
untiled run, overlapping tiles equal the direct reference, oversized images are error rows, and a
tiled run resumes image by image and refuses other tile options."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from segbatch import JobConfig, JobError
from segbatch.io.images import decode_image
from segbatch.models.resolve import resolve_model
from segbatch.pipeline import run
from segbatch.sample import save_label_png
from segbatch.stages.predict import Predictor
from segbatch.stages.tiled import tile_preprocess
from segbatch.stages.tiling import TileSpec, blend_weights, input_size, resample_logits, tile_grid
from tests.helpers import read_outputs, semantic_maps
from tests.stages.test_tiled_instance import draw_things

pytestmark = pytest.mark.ray

MAX_PIXELS = 50_000  # the 300x300 image (90 000 pixels) is over it, the samples (<= 30 000) are not


@pytest.fixture(scope="module")
def dataset(sample_dir: Path, tmp_path_factory) -> Path:
    """Three 128x128 sample images (the bundled U-Net's untiled scale is 1.0 for them), two 150x200,
    their masks, and one 300x300 image over MAX_PIXELS."""
    root = tmp_path_factory.mktemp("tiles")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    by_size: dict[tuple[int, int], list[Path]] = {}
    for p in sorted((sample_dir / "images").glob("*.jpg")):
        by_size.setdefault(Image.open(p).size, []).append(p)
    chosen = by_size[(128, 128)][:3] + by_size[(200, 150)][:2]
    assert len(chosen) == 5
    for p in chosen:
        shutil.copy(p, root / "images" / p.name)
        shutil.copy(sample_dir / "masks" / f"{p.stem}.png", root / "masks" / f"{p.stem}.png")
    big = Image.open(chosen[0]).resize((300, 300))
    big.save(root / "images" / "big.jpg", quality=95)
    save_label_png(np.zeros((300, 300), np.uint8), str(root / "masks" / "big.png"))
    return root


def _run(dataset: Path, out: Path, **options) -> tuple[object, dict]:
    config = JobConfig(
        input=str(dataset / "images"),
        labels=str(dataset / "masks"),
        output=str(out),
        model="unet",
        batch_size=2,
        rows_per_part=2,
        torch_threads=1,  # as the reference below: the same threads give the same logits
        max_image_pixels=MAX_PIXELS,
        **options,
    )
    return run(config), read_outputs(out)


def _rows(outputs: dict) -> dict[str, dict]:
    return {r["file_name"]: r for r in outputs["images"]}


def test_a_whole_image_tile_at_the_untiled_scale_equals_the_untiled_run(dataset, tmp_path, ray_cluster):
    _, untiled = _run(dataset, tmp_path / "untiled")
    _, tiled = _run(dataset, tmp_path / "tiled", tile="256")  # clipped to the 128x128 image: one tile, scale 1.0
    a, b = semantic_maps(tmp_path / "untiled"), semantic_maps(tmp_path / "tiled")
    squares = [n for n, r in _rows(untiled).items() if (r["width"], r["height"]) == (128, 128)]
    assert len(squares) == 3
    for name in squares:
        assert np.array_equal(a[name], b[name]), name
        ra, rb = _rows(untiled)[name], _rows(tiled)[name]
        assert (ra["dice"], ra["class_stats"], ra["confusion"]) == (rb["dice"], rb["class_stats"], rb["confusion"])
        # One tile's coarse grid is the untiled one: the same confidence.
        assert rb["confidence"] == pytest.approx(ra["confidence"], abs=1e-6)
    assert tiled["metrics"]["num_labeled"] == 5
    # Over --max-image-pixels: an error row on both paths (Pillow's guard untiled, the header tiled).
    for outputs in (untiled, tiled):
        row = _rows(outputs)["big.jpg"]
        assert row["status"] == "error" and row["error"].startswith("decode: image too large to decode safely")
    assert f"exceeds max_image_pixels {MAX_PIXELS}" in _rows(tiled)["big.jpg"]["error"]
    assert tiled["job"]["identity"]["tile"] == "256x256"
    assert untiled["job"]["identity"]["tile"] is None


def _reference_map(predictor: Predictor, path: Path, spec: TileSpec) -> np.ndarray:
    """The direct reference: every tile's weighted logits summed into one full-size float64 array,
    divided by the summed weights, argmax — no bands, no cells."""
    rgb = decode_image(path.read_bytes())
    height, width = rgb.shape[:2]
    c = len(predictor.bundle.categories)
    sums = torch.zeros((c, height, width), dtype=torch.float64)
    wsum = torch.zeros((height, width), dtype=torch.float64)
    with torch.inference_mode():
        for w in tile_grid(height, width, spec):
            resize = tile_preprocess(predictor.preprocess, input_size(w.h, w.w, spec.scale))
            logits, via = predictor._logits([resize.resize_chw(rgb[w.y0 : w.y1, w.x0 : w.x1])])
            weights = blend_weights(w.h, w.w, spec.blend).double()
            sums[:, w.y0 : w.y1, w.x0 : w.x1] += resample_logits(logits[0], (w.h, w.w), via).double() * weights
            wsum[w.y0 : w.y1, w.x0 : w.x1] += weights
    return (sums / wsum).argmax(dim=0).numpy()


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_overlapping_tiles_equal_the_direct_reference(dataset, tmp_path, ray_cluster, blend):
    spec = TileSpec((64, 80), 0.25, 0.75, blend)
    _, outputs = _run(dataset, tmp_path / "out", tile="64x80", tile_overlap=0.25, tile_scale=0.75, tile_blend=blend)
    maps = semantic_maps(tmp_path / "out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor(model=resolve_model("unet", "DEFAULT"), device="cpu")
        for name, row in _rows(outputs).items():
            if row["status"] != "ok":
                continue
            reference = _reference_map(predictor, dataset / "images" / name, spec)
            assert len(tile_grid(row["height"], row["width"], spec)) > 4  # really tiled, with overlaps
            assert np.array_equal(maps[name], reference), (name, float((maps[name] != reference).mean()))
    finally:
        torch.set_num_threads(threads)
    assert outputs["metrics"]["num_labeled"] == 5 and outputs["metrics"]["mean_dice"] > 0.5
    assert outputs["job"]["identity"]["tile_blend"] == blend


def test_a_tiled_run_resumes_image_by_image_and_refuses_other_tile_options(dataset, tmp_path, ray_cluster):
    out = tmp_path / "out"
    first, _ = _run(dataset, out, tile="64", tile_overlap="16")
    assert first.num_processed == 6
    maps = semantic_maps(out)
    parts = sorted((out / "parts").glob("*.parquet"))
    assert len(parts) == 1  # finalize compacted the parts
    # Lose committed images (as if the run died before their part was written) and the marker.
    committed = pq.read_table(parts[0])
    parts[0].unlink()
    pq.write_table(committed.slice(0, 2), out / "parts" / "part-kept.parquet")
    (out / "_SUCCESS").unlink()
    second, _ = _run(dataset, out, tile="64", tile_overlap="16")
    assert (second.num_processed, second.num_skipped) == (4, 2)
    again_maps = semantic_maps(out)
    assert again_maps.keys() == maps.keys()
    assert all(np.array_equal(maps[n], again_maps[n]) for n in maps)
    with pytest.raises(JobError, match=r"tile_overlap: 16 there, 32 now"):
        _run(dataset, out, tile="64", tile_overlap="32")


def test_strips_of_one_image_run_on_two_actors_and_join_into_the_whole_image_result(dataset, tmp_path, ray_cluster):
    """Each image cut into 3 strips of tile rows, spread over two model actors, committed whole:
    the class maps equal a run of whole images pixel for pixel, confidence to float rounding."""
    # Small tiles: enough windows that the job outlasts the second actor's start (both load on 2 CPUs).
    tiling = {"tile": "32x40", "tile_overlap": "16"}
    _, whole = _run(dataset, tmp_path / "whole", tile_strips=1, **tiling)
    summary, split = _run(dataset, tmp_path / "split", tile_strips=3, actors=2, **tiling)
    assert summary.num_processed == 6
    a, b = semantic_maps(tmp_path / "whole"), semantic_maps(tmp_path / "split")
    assert a.keys() == b.keys() and len(a) == 5
    for name in a:
        assert np.array_equal(a[name], b[name]), name
        ra, rb = _rows(whole)[name], _rows(split)[name]
        assert rb["confidence"] == pytest.approx(ra["confidence"], abs=1e-6)
        assert (ra["dice"], ra["confusion"]) == (rb["dice"], rb["confusion"])
    # Every image is one row, and its strips ran on both actors for some image.
    rows = split["images"]
    assert sorted(r["file_name"] for r in rows) == sorted(r["file_name"] for r in whole["images"])
    assert any(len(r["worker"].split(", ")) == 2 for r in rows), [r["worker"] for r in rows]
    assert _rows(split)["big.jpg"]["status"] == "error"  # the oversized image: one error row, not three
    assert split["metrics"]["num_labeled"] == 5


BLOBS = "tests.stages.test_tiled_instance:build_blobs"


def test_instance_tiling_on_the_cluster_merges_cut_objects_and_resumes(tmp_path, ray_cluster):
    """The sliced instance path end to end: a disc cut by tile borders into many pieces comes back as
    one instance (with overlap, and without overlap through the full-image pass), strips on two
    actors included, and a rerun resumes with nothing to do."""
    root = tmp_path / "images"
    root.mkdir()
    Image.open(draw_things(root / "things.png")).rotate(90, expand=True).save(root / "turned.png")

    def go(out: str, **options):
        config = JobConfig(input=str(root), output=str(tmp_path / out), model=BLOBS, batch_size=1, **options)
        return run(config), read_outputs(tmp_path / out)

    _, untiled = go("untiled")
    _, merged = go("merged", tile="96x128", tile_overlap="32", tile_strips=2, actors=2)
    _, cut = go("cut", tile="96x128")
    _, full = go("full", tile="96x128", tile_full_pass=True)
    counts = {k: _instances(o) for k, o in (("untiled", untiled), ("merged", merged), ("cut", cut), ("full", full))}
    assert counts["untiled"] == {"things.png": 3, "turned.png": 3}, counts
    assert counts["merged"] == counts["untiled"] and counts["full"] == counts["untiled"], counts
    assert all(n > 3 for n in counts["cut"].values()), counts  # no overlap, no full pass: in pieces
    assert full["job"]["identity"]["tile_full_pass"] is True and "tile_full_pass" not in cut["job"]["identity"]
    again, _ = go("merged", tile="96x128", tile_overlap="32", tile_strips=2, actors=2)
    assert (again.num_processed, again.num_skipped) == (0, 2)


def _instances(outputs: dict) -> dict[str, int]:
    return {r["file_name"]: r["num_masks"] for r in outputs["images"]}
