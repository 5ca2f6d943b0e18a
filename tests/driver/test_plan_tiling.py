"""The tiling options in the job's identity: recorded as they apply, None for untiled runs (earlier
outputs resume), warned about where they do not apply."""

from __future__ import annotations

from segbatch.config import JobConfig
from segbatch.driver.plan import applicable_options
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS

BASE = {"input": "in", "output": "out", "model": "unet"}
TILE_KEYS = ("tile", "tile_overlap", "tile_scale", "tile_blend", "tile_merge", "tile_merge_threshold")


def test_an_untiled_run_at_the_default_limit_records_none():
    applied, warnings = applicable_options(JobConfig(**BASE), "semantic")
    assert all(applied[k] is None for k in (*TILE_KEYS, "max_image_pixels")) and not warnings
    assert applied["max_image_pixels"] is None
    applied, _ = applicable_options(JobConfig(**BASE, max_image_pixels=0), "semantic")
    assert applied["max_image_pixels"] == 0
    assert JobConfig(**BASE).max_image_pixels == PILLOW_MAX_IMAGE_PIXELS


def test_semantic_records_blend_and_warns_about_merge_options():
    config = JobConfig(**BASE, tile="512", tile_overlap="0.25", tile_blend="gaussian", tile_merge="nms")
    applied, warnings = applicable_options(config, "semantic")
    assert {k: applied[k] for k in TILE_KEYS} == {
        "tile": "512x512", "tile_overlap": 0.25, "tile_scale": 1.0, "tile_blend": "gaussian",
        "tile_merge": None, "tile_merge_threshold": None,
    }  # fmt: skip
    assert warnings == ["--tile-merge nms applies to instance models; 'unet' is semantic: ignored"]


def test_instance_records_merge_and_warns_about_the_blend():
    config = JobConfig(**BASE, tile="800", tile_blend="gaussian", tile_merge_threshold=0.6)
    applied, warnings = applicable_options(config, "instance")
    assert (applied["tile_blend"], applied["tile_merge"], applied["tile_merge_threshold"]) == (None, "merge", 0.6)
    assert warnings == ["--tile-blend gaussian applies to semantic models; 'unet' is instance: ignored"]
