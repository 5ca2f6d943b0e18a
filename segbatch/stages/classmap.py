"""Class map at the original size from coarse logits, without upsampling all of them.

torchvision's segmentation models end with a bilinear upsampling of their coarse logits
(1/8 or 1/16 of the input) to the input size, and the reference post-processing
(detectron2's ``sem_seg_postprocess``, torchvision's references) resamples those to the
image size and takes the argmax: two passes over all ``C`` classes at full size, ~60 ms
of one CPU thread for LRASPP on a 640×480 photo, more than half its forward pass. Bilinear
resampling (``align_corners=False``, no antialias) makes every output value a convex
combination of source values, and so does a chain of two. Where every coarse logit vector
an output pixel draws on has the same winning class by a clear margin, that class wins the
combination too. :func:`upsampled_argmax`
takes the argmax at coarse resolution, copies it out where the sources agree, and
computes the full chain only for the remaining (boundary) pixels, with ATen's formula.

Most classes of a model's head win nowhere in a given photo (4 of VOC's 21 on most of the
throughput bench's maps). A class whose highest logit over any window of
sources an output pixel may draw on stays, by a clear margin, below some class's lowest one
there loses that pixel whatever the weights: :func:`contenders` finds, from the coarse logits
alone, the classes that can win anywhere, and the map is computed over those alone. ATen
resamples each class on its own, so the kept classes' values are bit for bit the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Top-1 minus top-2 logit a source needs for the shortcut. Far above float32 rounding of
# the interpolation (~1e-6 for logits of order 10), so rounding can never flip a shortcut
# pixel; ties and near-ties are interpolated in full, as the reference does.
MARGIN = 1e-3
_CHUNK = 1 << 16  # undecided pixels computed at a time: ~24 temporaries of (_CHUNK, C) float32
# Past this fraction of undecided pixels, resampling the (contending) classes everywhere is
# cheaper than computing the pixels one by one: both scale with the classes kept, the latter
# on top of a fixed cost. The bench's LRASPP maps (65×87 → 520×693 → 480×640, 4 of 21 classes
# kept on most), mean per map on 1 | 2 threads: 11.0 | 8.9 ms past 0.05, 10.9 | 10.2 past 0.1,
# 13.7 | 10.5 past 0.15, 18.4 | 14.1 never dense (bench/README.md, 2026-12-03).
DENSE_ABOVE = 0.1
# Float32 intermediates the dense batch path may hold at once (the resampled logits at
# ``via`` and at the original size): LRASPP, 21 classes, 32 images at 520×693 → 480×640
# need 1.8 GB, one pass; 150 classes, 32 images of 1024×1365 would need ~54 GB: groups.
DENSE_MAX_BYTES = 2 << 30

_Axis = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (i0, i1, weight of i1), each (n_out,)


def _source_index(n_in: int, n_out: int, device: torch.device) -> _Axis:
    """PyTorch's bilinear source coordinates (align_corners=False): (i0, i1) int64 and the
    weight of i1, each ``(n_out,)``; computed in float32 as ATen does."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.to(torch.int64)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = (src - i0.to(torch.float32)).clamp_(0, 1)
    return i0.to(device), i1.to(device), w1.to(device)


