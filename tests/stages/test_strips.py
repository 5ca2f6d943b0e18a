"""Splitting large images into strips: how many, the manifest rows they become, the spans that
partition the image, and a join that refuses an image whose strips are not all there."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from segbatch.stages.strips import expand, join_rows, strips_per_image
from segbatch.stages.tiling import TileSpec, column_block_of, grid_span, strip_of, tile_grid


@pytest.mark.parametrize(
    ("actors", "images", "expected"),
    [(1, 1, 1), (1, 500, 1), (2, 1, 4), (4, 1, 8), (4, 3, 3), (4, 8, 1), (4, 100, 1), (64, 1, 64)],
)
def test_images_are_split_only_when_actors_would_idle(actors, images, expected):
    assert strips_per_image(actors, images) == expected


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="got 0 and 3"):
        strips_per_image(0, 3)
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        expand(pa.table({"image_id": [1]}), 0)
    with pytest.raises(ValueError, match=r"part must be in 0\.\.parts-1"):
        grid_span([0, 10], 20, 2, 2)


def test_expand_repeats_each_row_once_per_strip_in_order():
    todo = pa.table({"image_id": [7, 9], "uri": ["a", "b"]})
    out = expand(todo, 3)
    assert out.column("image_id").to_pylist() == [7, 7, 7, 9, 9, 9]
    assert out.column("strip").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert out.column("strips").to_pylist() == [3] * 6


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 9])
@pytest.mark.parametrize(
    ("height", "width", "spec"), [(300, 400, TileSpec((64, 80), 16)), (37, 1000, TileSpec((40, 90), 0.5))]
)
def test_spans_partition_the_image_and_own_every_grid_row_once(height, width, spec, parts):
    grid = tile_grid(height, width, spec)
    for span_of, extent, axis in ((strip_of, height, "row"), (column_block_of, width, "col")):
        spans = [span_of(grid, extent, k, parts) for k in range(parts)]
        covered = [s for s in spans if s.owned]
        assert covered[0].start == 0 and covered[-1].stop == extent
        assert all(a.stop == b.start for a, b in itertools.pairwise(covered))
        assert all(s.start == s.stop == extent for s in spans if not s.owned)
        owned = [i for s in spans for i in s.owned]
        assert owned == sorted({getattr(w, axis) for w in grid})
        # A part's pixels start where its first owned grid row starts.
        starts = sorted({w.y0 if axis == "row" else w.x0 for w in grid})
        assert all(s.start == (starts[s.owned[0]] if s.owned[0] else 0) for s in covered)


def test_a_commit_missing_a_strip_of_an_image_is_refused():
    batch = {
        "image_id": np.array([1, 1]),
        "uri": np.array(["a.tif", "a.tif"], dtype=object),
        "strip": np.array([0, 2]),
        "strips": np.array([3, 3]),
        "strip_part": np.array([None, None], dtype=object),
    }
    with pytest.raises(ValueError, match=r"image a.tif: strips \[0, 2\] of 3 in one commit"):
        join_rows(batch)
