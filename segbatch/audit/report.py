"""The offline quality audit: a finished run's Parquet → ``report.html`` and its pictures.

No model runs. Every run gets a report. Any run: how often each class occurs (images that
hold it, its share of the pixels), the distribution of per-image confidence and the least
confident images (image / prediction / confidence). Runs with labels add per-class Dice and
IoU (bars), the confusion matrix (heatmap), the distribution of per-image Dice, the Spearman
correlation of confidence with Dice, and the images ranked by ``AuditOptions.rank``: by label
quality (image / label / prediction / flagged pixels, with the class-swap table: "likely
label errors") or by Dice (image / label / prediction / disagreement). Filters pick what is
audited: classes, a Dice threshold (labeled runs) and a random sample of images. Without
filters every figure equals metrics.json.

Layout under the run's output::

    report.html
    report/dice_iou.svg  report/confusion.svg  report/dice_hist.svg     (runs with labels)
    report/class_freq.svg  report/confidence_hist.svg
    report/worst/NN-<image_id>.png            ranked panels (label quality or Dice)
    report/least_confident/NN-<image_id>.png  confidence panels
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from segbatch.audit import charts
from segbatch.audit.overlays import class_colours, confidence_panels_png, flagged_panels_png, panels_png
from segbatch.audit.ranking import (
    CONFIDENCE,
    DICE,
    LABEL_QUALITY,
    RANK_COLUMN,
    RANKS,
    ClassFrequency,
    Lowest,
    choose_rank,
    spearman,
)
from segbatch.categories import EvalSpace, resolve_names
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.images import decode_image
from segbatch.masks import decode_rle, instances_to_label_map
from segbatch.metrics import ClassSums, mean_over_present
from segbatch.outputs.folder import IMAGES, JOB, MANIFEST, MASKS, METRICS, REPORT, REPORT_DIR, OutDir
from segbatch.outputs.run_metrics import confusion_matrix, iter_image_rows
from segbatch.stages.encode import EncodeSpec, read_label

log = logging.getLogger(__name__)

_BASE_COLUMNS = ["image_id", "file_name", "uri", "width", "height", "status", "labeled", "class_stats"]
_LABEL_COLUMNS = ["dice", "confusion"]
_QUALITY_COLUMNS = ["label_quality", "label_issue_pixels", "label_issue_share", "label_issue_swaps"]
_SWAPS_SHOWN = 20  # rows of the class-swap table, as metrics.json's common_label_issues


@dataclass(frozen=True)
class AuditOptions:
    """What to audit. Defaults: every image (labeled ones in a run with labels), every class, 12 images per ranking."""

    worst: int = 12  # images shown with panels per ranking, lowest score first
    classes: tuple[str, ...] | None = None  # evaluation class names to audit (runs with labels)
    max_dice: float | None = None  # only images whose Dice is at most this (runs with labels)
    sample: int | None = None  # audit a random sample of this many images
    seed: int = 0  # of the sample
    rank: str | None = None  # ranking.RANKS; None: label quality, else Dice, else confidence

    def __post_init__(self) -> None:
        if self.worst < 0:
            raise JobError(f"worst {self.worst!r} must be >= 0")
        if self.max_dice is not None and not 0.0 <= self.max_dice <= 1.0:
            raise JobError(f"max_dice {self.max_dice!r} must be in [0, 1]")
        if self.sample is not None and self.sample < 1:
            raise JobError(f"sample {self.sample!r} must be >= 1 image")
        if self.rank is not None and self.rank not in RANKS:
            raise JobError(f"rank {self.rank!r} is unknown; valid: {', '.join(RANKS)}")


@dataclass
class _Selection:
    conf: np.ndarray  # (K, K) int64 summed over the audited images (zeros without labels)
    dices: list[float]  # per-image Dice of the audited images (where defined)
    confidences: list[float]  # per-image confidence of the audited images (where defined)
    pairs: list[tuple[float, float]]  # (confidence, Dice) of the images that have both
    ranked: list[tuple[float, int, dict[str, Any]]]  # by the chosen rank, ascending (labeled runs)
    least_confident: list[tuple[float, int, dict[str, Any]]]  # ascending confidence
    freq: ClassFrequency
    swaps: dict[tuple[str, str], int]  # flagged pixels by (given, predicted) over the audited images
    flagged_images: int  # audited images with at least one flagged pixel
    flagged_pixels: int
    num_images: int


def _image_dice(conf: np.ndarray, keep: np.ndarray, background: int | None) -> float | None:
    sums = ClassSums.from_confusion(conf)
    return mean_over_present(sums.dice(), sums.present() & keep, background)


def _sample_key(seed: int, image_id: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest(), "big")


def _audited_rows(out: OutDir, columns: list[str], labeled: bool, options: AuditOptions) -> Iterator[dict[str, Any]]:
    """The ok rows (labeled ones in a run with labels), or a seeded sample of them."""
    rows = (r for r in iter_image_rows(out, columns) if r["status"] == "ok" and (r["labeled"] or not labeled))
    if options.sample is None:
        yield from rows
        return
    # A seeded sample in one pass: the rows with the smallest hashes of (seed, image_id).
    heap: list[tuple[int, int, dict[str, Any]]] = []
    for r in rows:
        item = (-_sample_key(options.seed, r["image_id"]), r["image_id"], r)
        if len(heap) < options.sample:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    yield from sorted((r for _, _, r in heap), key=lambda r: r["image_id"])


def select(
    out: OutDir,
    names: list[str],
    background: int | None,
    options: AuditOptions,
    *,
    rank: str,
    labeled: bool,
    available: set[str],
) -> _Selection:
    """One streaming pass over images.parquet: sums, score lists and the lowest images per ranking.

    ``rank`` orders ``ranked`` (label quality or Dice; a run without labels ranks nothing there,
    its images are the least confident); ``available`` are the columns images.parquet has.
    """
    k = len(names)
    keep = np.ones(k, dtype=bool)
    if options.classes is not None:
        keep = np.isin(np.array(names, dtype=object), list(options.classes))
    wanted = _BASE_COLUMNS + (_LABEL_COLUMNS if labeled else []) + ["confidence"] + _QUALITY_COLUMNS
    columns = [c for c in wanted if c in available]
    total = np.zeros((k, k), dtype=np.int64)
    dices: list[float] = []
    confidences: list[float] = []
    pairs: list[tuple[float, float]] = []
    ranked = Lowest(options.worst if labeled and rank != CONFIDENCE else 0)
    least = Lowest(options.worst)
    freq = ClassFrequency(names)
    swaps: dict[tuple[str, str], int] = defaultdict(int)
    flagged_images = flagged_pixels = 0
    n = 0
    for row in _audited_rows(out, columns, labeled, options):
        dice: float | None = None
        if labeled:
            conf = confusion_matrix(row["confusion"], k)
            if options.classes is not None:
                if not (conf[keep, :].any() or conf[:, keep].any()):
                    continue
                dice = _image_dice(conf, keep, background)
            else:
                dice = row["dice"]
            if options.max_dice is not None and (dice is None or dice > options.max_dice):
                continue
            total += conf
        n += 1
        freq.add(row["class_stats"])
        confidence = row.get("confidence")
        if confidence is not None:
            confidences.append(confidence)
            least.add(confidence, row["image_id"], row)
        if dice is not None:
            dices.append(dice)
            if confidence is not None:
                pairs.append((confidence, dice))
        if rank != CONFIDENCE:
            ranked.add(dice if rank == DICE else row.get(RANK_COLUMN[rank]), row["image_id"], row)
        if row.get("label_issue_pixels"):
            flagged_images += 1
            flagged_pixels += row["label_issue_pixels"]
            for s in row.get("label_issue_swaps") or ():
                swaps[(s["given"], s["predicted"])] += s["pixels"]
    return _Selection(
        conf=total,
        dices=dices,
        confidences=confidences,
        pairs=pairs,
        ranked=ranked.ranked(),
        least_confident=least.ranked(),
        freq=freq,
        swaps=dict(swaps),
        flagged_images=flagged_images,
        flagged_pixels=flagged_pixels,
        num_images=n,
    )


def _predicted_map(masks: list[dict[str, Any]], task: str, background: int | None, h: int, w: int) -> np.ndarray:
    """An image's masks (masks.parquet rows) → ``(H, W)`` model class ids."""
    bg = background if background is not None else 0
    if task == "instance":
        if not masks:
            return np.full((h, w), bg, dtype=np.int32)
        stack = np.stack([decode_rle(m["segmentation"]) for m in masks])
        return instances_to_label_map(
            stack,
            np.array([m["category_id"] for m in masks]),
            np.array([m["score"] for m in masks], dtype=np.float32),
            background=bg,
        )
    out = np.full((h, w), bg, dtype=np.int32)
    for m in masks:
        out[decode_rle(m["segmentation"]) > 0] = m["category_id"]
    return out


