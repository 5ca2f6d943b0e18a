"""Label quality for semantic segmentation: cleanlab's scores and label issues, streamed. Pure numpy.

cleanlab (2.9, ``cleanlab.segmentation``) needs the probabilities of every image in memory at
once. Here each image is seen once (:func:`image_evidence`), and what the dataset-level steps
need is kept per image in a bounded form (:class:`ImageEvidence`) and reduced with memory
independent of the number of images (:class:`QualityReducer`).

Definitions, for a labeled pixel x with given label y and class probabilities p (K classes);
each mirrors the cleanlab function named after it:
    self-confidence   s(x) = p_y(x)                       rank.get_self_confidence_for_each_label
    image score       Σ s·e^{(1−s)/τ} / Σ e^{(1−s)/τ}, τ = 0.1 (softmin; 0 worst, 1 best)
                      segmentation.rank.get_label_quality_scores(method="softmin"), multilabel_scorer.softmin
    threshold t_k     mean of p_k over the pixels labeled k, clipped below at 2e-6 (a class never
                      labeled gets 2e-6)     count.get_confident_thresholds via
                      experimental.label_issues_batched.LabelInspector.update_confident_thresholds
    issue count T     #{x : argmax p ≠ y and max p ≥ t_{argmax p} − 1e-6}
                      LabelInspector._update_num_label_issues (default: not calibrated, not "thorough")
    flagged pixels    the T pixels of lowest s in the whole dataset (ties in any order), less those
                      where argmax p = y         LabelInspector.get_label_issues → rank.find_top_issues,
                      then segmentation.filter.find_label_issues (downsample=1)
    swaps             (given y, argmax p) counted over flagged pixels   segmentation.summary.common_label_issues
Note that ``cleanlab.segmentation.filter.find_label_issues`` is this batched LabelInspector
estimate, not ``cleanlab.filter.find_label_issues`` (confident joint, prune_by_noise_rate).
Pixels labeled :data:`IGNORE` have no label: they count nowhere (cleanlab has no ignore label).

Streaming:
    during the run   ev = image_evidence(probs, label)       per image; ev.score is final already
                     (or image_evidence_from_maps(s, max p, argmax p, label): three maps a GPU makes)
    reduce           r = QualityReducer(K); r.add(ev) per image, any order (r.merge(other)); cut = r.finish()
    second pass      cut.flag(ev) per stored evidence → ImageIssues; IssueTotals for metrics.json

Shapes and dtypes:
    probs           (K, H, W) float32 (or float64) probabilities of one image, classes first
    label           (H, W) integer class ids in [0, K), or IGNORE
    ImageEvidence   M off-diagonal pixels (labeled, argmax p ≠ y), U distinct self-confidence bins:
      class_pixels (K,) int64 · class_confidence (K,) float64 · off_index (M,) int32 raster index
      · off_label, off_pred (M,) uint8 (uint16 when K > 256) · off_conf (M,) uint16 self-confidence
      bin · off_top (M,) uint16 round(max p · 65535) · diag_bins (U,) uint16 · diag_counts (U,) uint32
    ImageIssues     mask (H, W) bool, swaps (K, K) int64 [given, predicted]

How exact
---------
* The image score is exact: cleanlab's formula in float64 over the float self-confidences.
* Thresholds are exact: per-class float64 sums per image, added across images without rounding
  (Shewchuk's exact summation), so they do not depend on the order of images either. (cleanlab
  averages float32 means per batch: ~1e-7 apart from these.)
* Self-confidence is ranked on float16 bins (relative step 2^-11; bin = the float16 value's
  bits, 0..0x3800 for [0, 0.5], one bin for (0.5, 1]): off-diagonal pixels always have s ≤ 0.5,
  so higher values never need more. Where the T-th pixel falls inside a bin, cleanlab takes the
  lowest of that bin's pixels; here the bin's off-diagonal pixels are all taken when at least half
  of the bin is, else none. Error ≤ the off-diagonal pixels of that one bin.
* max p is kept as round(max p · 65535): T can be off by the off-diagonal pixels predicted as k
  whose max p lies within half a step (7.6e-6) of t_k − 1e-6; each miscount moves one flag.
  :class:`IssueCut` reports the sum of both bounds (``uncertain_pixels``). Measured against
  cleanlab: 0–2 differing pixels of 1.5k–10k flagged (tests' sets), 5 of 17.7k and 13 of 14.2k
  (K=21, 6 images of 240×320), always within the bound.
* ``stride`` s > 1 samples every s-th pixel of every s-th row: the result is then (as above)
  cleanlab's on the sampled pixels, each flag standing for its s×s block. Against full
  resolution (tests' sets, 96×128): stride 2 keeps the image scores' ranking (Spearman
  0.96–0.98) and flagged shares (±0.25 points), the flagged masks overlap with IoU 0.86–0.90
  (blocky edges); stride 4: 0.89–0.92, ±0.8 points, IoU 0.66–0.74.

Bound: per image, ``to_bytes`` holds at most :func:`evidence_bound` bytes,
42 + 16·K + ⌈n/8⌉ + 6·(M + U) ≤ 42 + 16·K + 6.125·n, for n sampled pixels, M disagreeing ones
and U ≤ 14337 distinct bins of agreeing pixels with s ≤ 0.5 (8 bytes per disagreeing pixel when
K > 256). 640×480, K=21: 1.88 MB at most (every pixel disagrees); in practice 38.8 kB + 6 bytes
per disagreeing pixel (~5–10 % of them for a fair model: 130–220 kB, ~40 % of that after the
part files' zstd). ``stride`` 2 divides all of it by 4.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from segbatch.masks import Rle, encode_binary
from segbatch.metrics import IGNORE

TEMPERATURE = 0.1  # cleanlab's default softmin temperature (segmentation.rank.get_label_quality_scores)
FLOATING_POINT_COMPARISON = 1e-6  # cleanlab.internal.constants
THRESHOLD_LOWER_BOUND = 2 * FLOATING_POINT_COMPARISON  # CONFIDENT_THRESHOLDS_LOWER_BOUND
HALF_BITS = 0x3800  # float16 bits of 0.5: bins 0..HALF_BITS are the float16 values in [0, 0.5]
OVER = HALF_BITS + 1  # one bin for self-confidence above 0.5 (never off-diagonal)
CONF_BINS = OVER + 1
TOP_STEPS = 65535  # max p is stored as round(max p · TOP_STEPS)
# With probabilities summing to one, two classes can share the maximum only when it is ≤ 0.5;
# the margin covers float32 rounding of the sum.
_TIE_POSSIBLE = 0.5 + 1e-6

_MAGIC = b"SBQ1"
_HEADER = struct.Struct("<4sIIHIQIId")  # magic, height, width, stride, K, labeled, M, U, score


def softmin(scores: np.ndarray, temperature: float = TEMPERATURE) -> float:
    """cleanlab's softmin pooling of ``(n,)`` scores in [0, 1]: ``Σ s·softmax((1 − s)/τ)``.

    Mirrors ``cleanlab.internal.multilabel_scorer.softmin`` (with ``numerics.softmax``, shifted),
    in float64. NaN for an empty array (cleanlab raises).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return math.nan
    x = (1.0 - s) / temperature
    w = np.exp(x - x.max())  # shifted as cleanlab's softmax(shift=True): the largest weight is 1
    return float(np.dot(s, w) / w.sum())


