"""Helpers shared by the end-to-end tests: reading a run's outputs back."""

from __future__ import annotations

import importlib.util
import json
import math
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


def assert_same_outputs(a: Any, b: Any, rel: float = 1e-6, path: str = "") -> None:
    """Nested outputs (dicts, lists, scalars) equal, floats to ``rel``: a model's logits move in
    their last bits with the thread count (oneDNN splits its reductions by thread), and so do the
    probabilities averaged from them, while class maps, masks and counts stay exact."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_outputs(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_outputs(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel) or (math.isnan(a) and math.isnan(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
