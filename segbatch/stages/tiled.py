"""Tiled semantic inference of one large image inside the model actor, in memory bounded by the tile.

The read stage of a tiled run passes only each image's size (:func:`segbatch.stages.read.header_size`);
:func:`label_tiled` opens the image with :class:`~segbatch.io.regions.RegionReader` (TIFF/BigTIFF
read by region, other formats decoded once), walks the tile grid row-major, resizes each window to
:func:`~segbatch.stages.tiling.input_size` with the model's own resize filter, runs
``tiles_per_pass`` windows per forward pass, and feeds :class:`~segbatch.stages.tiling.SemanticBlender`,
whose finished bands are copied into the ``(H, W) uint8`` class map — the only full-size array
(1 byte a pixel); float logits exist per tile and per open band only.

Instance models, sliced (SAHI): :func:`detect_tiled` runs the model on each window, moves its
detections into image coordinates as crops of their boxes, merges those of neighbouring windows
(:func:`~segbatch.stages.tiling.merge_instances`: ``merge`` by intersection over the smaller mask,
or mask ``nms``) and pastes the merged masks at full size, the instance result of an untiled image.

Confidence comes from the tiles' coarse logits (no second pass): the mean top-class probability and
the share of coarse pixels whose top two are within ``uncertain_margin``, over every tile's coarse
grid (pixels in overlaps count once per tile); a class's mask score is the mean top probability over
the coarse pixels where that class is the coarse argmax (0 for a class that wins no coarse pixel).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from segbatch.io import fs as fsio
from segbatch.io.images import HighBitDepth
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS, RegionReader
from segbatch.models.preprocess import Preprocess
from segbatch.stages.tiling import (
    Instance,
    SemanticBlender,
    TileSpec,
    Window,
    input_size,
    instances_from_masks,
    merge_instances,
    paste_instances,
    tile_grid,
)

# (N tiles (3, h, w) uint8 of one shape) → (logits (N, C, h', w'), the model's upsampling size or None)
Forward = Callable[[list[np.ndarray]], tuple[torch.Tensor, tuple[int, int] | None]]
# (N tiles (3, h, w) uint8, each window's (h, w)) → per tile (masks (n, h, w) uint8, labels (n,), scores (n,))
Detect = Callable[[list[np.ndarray], list[tuple[int, int]]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class TiledRead:
    """How a model actor reads and tiles images (picklable: travels in the actor's settings).

    ``max_image_pixels``: more is an error row (0: no limit). ``tiles_per_pass``: windows per
    forward pass (the job's batch size on a GPU; 1 on a CPU, where one image per pass was fastest).
    """

    spec: TileSpec
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    high_bit_depth: HighBitDepth = "range"
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS
    tiles_per_pass: int = 1
    merge: str = "merge"  # instance models: how detections of overlapping tiles are merged
    merge_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.tiles_per_pass < 1:
            raise ValueError(f"tiles_per_pass must be >= 1, got {self.tiles_per_pass}")


class TiledOutput(NamedTuple):
    """One image's tiled prediction."""

    label_map: np.ndarray  # (H, W) uint8 model class ids
    confidence: float  # mean coarse top-class probability over all tiles
    uncertain_share: float  # share of coarse pixels whose top two are within the margin
    class_scores: np.ndarray  # (C,) float32: mean coarse top probability where the class wins
    t_read: float  # seconds spent reading and resizing regions
    tiles: int


def tile_preprocess(preprocess: Preprocess, size: tuple[int, int]) -> Preprocess:
    """The model's preprocessing resizing to exactly ``size`` ``(h, w)`` with its own filter: no
    shorter-side rule (the tile scale decides the size) and no centre crop (it would cut the window)."""
    return dataclasses.replace(preprocess, resize=size, longest_edge=None, crop=None)


def open_source(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[str | IO[bytes], IO[bytes] | None]:
    """What :class:`RegionReader` reads: a local path, or an open fsspec file (read lazily by region
    for TIFF) that the caller closes (the second item)."""
    fs, path = fsio.resolve(uri, storage_options)
    if fsio.is_local(fs):
        return path, None
    f = fs.open(path, "rb")
    return f, f


def label_tiled(
    uri: str,
    read: TiledRead,
    preprocess: Preprocess,
    forward: Forward,
    num_classes: int,
    device: torch.device,
    uncertain_margin: float,
) -> TiledOutput:
    """The class map of the image at ``uri`` from its tiles (see the module docstring).

    Raises :class:`~segbatch.errors.ImageError` for what cannot be read or decoded, or an image
    over ``read.max_image_pixels``; other exceptions come from the model.
    """
    source, opened = open_source(uri, read.storage_options)
    try:
        with RegionReader(source, read.max_image_pixels or None, read.high_bit_depth) as reader:
            return _label(reader, read, preprocess, forward, num_classes, device, uncertain_margin)
    finally:
        if opened is not None:
            opened.close()


def _label(
    reader: RegionReader,
    read: TiledRead,
    preprocess: Preprocess,
    forward: Forward,
    num_classes: int,
    device: torch.device,
    margin: float,
) -> TiledOutput:
    height, width = reader.height, reader.width
    blender = SemanticBlender(height, width, read.spec, num_classes, device)
    label_map = np.empty((height, width), dtype=np.uint8)
    windows = blender.windows  # row-major: open sums stay within one grid row's bands
    # Every window has one size (the grid clips the tile to the image, the last ones align to the border).
    resize = tile_preprocess(preprocess, input_size(windows[0].h, windows[0].w, read.spec.scale))
    top_sum = uncertain = pixels = 0.0
    score_sums = torch.zeros(num_classes, dtype=torch.float64, device=device)
    score_counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    t_read = 0.0
    for start in range(0, len(windows), read.tiles_per_pass):
        chunk: list[Window] = windows[start : start + read.tiles_per_pass]
        t0 = time.perf_counter()
        tiles = [resize.resize_chw(reader.read(w.y0, w.x0, w.h, w.w)) for w in chunk]
        t_read += time.perf_counter() - t0
        logits, via = forward(tiles)
        if logits.dim() != 4 or logits.shape[0] != len(chunk) or logits.shape[1] != num_classes:
            expected = f"({len(chunk)}, {num_classes}, h, w)"
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected {expected}")
        probs = torch.softmax(logits.float(), dim=1)
        top2 = probs.topk(min(2, num_classes), dim=1)
        top = top2.values[:, 0]
        second = top2.values[:, 1] if num_classes > 1 else torch.zeros_like(top)
        top_sum += float(top.sum(dtype=torch.float64))
        uncertain += float(((top - second) < margin).sum())
        pixels += top.numel()
        winners = top2.indices[:, 0].flatten()
        score_sums += torch.bincount(winners, weights=top.flatten().double(), minlength=num_classes)
        score_counts += torch.bincount(winners, minlength=num_classes).double()
        for k, window in enumerate(chunk):
            for band in blender.add(window, logits[k], via):
                label_map[band.y0 : band.y0 + len(band.labels)] = band.labels
    if not blender.finished:  # every window was added above: a bug, never a partial map
        raise RuntimeError(f"tiled class map of {height}x{width} is incomplete")
    scores = (score_sums / score_counts.clamp(min=1)).float().cpu().numpy()
    return TiledOutput(label_map, top_sum / pixels, uncertain / pixels, scores, t_read, len(windows))


def detect_tiled(
    uri: str, read: TiledRead, preprocess: Preprocess, detect: Detect
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """The instances of the image at ``uri`` from its windows, merged (see the module docstring):
    ``((N, H, W) uint8 masks, (N,) int64 labels, (N,) float32 scores)`` and the seconds spent reading."""
    source, opened = open_source(uri, read.storage_options)
    try:
        with RegionReader(source, read.max_image_pixels or None, read.high_bit_depth) as reader:
            height, width = reader.height, reader.width
            windows = tile_grid(height, width, read.spec)
            resize = tile_preprocess(preprocess, input_size(windows[0].h, windows[0].w, read.spec.scale))
            found: list[Instance] = []
            t_read = 0.0
            for start in range(0, len(windows), read.tiles_per_pass):
                chunk = windows[start : start + read.tiles_per_pass]
                t0 = time.perf_counter()
                tiles = [resize.resize_chw(reader.read(w.y0, w.x0, w.h, w.w)) for w in chunk]
                t_read += time.perf_counter() - t0
                for window, (masks, labels, scores) in zip(
                    chunk, detect(tiles, [(w.h, w.w) for w in chunk]), strict=True
                ):
                    found += instances_from_masks(window, np.asarray(masks), np.asarray(labels), np.asarray(scores))
    finally:
        if opened is not None:
            opened.close()
    merged = [m for m in merge_instances(found, read.merge, read.merge_threshold) if m.area]
    return paste_instances(merged, height, width), t_read
