"""Tiled inference for large images: the tile grid, blending semantic logits by bands, merging instances.

Semantic, sliding window (MMSegmentation's ``slide_inference``, MONAI's ``sliding_window_inference``):
    :func:`tile_grid` cuts the image into windows of ``TileSpec.tile`` image pixels; each window is
    resized by ``TileSpec.scale`` (:func:`input_size`) and run through the model as an image is today.
    :class:`SemanticBlender` takes each tile's logits back to the window's pixels — bilinear,
    ``align_corners=False``, through the model's own upsampling size ``via`` when given, exactly as
    :func:`segbatch.stages.classmap.upsampled_argmax` defines the untiled class map — weights them
    (:func:`blend_weights`: ``mean`` or MONAI's ``gaussian``), sums them in float64, divides by the
    summed weights and takes the argmax. It emits the class map in horizontal bands as soon as every
    tile covering a band has arrived, and holds float sums only for the cells still open.

Instance, sliced (SAHI): :func:`instances_from_masks` moves one tile's (or a full-image pass's)
masks into image coordinates, stored as bool crops of their boxes; :func:`merge_instances` merges
across tile borders by mask-IoU NMS or (transitive) non-maximum merging by intersection over smaller;
:func:`instance_rle` encodes a crop as a full-size COCO RLE without a full-size array.

Shapes: logits ``(C, h, w)`` float; class maps ``(rows, W) uint8``; instance crops ``(h, w) bool``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from segbatch.masks import Crop, Rle, crop_rle

BLENDS = ("mean", "gaussian")
MERGES = ("nms", "merge")
METRICS = ("iou", "ios")
SIGMA_SCALE = 0.125  # MONAI's default: sigma = 0.125 × the window side
_MIN_WEIGHT = 1e-3  # MONAI clamps the gaussian from below at this (or its own minimum, if larger)
# floor(side × scale) with this slack, so that a side that is a whole number in exact arithmetic
# (e.g. 480 × 520/480) is not lost to float rounding; the fractional part of a true non-integer
# side resize·long/short is at least 1/short, far above it.
_SIZE_EPS = 1e-9


# --- the grid ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSpec:
    """How an image is tiled.

    ``tile``: ``(h, w)`` of a window in image pixels (clipped to the image when larger).
    ``overlap``: an ``int`` is pixels shared by neighbouring windows (``0 <= overlap < tile``);
    a ``float`` in ``[0, 1)`` is a fraction of the tile, turned into a stride as MONAI does
    (``max(1, int(tile × (1 - overlap)))``). ``scale``: the model sees a window of ``h × w``
    image pixels at :func:`input_size` ``(h, w, scale)``; 1.0 is native pixels. ``blend``:
    ``mean`` (MMSegmentation's slide mode) or ``gaussian`` (MONAI, ``sigma_scale``).
    """

    tile: tuple[int, int]
    overlap: int | float = 0
    scale: float = 1.0
    blend: str = "mean"
    sigma_scale: float = SIGMA_SCALE

    def __post_init__(self) -> None:
        th, tw = self.tile if isinstance(self.tile, tuple) and len(self.tile) == 2 else (None, None)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (th, tw)):
            raise ValueError(f"tile must be (height, width) in pixels, both >= 1, got {self.tile!r}")
        ov = self.overlap
        if isinstance(ov, bool) or not isinstance(ov, int | float):
            raise ValueError(f"tile overlap must be pixels (int) or a fraction (float), got {ov!r}")
        if isinstance(ov, float) and not 0.0 <= ov < 1.0:
            raise ValueError(f"tile overlap fraction must be in [0, 1), got {ov!r}")
        if isinstance(ov, int) and not 0 <= ov < min(self.tile):
            raise ValueError(f"tile overlap {ov} px must be >= 0 and smaller than the tile {th}x{tw}")
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"tile scale must be a finite number > 0, got {self.scale!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"unknown tile blend {self.blend!r}; valid: {', '.join(BLENDS)}")
        if not (math.isfinite(self.sigma_scale) and self.sigma_scale > 0):
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale!r}")

    def strides(self) -> tuple[int, int]:
        """``(stride_h, stride_w)`` in image pixels: tile minus overlap."""
        if isinstance(self.overlap, float):
            return (max(1, int(self.tile[0] * (1 - self.overlap))), max(1, int(self.tile[1] * (1 - self.overlap))))
        return (self.tile[0] - self.overlap, self.tile[1] - self.overlap)

    @classmethod
    def parse(cls, tile: str, overlap: str = "0", scale: str | float = 1.0, blend: str = "mean") -> TileSpec:
        """From the CLI strings: ``--tile 1024`` or ``768x1024`` (HxW), ``--tile-overlap 256`` or ``0.25``."""
        try:
            scale_value = float(scale)
        except ValueError:
            raise ValueError(f"tile scale must be a number, got {scale!r}") from None
        return cls(parse_tile_size(tile), parse_overlap(overlap), scale_value, blend)


def parse_tile_size(text: str) -> tuple[int, int]:
    """``"1024"`` → ``(1024, 1024)``; ``"768x1024"`` → ``(768, 1024)`` (height x width, as ``Preprocess.describe``)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"tile size must be SIZE or HEIGHTxWIDTH in pixels (e.g. 1024, 768x1024), got {text!r}")
    h = int(m.group(1))
    return (h, int(m.group(2)) if m.group(2) is not None else h)


