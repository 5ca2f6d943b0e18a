"""What the audit ranks and counts, streamed over ``images.parquet`` rows. Pure numpy.

* :func:`choose_rank`: which per-image score orders the report's image panels.
* :class:`Lowest`: the ``n`` rows with the lowest score, in one pass with ``O(n)`` memory.
* :func:`spearman`: rank correlation of two score lists (average ranks for ties).
* :class:`ClassFrequency`: per class, the images that hold it and its share of all pixels.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from segbatch.errors import JobError

LABEL_QUALITY = "label-quality"
DICE = "dice"
CONFIDENCE = "confidence"
RANKS = (LABEL_QUALITY, DICE, CONFIDENCE)
# The images.parquet column each ranking reads (lowest first: the worst label, the worst
# agreement, the least sure model).
RANK_COLUMN = {LABEL_QUALITY: "label_quality", DICE: "dice", CONFIDENCE: "confidence"}


def choose_rank(requested: str | None, *, labeled: bool, has_label_quality: bool, has_confidence: bool) -> str:
    """The ranking of the image panels: ``requested``, or the default for the run.

    Default: label quality where the run has it, else Dice where it has labels, else confidence.

    Raises:
        JobError: ``requested`` is unknown or needs what the run does not have; the message
            names the value and the rankings valid for this run.
    """
    valid = [
        r
        for r, ok in ((LABEL_QUALITY, labeled and has_label_quality), (DICE, labeled), (CONFIDENCE, has_confidence))
        if ok
    ]
    if requested is None:
        if not valid:
            raise JobError("this run has neither labels nor confidence columns: there is no ranking of its images")
        return valid[0]
    if requested not in RANKS:
        raise JobError(f"rank {requested!r} is unknown; valid: {', '.join(RANKS)}")
    if requested not in valid:
        why = {
            LABEL_QUALITY: "label-quality columns (a semantic model's run with labels and --quality-stride > 0)",
            DICE: "labels",
            CONFIDENCE: "the confidence column (written by segbatch since issue 17)",
        }[requested]
        raise JobError(
            f"rank {requested!r} needs {why}, which this run does not have; valid for this run: "
            f"{', '.join(valid) or 'none'}"
        )
    return requested


class Lowest:
    """Keeps the ``n`` items with the lowest ``(score, image_id)``; None scores are skipped.

    Memory ``O(n)`` whatever the number of rows added; :meth:`ranked` is ascending.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        self._heap: list[tuple[float, int, dict[str, Any]]] = []  # a max-heap through negation

    def add(self, score: float | None, image_id: int, row: dict[str, Any]) -> None:
        if score is None or np.isnan(score) or self.n == 0:
            return
        item = (-float(score), -int(image_id), row)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def ranked(self) -> list[tuple[float, int, dict[str, Any]]]:
        """``[(score, image_id, row)]``, lowest score first, ties by image_id."""
        return sorted(((-s, -i, r) for s, i, r in self._heap), key=lambda t: (t[0], t[1]))


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(n,) float64`` ranks 1..n of ``values``; tied values share the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    # The mean rank of each distinct value, read back per element.
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray(sums[inverse] / counts[inverse], dtype=np.float64)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation of paired ``(n,)`` scores; None for n < 3 or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two (n,) arrays of one length, got {a.shape} and {b.shape}")
    if len(a) < 3:
        return None
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else None


class ClassFrequency:
    """Per evaluation class: images holding it and pixel sums, predicted and (with labels) labeled.

    Fed ``images.parquet`` ``class_stats`` lists; ``names`` are the evaluation classes in order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        k = len(self.names)
        self.pred_images = np.zeros(k, dtype=np.int64)
        self.pred_pixels = np.zeros(k, dtype=np.int64)
        self.gt_images = np.zeros(k, dtype=np.int64)
        self.gt_pixels = np.zeros(k, dtype=np.int64)
        self.images = 0

    def add(self, class_stats: Iterable[Mapping[str, Any]] | None) -> None:
        """Count one image's ``class_stats`` (``category``, ``pred_pixels``, ``gt_pixels``)."""
        self.images += 1
        for s in class_stats or ():
            name = s["category"]
            if name not in self._index:
                raise JobError(f"class_stats name a class {name!r} outside the run's classes {self.names}")
            c = self._index[name]
            p, g = s.get("pred_pixels") or 0, s.get("gt_pixels") or 0
            self.pred_pixels[c] += p
            self.pred_images[c] += p > 0
            self.gt_pixels[c] += g
            self.gt_images[c] += g > 0

    @staticmethod
    def _share(pixels: np.ndarray) -> np.ndarray:
        total = pixels.sum()
        return pixels / total if total else np.zeros(len(pixels), dtype=np.float64)

    def pred_share(self) -> np.ndarray:
        """``(K,) float64`` each class's share of all predicted pixels."""
        return self._share(self.pred_pixels)

    def gt_share(self) -> np.ndarray:
        """``(K,) float64`` each class's share of all labeled (not ignored) pixels."""
        return self._share(self.gt_pixels)
