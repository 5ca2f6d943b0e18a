"""Tiled semantic inference of one large image inside the model actor, in memory bounded by the tile.

The read stage of a tiled run passes only each image's size (:func:`segbatch.stages.read.header_size`);
:func:`label_tiled` opens the image with :class:`~segbatch.io.regions.RegionReader` (TIFF/BigTIFF
read by region, other formats decoded once), walks the tile grid row-major, resizes each window to
:func:`~segbatch.stages.tiling.input_size` with the model's own resize filter, runs
``tiles_per_pass`` windows per forward pass (shared by the images of a batch: :func:`label_many`
runs each image as a coroutine, :func:`label_steps`), and feeds :class:`~segbatch.stages.tiling.SemanticBlender`,
whose finished bands are copied into the ``(H, W) uint8`` class map — the only full-size array
(1 byte a pixel); float logits exist per tile and per open band only.

Instance models, sliced (SAHI): :func:`detect_tiled` runs the model on each window (and, with
``full_pass``, once on the whole image at the model's untiled preprocessing, for objects larger
than a tile), moves its detections into image coordinates as crops of their boxes;
:func:`join_instance_strips` merges those of neighbouring windows
(:func:`~segbatch.stages.tiling.merge_instances`: ``merge`` by intersection over the smaller mask,
or mask ``nms``), and :func:`crops_result` hands them to encode as crops of their boxes, which it
encodes at full size: the instance result of an untiled image, with no full-size mask.

Strips (:func:`~segbatch.stages.tiling.strip_of`): one image may be split into horizontal strips of
grid rows that run on different model actors; each returns its class-map rows (blended from every
window that meets them: with overlap, the grid row above a strip runs in both) and the sums of the
tiles it owns, or its windows' detections, and :func:`join_strips` / :func:`join_instance_strips`
make the image's result — the same as one strip of the whole image (on a CPU a short pass is
padded to full size, so a tile's logits do not depend on its pass; on a GPU they may move in their
last bits with the tiles batched beside it).

Confidence comes from the tiles' coarse logits (no second pass): the mean top-class probability and
the share of coarse pixels whose top two are within ``uncertain_margin``, over every tile's coarse
grid (pixels in overlaps count once per tile); a class's mask score is the mean top probability over
the coarse pixels where that class is the coarse argmax (0 for a class that wins no coarse pixel).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from segbatch.io import fs as fsio
from segbatch.io.images import HighBitDepth
from segbatch.io.regions import PILLOW_MAX_IMAGE_PIXELS, RegionReader
from segbatch.masks import Crop
from segbatch.models.preprocess import Preprocess
from segbatch.stages.tiling import (
    Instance,
    SemanticBlender,
    TileSpec,
    Window,
    as_crops,
    blend_bound_bytes,
    column_block_of,
    full_window,
    input_size,
    instances_from_masks,
    merge_instances,
    strip_of,
    tile_grid,
)

# (N tiles (3, h, w) uint8 of one shape) → (logits (N, C, h', w'), the model's upsampling size or None)
Forward = Callable[[list[np.ndarray]], tuple[torch.Tensor, tuple[int, int] | None]]
# (N tiles (3, h, w) uint8, each window's (h, w)) → per tile (masks (n, h, w) uint8, labels (n,), scores (n,))
Detect = Callable[[list[np.ndarray], list[tuple[int, int]]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


# 1 GiB: a 5000-pixel-wide image (25 MP) at tile 1024 with 21 classes blends in one block (0.86 GB
# bound); a 20 000-wide one (400 MP) in four, each running one grid column again (26 columns: +12 %).
BLEND_BUDGET_BYTES = 1 << 30


@dataclass(frozen=True)
class TiledRead:
    """How a model actor reads and tiles images (picklable: travels in the actor's settings).

    ``max_image_pixels``: more is an error row (0: no limit). ``tiles_per_pass``: windows per
    forward pass (the job's batch size on a GPU; None on a CPU: the model's images per pass, its
    bundle's ``cpu_batch``).
    """

    spec: TileSpec
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    high_bit_depth: HighBitDepth = "range"
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS
    tiles_per_pass: int | None = 1  # None: the predictor's images per pass (its bundle's cpu_batch on a CPU)
    merge: str = "merge"  # instance models: how detections of overlapping tiles are merged
    merge_threshold: float = 0.5
    full_pass: bool = False  # instance models: also detect on the whole image (large objects)
    # Most bytes of open float sums while blending (column_blocks): past it, an image is blended
    # in blocks of grid columns, so that memory follows the tile and not the image's width.
    blend_budget: int = BLEND_BUDGET_BYTES

    def __post_init__(self) -> None:
        if self.tiles_per_pass is not None and self.tiles_per_pass < 1:
            raise ValueError(f"tiles_per_pass must be >= 1, got {self.tiles_per_pass}")

    @property
    def per_pass(self) -> int:
        """Windows per forward pass (1 while ``tiles_per_pass`` is unset)."""
        return self.tiles_per_pass or 1


class TiledOutput(NamedTuple):
    """One image's tiled prediction."""

    label_map: np.ndarray  # (H, W) uint8 model class ids
    confidence: float  # mean coarse top-class probability over all tiles
    uncertain_share: float  # share of coarse pixels whose top two are within the margin
    class_scores: np.ndarray  # (C,) float32: mean coarse top probability where the class wins
    t_read: float  # seconds spent reading and resizing regions
    tiles: int


class StripOutput(NamedTuple):
    """One :func:`~segbatch.stages.tiling.strip_of` of a tiled semantic prediction (the whole image
    for a strip 0 of 1): its class-map rows and the confidence sums of the tiles it owns, which
    :func:`join_strips` adds up — sums, so that the strips of one image may run on different actors."""

    height: int
    width: int
    y0: int
    labels: np.ndarray  # (rows, W) uint8: class-map rows y0 … y0 + rows - 1
    top_sum: float  # sum of the coarse top-class probabilities of the owned tiles
    uncertain: float  # their coarse pixels whose top two are within the margin
    pixels: float  # their coarse pixels
    score_sums: np.ndarray  # (C,) float64: top probability summed where each class wins
    score_counts: np.ndarray  # (C,) float64: coarse pixels where each class wins
    t_read: float
    tiles: int  # tiles run (owned or not)


def join_strips(parts: list[StripOutput]) -> TiledOutput:
    """The image's :class:`TiledOutput` from all its strips, in any order (their rows must tile the image)."""
    parts = sorted((p for p in parts if len(p.labels)), key=lambda p: p.y0)
    if not parts:
        raise ValueError("no strip holds any row of the image")
    height, width = parts[0].height, parts[0].width
    y = 0
    for p in parts:
        if (p.height, p.width) != (height, width) or p.y0 != y:
            raise ValueError(f"strips of a {height}x{width} image do not meet: rows from {p.y0}, expected {y}")
        y += len(p.labels)
    if y != height:
        raise ValueError(f"strips of a {height}x{width} image end at row {y}")
    label_map = parts[0].labels if len(parts) == 1 else np.concatenate([p.labels for p in parts])
    pixels = sum(p.pixels for p in parts)
    sums, counts = sum(p.score_sums for p in parts), sum(p.score_counts for p in parts)
    return TiledOutput(
        label_map,
        sum(p.top_sum for p in parts) / pixels,
        sum(p.uncertain for p in parts) / pixels,
        (sums / np.maximum(counts, 1)).astype(np.float32),
        sum(p.t_read for p in parts),
        sum(p.tiles for p in parts),
    )


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
    strip: tuple[int, int] = (0, 1),
) -> StripOutput:
    """Strip ``strip = (index, count)`` of the class map of the image at ``uri`` from its tiles
    (see the module docstring); ``(0, 1)``, the whole image, gives :func:`join_strips` its one part.

    Raises :class:`~segbatch.errors.ImageError` for what cannot be read or decoded, or an image
    over ``read.max_image_pixels``; other exceptions come from the model.
    """
    steps = label_steps(uri, read, preprocess, num_classes, device, uncertain_margin, strip)
    result = label_many([steps], forward, read.per_pass)[0]
    if isinstance(result, BaseException):
        raise result
    return result


# A tiled image's labelling as a coroutine: it yields the tiles ((3, h, w) uint8, one shape) it
# needs logits for and is sent back (logits (n, C, h', w'), via); it returns its StripOutput.
Steps = Generator[list[np.ndarray], tuple[torch.Tensor, tuple[int, int] | None], StripOutput]


def label_steps(
    uri: str,
    read: TiledRead,
    preprocess: Preprocess,
    num_classes: int,
    device: torch.device,
    uncertain_margin: float,
    strip: tuple[int, int] = (0, 1),
) -> Steps:
    """:func:`label_tiled` as :data:`Steps`, so that :func:`label_many` can fill one forward pass
    with the tiles of several images; the image stays open until the coroutine ends or is closed."""
    source, opened = open_source(uri, read.storage_options)
    try:
        with RegionReader(source, read.max_image_pixels or None, read.high_bit_depth) as reader:
            return (yield from _label(reader, read, preprocess, num_classes, device, uncertain_margin, strip))
    finally:
        if opened is not None:
            opened.close()


def label_many(jobs: list[Steps], forward: Forward, per_pass: int) -> list[StripOutput | BaseException]:
    """Run several images' :data:`Steps` in passes of ``per_pass`` tiles filled with the tiles of
    as many images as it takes (those of one shape; a job's tiles may span two passes, and it gets
    its logits once all are in): a GPU's batch stays full however few windows each image has.
    Images are opened in order as passes need their tiles. Returns each job's result, or the
    exception that ended it: one image's unreadable file, or a model error that its tiles also raise
    alone (a pass that fails is run again job by job, so that one image cannot fail the others)."""
    results: list[StripOutput | BaseException | None] = [None] * len(jobs)
    pending: dict[int, list[np.ndarray]] = {}  # job → the tiles it waits on
    taken: dict[int, int] = {}  # job → how many of them have run
    got: dict[int, list[torch.Tensor]] = {}  # job → their logits so far

    def advance(k: int, value: Any = None) -> None:
        taken[k], got[k] = 0, []
        try:
            pending[k] = next(jobs[k]) if value is None else jobs[k].send(value)
        except StopIteration as done:
            pending.pop(k, None)
            results[k] = done.value
        except Exception as err:  # this image's failure, not its neighbours'
            pending.pop(k, None)
            results[k] = err

    def fail(k: int, err: BaseException) -> None:
        pending.pop(k)
        jobs[k].close()  # its image is closed (label_steps' finally)
        results[k] = err

    def ran(k: int, logits: torch.Tensor, via: tuple[int, int] | None, stop: int) -> None:
        got[k].append(logits)
        taken[k] = stop
        if stop == len(pending[k]):
            advance(k, (got[k][0] if len(got[k]) == 1 else torch.cat(got[k]), via))

    # Images are opened only as passes need their tiles (an image decoded once, not by region,
    # holds all its pixels while open): one or two at a time when each fills passes by itself.
    unopened = deque(range(len(jobs)))
    while pending or unopened:
        if not pending:
            advance(unopened.popleft())
            continue
        order = list(pending)  # job order: the first job's next tiles always run
        shape = pending[order[0]][0].shape
        parts: list[tuple[int, int, int]] = []  # (job, first tile, end)
        room = max(1, per_pass)
        for k in order:
            if room and pending[k][0].shape == shape:
                stop = min(len(pending[k]), taken[k] + room)
                parts.append((k, taken[k], stop))
                room -= stop - taken[k]
        while room and unopened:  # room left: the next images' first tiles
            k = unopened.popleft()
            advance(k)
            if k in pending and pending[k][0].shape == shape:
                stop = min(len(pending[k]), room)
                parts.append((k, 0, stop))
                room -= stop
        try:
            logits, via = forward([t for k, a, b in parts for t in pending[k][a:b]])
        except Exception as err:
            if len(parts) == 1:  # its own error: the coroutine ends with it
                fail(parts[0][0], err)
                continue
            for k, a, b in parts:  # the pass again, one image at a time
                try:
                    one, one_via = forward(pending[k][a:b])
                except Exception as alone:
                    fail(k, alone)
                    continue
                ran(k, one, one_via, b)
            continue
        start = 0
        for k, a, b in parts:
            ran(k, logits[start : start + b - a], via, b)
            start += b - a
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def column_blocks(spec: TileSpec, num_classes: int, height: int, width: int, grid_cols: int, budget: int) -> int:
    """Column blocks a strip is blended in, so that its open float sums stay within ``budget``
    bytes: :meth:`SemanticBlender.row_major_bound_bytes` grows with the image's width (a grid
    row's overlap band stays open for the next row), a block's with the block's. Each block after
    the first runs the grid column before it again (with overlap): blocks only when over budget."""
    bound = blend_bound_bytes(spec, num_classes, height, width)
    return max(1, min(grid_cols, -(-bound // max(1, budget))))


def _label(
    reader: RegionReader,
    read: TiledRead,
    preprocess: Preprocess,
    num_classes: int,
    device: torch.device,
    margin: float,
    strip_at: tuple[int, int],
) -> Steps:
    height, width = reader.height, reader.width
    grid = tile_grid(height, width, read.spec)
    strip = strip_of(grid, height, *strip_at)
    none = np.zeros(num_classes, np.float64)
    if not strip.owned:  # more strips than grid rows: this one owns none
        return StripOutput(height, width, height, np.zeros((0, width), np.uint8), 0.0, 0.0, 0.0, none, none, 0.0, 0)
    label_map = np.empty((strip.stop - strip.start, width), dtype=np.uint8)
    # Every window has one size (the grid clips the tile to the image, the last ones align to the border).
    resize = tile_preprocess(preprocess, input_size(grid[0].h, grid[0].w, read.spec.scale))
    stats = _Confidence(num_classes, margin, device)
    t_read, ran = 0.0, 0
    grid_cols = len({w.x0 for w in grid})
    blocks = column_blocks(read.spec, num_classes, height, width, grid_cols, read.blend_budget)
    for block in range(blocks):
        cols = column_block_of(grid, width, block, blocks)
        if not cols.owned:
            continue
        blender = SemanticBlender(height, width, read.spec, num_classes, device, rows=(strip.start, strip.stop),
                                  cols=(cols.start, cols.stop))  # fmt: skip
        windows = blender.windows  # row-major: open sums stay within one grid row's bands
        for start in range(0, len(windows), read.per_pass):
            chunk: list[Window] = windows[start : start + read.per_pass]
            tiles, seconds = _read_tiles(reader, chunk, resize)
            t_read += seconds
            logits, via = yield tiles
            if logits.dim() != 4 or logits.shape[0] != len(chunk) or logits.shape[1] != num_classes:
                expected = f"({len(chunk)}, {num_classes}, h, w)"
                raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected {expected}")
            for k, window in enumerate(chunk):
                for band in blender.add(window, logits[k], via):
                    rows = slice(band.y0 - strip.start, band.y0 - strip.start + len(band.labels))
                    label_map[rows, cols.start : cols.stop] = band.labels
            # Confidence from the tiles this strip and block own: each tile counts exactly once.
            stats.add(logits[[k for k, w in enumerate(chunk) if w.row in strip.owned and w.col in cols.owned]])
        if not blender.finished:  # every window was added above: a bug, never a partial map
            raise RuntimeError(f"tiled class map of {height}x{width} is incomplete")
        ran += len(windows)
    sums, counts = stats.score_sums.cpu().numpy(), stats.score_counts.cpu().numpy()
    return StripOutput(height, width, strip.start, label_map, stats.top_sum, stats.uncertain, stats.pixels, sums,
                       counts, t_read, ran)  # fmt: skip


def _read_tiles(reader: RegionReader, windows: list[Window], resize: Preprocess) -> tuple[list[np.ndarray], float]:
    """The windows' pixels at the model's input size, ``(3, h, w) uint8`` each, and the seconds it took."""
    t0 = time.perf_counter()
    tiles = [resize.resize_chw(reader.read(w.y0, w.x0, w.h, w.w)) for w in windows]
    return tiles, time.perf_counter() - t0


class _Confidence:
    """Sums of the tiles' coarse class probabilities (see the module docstring)."""

    def __init__(self, num_classes: int, margin: float, device: torch.device) -> None:
        self.num_classes, self.margin = num_classes, margin
        self.top_sum = self.uncertain = self.pixels = 0.0
        self.score_sums = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.score_counts = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor) -> None:
        """Add tiles' logits ``(n, C, h, w)`` (``n`` may be 0)."""
        if not len(logits):
            return
        probs = torch.softmax(logits.float(), dim=1)
        top2 = probs.topk(min(2, self.num_classes), dim=1)
        top = top2.values[:, 0]
        second = top2.values[:, 1] if self.num_classes > 1 else torch.zeros_like(top)
        self.top_sum += float(top.sum(dtype=torch.float64))
        self.uncertain += float(((top - second) < self.margin).sum())
        self.pixels += top.numel()
        winners = top2.indices[:, 0].flatten()
        self.score_sums += torch.bincount(winners, weights=top.flatten().double(), minlength=self.num_classes)
        self.score_counts += torch.bincount(winners, minlength=self.num_classes).double()


class InstanceStrip(NamedTuple):
    """One strip's detections (all of an image's for a strip 0 of 1), in image coordinates and not
    yet merged: :func:`join_instance_strips` merges those of every strip of the image."""

    height: int
    width: int
    instances: list[Instance]
    t_read: float
    tiles: int
    merge: str = "merge"  # how the join merges them (TiledRead.merge, merge_threshold)
    merge_threshold: float = 0.5


# The full-image pass of an instance model sees at most this many pixels before the model's own
# preprocessing: a larger image is box-reduced by an integer factor band by band first (memory
# of a band and of the reduced image, not of the whole image).
FULL_PASS_PIXELS = 16_000_000


def reduced_image(reader: RegionReader, max_pixels: int = FULL_PASS_PIXELS) -> np.ndarray:
    """The whole image ``(H', W', 3) uint8``, box-reduced by the smallest integer factor ``f`` that
    brings it to at most ``max_pixels`` (``H' = ceil(H / f)``, Pillow's ``Image.reduce``: the edge
    boxes are partial); read ``f × 64`` rows at a time."""
    height, width = reader.height, reader.width
    factor = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    if factor == 1:
        return reader.read(0, 0, height, width)
    rows = factor * 64
    bands = [
        np.asarray(Image.fromarray(reader.read(y, 0, min(rows, height - y), width)).reduce(factor))
        for y in range(0, height, rows)
    ]
    return np.concatenate(bands)


def detect_tiled(
    uri: str, read: TiledRead, preprocess: Preprocess, detect: Detect, strip: tuple[int, int] = (0, 1)
) -> InstanceStrip:
    """The detections of strip ``strip = (index, count)`` of the image at ``uri``: those of the
    windows in its grid rows, in image coordinates, and (strip 0, ``read.full_pass``) those of a
    pass over the whole image at the model's untiled preprocessing (see the module docstring)."""
    source, opened = open_source(uri, read.storage_options)
    try:
        with RegionReader(source, read.max_image_pixels or None, read.high_bit_depth) as reader:
            height, width = reader.height, reader.width
            grid = tile_grid(height, width, read.spec)
            owned = strip_of(grid, height, int(strip[0]), int(strip[1]))
            windows = [w for w in grid if w.row in owned.owned]
            resize = tile_preprocess(preprocess, input_size(grid[0].h, grid[0].w, read.spec.scale))
            found: list[Instance] = []
            t_read = 0.0
            for start in range(0, len(windows), read.per_pass):
                chunk = windows[start : start + read.per_pass]
                tiles, seconds = _read_tiles(reader, chunk, resize)
                t_read += seconds
                for window, (masks, labels, scores) in zip(
                    chunk, detect(tiles, [(w.h, w.w) for w in chunk]), strict=True
                ):
                    found += instances_from_masks(window, np.asarray(masks), np.asarray(labels), np.asarray(scores))
            if read.full_pass and owned.part == 0:
                # Large objects whole (SAHI's standard prediction): masks at the size the model saw
                # the image, mapped onto its pixels by nearest neighbour as crops of their boxes.
                t0 = time.perf_counter()
                image = preprocess.resize_chw(reduced_image(reader))
                t_read += time.perf_counter() - t0
                masks, labels, scores = detect([image], [(int(image.shape[1]), int(image.shape[2]))])[0]
                full = full_window(height, width)
                found += instances_from_masks(full, np.asarray(masks), np.asarray(labels), np.asarray(scores))
                windows.append(full)
    finally:
        if opened is not None:
            opened.close()
    return InstanceStrip(height, width, found, t_read, len(windows), read.merge, read.merge_threshold)


def join_instance_strips(parts: list[InstanceStrip]) -> tuple[list[Instance], float]:
    """The image's instances from all its strips, merged across tile (and strip) borders as the
    strips say (``merge``, ``merge_threshold``), best score first; and the seconds spent reading."""
    found = [inst for p in parts for inst in p.instances]
    merged = [m for m in merge_instances(found, parts[0].merge, parts[0].merge_threshold) if m.area]
    return merged, sum(p.t_read for p in parts)


def crops_result(merged: list[Instance]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Crop]]:
    """A tiled image's instance result as the predictor hands it to encode: no full-size masks
    (``(0, 0, 0) uint8``), ``(N,) int64`` labels, ``(N,) float32`` scores, and the N crops
    (:class:`segbatch.masks.Crop`), which encode turns into full-size RLE without pasting them."""
    labels = np.array([m.label for m in merged], dtype=np.int64)
    scores = np.array([m.score for m in merged], dtype=np.float32)
    return np.zeros((0, 0, 0), np.uint8), labels, scores, as_crops(merged)