def parse_overlap(text: str) -> int | float:
    """``"256"`` → 256 pixels; ``"0.25"`` → a fraction of the tile (a decimal point makes it one)."""
    s = text.strip()
    if re.fullmatch(r"\d+", s):
        return int(s)
    try:
        value = float(s)
    except ValueError:
        value = -1.0
    if not (re.fullmatch(r"\d*\.\d*", s) and 0.0 <= value < 1.0):
        raise ValueError(f"tile overlap must be pixels (e.g. 256) or a fraction in [0, 1) (e.g. 0.25), got {text!r}")
    return value


@dataclass(frozen=True)
class Window:
    """One tile: rows ``y0 … y0+h-1``, columns ``x0 … x0+w-1`` of the image; ``row``/``col`` in the grid."""

    y0: int
    x0: int
    h: int
    w: int
    row: int = 0
    col: int = 0

    @property
    def y1(self) -> int:
        return self.y0 + self.h

    @property
    def x1(self) -> int:
        return self.x0 + self.w


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """MMSegmentation's rule on one axis: every ``stride``, the last one aligned to the border."""
    tile = min(tile, n)
    count = max(n - tile + stride - 1, 0) // stride + 1
    return [max(min(i * stride + tile, n) - tile, 0) for i in range(count)]


def tile_grid(height: int, width: int, spec: TileSpec) -> list[Window]:
    """The windows of a ``height × width`` image, row-major.

    MMSegmentation's ``slide_inference`` rule: start every stride, the last row and column
    aligned to the image border, no window past the image; an image smaller than the tile
    (on an axis) is one window of its size (on that axis).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    sh, sw = spec.strides()
    th, tw = min(spec.tile[0], height), min(spec.tile[1], width)
    return [
        Window(y0, x0, th, tw, r, c)
        for r, y0 in enumerate(_starts(height, spec.tile[0], sh))
        for c, x0 in enumerate(_starts(width, spec.tile[1], sw))
    ]


class Span(NamedTuple):
    """Part ``part`` of ``parts`` of an image's grid along one axis: the class map's rows (or
    columns) ``start … stop-1`` and the grid rows (columns) ``owned`` whose tiles it counts in the
    confidence and, for instance models, detects in. An empty ``owned`` (more parts than grid
    rows) holds nothing (``start == stop``)."""

    part: int
    parts: int
    start: int
    stop: int
    owned: range


def grid_span(starts: Sequence[int], extent: int, part: int, parts: int) -> Span:
    """Part ``part`` of ``parts`` of an axis of ``extent`` pixels whose grid rows start at ``starts``
    (ascending, the first 0).

    The grid rows are dealt out in ``parts`` consecutive, near-equal groups (``numpy.array_split``);
    a part's pixels run from its first grid row's start to the next part's (the axis' ends for the
    first and last), so the parts partition the axis. Blending a part needs every window that meets
    its pixels (:class:`SemanticBlender` ``rows=`` / ``cols=``): with overlap, also the grid row
    before it, computed by both neighbours.
    """
    if not (isinstance(parts, int) and parts >= 1 and isinstance(part, int) and 0 <= part < parts):
        raise ValueError(f"part must be in 0..parts-1 with parts >= 1, got {part} of {parts}")
    groups = np.array_split(np.arange(len(starts)), parts)
    firsts = [int(g[0]) for g in groups if len(g)]
    own = groups[part]
    if not len(own):  # array_split leaves the empty groups last
        return Span(part, parts, extent, extent, range(0))
    k = firsts.index(int(own[0]))
    start = 0 if k == 0 else starts[firsts[k]]
    stop = starts[firsts[k + 1]] if k + 1 < len(firsts) else extent
    return Span(part, parts, start, stop, range(int(own[0]), int(own[-1]) + 1))


def strip_of(windows: Sequence[Window], height: int, part: int, parts: int) -> Span:
    """Strip ``part`` of ``parts`` of the image: consecutive grid rows (:func:`grid_span` on rows)."""
    return grid_span(sorted({w.y0 for w in windows}), height, part, parts)


def column_block_of(windows: Sequence[Window], width: int, part: int, parts: int) -> Span:
    """Column block ``part`` of ``parts``: consecutive grid columns (:func:`grid_span` on columns)."""
    return grid_span(sorted({w.x0 for w in windows}), width, part, parts)


def full_window(height: int, width: int) -> Window:
    """The whole image as one window (a full-image pass)."""
    return Window(0, 0, height, width, -1, -1)


def input_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(h', w')`` the model gets for a window of ``h × w`` image pixels: ``floor(side × scale)``, at least 1.

    With ``scale = untiled_scale(shorter_side, H, W)`` a whole-image window gets exactly what
    torchvision's shorter-side rule (``Preprocess.output_size``) gives the image untiled.
    """
    return (max(1, math.floor(h * scale + _SIZE_EPS)), max(1, math.floor(w * scale + _SIZE_EPS)))


