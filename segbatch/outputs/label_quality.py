"""Label quality of a run, from the evidence its committed parts hold.

Label issues need the whole run before any pixel is flagged (per-class thresholds, the
dataset's issue count): a first pass over the parts' ``quality_evidence`` alone reduces them
with memory independent of the number of images (:class:`segbatch.quality.QualityReducer`);
each image is then flagged from its own evidence. Finalize does the second pass while it
writes ``images.parquet``; ``segbatch metrics`` repeats both from the parts, which a finished
run keeps, so metrics.json's ``label_quality`` is recomputed, not copied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from segbatch.categories import EvalSpace, QualitySpace
from segbatch.outputs.folder import OutDir
from segbatch.outputs.parts import merge_parts
from segbatch.quality import ImageEvidence, IssueCut, IssueTotals, QualityReducer


class LabelQuality:
    """The dataset-wide cut, and the totals of the images flagged with it so far."""

    def __init__(self, cut: IssueCut, names: tuple[str, ...]) -> None:
        self.cut = cut
        self.names = names
        self.totals = IssueTotals(len(names))

    @classmethod
    def reduce(cls, out: OutDir, image_ids: Collection[int], eval_classes: Mapping[str, Any]) -> LabelQuality | None:
        """First pass over the parts' evidence of ``image_ids``; None when no image has any."""
        reducer: QualityReducer | None = None
        for row in merge_parts(out, out.part_files(), columns=["quality_evidence"]):
            if row["quality_evidence"] is None or row["image_id"] not in image_ids:
                continue
            ev = ImageEvidence.from_bytes(row["quality_evidence"])
            reducer = reducer or QualityReducer(ev.num_classes)
            reducer.add(ev)
        if reducer is None:
            return None
        names = QualitySpace.of(EvalSpace.from_dict(eval_classes)).names
        return cls(reducer.finish(), names)

    def flag(self, row: dict[str, Any], evidence: bytes) -> None:
        """Fill one image row's ``label_issue_*`` columns and count it in the totals."""
        issues = self.cut.flag(ImageEvidence.from_bytes(evidence))
        self.totals.add(issues)
        row["label_issue_pixels"] = issues.flagged
        row["label_issue_share"] = issues.share
        row["label_issue_swaps"] = [
            {"given": self.names[a], "predicted": self.names[b], "pixels": n} for a, b, n in issues.swap_list()
        ]
        rle = issues.rle()
        row["label_issue_mask"] = {"size": rle["size"], "counts": rle["counts"]}

    def metrics(self) -> dict[str, Any]:
        """The ``label_quality`` part of metrics.json."""
        return self.totals.metrics(self.cut, self.names)


def recompute_label_quality(
    out: OutDir, image_ids: Collection[int], eval_classes: Mapping[str, Any]
) -> dict[str, Any] | None:
    """metrics.json's ``label_quality`` again from a finished run's parts (both passes)."""
    quality = LabelQuality.reduce(out, image_ids, eval_classes)
    if quality is None:
        return None
    seen: set[int] = set()
    for row in merge_parts(out, out.part_files(), columns=["quality_evidence"]):
        # merge_parts drops retried duplicates; the set guards the sum all the same.
        if row["quality_evidence"] is None or row["image_id"] not in image_ids or row["image_id"] in seen:
            continue
        seen.add(row["image_id"])
        quality.flag({}, row["quality_evidence"])
    return quality.metrics()