def _support(n_in: int, n_via: int | None, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """First coarse index and span (both ``(n_out,)`` int64) each output index draws on,
    through the intermediate size ``n_via`` when there is one."""
    if n_via is None:
        i0, i1, _ = _source_index(n_in, n_out, device)
        return i0, i1 - i0 + 1
    m0, m1, _ = _source_index(n_via, n_out, device)
    j0, j1, _ = _source_index(n_in, n_via, device)
    first, last = j0[m0], j1[m1]  # both steps are monotone, so this is the whole range
    return first, last - first + 1


_Support = tuple[torch.Tensor, torch.Tensor]  # (first, span) of one axis, each (n_out,) int64


def _supports(logits: torch.Tensor, via: tuple[int, int] | None, size: tuple[int, int]) -> tuple[_Support, _Support]:
    """:func:`_support` of both axes of ``logits`` ``(…, h, w)``: the coarse rows, then columns,
    each output pixel draws on."""
    h, w = logits.shape[-2:]
    via_h, via_w = via if via is not None else (None, None)
    return _support(h, via_h, size[0], logits.device), _support(w, via_w, size[1], logits.device)


def _window_extrema(z: torch.Tensor, ky: int, kx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and min of ``z`` ``(C, h, w)`` over every ``ky``×``kx`` window (stride 1), each
    ``(C, h - ky + 1, w - kx + 1)``: separable, by shifted views (~0.1 ms for 21×65×87, where
    ``max_pool2d`` takes ~2 ms on the CPU)."""
    h, w = z.shape[1:]
    hi, lo = z[:, :, : w - kx + 1].clone(), z[:, :, : w - kx + 1].clone()
    for t in range(1, kx):
        torch.maximum(hi, z[:, :, t : w - kx + 1 + t], out=hi)
        torch.minimum(lo, z[:, :, t : w - kx + 1 + t], out=lo)
    hi2, lo2 = hi[:, : h - ky + 1].clone(), lo[:, : h - ky + 1].clone()
    for t in range(1, ky):
        torch.maximum(hi2, hi[:, t : h - ky + 1 + t], out=hi2)
        torch.minimum(lo2, lo[:, t : h - ky + 1 + t], out=lo2)
    return hi2, lo2


def contenders(
    logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None, margin: float = MARGIN
) -> torch.Tensor:
    """The classes (ascending ``(k,)`` int64, k ≥ 1) that can win some pixel of ``logits``
    ``(C, h, w)`` resampled to ``size`` (through ``via``); every other class is below the
    winner, by more than ``margin``, at every pixel.

    Each output value is a convex combination of the sources in its support, a window of at
    most ``ky``×``kx`` coarse pixels (:func:`_support`); every such window lies within some
    ``ky``×``kx`` window of the grid, over which a class's combination is at most its maximum
    and at least its minimum. A class whose maximum is below another's minimum by ``margin``
    in every grid window can therefore win nowhere (a larger window only widens both bounds)."""
    return _contenders(logits.float(), _supports(logits, via, size), margin)


def _contenders(logits: torch.Tensor, supports: tuple[_Support, _Support], margin: float) -> torch.Tensor:
    _, h, w = logits.shape
    (_, span_y), (_, span_x) = supports
    ky, kx = min(int(span_y.max()), h), min(int(span_x.max()), w)
    hi, lo = _window_extrema(logits, ky, kx)
    floor = lo.max(dim=0).values  # the best class's worst value, per window
    return (hi + margin >= floor).flatten(1).any(dim=1).nonzero().squeeze(1)


def _agree(code: torch.Tensor, dim: int, first: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Resample ``code`` (int, -1 = unclear) along ``dim``: output k is the common code of
    source indices ``first[k] … first[k] + span[k] - 1``, or -1 when they differ."""
    n = code.shape[dim]
    c0 = code.index_select(dim, first)  # index_select: a row/column gather ~2× faster than fancy indexing
    shape = [1] * code.dim()
    shape[dim] = -1
    for t in range(1, int(span.max())):
        ct = code.index_select(dim, (first + t).clamp_(max=n - 1))
        c0 = torch.where((ct == c0) | (span <= t).view(shape), c0, -1)
    return c0


def _bilinear_at(
    rows: torch.Tensor, width: int, y: _Axis, x: _Axis, cy: torch.Tensor, cx: torch.Tensor
) -> torch.Tensor:
    """Bilinear values at output pixels ``(cy, cx)`` as ``(N, C)``, from pixel-major
    ``rows`` ``(h·width, C)``, rounded as ATen's CPU kernel rounds:
    ``(v00·(1-lx) + v01·lx)·(1-ly) + (v10·(1-lx) + v11·lx)·ly``."""
    y0, y1, wy = y
    x0, x1, wx = x
    a0, a1, b0, b1 = y0[cy] * width, y1[cy] * width, x0[cx], x1[cx]
    lx = wx[cx, None]
    ly = wy[cy, None]
    lx0, ly0 = 1 - lx, 1 - ly
    # index_select and in-place products: the same roundings as the expression, ~3× faster.
    top = rows.index_select(0, a0 + b0).mul_(lx0).add_(rows.index_select(0, a0 + b1).mul_(lx))
    bottom = rows.index_select(0, a1 + b0).mul_(lx0).add_(rows.index_select(0, a1 + b1).mul_(lx))
    return top.mul_(ly0).add_(bottom.mul_(ly))


def _chained_at(
    across: torch.Tensor,
    via: tuple[int, int],
    first_y: _Axis,
    second: tuple[_Axis, _Axis],
    cy: torch.Tensor,
    cx: torch.Tensor,
) -> torch.Tensor:
    """Values of bilinear(bilinear(·) at ``via``) at output pixels ``(cy, cx)`` as ``(N, C)``.

    ``across`` ``(h·via_w, C)``: the first resampling's horizontal pass (ATen's own, pixel-major).
    Each intermediate pixel the outputs need is finished once (its vertical pass; neighbouring
    outputs share them) and rounded to float32, as when the intermediate is materialised;
    then the outputs combine them."""
    (y0, y1, wy), (x0, x1, wx) = second
    via_w = via[1]
    r0, r1, c0, c1 = y0[cy] * via_w, y1[cy] * via_w, x0[cx], x1[cx]
    corners = (r0 + c0, r0 + c1, r1 + c0, r1 + c1)
    need = torch.zeros(via[0] * via_w, dtype=torch.bool, device=across.device)
    for k in corners:
        need[k] = True
    mids = need.nonzero().squeeze(1)  # sorted, unique
    pos = torch.empty(need.numel(), dtype=torch.int64, device=across.device)
    pos[mids] = torch.arange(mids.numel(), device=across.device)
    my, mx = mids // via_w, mids % via_w
    fy0, fy1, fwy = first_y
    ly = fwy[my, None]
    values = across.index_select(0, fy0[my] * via_w + mx).mul_(1 - ly)
    values.add_(across.index_select(0, fy1[my] * via_w + mx).mul_(ly))  # (M, C)
    lx = wx[cx, None]
    ly = wy[cy, None]
    lx0, ly0 = 1 - lx, 1 - ly
    v00, v01, v10, v11 = (values.index_select(0, pos[k]) for k in corners)
    top = v00.mul_(lx0).add_(v01.mul_(lx))
    bottom = v10.mul_(lx0).add_(v11.mul_(lx))
    return top.mul_(ly0).add_(bottom.mul_(ly))


def upsampled_argmax(
    logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None, margin: float = MARGIN
) -> torch.Tensor:
    """The class map ``(H, W) uint8`` of ``logits`` ``(C, h, w)`` (C ≤ 256) resampled to ``size``.

    Equal to ``F.interpolate(z, size, mode="bilinear", align_corners=False).argmax(1)[0]``
    with ``z = logits[None].float()``, or, with ``via``, ``z`` first resampled the same way
    to ``via`` (a torchvision model's own upsampling to its input size) — except where a
    pixel's top two values are within float32 rounding of each other: there the winner
    depends on the order of operations (ATen's CPU and CUDA kernels disagree there too).
    ``margin`` ≤ 0 runs the reference itself.
    """
    logits = logits.float()
    if margin <= 0 or logits.shape[0] < 2:
        return _reference(logits, size, via)
    supports = _supports(logits, via, size)
    keep = _contenders(logits, supports, margin)
    if keep.numel() == 1:  # one class wins everywhere
        return torch.full(size, int(keep), dtype=torch.uint8, device=logits.device)
    if keep.numel() == logits.shape[0]:
        return _class_map(logits, size, via, margin, supports)
    # First maximum among the kept classes, in their order, is the first maximum of all:
    # the others are below by the margin.
    kept = _class_map(logits.index_select(0, keep), size, via, margin, supports)
    return keep.to(torch.uint8)[kept.long()]


def _class_map(
    logits: torch.Tensor,
    size: tuple[int, int],
    via: tuple[int, int] | None,
    margin: float,
    supports: tuple[_Support, _Support],
) -> torch.Tensor:
    """:func:`upsampled_argmax` of float32 ``logits`` ``(C, h, w)`` (C ≥ 2), all classes kept."""
    c, h, w = logits.shape
    height, width = size
    dev = logits.device
    decided = _decided(logits, supports, margin)
    out = decided.clamp(min=0).to(torch.uint8)
    ys, xs = torch.nonzero(decided < 0, as_tuple=True)
    if not ys.numel():
        return out
    if ys.numel() > DENSE_ABOVE * height * width:
        return _reference(logits, size, via)
    # Pixel-major (rows, C) sources: each gather then reads C contiguous floats.
    if via is None:
        rows = logits.reshape(c, h * w).t().contiguous()
        axes = (_source_index(h, height, dev), _source_index(w, width, dev))
    else:
        # The first resampling's horizontal pass, by ATen itself (a resampling whose height
        # stays is that pass exactly: weight 1 on the row, 0 on the next): ~1 ms, and each
        # intermediate pixel is then 2 gathers instead of 4.
        across = F.interpolate(logits[None], size=(h, via[1]), mode="bilinear", align_corners=False)[0]
        rows = across.permute(1, 2, 0).reshape(h * via[1], c).contiguous()
        first_y = _source_index(h, via[0], dev)
        axes = (_source_index(via[0], height, dev), _source_index(via[1], width, dev))
    for start in range(0, ys.numel(), _CHUNK):  # bounded temporaries on huge images
        cy, cx = ys[start : start + _CHUNK], xs[start : start + _CHUNK]
        if via is None:
            values = _bilinear_at(rows, w, axes[0], axes[1], cy, cx)
        else:
            values = _chained_at(rows, via, first_y, axes, cy, cx)
        # max().indices, not argmax(): the same first-maximum index, several times faster on the CPU.
        out[cy, cx] = values.max(dim=1).indices.to(torch.uint8)
    return out


def resampled_grid(
    logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None, stride: int = 1
) -> torch.Tensor:
    """The logits resampled to ``size`` (through ``via``), as the class map resamples them, at every
    ``stride``-th pixel of each axis: ``(C, ceil(H / stride), ceil(W / stride))`` float32, the values
    of output pixels ``(y, x)`` with ``y, x`` multiples of ``stride``.

    Bilinear resampling is separable and a chain of two is still a weighted sum of at most 4
    source rows (then columns), so each axis is one set of 4 gathers with the composed weights:
    ~1 ms at stride 4 for 21 classes at 480×640, where the full resampling takes ~25 ms. Equal to
    the reference within float32 rounding (the order of the sums differs): for the label-quality
    evidence (segbatch.quality), not for the class map.
    """
    z = logits.float()
    dev = z.device
    rows, row_w = _composed_taps(z.shape[1], size[0], None if via is None else via[0], stride, dev)
    cols, col_w = _composed_taps(z.shape[2], size[1], None if via is None else via[1], stride, dev)
    tall = sum(z.index_select(1, r) * wt[None, :, None] for r, wt in zip(rows, row_w, strict=True))
    assert isinstance(tall, torch.Tensor)
    grid = sum(tall.index_select(2, c) * wt[None, None, :] for c, wt in zip(cols, col_w, strict=True))
    assert isinstance(grid, torch.Tensor)
    return grid


def _composed_taps(
    n_in: int, n_out: int, n_via: int | None, stride: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Source indices and weights (each ``(ceil(n_out / stride),)``) of output indices
    ``0, stride, 2·stride, …``: 2 taps for one resampling, 4 through ``n_via``."""
    out = torch.arange(0, n_out, stride, device=device)
    if n_via is None:
        i0, i1, w1 = (t.index_select(0, out) for t in _source_index(n_in, n_out, device))
        return [i0, i1], [1 - w1, w1]
    m0, m1, v1 = (t.index_select(0, out) for t in _source_index(n_via, n_out, device))
    j0, j1, u1 = _source_index(n_in, n_via, device)
    return (
        [j0[m0], j1[m0], j0[m1], j1[m1]],
        [(1 - v1) * (1 - u1[m0]), (1 - v1) * u1[m0], v1 * (1 - u1[m1]), v1 * u1[m1]],
    )


def upsampled_argmax_batch(
    logits: torch.Tensor,
    size: tuple[int, int],
    via: tuple[int, int] | None = None,
    margin: float = MARGIN,
    dense: bool | None = None,
    max_bytes: int = DENSE_MAX_BYTES,
) -> torch.Tensor:
    """Class maps ``(N, H, W) uint8`` of ``logits`` ``(N, C, h, w)``, all resampled to ``size``.

    ``dense`` (default: off the CPU) resamples everything, the reference itself, as many
    images at once as ``max_bytes`` of float32 intermediates allow: a GPU has the bandwidth,
    while the shortcut's data-dependent gathers would wait on the device once per image.
    Otherwise :func:`upsampled_argmax` per image.
    """
    if dense or (dense is None and logits.device.type != "cpu"):
        n, c = logits.shape[:2]
        per_image = 4 * c * (size[0] * size[1] + (via[0] * via[1] if via is not None else 0))
        step = max(1, max_bytes // per_image)
        if step >= n:
            return _reference(logits.float(), size, via)
        out = torch.empty((n, *size), dtype=torch.uint8, device=logits.device)
        for i in range(0, n, step):
            out[i : i + step] = _reference(logits[i : i + step].float(), size, via)
        return out
    if not len(logits):
        return torch.zeros((0, *size), dtype=torch.uint8)
    return torch.stack([upsampled_argmax(z, size, via=via, margin=margin) for z in logits])


def _decided(logits: torch.Tensor, supports: tuple[_Support, _Support], margin: float) -> torch.Tensor:
    """``(H, W)`` int64: the class every source of the pixel agrees on by ``margin``, else -1."""
    top = logits.topk(2, dim=0)
    code = torch.where(top.values[0] - top.values[1] > margin, top.indices[0], -1)  # (h, w), -1: unclear
    (first_y, span_y), (first_x, span_x) = supports
    return _agree(_agree(code, 1, first_x, span_x), 0, first_y, span_y)


def undecided_fraction(
    logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None = None, margin: float = MARGIN
) -> float:
    """Fraction of the output pixels :func:`upsampled_argmax` must compute in full (those
    near a boundary between classes that can win there): ~0.05 on a photo, 1.0 for noise."""
    z = logits.float()
    supports = _supports(z, via, size)
    keep = _contenders(z, supports, margin)
    if keep.numel() == 1:  # one class wins everywhere: nothing to compute
        return 0.0
    return float((_decided(z.index_select(0, keep), supports, margin) < 0).float().mean())


def _reference(logits: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None) -> torch.Tensor:
    """Resample all values (through ``via``), then argmax: ``(C, h, w)`` → ``(H, W) uint8``,
    or ``(N, C, h, w)`` → ``(N, H, W) uint8``."""
    z = logits[None] if logits.dim() == 3 else logits
    if via is not None:
        z = F.interpolate(z, size=via, mode="bilinear", align_corners=False)
    up = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
    maps = up.max(dim=1).indices.to(torch.uint8)  # max().indices: ~5× faster than argmax() here
    return maps[0] if logits.dim() == 3 else maps