def image_columns(out: OutDir) -> list[str]:
    """The columns of the run's images.parquet (runs of older segbatch versions lack some)."""
    with out.fs.open(out.path(IMAGES), "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def _read_by_id(out: OutDir, name: str, ids: list[int], columns: list[str]) -> list[dict[str, Any]]:
    """Rows of one of the run's tables for these image ids only (Parquet filter pushdown)."""
    with out.fs.open(out.path(name), "rb") as f:
        return list(pq.read_table(f, columns=columns, filters=[("image_id", "in", ids)]).to_pylist())


def _render(
    out: OutDir,
    job: dict[str, Any],
    es: EvalSpace,
    items: list[tuple[float, int, dict[str, Any]]],
    kind: str,
    folder: str,
) -> list[dict[str, Any]]:
    """Write one PNG of panels per image under ``report/<folder>/``; returns what the page says
    about each. ``kind``: the ranking (:data:`DICE`, :data:`LABEL_QUALITY` or :data:`CONFIDENCE`),
    which picks the panels."""
    pictures_dir = fsio.join(out.path(REPORT_DIR), folder)
    if out.fs.exists(pictures_dir):
        out.fs.rm(pictures_dir, recursive=True)  # pictures of an earlier audit must not linger
    ids = [image_id for _, image_id, _ in items]
    if not ids:
        return []
    needs_label = kind in (DICE, LABEL_QUALITY)
    manifest: dict[int, dict[str, Any]] = {}
    if needs_label:
        with out.fs.open(out.path(MANIFEST), "rb") as f:
            manifest = {r["image_id"]: r for r in pq.read_table(f, filters=[("image_id", "in", ids)]).to_pylist()}
    extra_col = {LABEL_QUALITY: "label_issue_mask", CONFIDENCE: "confidence_map"}.get(kind)
    extra: dict[int, Any] = {}
    if extra_col is not None and extra_col in image_columns(out):
        extra = {r["image_id"]: r[extra_col] for r in _read_by_id(out, IMAGES, ids, ["image_id", extra_col])}
    masks_by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for m in _read_by_id(out, MASKS, ids, ["image_id", "category_id", "score", "segmentation"]):
        masks_by_image[m["image_id"]].append(m)
    model = job["model"]
    spec = EncodeSpec(
        task=model["task"],
        categories=tuple(model["categories"]),
        background=model["background"],
        eval_space=es,
        label_kind=job["labels"]["kind"],
        missing_labels="error",
        storage_options=out.storage_options,
    )
    colours = class_colours(es.num_classes)
    shown = []
    for rank, (score, image_id, row) in enumerate(items, start=1):
        entry = {"rank": rank, "image_id": image_id, "file_name": row["file_name"], "score": score, "row": row}
        try:
            # The run's storage options (OutDir carries them): the images sit where the run read them.
            high_bit_depth = job.get("config", {}).get("high_bit_depth", "range")
            rgb = decode_image(fsio.read_bytes(row["uri"], out.storage_options), high_bit_depth)
            h, w = rgb.shape[:2]
            pred = es.predictions(_predicted_map(masks_by_image[image_id], model["task"], model["background"], h, w))
            present = set(np.unique(pred).tolist())
            if needs_label:
                label = read_label({**manifest[image_id], "file_name": row["file_name"]}, spec, h, w)
                if label is None:  # missing_labels="error" above: a labeled row's label is never missing
                    raise JobError(f"the label of image_id {image_id} is missing")
                present |= set(np.unique(label[label >= 0]).tolist())
                if kind == DICE:
                    png = panels_png(rgb, label, pred, colours, es.background)
                else:
                    rle = extra.get(image_id)
                    flagged = decode_rle(rle).astype(bool) if rle else np.zeros((h, w), dtype=bool)
                    png = flagged_panels_png(rgb, label, pred, flagged, colours, es.background)
            else:
                png = confidence_panels_png(rgb, pred, extra.get(image_id), colours, es.background)
            name = f"{rank:02d}-{image_id}.png"
            fsio.write_bytes_atomic(out.fs, fsio.join(pictures_dir, name), png)
            entry["picture"] = f"{REPORT_DIR}/{folder}/{name}"
            entry["classes"] = sorted(int(c) for c in present if c != es.background)
        except Exception as err:  # one unreadable image must not stop the audit
            entry["problem"] = f"{type(err).__name__}: {err}"
        shown.append(entry)
    return shown


def write_report(out: OutDir, options: AuditOptions, metrics: Mapping[str, Any] | None = None) -> str:
    """Write report.html and its pictures under ``out``; returns the report's URL.

    Raises:
        JobError: a filter or ranking that the run cannot have (names the value and the choices).
    """
    job = out.read_json(JOB)
    labeled = job["labels"]["kind"] is not None
    metrics = dict(metrics) if metrics is not None else out.read_json(METRICS)
    es = EvalSpace.from_dict(job["eval_classes"])
    names, bg = list(es.names), es.background
    if not labeled:
        for what, value in (("classes", options.classes), ("max_dice", options.max_dice)):
            if value is not None:
                raise JobError(f"{what} {value!r} filters by labels, and {out.url!r} is a run without labels")
    if options.classes is not None:
        options = dataclasses.replace(options, classes=resolve_names(options.classes, names, "audit classes"))
    available = set(image_columns(out))
    rank = choose_rank(
        options.rank,
        labeled=labeled,
        has_label_quality="label_quality" in metrics and "label_quality" in available,
        has_confidence="confidence" in available,
    )
    sel = select(out, names, bg, options, rank=rank, labeled=labeled, available=available)
    report_dir = out.path(REPORT_DIR)
    freq_order = [c for c in np.argsort(-sel.freq.pred_images, kind="stable") if sel.freq.pred_images[c] > 0]
    _put(
        out,
        fsio.join(report_dir, "class_freq.svg"),
        charts.grouped_bars(
            [names[c] for c in freq_order],
            [
                ("images", "#4c78a8", [float(sel.freq.pred_images[c] / max(sel.num_images, 1)) for c in freq_order]),
                ("pixels", "#f58518", [float(sel.freq.pred_share()[c]) for c in freq_order]),
            ],
            title="Predicted classes: share of images that hold each, share of pixels",
        ),
    )
    _put(
        out,
        fsio.join(report_dir, "confidence_hist.svg"),
        charts.histogram(
            sel.confidences,
            title=f"Per-image confidence ({len(sel.confidences)} images)",
            xlabel="mean top-class probability",
        ),
    )
    least = _render(out, job, es, sel.least_confident, CONFIDENCE, "least_confident")
    ranked = _render(out, job, es, sel.ranked, rank, "worst")
    page = _Page(job, metrics, options, sel, names, bg, rank, least, ranked)
    if labeled:
        body = _labeled_summary(out, page) + page.frequency() + page.confidence() + page.label_errors()
        body += page.ranked_by_dice()
        title = f"Audit: {escape(job['model']['name'])} against the labels"
    else:
        body = page.unlabeled_summary() + page.frequency() + page.confidence()
        title = f"Report: {escape(job['model']['name'])} on a run without labels"
    fsio.write_bytes_atomic(out.fs, out.path(REPORT), page.html(title, body).encode("utf-8"))
    return out.url_of(REPORT)


def _labeled_summary(out: OutDir, page: _Page) -> str:
    """Today's label page above the new sections: figures, Dice charts, per-class table, COCO AP."""
    sel, names, bg, options = page.sel, page.names, page.bg, page.options
    sums = ClassSums.from_confusion(sel.conf)
    dice, iou, present = sums.dice(), sums.iou(), sums.present()
    keep = present.copy()
    if options.classes is not None:
        keep &= np.isin(np.array(names, dtype=object), list(options.classes))
    order = [c for c in np.argsort(np.nan_to_num(dice, nan=2.0), kind="stable") if keep[c]]
    total = int(sel.conf.sum())
    figures = {
        "mean_dice": mean_over_present(dice, keep, bg),
        "mean_iou": mean_over_present(iou, keep, bg),
        "pixel_accuracy": float(np.trace(sel.conf) / total) if total else None,
    }
    report_dir = out.path(REPORT_DIR)
    bar_labels = [names[c] + (" (bg)" if c == bg and names[c] != "background" else "") for c in order]
    _put(
        out,
        fsio.join(report_dir, "dice_iou.svg"),
        charts.grouped_bars(
            bar_labels,
            [("Dice", "#4c78a8", [_num(dice[c]) for c in order]), ("IoU", "#f58518", [_num(iou[c]) for c in order])],
            muted=[c == bg for c in order],
            title="Per-class Dice and IoU (worst first; background grey, not in means)",
        ),
    )
    shown_cls = [c for c in range(len(names)) if present[c] and (options.classes is None or keep[c] or c == bg)]
    _put(
        out,
        fsio.join(report_dir, "confusion.svg"),
        charts.heatmap(
            sel.conf[np.ix_(shown_cls, shown_cls)], [names[c] for c in shown_cls], title="Confusion matrix (pixels)"
        ),
    )
    _put(
        out,
        fsio.join(report_dir, "dice_hist.svg"),
        charts.histogram(
            sel.dices, title=f"Per-image Dice ({len(sel.dices)} images)", xlabel="Dice (background excluded)"
        ),
    )
    return page.dice_summary(order, dice, iou, sums, figures)


def _put(out: OutDir, path: str, svg: str) -> None:
    fsio.write_bytes_atomic(out.fs, path, svg.encode("utf-8"))


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _swatch(colour: np.ndarray, name: str) -> str:
    r, g, b = (int(v) for v in colour)
    return f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{escape(name)}</span>'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:4px} .sub{color:#555;margin-top:0}
.kpi{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.kpi div{background:#f3f5f8;border-radius:6px;padding:10px 16px} .kpi b{display:block;font-size:22px}
.charts{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;margin:8px 0} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left} tr.bg td{color:#888}
.sw{white-space:nowrap;margin-right:10px} .sw i{display:inline-block;width:12px;height:12px;margin-right:4px;
vertical-align:-1px;border:1px solid #999}
.card{margin:18px 0} .card h3{font-size:14px;margin:4px 0} .card img{max-width:100%;border:1px solid #ddd}
.warn{color:#b00} .look{background:#fff4e5;padding:8px 12px;border-radius:6px}
"""

_SCORE_NAME = {DICE: "Dice", LABEL_QUALITY: "label quality", CONFIDENCE: "confidence"}


@dataclass
class _Page:
    """The HTML of report.html, one method per section."""

    job: Mapping[str, Any]
    metrics: Mapping[str, Any]
    options: AuditOptions
    sel: _Selection
    names: list[str]
    bg: int | None
    rank: str
    least: list[dict[str, Any]]  # rendered least-confident images
    ranked: list[dict[str, Any]]  # rendered images of the label ranking

    @property
    def labeled(self) -> bool:
        return self.job["labels"]["kind"] is not None

    def html(self, title: str, body: str) -> str:
        options, metrics = self.options, self.metrics
        filters = []
        if options.classes is not None:
            filters.append("classes: " + ", ".join(options.classes))
        if options.max_dice is not None:
            filters.append(f"images with Dice ≤ {options.max_dice:g}")
        if options.sample is not None:
            filters.append(f"random sample of {options.sample} images (seed {options.seed})")
        of = f"of {metrics.get('num_labeled', 0)} labeled " if self.labeled else ""
        subtitle = (
            f"run {escape(str(self.job.get('started', '')))} · {self.sel.num_images} images audited {of}"
            f"({metrics.get('num_images', 0)} in the run, {metrics.get('num_errors', 0)} errors)"
            + (" · filters: " + escape("; ".join(filters)) if filters else "")
        )
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>segbatch audit · {escape(self.job["model"]["name"])}</title>
<style>{_STYLE}</style></head><body>
<h1>{title}</h1>
<p class="sub">{subtitle}</p>
{body}
</body></html>
"""

    def _cards(self, shown: list[dict[str, Any]], empty: str) -> str:
        colours = class_colours(len(self.names))
        cards = []
        for e in shown:
            row = e["row"]
            score_name = _SCORE_NAME[self._kind(e)]
            head = (
                f"#{e['rank']} · {escape(e['file_name'])} · image_id {e['image_id']} · {score_name} {_fmt(e['score'])}"
            )
            if row.get("label_issue_share") is not None and self.labeled:
                head += f" · flagged {row['label_issue_share']:.1%} of labeled pixels"
            attrs = f'class="card" data-image-id="{e["image_id"]}" data-score="{e["score"]!r}"'
            if "problem" in e:
                cards.append(
                    f'<div {attrs}><h3>{head}</h3><p class="warn">could not draw: {escape(e["problem"])}</p></div>'
                )
                continue
            legend = " ".join(_swatch(colours[c], self.names[c]) for c in e["classes"])
            cards.append(
                f'<div {attrs}><h3>{head}</h3><img src="{e["picture"]}" alt="{escape(e["file_name"])}">'
                f'<div class="legend">{legend}</div></div>'
            )
        return "".join(cards) or f"<p>{empty}</p>"

    def _kind(self, entry: dict[str, Any]) -> str:
        return self.rank if any(entry is e for e in self.ranked) else CONFIDENCE

    def dice_summary(
        self,
        order: list[int],
        dice: np.ndarray,
        iou: np.ndarray,
        sums: ClassSums,
        figures: Mapping[str, float | None],
    ) -> str:
        names, bg, colours = self.names, self.bg, class_colours(len(self.names))
        look = [names[c] for c in order if c != bg and not np.isnan(dice[c])][:3]
        rows = "\n".join(
            f"<tr{' class=bg' if c == bg else ''}><td>{_swatch(colours[c], names[c])}</td>"
            f"<td>{_fmt(_num(dice[c]))}</td><td>{_fmt(_num(iou[c]))}</td><td>{int(sums.gt[c]):,}</td>"
            f"<td>{int(sums.pred[c]):,}</td><td>{int(sums.intersection[c]):,}</td></tr>"
            for c in order
        )
        coco = self.metrics.get("coco_segm")
        coco_html = ""
        if coco:
            coco_html = (
                "<h2>COCO mask AP (pycocotools COCOeval, segm)</h2><table><tr>"
                + "".join(f"<th>{escape(k)}</th>" for k in coco)
                + "</tr><tr>"
                + "".join(
                    f"<td>{_fmt(v, 3) if isinstance(v, float) or v is None else escape(str(v))}</td>"
                    for v in coco.values()
                )
                + "</tr></table>"
            )
        images = {LABEL_QUALITY: "lowest label quality", DICE: "lowest per-image Dice", CONFIDENCE: "least confident"}
        return f"""<div class="kpi"><div>mean Dice<b id="mean-dice">{_fmt(figures["mean_dice"])}</b></div>
<div>mean IoU<b id="mean-iou">{_fmt(figures["mean_iou"])}</b></div>
<div>pixel accuracy<b id="pixel-accuracy">{_fmt(figures["pixel_accuracy"])}</b></div>
<div>images audited<b>{self.sel.num_images}</b></div></div>
<p class="look">Look first at the classes {escape(", ".join(look)) or "n/a"} (lowest Dice) and at the images
ranked below ({images[self.rank]} first). Means are over classes present in label or prediction, background left
out; all figures come from pixel counts summed over the audited images.</p>
<div class="charts">
<img src="{REPORT_DIR}/dice_iou.svg" alt="per-class Dice and IoU">
<img src="{REPORT_DIR}/confusion.svg" alt="confusion matrix">
<img src="{REPORT_DIR}/dice_hist.svg" alt="per-image Dice histogram">
</div>
<h2>Per class</h2>
<table><tr><th>class</th><th>Dice</th><th>IoU</th><th>label px</th><th>predicted px</th><th>overlap px</th></tr>
{rows}</table>
{coco_html}
"""

    def unlabeled_summary(self) -> str:
        conf = self.sel.confidences
        mean = float(np.mean(conf)) if conf else None
        return f"""<div class="kpi"><div>images<b>{self.sel.num_images}</b></div>
<div>mean confidence<b id="mean-confidence">{_fmt(mean)}</b></div></div>
<p class="look">A run without labels: the model's own confidence is the one guide. Look first at the least
confident images below; their predictions are the likeliest to need a correction.</p>
"""

    def frequency(self) -> str:
        f, names, n = self.sel.freq, self.names, max(self.sel.num_images, 1)
        colours = class_colours(len(names))
        pred_share, gt_share = f.pred_share(), f.gt_share()
        shown = [c for c in range(len(names)) if f.pred_images[c] or f.gt_images[c]]
        shown.sort(key=lambda c: (-int(f.pred_images[c]), -int(f.gt_images[c]), c))
        label_head = "<th>images (label)</th><th>pixel share (label)</th>" if self.labeled else ""
        rows = []
        for c in shown:
            label_cells = (
                f"<td>{int(f.gt_images[c]):,} ({f.gt_images[c] / n:.1%})</td><td>{gt_share[c]:.2%}</td>"
                if self.labeled
                else ""
            )
            rows.append(
                f'<tr data-class="{escape(names[c])}"><td>{_swatch(colours[c], names[c])}</td>'
                f"<td>{int(f.pred_images[c]):,} ({f.pred_images[c] / n:.1%})</td><td>{pred_share[c]:.2%}</td>"
                f"{label_cells}</tr>"
            )
        return f"""<section id="class-frequency"><h2>Class frequencies</h2>
<p class="sub">Per class: the images whose prediction holds it and its share of all predicted pixels
{"(and the same for the labels)" if self.labeled else ""}, over the {self.sel.num_images} images audited.</p>
<div class="charts"><img src="{REPORT_DIR}/class_freq.svg" alt="class frequencies"></div>
<table><tr><th>class</th><th>images (predicted)</th><th>pixel share (predicted)</th>{label_head}</tr>
{"".join(rows)}</table></section>
"""

    def confidence(self) -> str:
        sel = self.sel
        mean = float(np.mean(sel.confidences)) if sel.confidences else None
        corr = ""
        if self.labeled:
            rho = spearman([c for c, _ in sel.pairs], [d for _, d in sel.pairs]) if sel.pairs else None
            corr = (
                f'<div>Spearman ρ(confidence, Dice)<b id="confidence-dice-spearman">{_fmt(rho, 3)}</b>'
                f'n = <span id="confidence-dice-n">{len(sel.pairs)}</span> images</div>'
            )
        task = self.job["model"]["task"]
        what = (
            "mean instance score of the image's masks"
            if task == "instance"
            else "mean top-class probability of the softmax of the model's logits"
        )
        return f"""<section id="confidence"><h2>How sure the model was</h2>
<p class="sub">Per-image confidence: the {what}. A positive correlation with Dice means low confidence points at
images the model gets wrong.</p>
<div class="kpi"><div>mean confidence<b>{_fmt(mean)}</b></div>{corr}</div>
<div class="charts"><img src="{REPORT_DIR}/confidence_hist.svg" alt="per-image confidence histogram"></div>
<h3>Least confident images</h3>
<p class="sub">image · prediction · confidence (dark: sure; yellow to red: unsure).</p>
<div id="least-confident">{self._cards(self.least, "no image with a confidence to rank")}</div></section>
"""

    def label_errors(self) -> str:
        lq = self.metrics.get("label_quality")
        if not lq and self.rank != LABEL_QUALITY:
            return ""
        sel, colours = self.sel, class_colours(len(self.names))
        index = {n: i for i, n in enumerate(self.names)}
        swaps = sorted(sel.swaps.items(), key=lambda kv: (-kv[1], kv[0]))[:_SWAPS_SHOWN]

        def name(n: str) -> str:
            return _swatch(colours[index[n]], n) if n in index else escape(n)

        rows = "".join(
            f'<tr data-given="{escape(g)}" data-predicted="{escape(p)}"><td>{name(g)}</td><td>{name(p)}</td>'
            f"<td>{n:,}</td></tr>"
            for (g, p), n in swaps
        )
        if self.rank == LABEL_QUALITY:
            images = (
                '<p class="sub">image · label · prediction · flagged pixels (red), lowest label quality first.</p>'
                f'<div id="ranked">{self._cards(self.ranked, "no labeled image with a label quality to rank")}</div>'
            )
        else:
            where = "by Dice below" if self.rank == DICE else "by confidence above"
            images = (
                f'<p class="sub">This report ranks its images {where}; <code>--rank label-quality</code> ranks '
                "them by label quality, with their flagged pixels.</p>"
            )
        return f"""<section id="label-errors"><h2>Likely label errors</h2>
<p class="sub">Label quality: the soft minimum of each labeled pixel's self-confidence (the model's probability of
the given label; cleanlab's method, temperature {escape(str(lq.get("temperature") if lq else "n/a"))}), 0 worst,
1 best. Flagged pixels: where the model confidently believes another class (confident learning, per-class
thresholds from the whole run).</p>
<div class="kpi"><div>images with flagged pixels<b id="flagged-images">{sel.flagged_images}</b></div>
<div>flagged pixels<b id="flagged-pixels">{sel.flagged_pixels:,}</b></div></div>
<h3>Class swaps among flagged pixels</h3>
<table id="swaps"><tr><th>given label</th><th>model believes</th><th>pixels</th></tr>{rows}</table>
{images}</section>
"""

    def ranked_by_dice(self) -> str:
        if self.rank != DICE:
            return ""
        return f"""<section id="disagreement"><h2>Where model and labels disagree most</h2>
<p class="sub">image · label · prediction · disagreement (red: label ≠ prediction); colours as in the legend.</p>
<div id="ranked">{self._cards(self.ranked, "no labeled image with a Dice to rank")}</div></section>
"""