def untiled_scale(shorter_side: int, height: int, width: int) -> float:
    """The scale an untiled run uses for a ``height × width`` image resized to ``shorter_side``."""
    return shorter_side / min(height, width)


# --- semantic: weights, resampling, blending -------------------------------------------------------


def blend_weights(h: int, w: int, blend: str = "mean", sigma_scale: float = SIGMA_SCALE) -> torch.Tensor:
    """``(h, w) float32`` weights of one window's logits.

    ``mean``: ones. ``gaussian``: MONAI's ``compute_importance_map`` — the product of 1-D
    ``exp(-x² / (2σ²))``, ``x`` from ``-(n-1)/2`` to ``(n-1)/2``, ``σ = sigma_scale × n`` (peak 1
    at the centre), clamped from below at ``max(its minimum, 1e-3)``. Blending divides by the
    summed weights, so only their ratios matter.
    """
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; valid: {', '.join(BLENDS)}")
    if blend == "mean":
        return torch.ones((h, w), dtype=torch.float32)
    weights = torch.ones(())
    for i, n in enumerate((h, w)):
        sigma = n * sigma_scale
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * sigma**2))
        weights = weights.unsqueeze(-1) * x[None] if i > 0 else x
    return weights.clamp(min=max(float(weights.min()), _MIN_WEIGHT))


