"""What a run did, as returned by :func:`segbatch.run` and printed at its end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHOWN_CLASSES = 8  # classes named in the mean-Dice line before "…"


@dataclass(frozen=True)
class RunSummary:
    """What a run did; also printed at its end."""

    output: str
    num_images: int
    num_processed: int  # images computed by this run
    num_skipped: int  # images already committed by an earlier run
    num_errors: int
    num_masks: int
    num_labeled: int
    mean_dice: float | None
    seconds: float
    images_per_second: float | None
    metrics: dict[str, Any]
    report: bool = False  # report.html was written
    background: str | None = None  # name of the background class, if the model has one
    notes: tuple[str, ...] = ()  # things the user should know (new input files, exports applied)

    def lines(self) -> list[str]:
        rate = f", {self.images_per_second:.2f} img/s" if self.images_per_second else ""
        out = [
            f"segbatch: {self.num_images} images ({self.num_processed} processed, {self.num_skipped} resumed, "
            f"{self.num_errors} errors) -> {self.num_masks} masks in {self.seconds:.1f} s{rate}"
        ]
        if self.num_labeled:
            out.append("  " + self._mean_line())
            for name, c in self.metrics.get("classes", {}).items():
                if c.get("dice") is not None:
                    out.append(f"    {name:<24} Dice {c['dice']:.4f}  IoU {c['iou']:.4f}")
        out += self._unmatched_lines()
        files = "predictions.coco.json, predictions.results.json, images.parquet, masks.parquet, metrics.json"
        if self.report:
            files += ", report.html"
        out.append(f"  outputs in {self.output}: {files}")
        out += [f"  {note}" for note in self.notes]
        return out

    def _mean_line(self) -> str:
        """Says exactly what the mean covers: which classes, and whether background is left out."""
        over = list(self.metrics.get("mean_over", []))
        dice = "n/a" if self.mean_dice is None else f"{self.mean_dice:.4f}"
        shown = ", ".join(over[:SHOWN_CLASSES]) + (", …" if len(over) > SHOWN_CLASSES else "")
        bg = f"{self.background} excluded" if self.background else "no class is background"
        classes = f"{len(over)} class{'es' if len(over) != 1 else ''}" + (f" ({shown})" if over else "")
        return f"mean Dice {dice} over {classes} on {self.num_labeled} labeled images; {bg}"

    def _unmatched_lines(self) -> list[str]:
        un = self.metrics.get("unmatched", {})
        pixels = un.get("pixels", {})
        lines = []
        if un.get("label_only"):
            named = [f"{n} ({pixels[n]['label_pixels']} label px)" if n in pixels else n for n in un["label_only"]]
            lines.append(f"  only the labels know (not in the means; map them with --label-map): {', '.join(named)}")
        if un.get("model_only"):
            named = [
                f"{n} ({pixels[n]['predicted_pixels']} px predicted)" if n in pixels else n for n in un["model_only"]
            ]
            lines.append(f"  only the model knows (not in the means): {', '.join(named)}")
        return lines