def _class_dtype(num_classes: int) -> type[np.unsignedinteger]:
    return np.uint8 if num_classes <= 256 else np.uint16


def _grid(height: int, width: int, stride: int) -> tuple[int, int]:
    return -(-height // stride), -(-width // stride)


def evidence_bound(height: int, width: int, num_classes: int, stride: int = 1) -> int:
    """Most bytes :meth:`ImageEvidence.to_bytes` can take for an image of this size."""
    gh, gw = _grid(height, width, stride)
    n = gh * gw
    # Each sampled pixel is either off-diagonal (4 + 2c bytes) or, at most, the first of a
    # self-confidence bin (6 bytes ≤ 4 + 2c); the position bitmap takes n bits.
    per_pixel = 4 + 2 * np.dtype(_class_dtype(num_classes)).itemsize
    return _HEADER.size + 16 * num_classes + -(-n // 8) + n * per_pixel


def _conf_bins(s: np.ndarray) -> np.ndarray:
    """``(n,) uint16`` rank bins of self-confidences: float16 bits in [0, 0.5], OVER above."""
    bits = np.where(s > 0, s, 0).astype(np.float16).view(np.uint16)  # -0.0 would sort as 0x8000
    return np.where(s <= 0.5, bits, OVER).astype(np.uint16)  # NaN → OVER


def _bin_value(b: int) -> float:
    """The self-confidence a bin stands for (its float16 value; 1.0 for OVER)."""
    return 1.0 if b >= OVER else float(np.array([b], dtype=np.uint16).view(np.float16)[0])


def _planes(a: np.ndarray) -> np.ndarray:
    """``(m,) uint16`` → its low bytes, then its high bytes: zstd packs the smooth high bytes
    apart from the noisy low ones (~20 % smaller part files)."""
    return np.ascontiguousarray(a.astype("<u2").view(np.uint8).reshape(-1, 2).T)


def _unplanes(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b.reshape(2, -1).T).view("<u2").ravel().astype(np.uint16)


@dataclass(eq=False)
class ImageEvidence:
    """What the dataset steps need from one image (see the module header for shapes)."""

    height: int  # of the image (before stride)
    width: int
    stride: int
    num_classes: int
    score: float  # softmin of the self-confidences, final; NaN without labeled pixels
    labeled: int  # labeled pixels of the sampled grid
    class_pixels: np.ndarray
    class_confidence: np.ndarray
    off_index: np.ndarray
    off_label: np.ndarray
    off_pred: np.ndarray
    off_conf: np.ndarray
    off_top: np.ndarray
    diag_bins: np.ndarray
    diag_counts: np.ndarray

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of the sampled grid the pixel data lives on."""
        return _grid(self.height, self.width, self.stride)

    def to_bytes(self) -> bytes:
        """Serialize (little endian; at most :func:`evidence_bound` bytes)."""
        gh, gw = self.grid
        mask = np.zeros(gh * gw, dtype=bool)
        mask[self.off_index] = True
        header = _HEADER.pack(
            _MAGIC,
            self.height,
            self.width,
            self.stride,
            self.num_classes,
            self.labeled,
            len(self.off_index),
            len(self.diag_bins),
            self.score,
        )
        parts = [
            self.class_pixels.astype("<i8"),
            self.class_confidence.astype("<f8"),
            np.packbits(mask),
            self.off_label,
            self.off_pred,
            _planes(self.off_conf),
            _planes(self.off_top),
            self.diag_bins.astype("<u2"),
            self.diag_counts.astype("<u4"),
        ]
        return header + b"".join(p.tobytes() for p in parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageEvidence:
        """Inverse of :meth:`to_bytes`."""
        magic, height, width, stride, k, labeled, m, u, score = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError(f"not segbatch label-quality evidence (magic {magic!r}, expected {_MAGIC!r})")
        gh, gw = _grid(height, width, stride)
        cdt = np.dtype(_class_dtype(k))
        pos = _HEADER.size

        def take(dtype: npt.DTypeLike, count: int) -> np.ndarray:
            nonlocal pos
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            pos += arr.nbytes
            return arr

        class_pixels = take("<i8", k).astype(np.int64)
        class_confidence = take("<f8", k).astype(np.float64)
        mask = np.unpackbits(take(np.uint8, -(-gh * gw // 8)), count=gh * gw).astype(bool)
        off_index = np.flatnonzero(mask).astype(np.int32)
        if len(off_index) != m:
            raise ValueError(f"corrupt evidence: {len(off_index)} positions for {m} pixels")
        off_label, off_pred = take(cdt, m).copy(), take(cdt, m).copy()
        off_conf, off_top = _unplanes(take(np.uint8, 2 * m)), _unplanes(take(np.uint8, 2 * m))
        diag_bins, diag_counts = take("<u2", u).astype(np.uint16), take("<u4", u).astype(np.uint32)
        if pos != len(data):
            raise ValueError(f"corrupt evidence: {len(data)} bytes, expected {pos}")
        return cls(
            height,
            width,
            stride,
            k,
            score,
            labeled,
            class_pixels,
            class_confidence,
            off_index,
            off_label,
            off_pred,
            off_conf,
            off_top,
            diag_bins,
            diag_counts,
        )


def _check_label(label: np.ndarray, num_classes: int) -> tuple[np.ndarray, bool]:
    """``label`` flattened to intp, and whether it holds IGNORE; raises on other bad ids."""
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integer class ids, got dtype {label.dtype}")
    lab = label.ravel().astype(np.intp)
    lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
    if hi >= num_classes or (lo < 0 and lo != IGNORE):  # IGNORE is -1: the only id below 0
        bad = sorted({int(v) for v in np.unique(lab) if v != IGNORE and not 0 <= v < num_classes})
        raise ValueError(f"label ids {bad[:10]} outside [0, {num_classes}) and not IGNORE ({IGNORE})")
    return lab, lo < 0


def image_evidence(probs: np.ndarray, label: np.ndarray, *, stride: int = 1) -> ImageEvidence:
    """Everything the label-quality steps need from one image, in one pass over its pixels.

    Args:
        probs: ``(K, H, W)`` float class probabilities (softmax output, summing to one per pixel).
        label: ``(H, W)`` integer given labels in ``[0, K)`` or :data:`IGNORE`.
        stride: use every ``stride``-th pixel of every ``stride``-th row (1: all pixels).
    """
    if probs.ndim != 3 or label.shape != probs.shape[1:]:
        raise ValueError(f"expected probs (K, H, W) and label (H, W), got {probs.shape} and {label.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point probabilities, got dtype {probs.dtype}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    k, height, width = probs.shape
    if stride > 1:
        probs, label = probs[:, ::stride, ::stride], label[::stride, ::stride]
    p = np.ascontiguousarray(probs).reshape(k, -1)
    n = p.shape[1]
    lab, has_ignore = _check_label(label, k)
    # Self-confidence by a flat gather (2× faster than p[lab, arange] at 640×480); ignored
    # pixels read class 0 and are dropped by _assemble.
    sc = p.ravel()[np.maximum(lab, 0) * n + np.arange(n)]
    top = p.max(axis=0)
    # argmax ≠ label: certainly where s < max p; where s = max p only through a tie for the
    # maximum resolved to a lower class id (np.argmax takes the first). argmax over K costs
    # ~10× a max, so it is computed for those pixels alone.
    maybe = (sc < top) | ((sc == top) & (top <= _TIE_POSSIBLE))
    if has_ignore:
        maybe &= lab != IGNORE
    at = np.flatnonzero(maybe)
    pred = p[:, at].argmax(axis=0)
    off = pred != lab[at]
    return _assemble(lab, sc, top, at[off], pred[off], k, (height, width), stride)


def image_evidence_from_maps(
    self_confidence: np.ndarray,
    top_prob: np.ndarray,
    top_class: np.ndarray,
    label: np.ndarray,
    *,
    num_classes: int,
    stride: int = 1,
    image_size: tuple[int, int] | None = None,
) -> ImageEvidence:
    """:func:`image_evidence` from three per-pixel maps a GPU can compute next to the model.

    Args:
        self_confidence: ``(h, w)`` float, probability of the given label (any value where IGNORE).
        top_prob: ``(h, w)`` float, the largest probability.
        top_class: ``(h, w)`` integer, its class: the *first* largest, as ``np.argmax`` and
            ``torch.argmax`` give.
        label: ``(h, w)`` integer given labels in ``[0, K)`` or :data:`IGNORE`.
        num_classes: K.
        stride, image_size: when the maps sample an image of ``image_size`` ``(H, W)`` every
            ``stride`` pixels (for the size of flagged masks); default: the maps are the image.
    """
    shape = label.shape
    if len(shape) != 2 or self_confidence.shape != shape or top_prob.shape != shape or top_class.shape != shape:
        raise ValueError(
            f"expected four (h, w) maps of one shape, got self_confidence {self_confidence.shape}, "
            f"top_prob {top_prob.shape}, top_class {top_class.shape}, label {label.shape}"
        )
    height, width = image_size if image_size is not None else (shape[0] * stride, shape[1] * stride)
    if stride < 1 or _grid(height, width, stride) != shape:
        raise ValueError(f"maps of shape {shape} do not sample an image of {(height, width)} at stride {stride}")
    lab, has_ignore = _check_label(label, num_classes)
    pred = top_class.ravel()
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"top_class ids {int(pred.min())}..{int(pred.max())} outside [0, {num_classes})")
    off = pred != lab
    if has_ignore:
        off &= lab != IGNORE
    at = np.flatnonzero(off)
    return _assemble(lab, self_confidence.ravel(), top_prob.ravel(), at, pred[at], num_classes, (height, width), stride)


def _assemble(
    lab: np.ndarray,
    sc: np.ndarray,
    top: np.ndarray,
    off_at: np.ndarray,
    off_pred: np.ndarray,
    k: int,
    size: tuple[int, int],
    stride: int,
) -> ImageEvidence:
    """Evidence from flat ``(n,)`` labels, self-confidences and top probabilities, given the
    raster indices ``off_at`` (ascending) of the labeled pixels whose argmax is not their label."""
    valid = lab != IGNORE
    all_valid = bool(valid.all())
    lab_v, sc_v = (lab, sc) if all_valid else (lab[valid], sc[valid])
    low = sc <= 0.5  # on-diagonal pixels with s ≤ 0.5 are counted by bin; the rest only in total
    if not all_valid:
        low &= valid
    low[off_at] = False
    diag = np.bincount(_conf_bins(sc[low]), minlength=CONF_BINS)
    diag_bins = np.flatnonzero(diag)
    cdt = _class_dtype(k)
    return ImageEvidence(
        height=size[0],
        width=size[1],
        stride=stride,
        num_classes=k,
        score=softmin(sc_v),
        labeled=len(lab_v),
        class_pixels=np.bincount(lab_v, minlength=k).astype(np.int64),
        class_confidence=np.bincount(lab_v, weights=sc_v, minlength=k).astype(np.float64),
        off_index=off_at.astype(np.int32),
        off_label=lab[off_at].astype(cdt),
        off_pred=off_pred.astype(cdt),
        off_conf=_conf_bins(sc[off_at]),
        off_top=np.rint(np.clip(top[off_at], 0.0, 1.0) * TOP_STEPS).astype(np.uint16),
        diag_bins=diag_bins.astype(np.uint16),
        diag_counts=diag[diag_bins].astype(np.uint32),
    )


class _ExactSum:
    """Exact running sum of floats (Shewchuk's partials, as ``math.fsum``), order-independent."""

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        i = 0
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                self.partials[i] = lo
                i += 1
            x = hi
        self.partials[i:] = [x]

    def value(self) -> float:
        return math.fsum(self.partials)


class QualityReducer:
    """Dataset reduction of :class:`ImageEvidence`, one image at a time, in any order.

    Memory: ``8·K·65536`` bytes (max p of disagreeing pixels per predicted class) plus
    ``2·8·14338`` (self-confidence bins) plus O(K), whatever the number of images.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.images = 0
        self.labeled = 0
        self.class_pixels = np.zeros(num_classes, dtype=np.int64)
        self._confidence = [_ExactSum() for _ in range(num_classes)]
        self.conf_hist = np.zeros(CONF_BINS, dtype=np.int64)  # every labeled pixel, by bin
        self.off_hist = np.zeros(CONF_BINS, dtype=np.int64)  # disagreeing pixels, by bin
        self.top_hist = np.zeros((num_classes, TOP_STEPS + 1), dtype=np.int64)  # [argmax, level]

    def add(self, ev: ImageEvidence) -> None:
        """Count one image in (each image once)."""
        if ev.num_classes != self.num_classes:
            raise ValueError(f"evidence has {ev.num_classes} classes, the reducer {self.num_classes}")
        self.images += 1
        self.labeled += ev.labeled
        self.class_pixels += ev.class_pixels
        for c in np.flatnonzero(ev.class_pixels):
            self._confidence[c].add(float(ev.class_confidence[c]))
        off = np.bincount(ev.off_conf, minlength=CONF_BINS)
        self.off_hist += off
        self.conf_hist += off
        self.conf_hist[ev.diag_bins] += ev.diag_counts
        self.conf_hist[OVER] += ev.labeled - len(ev.off_index) - int(ev.diag_counts.sum())
        if len(ev.off_index):
            keys, counts = np.unique(ev.off_pred.astype(np.int64) * (TOP_STEPS + 1) + ev.off_top, return_counts=True)
            self.top_hist.ravel()[keys] += counts

    def merge(self, other: QualityReducer) -> None:
        """Add another reducer's images (e.g. one per worker); exact, so the order does not matter."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"reducer has {other.num_classes} classes, this one {self.num_classes}")
        self.images += other.images
        self.labeled += other.labeled
        self.class_pixels += other.class_pixels
        for mine, theirs in zip(self._confidence, other._confidence, strict=True):
            for x in theirs.partials:
                mine.add(x)
        self.conf_hist += other.conf_hist
        self.off_hist += other.off_hist
        self.top_hist += other.top_hist

    def thresholds(self) -> np.ndarray:
        """``(K,) float64`` per-class thresholds t_k (cleanlab's confident thresholds)."""
        sums = np.array([s.value() for s in self._confidence])
        means = np.divide(sums, self.class_pixels, out=np.zeros(self.num_classes), where=self.class_pixels > 0)
        return np.clip(means, THRESHOLD_LOWER_BOUND, None)

    def finish(self) -> IssueCut:
        """The dataset-wide decision, from everything added: thresholds, T, and the cut."""
        t = self.thresholds()
        cutoff = t - FLOATING_POINT_COMPARISON
        levels = np.arange(TOP_STEPS + 1) / TOP_STEPS
        num_issues = int(self.top_hist[levels[None, :] >= cutoff[:, None]].sum())
        # Pixels whose stored level straddles t_k − 1e-6: the count is unsure by them.
        edge = np.clip(np.rint(cutoff * TOP_STEPS), 0, TOP_STEPS).astype(np.intp)
        unsure_count = int(self.top_hist[np.arange(self.num_classes), edge].sum())
        if num_issues == 0:
            return IssueCut(t, self.class_pixels.copy(), 0, -1, False, 0.0, unsure_count)
        cum = np.cumsum(self.conf_hist)
        b = int(np.searchsorted(cum, num_issues))  # first bin reaching T pixels
        taken = num_issues - (int(cum[b - 1]) if b else 0)
        whole = int(self.conf_hist[b])
        include = 2 * taken >= whole
        unsure_cut = min(int(self.off_hist[b]), whole - taken if include else taken)
        return IssueCut(t, self.class_pixels.copy(), num_issues, b, include, _bin_value(b), unsure_count + unsure_cut)


def _swap_list(swaps: np.ndarray) -> list[tuple[int, int, int]]:
    """Nonzero cells of a ``(K, K)`` swap matrix as ``(given, predicted, pixels)``, most first."""
    cells = [(int(a), int(b), int(swaps[a, b])) for a, b in np.argwhere(swaps)]
    return sorted(cells, key=lambda x: (-x[2], x[0], x[1]))


@dataclass(frozen=True, eq=False)
class ImageIssues:
    """Label issues of one image. ``flagged`` and ``labeled`` count pixels of the sampled grid."""

    flagged: int
    labeled: int
    mask: np.ndarray  # (H, W) bool at the image's size; with stride s each flag fills its s×s block
    swaps: np.ndarray  # (K, K) int64: flagged pixels by [given label, predicted class]

    @property
    def share(self) -> float | None:
        """Flagged share of the labeled pixels; None without labeled pixels."""
        return self.flagged / self.labeled if self.labeled else None

    def swap_list(self) -> list[tuple[int, int, int]]:
        """``[(given, predicted, pixels)]``, most pixels first (ties by class ids)."""
        return _swap_list(self.swaps)

    def rle(self) -> Rle:
        """The flagged mask as a COCO RLE."""
        return encode_binary(self.mask[:, :, None])[0]


@dataclass(frozen=True, eq=False)
class IssueCut:
    """The dataset-wide decision: flag an image's disagreeing pixels below the cut bin.

    Small and picklable, so the second pass can run anywhere.
    """

    thresholds: np.ndarray  # (K,) float64
    class_pixels: np.ndarray  # (K,) int64 labeled pixels per class
    num_issues: int  # T
    cut_bin: int  # -1: nothing is flagged
    cut_inclusive: bool  # the cut bin's disagreeing pixels are flagged too
    cut_value: float  # self-confidence of the cut bin
    uncertain_pixels: int  # bound on flags that may differ from cleanlab's (see "How exact")

    def flag(self, ev: ImageEvidence) -> ImageIssues:
        """One image's label issues from its stored evidence."""
        k = len(self.thresholds)
        if ev.num_classes != k:
            raise ValueError(f"evidence has {ev.num_classes} classes, the cut {k}")
        sel = ev.off_conf < self.cut_bin
        if self.cut_inclusive:
            sel |= ev.off_conf == self.cut_bin
        gh, gw = ev.grid
        grid = np.zeros(gh * gw, dtype=bool)
        grid[ev.off_index[sel]] = True
        mask = grid.reshape(gh, gw)
        if ev.stride > 1:
            mask = mask.repeat(ev.stride, axis=0).repeat(ev.stride, axis=1)[: ev.height, : ev.width]
        pairs = ev.off_label[sel].astype(np.int64) * k + ev.off_pred[sel]
        swaps = np.bincount(pairs, minlength=k * k).reshape(k, k)
        return ImageIssues(flagged=int(sel.sum()), labeled=ev.labeled, mask=mask, swaps=swaps)


class IssueTotals:
    """Sums of :class:`ImageIssues` over a dataset, for metrics.json."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.images = 0
        self.images_with_issues = 0
        self.labeled = 0
        self.flagged = 0
        self.swaps = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, issues: ImageIssues) -> None:
        """Count one image's issues in (each image once)."""
        self.images += 1
        self.images_with_issues += issues.flagged > 0
        self.labeled += issues.labeled
        self.flagged += issues.flagged
        self.swaps += issues.swaps

    def metrics(self, cut: IssueCut, names: Sequence[str], top: int = 20) -> dict[str, Any]:
        """The ``label_quality`` part of metrics.json; ``names`` are the K class names."""
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} names for {self.num_classes} classes")
        classes = {}
        for c in np.flatnonzero(cut.class_pixels + self.swaps.sum(axis=0)).tolist():
            classes[names[c]] = {
                "threshold": float(cut.thresholds[c]),
                "labeled_pixels": int(cut.class_pixels[c]),
                "flagged_pixels": int(self.swaps[c].sum()),
                "predicted_instead": {names[p]: int(self.swaps[c, p]) for p in np.flatnonzero(self.swaps[c]).tolist()},
            }
        return {
            "temperature": TEMPERATURE,
            "labeled_images": self.images,
            "images_with_issues": self.images_with_issues,
            "labeled_pixels": self.labeled,
            "estimated_issues": cut.num_issues,
            "flagged_pixels": self.flagged,
            "flagged_share": self.flagged / self.labeled if self.labeled else None,
            "cut_self_confidence": cut.cut_value,
            "uncertain_pixels": cut.uncertain_pixels,
            "classes": classes,
            "common_label_issues": [
                {"given_label": names[a], "predicted_label": names[b], "num_pixel_issues": n}
                for a, b, n in _swap_list(self.swaps)[:top]
            ],
        }