def resample_logits(logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None) -> torch.Tensor:
    """``(C, h, w)`` → ``(C, *size) float32``: bilinear, ``align_corners=False``, first to ``via`` (the
    model's own upsampling to its input size) when given — the resampling of the untiled class map."""
    z = logits.float()[None]
    if via is not None:
        z = F.interpolate(z, size=via, mode="bilinear", align_corners=False)
    if tuple(z.shape[-2:]) == tuple(size):
        # A resize to the same size is the identity (each output pixel takes one source pixel
        # with weight 1): skipped, e.g. for tiles at scale 1.0 whose via is the window's size.
        return z[0]
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False)[0]


class Band(NamedTuple):
    """Finished rows ``y0 … y0 + len(labels) - 1`` of the class map, ``labels`` ``(rows, W) uint8``
    (``(rows, x1 - x0)``, the columns of the blender's ``cols``, when it has them)."""

    y0: int
    labels: np.ndarray


def blend_bound_bytes(spec: TileSpec, num_classes: int, height: int, width: int) -> int:
    """The most open float64 sums :class:`SemanticBlender` holds for ``width`` columns of a
    ``height``-row image when grid rows arrive in order: ``8 × (C + g) × min(tile_h, H) × width``
    (``g`` = 1 for the gaussian's summed weights)."""
    g = 1 if spec.blend == "gaussian" else 0
    return 8 * (num_classes + g) * min(spec.tile[0], height) * width


