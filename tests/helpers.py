"""Helpers shared by the end-to-end tests: reading a run's outputs back."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from segbatch.masks import decode_rle


def skimage_photo(name: str) -> str:
    """Path of a real photograph bundled in scikit-image's wheel (read as a file; skimage is not imported)."""
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is a test dependency"
    return os.path.join(spec.submodule_search_locations[0], "data", name)


def read_outputs(out: Path) -> dict[str, Any]:
    return {
        "images": pq.read_table(out / "images.parquet").to_pylist(),
        "masks": pq.read_table(out / "masks.parquet").to_pylist(),
        "coco": json.loads((out / "predictions.coco.json").read_text()),
        "metrics": json.loads((out / "metrics.json").read_text()),
        "job": json.loads((out / "job.json").read_text()),
    }


def semantic_maps(out: Path, background: int = 0) -> dict[str, np.ndarray]:
    """file_name → ``(H, W)`` model class ids, rebuilt from masks.parquet (semantic masks are disjoint)."""
    images = pq.read_table(out / "images.parquet").to_pylist()
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    maps = {
        im["image_id"]: np.full((im["height"], im["width"]), background, np.int64)
        for im in images
        if im["width"] is not None
    }
    for m in masks:
        region = decode_rle(m["segmentation"]).astype(bool)
        target = maps[m["image_id"]]
        assert not (target[region] != background).any(), "semantic masks of one image overlap"
        target[region] = m["category_id"]
    names = {im["image_id"]: im["file_name"] for im in images}
    return {names[i]: lm for i, lm in maps.items()}