class SemanticBlender:
    """Blends the tiles of ONE image into its class map, band by band, in bounded memory.

    The window edges cut the image into cells (a cell: pixels covered by the same windows).
    :meth:`add` resamples a tile's logits to its window (:func:`resample_logits`), multiplies
    by :func:`blend_weights` and adds them, in float64, to the sums of the cells it covers,
    allocated when first touched. A cell covered by all its windows becomes class ids
    (``argmax(sums / summed weights)``, first maximum on ties) and its sums are freed; a
    horizontal band is emitted once all its cells are done, bands in top-to-bottom order.

    Tiles may arrive in any order and the map does not depend on it: with ``mean`` a pixel's
    sum of a few float32 logits is exact in float64 (unless their magnitudes differ by more
    than 2^29); with ``gaussian`` the float64 roundings are 1e-16 relative. It equals the direct
    reference (all tiles' weighted logits summed into a full-size float64 array, divided by the
    summed weights, argmax), and one whole-image tile equals ``upsampled_argmax(logits, (H, W), via)``.

    Memory: :attr:`buffer_bytes` counts the open cells' float64 sums, ``8 × (C + g)`` bytes a
    pixel (``g`` = 1 for the gaussian's summed weights, 0 for mean, whose count is per cell).
    When the grid rows arrive in order (tiles within a row in any order), every open cell lies
    in the current grid row's window rows, so it never exceeds :meth:`row_major_bound_bytes`
    ``= 8 × (C + g) × min(tile_h, H) × W``; out of order it holds the open cells of every
    grid row in flight. Per tile, transient: the resampled ``(C, h, w)`` float32 logits (and
    ``(C, via)`` float32 when ``via`` is given); finished bands wait as uint8 until those above are out.
    """

    def __init__(
        self,
        height: int,
        width: int,
        spec: TileSpec,
        num_classes: int,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> None:
        if not 1 <= num_classes <= 256:
            raise ValueError(f"num_classes must be in 1..256 (uint8 class map), got {num_classes}")
        self.height, self.width, self.spec, self.num_classes = height, width, spec, num_classes
        self.device = torch.device(device)
        grid = tile_grid(height, width, spec)
        self._ys = sorted({w.y0 for w in grid} | {w.y1 for w in grid})
        self._xs = sorted({w.x0 for w in grid} | {w.x1 for w in grid})
        self._yi = {y: i for i, y in enumerate(self._ys)}
        self._xi = {x: j for j, x in enumerate(self._xs)}
        # ``rows``/``cols``: only the class map's rows y0 … y1-1 and columns x0 … x1-1 (a
        # :class:`Span` of each axis; cell edges), from the windows that meet them.
        r0, r1 = rows if rows is not None else (0, height)
        c0, c1 = cols if cols is not None else (0, width)
        if r0 not in self._yi or r1 not in self._yi or r0 >= r1:
            raise ValueError(f"rows {rows} of a {height}x{width} image must be cell edges {self._ys} with y0 < y1")
        if c0 not in self._xi or c1 not in self._xi or c0 >= c1:
            raise ValueError(f"cols {cols} of a {height}x{width} image must be cell edges {self._xs} with x0 < x1")
        self._band0, self._band_end = self._yi[r0], self._yi[r1]
        self._col0, self._col_end = self._xi[c0], self._xi[c1]
        self.x0, self.band_width = c0, c1 - c0
        self.windows = [w for w in grid if w.y0 < r1 and w.y1 > r0 and w.x0 < c1 and w.x1 > c0]
        self._by_cell = {(w.row, w.col): w for w in self.windows}
        self._arrived: set[tuple[int, int]] = set()
        counts = np.zeros((len(self._ys) - 1, len(self._xs) - 1), dtype=np.int64)
        for w in grid:
            counts[self._yi[w.y0] : self._yi[w.y1], self._xi[w.x0] : self._xi[w.x1]] += 1
        assert counts.min() >= 1, "the grid covers the image"
        self._counts = counts
        self._remaining = counts.copy()
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._wsums: dict[tuple[int, int], torch.Tensor] = {}
        self._cells_left = np.full(len(self._ys) - 1, self._col_end - self._col0, dtype=np.int64)
        self._bands: dict[int, np.ndarray] = {}
        self._next_band = self._band0
        self._weights: dict[tuple[int, int], torch.Tensor] = {}
        self.buffer_bytes = 0
        self.peak_buffer_bytes = 0

    @property
    def finished(self) -> bool:
        """Whether every band has been emitted."""
        return self._next_band == self._band_end

    def row_major_bound_bytes(self) -> int:
        """The most :attr:`buffer_bytes` can reach when grid rows arrive in order (see the class docstring)."""
        return blend_bound_bytes(self.spec, self.num_classes, self.height, self.band_width)

    def add(self, window: Window, logits: torch.Tensor, via: tuple[int, int] | None = None) -> list[Band]:
        """Add one tile's logits ``(C, h, w)`` (any size: resampled to the window through ``via``);
        returns the bands this finished, top to bottom (often none)."""
        key = (window.row, window.col)
        if self._by_cell.get(key) != window:
            raise ValueError(f"{window} is not a window of this {self.height}x{self.width} image's grid")
        if key in self._arrived:
            raise ValueError(f"{window} was already added")
        if logits.dim() != 3 or logits.shape[0] != self.num_classes:
            raise ValueError(f"expected logits (C={self.num_classes}, h, w), got shape {tuple(logits.shape)}")
        z = resample_logits(logits.to(self.device), (window.h, window.w), via)
        self._arrived.add(key)
        weights = self._window_weights(window.h, window.w) if self.spec.blend == "gaussian" else None
        i0, i1 = self._yi[window.y0], self._yi[window.y1]
        j0, j1 = self._xi[window.x0], self._xi[window.x1]
        for i in range(max(i0, self._band0), min(i1, self._band_end)):
            ly = slice(self._ys[i] - window.y0, self._ys[i + 1] - window.y0)
            for j in range(max(j0, self._col0), min(j1, self._col_end)):
                lx = slice(self._xs[j] - window.x0, self._xs[j + 1] - window.x0)
                part = z[:, ly, lx].to(torch.float64)
                if weights is not None:
                    w = weights[ly, lx].to(torch.float64)
                    part.mul_(w)  # float32 × float32 is exact in float64
                    self._accumulate(self._wsums, (i, j), w)
                self._accumulate(self._sums, (i, j), part)
                self._remaining[i, j] -= 1
                if self._remaining[i, j] == 0:
                    self._finish_cell(i, j)
        return self._emit()

    def _window_weights(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._weights:
            self._weights[(h, w)] = blend_weights(h, w, "gaussian", self.spec.sigma_scale).to(self.device)
        return self._weights[(h, w)]

    def _accumulate(self, store: dict[tuple[int, int], torch.Tensor], key: tuple[int, int], part: torch.Tensor) -> None:
        if key in store:
            store[key].add_(part)
            return
        store[key] = part.contiguous()  # a fresh tensor: made by the float64 conversion in add()
        self.buffer_bytes += store[key].numel() * 8
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes)

    def _finish_cell(self, i: int, j: int) -> None:
        sums = self._sums.pop((i, j))
        self.buffer_bytes -= sums.numel() * 8
        if (i, j) in self._wsums:
            wsum = self._wsums.pop((i, j))
            self.buffer_bytes -= wsum.numel() * 8
            sums.div_(wsum)
        else:
            sums.div_(float(self._counts[i, j]))
        if i not in self._bands:
            self._bands[i] = np.empty((self._ys[i + 1] - self._ys[i], self.band_width), dtype=np.uint8)
        # max().indices: the first maximum, as argmax and upsampled_argmax give.
        labels = sums.max(dim=0).indices.to(torch.uint8).cpu().numpy()
        self._bands[i][:, self._xs[j] - self.x0 : self._xs[j + 1] - self.x0] = labels
        self._cells_left[i] -= 1

    def _emit(self) -> list[Band]:
        out = []
        while self._next_band < self._band_end and self._cells_left[self._next_band] == 0:
            out.append(Band(self._ys[self._next_band], self._bands.pop(self._next_band)))
            self._next_band += 1
        return out


def blend_class_map(
    height: int,
    width: int,
    spec: TileSpec,
    tiles: Iterable[tuple[Window, torch.Tensor, tuple[int, int] | None]],
    num_classes: int,
) -> np.ndarray:
    """The whole ``(H, W) uint8`` class map from ``(window, logits, via)`` tiles (for images that fit in memory)."""
    blender = SemanticBlender(height, width, spec, num_classes)
    out = np.empty((height, width), dtype=np.uint8)
    for window, logits, via in tiles:
        for band in blender.add(window, logits, via):
            out[band.y0 : band.y0 + len(band.labels)] = band.labels
    if not blender.finished:
        missing = [w for w in blender.windows if (w.row, w.col) not in blender._arrived]
        raise ValueError(f"{len(missing)} tiles never arrived, e.g. {missing[0]}")
    return out


# --- instance: detections in image coordinates, merged across tile borders -------------------------


Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive


@dataclass(eq=False)
class Instance:
    """One detection: ``mask`` ``(h, w) bool``, the crop of its box whose top-left pixel is
    ``(y0, x0)`` in the image; ``label`` the model's class id; ``seen`` ``(y0, x0, y1, x1)`` the
    window it was detected in (the bounding box of its windows once merged); ``area`` its pixels."""

    label: int
    score: float
    y0: int
    x0: int
    mask: np.ndarray
    seen: Box
    area: int = field(init=False)

    def __post_init__(self) -> None:
        self.area = int(np.count_nonzero(self.mask))

    @property
    def box(self) -> Box:
        """``(y0, x0, y1, x1)``, end exclusive."""
        return (self.y0, self.x0, self.y0 + self.mask.shape[0], self.x0 + self.mask.shape[1])


def _tight(mask: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, int, int]:
    """Crop a bool mask to its nonzero rows/columns; an empty mask becomes ``(0, 0)`` at ``(y0, x0)``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros((0, 0), dtype=bool), y0, x0
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(mask[r0:r1, c0:c1]), y0 + int(r0), x0 + int(c0)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` outputs, nearest neighbour with pixel centres aligned
    (torch's ``nearest-exact``): ``floor((i + 0.5) × n_in / n_out)``."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def instances_from_masks(window: Window, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> list[Instance]:
    """One tile's detections → :class:`Instance` s in image coordinates.

    ``masks`` ``(N, mh, mw)`` bool/uint8 over the window (at the window's size, or at the size the
    model saw it: mapped onto the window's pixels by nearest neighbour), ``labels`` ``(N,)``,
    ``scores`` ``(N,)``. For a full-image pass use :func:`full_window`. Only the crop of each
    mask's box is kept.
    """
    if masks.ndim != 3 or len(masks) != len(labels) or len(labels) != len(scores):
        raise ValueError(
            f"expected (N, h, w) masks with N labels and scores, "
            f"got {masks.shape}, {np.shape(labels)}, {np.shape(scores)}"
        )
    mh, mw = masks.shape[1:]
    resize = (mh, mw) != (window.h, window.w)
    if resize:
        src_y, src_x = _nearest_index(mh, window.h), _nearest_index(mw, window.w)
    seen = (window.y0, window.x0, window.y1, window.x1)
    out = []
    for k in range(len(masks)):
        crop, y0, x0 = _tight(masks[k].astype(bool, copy=False), 0, 0)
        if resize and crop.size:
            # The window pixels whose source lies in the crop (src_* are monotone), then re-tightened:
            # a downscale may skip the crop's border rows.
            ya, yb = np.searchsorted(src_y, y0), np.searchsorted(src_y, y0 + crop.shape[0])
            xa, xb = np.searchsorted(src_x, x0), np.searchsorted(src_x, x0 + crop.shape[1])
            crop, y0, x0 = _tight(crop[np.ix_(src_y[ya:yb] - y0, src_x[xa:xb] - x0)], int(ya), int(xa))
        out.append(Instance(int(labels[k]), float(scores[k]), window.y0 + y0, window.x0 + x0, crop, seen))
    return out


def _meet(a: Box, b: Box) -> Box | None:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _part(inst: Instance, region: Box) -> np.ndarray:
    """``inst.mask`` over ``region``, which must lie inside ``inst.box`` (a view)."""
    y0, x0 = inst.y0, inst.x0
    return inst.mask[region[0] - y0 : region[2] - y0, region[1] - x0 : region[3] - x0]


def mask_match(a: Instance, b: Instance, metric: str) -> float:
    """Mask IoU (``iou``) or intersection over the smaller mask (``ios``) of two detections,
    counted where both their windows ``seen`` overlap — what both tiles could see: the two
    pieces of an object cut by a tile border agree there, however small a part of each that is.
    0 when that region or a mask in it is empty."""
    region = _meet(a.seen, b.seen)
    in_a = region and _meet(region, a.box)
    in_b = region and _meet(region, b.box)
    if not in_a or not in_b:
        return 0.0
    na, nb = int(np.count_nonzero(_part(a, in_a))), int(np.count_nonzero(_part(b, in_b)))
    both = _meet(in_a, in_b)
    inter = int(np.count_nonzero(_part(a, both) & _part(b, both))) if both else 0
    denom = na + nb - inter if metric == "iou" else min(na, nb)
    return inter / denom if denom > 0 else 0.0


def _union(group: list[Instance]) -> Instance:
    """The detections OR-ed into one: box and ``seen`` the unions, score and label the first's (the best)."""
    if len(group) == 1:
        return group[0]
    parts = [g for g in group if g.mask.size]
    y0, x0 = min(p.y0 for p in parts), min(p.x0 for p in parts)
    y1, x1 = max(p.box[2] for p in parts), max(p.box[3] for p in parts)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for p in parts:
        canvas[p.y0 - y0 : p.box[2] - y0, p.x0 - x0 : p.box[3] - x0] |= p.mask
    seen = (
        min(g.seen[0] for g in group),
        min(g.seen[1] for g in group),
        max(g.seen[2] for g in group),
        max(g.seen[3] for g in group),
    )
    return Instance(group[0].label, group[0].score, y0, x0, canvas, seen)


def merge_instances(
    instances: Sequence[Instance],
    method: str = "merge",
    threshold: float = 0.5,
    metric: str | None = None,
    class_agnostic: bool = False,
) -> list[Instance]:
    """Merge the detections of overlapping tiles (and of a full-image pass) into one list, best score first.

    Two detections of one class (any class when ``class_agnostic``) match when their
    :func:`mask_match` is ≥ ``threshold``. ``nms`` (metric default ``iou``): in score order (ties:
    input order), each detection not yet dropped drops the later ones it matches — mask NMS.
    ``merge`` (metric default ``ios``): detections linked by matches, directly or through others,
    become one: masks OR-ed, score the maximum, label the best's — SAHI's ``NMMPostprocess``
    (transitive, so an object across three tiles in a row is rejoined, which greedy NMM, whose
    best piece must match every other, cannot do), compared on masks where both windows overlap
    instead of on whole boxes.
    """
    if method not in MERGES:
        raise ValueError(f"unknown tile merge {method!r}; valid: {', '.join(MERGES)}")
    metric = metric or ("iou" if method == "nms" else "ios")
    if metric not in METRICS:
        raise ValueError(f"unknown match metric {metric!r}; valid: {', '.join(METRICS)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"tile merge threshold must be in (0, 1], got {threshold!r}")
    n = len(instances)
    if not n:
        return []
    order = sorted(range(n), key=lambda k: (-instances[k].score, k))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    boxes = np.array([inst.box for inst in instances], dtype=np.int64).reshape(n, 4)
    labels = np.array([inst.label for inst in instances], dtype=np.int64)

    def matches(k: int, alive: np.ndarray) -> list[int]:
        # Boxes first (vectorised), masks only for the candidates whose boxes meet.
        y0, x0, y1, x1 = boxes[k]
        near = alive & (boxes[:, 0] < y1) & (boxes[:, 2] > y0) & (boxes[:, 1] < x1) & (boxes[:, 3] > x0)
        if not class_agnostic:
            near &= labels == labels[k]
        inst = instances[k]
        return [j for j in np.flatnonzero(near).tolist() if mask_match(inst, instances[j], metric) >= threshold]

    if method == "nms":
        alive = np.ones(n, dtype=bool)
        kept = []
        for k in order:
            if alive[k]:
                alive[k] = False
                alive[matches(k, alive)] = False
                kept.append(instances[k])
        return kept
    # Connected components of the match graph, each listed best first.
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    later = np.ones(n, dtype=bool)
    for k in order:
        later[k] = False  # each pair once
        for j in matches(k, later):
            rk, rj = root(k), root(j)
            if rk != rj:
                parent[max(rk, rj, key=lambda r: rank[r])] = min(rk, rj, key=lambda r: rank[r])
    groups: dict[int, list[Instance]] = {}
    for k in order:
        groups.setdefault(root(k), []).append(instances[k])
    return [_union(g) for g in groups.values()]


def instance_rle(inst: Instance, height: int, width: int) -> Rle:
    """The instance's mask over the whole ``height × width`` image as COCO RLE (``counts`` str),
    made from its crop: memory of the crop, never ``height × width`` (:func:`segbatch.masks.crop_rle`)."""
    return crop_rle(inst.mask, inst.y0, inst.x0, height, width)


def as_crops(instances: Sequence[Instance]) -> list[Crop]:
    """The instances as :class:`segbatch.masks.Crop` s (torch-free: what travels to encode)."""
    return [Crop(i.label, i.score, i.y0, i.x0, i.mask) for i in instances]


def paste_instances(
    instances: Sequence[Instance], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-size ``(N, H, W) uint8`` masks, ``(N,) int64`` labels, ``(N,) float32`` scores — the
    predictor's instance output, for images small enough to hold N full masks."""
    masks = np.zeros((len(instances), height, width), dtype=np.uint8)
    for k, inst in enumerate(instances):
        y0, x0, y1, x1 = inst.box
        masks[k, y0:y1, x0:x1] = inst.mask
    labels = np.array([i.label for i in instances], dtype=np.int64)
    scores = np.array([i.score for i in instances], dtype=np.float32)
    return masks, labels, scores
